"""Scoring steps: the output gate and the fidelity table (LLM simulator vs baselines, same rows)."""

from __future__ import annotations

import pandas as pd

from doppel.tasks.baselines import BASELINES, baseline_long, predict_baselines
from doppel.tasks.metrics import metrics_table
from doppel.tasks.validate import ValidationOutcome, validate_frame

OUTPUT_SUITES = ("simulated_ratings", "profiles")


def gate_outputs(frames: dict[str, pd.DataFrame], run_id: str, expected_pairs: pd.DataFrame) -> list[ValidationOutcome]:
    """Every output contract, with one-row-per-requested-pair on simulated_ratings."""
    return [
        validate_frame(
            frames[suite],
            suite,
            expected_run_id=run_id,
            expected_pairs=expected_pairs if suite == "simulated_ratings" else None,
        )
        for suite in OUTPUT_SUITES
    ]


def baseline_predictions(train_by_fold: dict[str, pd.DataFrame], pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every baseline's predictions of the requested pairs (fold, user_id, item_id), per fold.

    Needs no simulated rating, so a run computes it while its users are still simulating.
    """
    return {
        fold: predict_baselines(train_by_fold[fold], group[["user_id", "item_id"]], BASELINES)
        for fold, group in pairs.groupby("fold", sort=True)
    }


def _predicted_for(group: pd.DataFrame, train: pd.DataFrame, ready: pd.DataFrame | None) -> pd.DataFrame:
    """`predict_baselines` of the group's pairs, in its order: taken from `ready` when it has them all."""
    keys = group[["user_id", "item_id"]].astype(str).reset_index(drop=True)
    if ready is not None:
        found = keys.merge(ready.drop_duplicates(["user_id", "item_id"]), on=["user_id", "item_id"], how="left")
        if not found[list(BASELINES)].isna().any().any():
            return found
    return predict_baselines(train, keys, BASELINES)


def score_ratings(
    rows: pd.DataFrame,
    train_by_fold: dict[str, pd.DataFrame],
    baselines: bool = True,
    hybrid_items: pd.DataFrame | None = None,
    precomputed: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Long metrics (fold, simulator, metric, value); plus fold "all" = mean over folds when several.

    rows: fold, user_id, item_id, pred (nullable: failed pairs count as missing), truth.
    hybrid_items (item_id, genres): also score the calibrated hybrid (tasks/fidelity, CF features,
    fit on the train split only) as simulators "hybrid:accuracy" and "hybrid:realism".
    precomputed: `baseline_predictions` made earlier (per fold); a fold it lacks pairs of is
    predicted here.
    """
    parts = [rows.assign(simulator="llm")[["fold", "simulator", "user_id", "item_id", "truth", "pred"]]]
    if baselines:
        for fold, group in rows.groupby("fold", sort=True):
            predicted = _predicted_for(group, train_by_fold[fold], (precomputed or {}).get(fold))
            long = baseline_long(predicted, group[["user_id", "item_id"]].assign(rating=group["truth"]))
            parts.append(
                long.assign(fold=fold, simulator="baseline:" + long["simulator"], pred=long["rating"])[
                    ["fold", "simulator", "user_id", "item_id", "truth", "pred"]
                ]
            )
    if hybrid_items is not None:
        parts.extend(_hybrid_rows(rows, train_by_fold, hybrid_items))
    frame = pd.concat(parts, ignore_index=True)
    frame["pred"] = pd.to_numeric(frame["pred"], errors="coerce")
    table = metrics_table(frame, ["fold", "simulator"])
    if rows["fold"].nunique() > 1:
        mean = table.groupby(["simulator", "metric"], as_index=False)["value"].mean().assign(fold="all")
        table = pd.concat([table, mean[table.columns]], ignore_index=True)
    return table


def _hybrid_rows(rows: pd.DataFrame, train_by_fold: dict[str, pd.DataFrame], items: pd.DataFrame) -> list[pd.DataFrame]:
    from doppel.tasks.fidelity.hybrid import hybrid_ratings  # lazy: scikit-learn + the surprise fits

    parts = []
    for fold, group in rows.groupby("fold", sort=True):
        pairs = group[["user_id", "item_id"]].astype(str)  # never the truth column
        out = hybrid_ratings(train_by_fold[fold], pairs, items, kind="logreg")
        truth = group["truth"].to_numpy()
        for mode in ("accuracy", "realism"):
            parts.append(
                pd.DataFrame(
                    {
                        "fold": fold,
                        "simulator": f"hybrid:{mode}",
                        "user_id": out["user_id"],
                        "item_id": out["item_id"],
                        "truth": truth,
                        "pred": out[mode].to_numpy(),
                    }
                )
            )
    return parts
