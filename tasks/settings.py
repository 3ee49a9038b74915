"""Run settings: everything a run is configured with, and nothing secret.

Settings reach tasks only as arguments; the API key is read from the environment by the
LLM gateway on whichever process makes the call, so it never enters a setting, a Prefect
parameter, a result or the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from doppel.tasks.data.registry import NAMES_HELP, default_folds, expand_folds

API_KEY_ENV_VARS = ("DOPPEL_API_KEY", "OPENAI_API_KEY")
RATING_SAMPLES_LIMIT = 10_000  # draws per rating call stay below it (tasks/llm/gateway.draw_sample)


class LLMSettings(BaseModel):
    """How to reach the LLM and how hard to push it."""

    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; default: the embedded model")
    model: str = Field("qwen2.5-0.5b", description="endpoint model id, or an embedded model name")
    gguf: str | None = Field(None, description="run the embedded server on this GGUF file")
    embedded_slots: int = Field(
        1,
        ge=1,
        le=8,
        description="the embedded server's parallel sequences, continuously batched: its LLM concurrency "
        "(one user per slot; benchmarks/embedded_slots.py measures them)",
    )
    temperature: float = Field(0.0, ge=0, description="sampling temperature")
    seed: int = Field(0, description="LLM seed")
    # a profile of tasks/simulation.PROFILE_WORDS words fits; a looping answer stops here (answer_shapes.md)
    max_tokens_profile: int = 120
    profile_frequency_penalty: float = Field(
        0.5,
        ge=0.0,
        le=2.0,
        description="profile calls: OpenAI frequency_penalty against the loops small models write (0: not sent)",
    )
    max_tokens_rating_per_item: int = 16
    timeout_s: float = Field(120.0, gt=0, description="seconds per LLM call")
    max_retries: int = Field(4, ge=0)  # transport retries by the openai client (429/5xx/timeouts)
    repair_attempts: int = Field(2, ge=0)  # re-asks quoting the validation error
    profile_keep_words: int = Field(
        20,
        ge=0,
        description="a degenerate profile answer (loop, cut-off, tags) whose trimmed text keeps this many words "
        "is kept trimmed instead of re-asked (0: always re-ask)",
    )
    json_mode: Literal["auto", "schema", "object", "text"] = "auto"
    rating_probs: bool = Field(
        True, description="ask for token logprobs and store each rating's distribution over 1..5"
    )
    rating_samples: int = Field(
        0,
        ge=0,
        lt=RATING_SAMPLES_LIMIT,
        description="where logprobs give no distribution (a server without them, --no-rating-probs): draw N "
        "answers per rating call; a rating's distribution is then the draws' shares of 1..5 (0: none)",
    )
    sample_temperature: float = Field(1.0, gt=0, description="--rating-samples: the draws' temperature")
    concurrency: int = Field(8, ge=1, description="LLM calls in flight across all workers")
    # users simulated at once per slot: a few keep a remote endpoint's slots busy across round trips; the
    # embedded server gets 1, so each user's calls run back to back on one slot and reuse its prompt cache
    users_per_slot: int = Field(3, ge=1, le=8)
    rpm: float | None = Field(None, gt=0, description="requests per minute cap")
    concurrency_limit_name: str | None = Field(None, description="also hold this Prefect global concurrency limit")
    cache_dir: str | None = Field(None, description="LLM response cache (default: .doppel/ next to the db)")
    price_prompt_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens (cost accounting)")
    price_completion_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens")

    def profile_params(self) -> dict[str, Any]:
        """Sampling parameters of a profile call. The penalty is sent only when set (not every server takes
        it) and never on rating calls: a viewer may well give many 4s in a row."""
        penalty = self.profile_frequency_penalty
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens_profile,
            **({"frequency_penalty": penalty} if penalty else {}),
        }


class SimulationSettings(BaseModel):
    """The Lusifer-style profile-and-rate method."""

    history_n: int = Field(60, ge=1, description="last N train ratings used to build the profile")
    profile_batch: int = Field(20, ge=1, description="ratings per profile-building call")
    recent_k: int = Field(10, ge=0, description="recent ratings shown with each rating call")
    rate_batch: int = Field(10, ge=1, description="held-out items per rating call")
    update_profile: bool = Field(True, description="update the profile after each rating batch (the dynamic user)")
    overview_chars: int = Field(160, ge=0, description="item overview characters per item in prompts (0: none)")
    prompts: str = Field(
        "compact", description="prompt set: compact | seed (the seed's layout) | item_ids | positions | a folder of .md"
    )
    max_test_items: int | None = Field(None, ge=1, description="cap held-out items per user (default: all)")
    target: Literal["test", "slice", "arena"] = Field(
        "test",
        description="what to rate: test (the held-out items) | slice (each user's calibration slice of train, "
        "profile built without it: the calibrated hybrid's LLM input) | arena (every item an arena run's "
        "recommenders listed for the user: the LLM judge of `doppel arena`; no profile update, so no "
        "held-out rating reaches the judge)",
    )
    arena_run: str | None = Field(None, description="--target arena: the arena run whose lists are rated")
    slice_frac: float = Field(
        0.2, gt=0, lt=1, description="--target slice: share of each user's train ratings in the slice"
    )
    slice_seed: int = Field(0, description="--target slice: the slice's seed (benchmarks/fidelity.py --seed)")

    @model_validator(mode="after")
    def _arena_target(self) -> SimulationSettings:
        if self.target == "arena":
            if not self.arena_run:
                raise ValueError("--target arena needs --arena-run (the arena run whose lists are rated)")
            self.update_profile = False  # an update shows the held-out ratings: the judge would see the answers
        elif self.arena_run:
            raise ValueError("--arena-run goes with --target arena")
        return self

    def split_params(self) -> dict:
        """The SQL parameters that say which of a fold's ratings are rated and which form the history."""
        return {
            "target": self.target,
            "slice_frac": self.slice_frac,
            "slice_seed": self.slice_seed,
            "arena_run": self.arena_run,
        }


