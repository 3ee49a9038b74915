"""Gate, then score: GX contracts on a run's outputs, then fidelity metrics against baselines."""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from doppel.flows.untrusted import refusal_fails_the_run
from doppel.tasks.scoring import gate_outputs, score_ratings
from doppel.tasks.store.db import init_db, query
from doppel.tasks.store.writes import save_metrics, save_validation

gate = task(name="validate-outputs", cache_policy=NO_CACHE, persist_result=False)(gate_outputs)
score = task(name="score-ratings", cache_policy=NO_CACHE, persist_result=False)(score_ratings)


class GateFailed(RuntimeError):
    """The outputs broke a contract: scoring did not run."""


@flow(name="doppel-score")
@refusal_fails_the_run
def score_run(db: str, run_id: str, baselines: bool = True, hybrid: bool = False) -> list[dict]:
    """Validate the run's tables; when they pass, compute and store metrics (llm + baselines,
    + the calibrated hybrid's accuracy and realism modes when `hybrid`)."""
    from doppel.flows.untrusted import refuse_untrusted

    refuse_untrusted(db=db)  # a deployment's parameters are anyone's (docs/security.md)
    init_db(db)  # a file from an older doppel is migrated and gets the views scoring reads
    return gate_and_score(db, run_id, baselines, hybrid)


def gate_and_score(
    db: str,
    run_id: str,
    baselines: bool = True,
    hybrid: bool = False,
    precomputed: dict[str, pd.DataFrame] | None = None,
) -> list[dict]:
    """score_run's steps as tasks of the calling flow; `precomputed` baseline predictions (per fold,
    from doppel.tasks.scoring.baseline_predictions) are not computed again."""
    logger = get_run_logger()
    frames = {
        "simulated_ratings": query(db, "run_ratings", run_id=run_id),
        "profiles": query(db, "run_profiles", run_id=run_id),
    }
    expected = query(db, "run_expected_pairs", run_id=run_id)
    outcomes = gate(frames, run_id, expected)
    for outcome in outcomes:
        save_validation(db, run_id, outcome.suite, outcome.success, outcome.n_rows, outcome.failures)
    failed = [o for o in outcomes if not o.success]
    if failed:
        from doppel.tasks.validate import format_failures

        text = "\n".join(format_failures(o) for o in failed)
        logger.error("validation failed, scoring skipped:\n%s", text)
        raise GateFailed(f"validation failed for run {run_id}; scoring skipped:\n{text}")
    rows = query(db, "scoring_rows", run_id=run_id)
    run = query(db, "run_dataset", run_id=run_id).iloc[0]
    dataset = run["dataset"]
    # baselines learn from what the run's simulated users knew: train, minus the slice a slice run rates
    split = {"target": run["target"], "slice_frac": float(run["slice_frac"]), "slice_seed": int(run["slice_seed"])}
    train = {fold: query(db, "fold_train", dataset=dataset, fold=fold, **split) for fold in rows["fold"].unique()}
    items = query(db, "hybrid_items", dataset=dataset) if hybrid else None
    table: pd.DataFrame = score(rows, train, baselines, items, precomputed)
    save_metrics(db, run_id, table)
    return table.to_dict(orient="records")


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records)
