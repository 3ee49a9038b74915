"""Settings of `doppel rl`."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

ALGOS = ("dqn", "a2c", "ppo", "trpo")
BASELINES = ("random", "popular")


class EnvSettings(BaseModel):
    """The episode rules of `DoppelRecEnv` (see its docstring)."""

    horizon: int = Field(20, ge=1, description="T: recommendations per episode")
    leave_after: int | None = Field(
        3, ge=1, description="L: the user leaves after L non-likes in a row (0 or None: never)"
    )
    history_len: int = Field(10, ge=1, description="H: interactions in the observation")
    feature_dim: int = Field(16, ge=1, description="d: item features (PCA of the item embeddings)")
    exclude_train: bool = Field(True, description="the user's own train items count as already seen")
    seen_in_obs: bool = Field(True, description="the observation ends with one seen flag per item")

    @field_validator("leave_after", mode="before")
    @classmethod
    def _never(cls, value: int | None) -> int | None:
        return None if value == 0 else value


class RLSettings(BaseModel):
    """A whole `doppel rl`: which simulated user, which agents, what budget."""

    db: str = Field("doppel.duckdb", description="DuckDB file")
    ensemble_id: str | None = Field(None, description="a finished `doppel ensemble` run (default: the latest)")
    reward: str = Field(
        "ensemble",
        description="ensemble | hybrid (the calibrated hybrid's P(like), drawn per step) | run:<run_id> "
        "(a finished `doppel run`'s ratings)",
    )
    reward_users: int = Field(
        200, ge=0, description="hybrid reward: seeded sample of train users the env serves (0: all)"
    )
    like_threshold: int | None = Field(
        None, ge=1, le=5, description="run reward: like = rating >= this (default: the ensemble run's)"
    )
    algos: list[str] = Field(
        default_factory=lambda: list(ALGOS) + list(BASELINES),
        description=f"{' | '.join(ALGOS + BASELINES)}, a comma list, or all",
    )
    steps: int = Field(20_000, ge=1, description="training steps per agent and seed")
    seeds: int = Field(1, ge=1, description="training seeds per agent (seed, seed+1, ...)")
    seed: int = Field(0, description="first training seed (seeds: seed, seed+1, ...)")
    episodes: int = Field(100, ge=1, description="K: seeded evaluation episodes per agent and seed")
    env: EnvSettings = Field(default_factory=EnvSettings)
    rl_id: str | None = Field(None, description="this run's id (default: a new one)")
    plot: str | None = Field(None, description="learning-curve PNG (default: rl_learning_curve.png by the db)")
    torch_threads: int = Field(1, ge=1)

    @field_validator("algos", mode="before")
    @classmethod
    def _algos(cls, value: str | list[str]) -> list[str]:
        names = [a.strip() for a in (value.split(",") if isinstance(value, str) else value) if a.strip()]
        names = list(ALGOS + BASELINES) if names == ["all"] else names
        unknown = [n for n in names if n not in ALGOS + BASELINES]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}: use {', '.join(ALGOS + BASELINES)} or all")
        return names