class RunSettings(BaseModel):
    """A whole `doppel run`."""

    dataset: str = Field("synthetic", description=NAMES_HELP)
    data_dir: str | None = Field(None, description="local copy of the dataset (ml-100k: the unzipped folder)")
    item_text: str | None = Field(None, description="item overview TSV (item id + overview)")
    synthetic_users: int = Field(60, ge=1, description="synthetic dataset: number of users")
    synthetic_items: int = Field(120, ge=1, description="synthetic dataset: number of items")
    folds: list[str] = Field(
        None, validate_default=True, description="u1..u5, a comma list, or all (default: u1; a ratings CSV: t1)"
    )
    users: int | None = Field(None, ge=1, description="seeded sample of N test users per fold (default: all)")
    user_ids: list[str] | None = Field(None, description="comma-separated user ids to simulate")
    sample_seed: int = Field(0, description="user sample seed")
    db: str = Field("doppel.duckdb", description="DuckDB file")
    run_id: str | None = Field(None, description="resume or rerun this run id (default: a new run)")
    runner: Literal["dask", "threads"] = Field("dask", description="dask | threads")
    dask_address: str | None = Field(None, description="use an existing Dask scheduler (tcp://host:8786)")
    dask_workers: int = Field(2, ge=1, description="local Dask workers (and user chunks)")
    llm: LLMSettings = Field(default_factory=LLMSettings)
    sim: SimulationSettings = Field(default_factory=SimulationSettings)
    baselines: bool = Field(True, description="score CF baselines on the same rows")
    progress: bool = Field(True, description="show progress (a bar on a terminal, a line every few seconds elsewhere)")

    @field_validator("folds", mode="before")
    @classmethod
    def _folds(cls, value: str | list[str] | None, info: ValidationInfo) -> list[str]:
        if value is None:  # the dataset's default (dataset and data_dir are validated before folds)
            return default_folds(info.data.get("dataset", "synthetic"), info.data.get("data_dir"))
        return expand_folds(value)  # "u1,u3" or "all" as the user writes them

    @field_validator("user_ids", mode="before")
    @classmethod
    def _user_ids(cls, value: str | list[str] | None) -> list[str] | None:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

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


class OneFoldSettings(BaseModel):
    """A mode over one fold of a run's dataset (`doppel ensemble`, `doppel sandbox`): `run` carries the
    dataset, database and LLM; `fold` is the run's only fold. Subclasses name their work folder."""

    WORK_SUBDIR: ClassVar[str]
    run: RunSettings = Field(default_factory=RunSettings)
    fold: str = Field(None, validate_default=True, description="one fold (default: u1; a ratings CSV: t1)")

    @field_validator("fold", mode="before")
    @classmethod
    def _default_fold(cls, value: str | None, info: ValidationInfo) -> str:
        """No fold: the run's first, its dataset's default (`run` is validated before `fold`)."""
        run = info.data.get("run")
        return value if value is not None else run.folds[0] if run is not None else "u1"

    @model_validator(mode="after")
    def _one_fold(self) -> OneFoldSettings:
        """The run's folds are this fold (set once, here)."""
        if self.run.folds != [self.fold]:
            self.run = self.run.model_copy(update={"folds": [self.fold]})
        return self

    @property
    def llm(self) -> LLMSettings:
        return self.run.llm

    def work_dir(self) -> Path:
        return self.run.work_dir() / self.WORK_SUBDIR
