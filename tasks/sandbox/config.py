"""Settings of `doppel sandbox`: what the spine's RunSettings do not already say."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from doppel.tasks.settings import OneFoldSettings, RunSettings

ACTIONS = ("recommender", "chat", "post", "nothing")


def new_sandbox_id() -> str:
    return datetime.now(UTC).strftime("sbx-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class MemorySettings(BaseModel):
    """Retrieval score = w_rel * cosine + w_rec * decay ** age_in_rounds + w_imp * importance / 10."""

    k: int = Field(4, ge=0, description="memories retrieved per decision")
    w_relevance: float = 1.0
    w_recency: float = 1.0
    w_importance: float = 1.0
    decay: float = Field(0.8, gt=0.0, le=1.0, description="recency factor per round of age")
    reflect_every: int = Field(3, ge=0, description="reflect every N rounds (0: never)")
    reflect_on: int = Field(6, ge=1, description="memories a reflection summarises")


class SandboxSettings(OneFoldSettings):
    """A whole `doppel sandbox`: which users become agents, how they act, which recommender serves them."""

    WORK_SUBDIR = "sandbox"

    run: RunSettings = Field(default_factory=RunSettings)  # dataset, db, llm (+ limits and cache)
    sandbox_id: str | None = Field(
        None, description="resume this sandbox; an id never used starts a new one under it (default: a new id)"
    )
    fold: str = Field(
        None,
        validate_default=True,
        description="whose train split seeds the recommender and the agents' histories (default: u1; a ratings CSV: t1)",
    )
    agents: int = Field(20, ge=1, description="agents (a seeded sample of the fold's users)")
    rounds: int = Field(5, ge=0, description="total rounds; a rerun of a sandbox id continues after the last one")
    seed: int = Field(0, description="agent sample, graph and activity seed")
    profile_run_id: str | None = Field(None, description="take the agents' Phase-1 profiles from this doppel run")
    profile_history: int = Field(20, ge=1, description="train ratings a built profile is written from")
    profile_max_tokens: int = Field(100, ge=16, description="completion tokens of a built profile (~60 words)")
    activity: float | Literal["data"] = Field(
        0.7, description="chance an agent acts in a round (0..1), or 'data' (from its number of ratings)"
    )
    friends: int = Field(3, ge=0, description="generated graph: friends per agent (ring + seeded rewiring)")
    graph_file: str | None = Field(None, description="friendship edges CSV (two agent or user ids per line)")
    recommender: Literal["random", "popular", "mf"] = Field("mf", description="random | popular | mf (Surprise SVD)")
    retrain: bool = Field(True, description="retrain the MF recommender on the sandbox's ratings each round")
    page_size: int = Field(5, ge=1)
    max_steps: int = Field(3, ge=1, description="recommender steps (page, search, watch) per visit")
    max_watch: int = Field(2, ge=1, description="items watched at once")
    chat_turns: int = Field(4, ge=2, le=8, description="lines per one-to-one chat")
    memory: MemorySettings = Field(default_factory=MemorySettings)
    max_tokens: int = Field(96, ge=16, description="completion tokens per decision")
    temperature: float = Field(
        0.8,
        ge=0.0,
        le=2.0,
        description="sampling temperature of the agents' decisions (at 0 "
        "the 0.5B model picks the same option every time)",
    )
    overview_chars: int = Field(0, ge=0, description="item overview characters on a page (0: title/genres)")

    @field_validator("activity")
    @classmethod
    def _activity(cls, value: float | str) -> float | str:
        if value != "data" and not 0.0 <= float(value) <= 1.0:
            raise ValueError("must be in [0, 1] or 'data'")
        return value
