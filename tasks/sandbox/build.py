"""Building the world and running agents: agent choice, histories, profiles, activity, and the chunk entry.

LLM I/O only (the flow writes): profiles are built with the spine's `profile_create` prompt through the
same gateway, cache and limits as `doppel run`; a chunk of turns runs its agents as asyncio coroutines.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from doppel.tasks.llm.calls import CallOwner, CallRecord
from doppel.tasks.llm.gateway import LLMGateway
from doppel.tasks.llm.session import LimitSpec, run_chunk
from doppel.tasks.records import HistoryItem, Packed
from doppel.tasks.sandbox.agent import play_turn
from doppel.tasks.sandbox.config import SandboxSettings
from doppel.tasks.sandbox.recommender import Recommender
from doppel.tasks.sandbox.records import ItemCard, Outcome, PackedTurns, Turn
from doppel.tasks.settings import LLMSettings

PROFILE_WORDS = 60
MIN_RATINGS = 5
NO_PROFILE = "(no profile)"  # a failed profile's text: the agent acts on its demographics only


def choose_users(train: pd.DataFrame, n: int, seed: int, prefer: set[str] | None = None) -> list[str]:
    """A seeded sample of users with at least MIN_RATINGS train ratings (from `prefer` first, when given)."""
    counts = train.groupby("user_id").size()
    eligible = sorted(str(u) for u in counts[counts >= MIN_RATINGS].index)
    if not eligible:
        raise ValueError(f"no user has {MIN_RATINGS}+ train ratings in this fold")
    pools = [[u for u in eligible if u in prefer], [u for u in eligible if u not in prefer]] if prefer else [eligible]
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for pool in pools:
        k = min(n - len(chosen), len(pool))
        if k > 0:
            chosen += [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
    return chosen


def activity_levels(train: pd.DataFrame, user_ids: list[str], activity: float | str) -> list[float]:
    """A fixed chance per agent, or 'data': 0.3..1.0 by the user's number of train ratings (rank-scaled)."""
    if activity != "data":
        return [float(activity)] * len(user_ids)
    counts = train.groupby("user_id").size().reindex(user_ids, fill_value=0)
    ranks = counts.rank(pct=True).to_numpy()
    return [round(0.3 + 0.7 * float(r), 3) for r in ranks]


def is_active(seed: int, agent_id: str, round_no: int, activity: float) -> bool:
    digest = hashlib.sha256(f"{seed}|{agent_id}|{round_no}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < activity


def user_histories(train: pd.DataFrame, users: list[str], last: int) -> dict[str, pd.DataFrame]:
    """Each user's last `last` train ratings (what a profile is asked from)."""
    return {u: g.tail(last) for u, g in train[train["user_id"].isin(users)].groupby("user_id", sort=False)}


def history_items(frame: pd.DataFrame) -> list[HistoryItem]:
    return [
        HistoryItem(
            str(r.item_id),
            r.title,
            None if pd.isna(r.year) else int(r.year),
            r.genres,
            r.text or "",
            int(r.rating),
            int(r.ts),
        )
        for r in frame.itertuples(index=False)
    ]


def catalogue_cards(items: pd.DataFrame) -> dict[str, ItemCard]:
    return {
        str(r.item_id): ItemCard(
            str(r.item_id), r.title, None if pd.isna(r.year) else int(r.year), r.genres, r.text or ""
        )
        for r in items.itertuples(index=False)
    }


@dataclass
class BuiltProfile:
    """One agent's profile built with `profile_create` (text None when every attempt failed)."""

    user_id: str
    text: str | None
    error: str | None
    calls: list[CallRecord]

    @property
    def n_failed(self) -> int:
        return int(self.text is None)


@dataclass
class Profiles:
    """Built profiles by user (whitespace folded), the reasons of the failed ones, and every call made."""

    texts: dict[str, str]
    errors: dict[str, str]
    calls: list[tuple[str, CallRecord]]


def gather_profiles(built: list[BuiltProfile]) -> Profiles:
    """The `BuiltProfile`s of a fan-out as texts, errors and (user id, call) pairs."""
    out = Profiles({}, {}, [])
    for b in built:
        out.calls += [(b.user_id, c) for c in b.calls]
        if b.text is None:
            out.errors[b.user_id] = b.error or "no profile"
        else:
            out.texts[b.user_id] = " ".join(b.text.split())
    return out


def asked_again(failed: pd.DataFrame, profiles: Profiles) -> pd.DataFrame:
    """The new profile, source and error of each agent in `failed` whose profile a resume asked again."""
    users = failed["user_id"].tolist()
    return pd.DataFrame(
        {
            "agent_id": failed["agent_id"].tolist(),
            "profile": [profiles.texts.get(u, NO_PROFILE) for u in users],
            "profile_source": ["built" if u in profiles.texts else "failed" for u in users],
            "profile_error": [None if u in profiles.texts else profiles.errors.get(u, "no profile") for u in users],
        }
    )


def build_profiles(
    packed: Packed,
    llm: LLMSettings,
    model_id: str,
    cache_dir: str,
    limits: LimitSpec,
    channel,
    owner: CallOwner | None = None,
) -> list[str]:
    """A `BuiltProfile` per packed (user_id, demographics, history, retry), each sent through `channel` as it is
    ready (`owner`: the sandbox's invocation, see tasks.llm.calls.CallOwner; `retry` > 0: a resume asking a
    failed profile again, fresh samples after the cached ones)."""

    async def work(gateway: LLMGateway, job: tuple[str, str, list[HistoryItem], int]) -> BuiltProfile:
        user_id, demographics, history, retry = job
        mean = f"{sum(h.rating for h in history) / len(history):.1f}"
        variables = {"demographics": demographics, "profile": None, "items": history, "mean_rating": mean}
        words = {**variables, "max_words": PROFILE_WORDS}
        outcome = await gateway.text("profile_create", words, overview_chars=0, retry=retry)
        return BuiltProfile(user_id, outcome.text, outcome.error, outcome.calls)

    works = packed.unpack()
    return run_chunk(
        works, work, llm, model_id, cache_dir, limits, channel, limits.local_slots, lambda r: r.user_id, owner
    )


def run_turns(
    packed: PackedTurns,
    rec: Recommender,
    catalogue: dict[str, ItemCard],
    cfg: SandboxSettings,
    llm: LLMSettings,
    model_id: str,
    cache_dir: str,
    limits: LimitSpec,
    channel,
    owner: CallOwner | None = None,
) -> list[str]:
    """Synchronous entry for a task-runner thread: play the chunk's turns; each outcome goes out via `channel`."""

    async def work(gateway: LLMGateway, turn: Turn) -> Outcome:
        started = time.monotonic()
        outcome = await play_turn(turn, gateway, rec, catalogue, cfg)
        outcome.wall_s = round(time.monotonic() - started, 3)
        return outcome

    # one slot (the embedded server): one agent at a time, so its calls share the prompt prefix cache
    in_flight = 1 if limits.local_slots == 1 else 2 * limits.local_slots
    sampled = llm.model_copy(update={"temperature": cfg.temperature})
    turns = packed.unpack()
    return run_chunk(turns, work, sampled, model_id, cache_dir, limits, channel, in_flight, lambda o: o.agent_id, owner)
