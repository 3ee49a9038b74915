"""doppel: LLM doppelganger users for recommender systems.

The Python API (documented in docs/python-api.md):

- `doppel.simulate(...)`: run `doppel run` (simulate, gate, score) and get the run's tables back;
- `doppel.open_run(db, run_id)`: a run's tables as pandas DataFrames;
- `doppel.fidelity(db, run_id)`: its fidelity table (the LLM next to the baselines);
- `doppel.settings(...)`: the `RunSettings` behind a run, from options by name.

`import doppel` stays light: these names load their modules (Prefect, DuckDB, pandas) on first use.
The code lives in subpackages installed under this namespace: `doppel.flows` (Prefect flows, the
CLI), `doppel.tasks` (the domain steps), `doppel.sql` and `doppel.expectations` (package data),
`doppel.envs` (the Gymnasium ids) and `doppel.testing` (the OpenAI-compatible test LLM server).
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` is not imported: this module loads at every start-up (doppel-gymnasium.pth)
if TYPE_CHECKING:
    from typing import Any

    from doppel.api import Run, fidelity, open_run, settings, simulate

__all__ = ["Run", "fidelity", "open_run", "settings", "simulate", "__version__"]
_API = {"Run", "fidelity", "open_run", "settings", "simulate"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from doppel import api

        return getattr(api, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("doppel")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'doppel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
