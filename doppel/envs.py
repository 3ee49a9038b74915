"""doppel's Gymnasium ids, registered without importing doppel's env code.

- `doppel/MovieLens-v0`: ML-100K; the simulated user is a finished `doppel ensemble` run read from
  `db` (default ./doppel.duckdb) or a `doppel run` (`reward="run:<run_id>"`).
- `doppel/Synthetic-v0`: the built-in synthetic dataset; without `db`, built in memory with an
  item-KNN user (no file, no LLM); with `db`, a finished ensemble run of the synthetic dataset.

Gymnasium >= 1.0 has no plugin loading, so the installed `doppel-gymnasium.pth` (see setup.py) makes
`import gymnasium` call `register_envs` (doppel/_gymnasium_hook.py); the `gymnasium.envs` entry point
serves Gymnasium 0.26-0.29, which loaded that group at import. The entry points are strings:
`doppel.tasks.rl.env` (pandas, DuckDB) is imported by `gymnasium.make`, not here.
"""

from __future__ import annotations

MAX_EPISODE_STEPS = 20  # the default horizon T of DoppelRecEnv

ENVS: dict[str, tuple[str, dict]] = {
    "doppel/MovieLens-v0": ("doppel.tasks.rl.env:make_env", {"dataset": "ml-100k"}),
    "doppel/Synthetic-v0": ("doppel.tasks.rl.env:make_synthetic_env", {}),
}


def register_envs() -> None:
    """Register every id in `ENVS` that is not registered yet (safe to call again)."""
    from gymnasium.envs.registration import register, registry

    for env_id, (entry_point, kwargs) in ENVS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, max_episode_steps=MAX_EPISODE_STEPS, kwargs=dict(kwargs))
