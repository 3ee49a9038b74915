"""The RL runs' writes: the agents' evaluation rows of `metrics`, under the rl_results contract."""

from __future__ import annotations

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
