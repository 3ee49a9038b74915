"""Settings of `doppel rl`."""

from __future__ import annotations

from pydantic import BaseModel, Field

ALGOS = ("dqn", "a2c", "ppo", "trpo")
BASELINES = ("random", "popular")


class EnvSettings(BaseModel):
    """The episode rules of `DoppelRecEnv` (see its docstring)."""

    horizon: int = Field(20, ge=1, description="T: recommendations per episode")
    leave_after: int | None = Field(3, ge=1, description="L: the user leaves after L consecutive non-likes")
    history_len: int = Field(10, ge=1, description="H: interactions in the observation")
    feature_dim: int = Field(16, ge=1, description="d: item features (PCA of the item embeddings)")
    exclude_train: bool = Field(True, description="the user's own train items count as already seen")
    seen_in_obs: bool = Field(True, description="the observation ends with one seen flag per item")


class RLSettings(BaseModel):
    """A whole `doppel rl`: which simulated user, which agents, what budget."""

    db: str = "doppel.duckdb"
    ensemble_id: str | None = None  # a finished `doppel ensemble` run (default: the latest finished one)
    reward: str = "ensemble"  # ensemble | run:<run_id> (a finished `doppel run`'s simulated ratings)
    like_threshold: int | None = Field(
        None, ge=1, le=5, description="run reward: like = rating >= this (default: the ensemble run's)"
    )
    algos: list[str] = Field(default_factory=lambda: list(ALGOS) + list(BASELINES))
    steps: int = Field(20_000, ge=1, description="training steps per agent and seed")
    seeds: int = Field(1, ge=1, description="training seeds per agent (seed, seed+1, ...)")
    seed: int = 0
    episodes: int = Field(100, ge=1, description="K: seeded evaluation episodes per agent and seed")
    env: EnvSettings = Field(default_factory=EnvSettings)
    rl_id: str | None = None  # this run's id in `runs` and `metrics` (default: a new one)
    plot: str | None = None  # learning-curve PNG (default: rl_learning_curve.png next to the db)
    torch_threads: int = Field(1, ge=1)
