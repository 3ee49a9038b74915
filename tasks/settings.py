"""Run settings: everything a run is configured with, and nothing secret.

Settings reach tasks only as arguments; the API key is read from the environment by the
LLM gateway on whichever process makes the call, so it never enters a setting, a Prefect
parameter, a result or the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

API_KEY_ENV_VARS = ("DOPPEL_API_KEY", "OPENAI_API_KEY")
RATING_SAMPLES_LIMIT = 10_000  # draws per rating call stay below it (tasks/llm/gateway.draw_sample)


class LLMSettings(BaseModel):
    """How to reach the LLM and how hard to push it."""

    base_url: str | None = None  # None: start the embedded llama.cpp server
    model: str = "qwen2.5-0.5b"  # an embedded model name, or the endpoint's model id
    gguf: str | None = None  # a local GGUF file for the embedded server
    temperature: float = 0.0
    seed: int = 0
    max_tokens_profile: int = 220
    max_tokens_rating_per_item: int = 16
    timeout_s: float = 120.0
    max_retries: int = 4  # transport retries by the openai client (429/5xx/timeouts)
    repair_attempts: int = 2  # re-asks quoting the validation error
    json_mode: Literal["auto", "schema", "object", "text"] = "auto"
    rating_probs: bool = True  # ask for token logprobs: each rating's distribution over 1..5 is stored
    # where logprobs gave no distribution: draw this many answers per rating call (0: none) at
    # sample_temperature; a rating's distribution is then the draws' shares of 1..5
    rating_samples: int = Field(0, ge=0, lt=RATING_SAMPLES_LIMIT)
    sample_temperature: float = Field(1.0, gt=0)
    concurrency: int = 8
    rpm: float | None = None
    concurrency_limit_name: str | None = None  # optional Prefect global concurrency limit
    cache_dir: str | None = None  # response cache; default: next to the DuckDB file
    price_prompt_per_mtok: float = 0.0  # for cost accounting (USD per million tokens)
    price_completion_per_mtok: float = 0.0


class SimulationSettings(BaseModel):
    """The Lusifer-style profile-and-rate method."""

    history_n: int = Field(60, ge=1, description="last N train ratings used to build the profile")
    profile_batch: int = Field(20, ge=1, description="ratings per profile-building call")
    recent_k: int = Field(10, ge=0, description="recent ratings shown with each rating call")
    rate_batch: int = Field(10, ge=1, description="held-out items per rating call")
    update_profile: bool = True  # dynamic user: update the profile with each batch's true ratings
    overview_chars: int = Field(160, ge=0, description="item overview characters in prompts")
    prompts: str = "compact"  # prompt set: compact | seed | a folder (tasks/llm/templates.py)
    max_test_items: int | None = None  # cap held-out items per user (None: all)
    # what the run rates: the fold's held-out test items, or each user's calibration slice of train
    # (profile built without it: the calibrated hybrid's LLM input, see tasks/fidelity/)
    target: Literal["test", "slice"] = "test"
    slice_frac: float = Field(0.2, gt=0, lt=1, description="share of each user's train ratings in the slice")
    slice_seed: int = 0  # the slice's seed (benchmarks/fidelity.py --seed)

    def split_params(self) -> dict:
        """The SQL parameters that say which of a fold's ratings are rated and which form the history."""
        return {"target": self.target, "slice_frac": self.slice_frac, "slice_seed": self.slice_seed}


class RunSettings(BaseModel):
    """A whole `doppel run`."""

    dataset: str = "synthetic"  # synthetic | ml-100k | a path
    data_dir: str | None = None
    item_text: str | None = None
    synthetic_users: int = 60
    synthetic_items: int = 120
    folds: list[str] = Field(default_factory=lambda: ["u1"])
    users: int | None = None  # seeded sample of each fold's test users (None: all)
    user_ids: list[str] | None = None
    sample_seed: int = 0
    db: str = "doppel.duckdb"
    run_id: str | None = None
    runner: Literal["dask", "threads"] = "dask"
    dask_address: str | None = None
    dask_workers: int = 2
    llm: LLMSettings = Field(default_factory=LLMSettings)
    sim: SimulationSettings = Field(default_factory=SimulationSettings)
    baselines: bool = True
    progress: bool = True

    def work_dir(self) -> Path:
        """Scratch space for this database: response cache, Dask spill, logs."""
        return Path(self.db).resolve().parent / ".doppel"

    def cache_dir(self) -> Path:
        return Path(self.llm.cache_dir) if self.llm.cache_dir else self.work_dir() / "llm-cache"


# what a resumed run must keep: every simulation setting, the dataset and what decides the LLM's
# answers (an embedded server's port, concurrency, timeouts or prices may change between invocations)
RESUME_LLM_KEYS = ("model", "gguf", "temperature", "seed", "json_mode")


def resume_conflicts(stored: dict, settings: RunSettings) -> list[str]:
    """'key: stored -> asked' for each setting that differs from the run's stored config (older
    configs lack newer keys: those count as their defaults)."""
    asked = settings.model_dump(mode="json")
    old_sim = SimulationSettings(**stored.get("sim", {})).model_dump(mode="json")
    old_llm = LLMSettings(**stored.get("llm", {})).model_dump(mode="json")
    pairs = [(f"sim.{k}", old_sim[k], asked["sim"][k]) for k in old_sim]
    pairs += [(f"llm.{k}", old_llm[k], asked["llm"][k]) for k in RESUME_LLM_KEYS]
    pairs.append(("dataset", stored.get("dataset", asked["dataset"]), asked["dataset"]))
    return [f"{key}: {old!r} -> {new!r}" for key, old, new in pairs if old != new]
