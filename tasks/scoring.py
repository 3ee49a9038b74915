"""Scoring steps: the output gate and the fidelity table (LLM simulator vs baselines, same rows)."""

from __future__ import annotations

import pandas as pd

from tasks.baselines import BASELINES, baseline_long, predict_baselines
from tasks.metrics import metrics_table
from tasks.validate import ValidationOutcome, validate_frame

OUTPUT_SUITES = ("simulated_ratings", "profiles")


def gate_outputs(frames: dict[str, pd.DataFrame], run_id: str, expected_pairs: pd.DataFrame) -> list[ValidationOutcome]:
    """Every output contract, with one-row-per-requested-pair on simulated_ratings."""
    return [
        validate_frame(frames[suite], suite, expected_run_id=run_id,
                       expected_pairs=expected_pairs if suite == "simulated_ratings" else None)
        for suite in OUTPUT_SUITES
    ]


def score_ratings(rows: pd.DataFrame, train_by_fold: dict[str, pd.DataFrame], baselines: bool = True) -> pd.DataFrame:
    """Long metrics (fold, simulator, metric, value); plus fold "all" = mean over folds when several.

    rows: fold, user_id, item_id, pred (nullable: failed pairs count as missing), truth.
    """
    parts = [rows.assign(simulator="llm")[["fold", "simulator", "user_id", "item_id", "truth", "pred"]]]
    if baselines:
        for fold, group in rows.groupby("fold", sort=True):
            predicted = predict_baselines(train_by_fold[fold], group[["user_id", "item_id"]], BASELINES)
            long = baseline_long(predicted, group[["user_id", "item_id"]].assign(rating=group["truth"]))
            parts.append(long.assign(fold=fold, simulator="baseline:" + long["simulator"], pred=long["rating"])
                         [["fold", "simulator", "user_id", "item_id", "truth", "pred"]])
    frame = pd.concat(parts, ignore_index=True)
    frame["pred"] = pd.to_numeric(frame["pred"], errors="coerce")
    table = metrics_table(frame, ["fold", "simulator"])
    if rows["fold"].nunique() > 1:
        mean = table.groupby(["simulator", "metric"], as_index=False)["value"].mean().assign(fold="all")
        table = pd.concat([table, mean[table.columns]], ignore_index=True)
    return table
