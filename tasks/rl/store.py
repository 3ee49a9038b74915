"""The RL runs' writes: the agents' evaluation rows of `metrics` (rl_results contract), their saved agents."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from doppel.tasks.store.writes import write_checked


def save_results(db: str | Path, rl_id: str, metrics: pd.DataFrame) -> None:
    """metrics: fold, simulator (rl:<agent>), metric, value. Rows that break expectations/rl_results.json
    are not stored (ValidationFailed names what failed)."""
    frame = metrics[["fold", "simulator", "metric", "value"]]
    write_checked(
        db, "ensemble_save_metrics", {"new_metrics": frame}, {"rl_results": "rl_results_rows"}, rl_id, run_id=rl_id
    )


def agents_dir(db: str | Path, rl_id: str) -> Path:
    """Where `doppel rl` keeps an RL run's trained agents, beside its database (the arena loads them).

    The id becomes a folder name: only letters, digits, '.', '_' and '-' (a flow-run parameter
    could otherwise point the saved models, pickles, anywhere)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", rl_id):
        raise ValueError(f"RL run id {rl_id!r}: use letters, digits, '.', '_' and '-' only")
    return Path(db).resolve().parent / ".doppel" / "rl-agents" / rl_id


def finished_rl_run(db: str | Path, rl_id: str) -> dict:
    """The runs row of a finished `doppel rl` run, its config parsed; ValueError naming the id if none."""
    from doppel.tasks.store.db import first_run

    row = first_run(db, "rl_run", run_id=rl_id)
    if row is None:
        raise ValueError(f"--rl-run {rl_id!r}: no finished `doppel rl` run of that id in {db}")
    return row
