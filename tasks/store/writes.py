"""Writes, each one transaction on a short connection (only the flow process calls these).

`write_checked` is a write under contracts: each suite of expectations/ validates the rows the
transaction wrote, read back before the commit, so rows that break a contract are never stored; each
outcome is recorded in `validation_results` either way.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from doppel.tasks.records import Dataset
from doppel.tasks.store.db import execute, transaction
from doppel.tasks.store.schema import frame_columns

if TYPE_CHECKING:
    from doppel.tasks.validate import ValidationOutcome

# the workers' rows as frames: each table's columns (sql/) minus the ones the insert binds itself
PROFILE_COLUMNS = frame_columns("profiles", ("run_id", "fold", "user_id"))
RATING_COLUMNS = frame_columns("simulated_ratings", ("run_id", "fold", "user_id"))
CALL_COLUMNS = frame_columns("llm_calls", ("run_id", "fold", "user_id", "created_at"))
RECORDED_CALL_COLUMNS = ["fold", "user_id", *CALL_COLUMNS, "replayed"]  # new_calls of sql/queries/record_calls.sql


def save_dataset(db: str | Path, ds: Dataset) -> None:
    transaction(
        db,
        "save_dataset",
        {"new_items": ds.items, "new_users": ds.users, "new_ratings": ds.ratings, "new_splits": ds.splits},
        dataset=ds.name,
        source=ds.source,
        folds=list(ds.folds),
    )


def start_run(
    db: str | Path,
    run_id: str,
    dataset: str,
    folds: list[str],
    config: dict,
    code_version: str,
    prompt_hashes: dict,
    model: str,
    base_url: str,
) -> None:
    transaction(
        db,
        "start_run",
        run_id=run_id,
        dataset=dataset,
        folds=folds,
        config=json.dumps(config),
        code_version=code_version,
        prompt_hashes=json.dumps(prompt_hashes),
        model=model,
        base_url=base_url,
    )


def add_run_users(db: str | Path, run_id: str, rows: pd.DataFrame) -> None:
    """rows: fold, user_id, n_pairs. Users already registered keep their state."""
    transaction(db, "add_run_users", {"new_run_users": rows}, run_id=run_id)


def save_user_results(db: str | Path, run_id: str, results: list, retries: dict[tuple[str, str], int]) -> None:
    """Finished users' profiles, ratings, calls and run_users state, in one transaction."""
    if not results:
        return
    users = pd.DataFrame(
        [{"fold": r.fold, "user_id": r.user_id, "retries": retries.get((r.fold, r.user_id), 0)} for r in results]
    )
    profiles = pd.DataFrame(
        [{"fold": r.fold, "user_id": r.user_id, **p} for r in results for p in r.profiles],
        columns=["fold", "user_id", *PROFILE_COLUMNS],
    )
    ratings = pd.DataFrame(
        [{"fold": r.fold, "user_id": r.user_id, **x} for r in results for x in r.ratings],
        columns=["fold", "user_id", *RATING_COLUMNS],
    ).astype({"rating": "Int64", "rating_probs_draws": "Int64"})
    calls = pd.DataFrame(
        [{"fold": r.fold, "user_id": r.user_id, **asdict(c)} for r in results for c in r.calls],
        columns=RECORDED_CALL_COLUMNS,
    )
    transaction(
        db,
        ("record_calls", "save_user_results"),
        {"new_users": users, "new_profiles": profiles, "new_ratings": ratings, "new_calls": calls},
        run_id=run_id,
    )


def finish_run(db: str | Path, run_id: str, status: str) -> None:
    transaction(db, "finish_run", run_id=run_id, status=status)


def save_validation(db: str | Path, run_id: str, suite: str, success: bool, n_rows: int, failures: list) -> None:
    transaction(
        db,
        "save_validation",
        run_id=run_id,
        suite=suite,
        success=success,
        n_rows=n_rows,
        failures=json.dumps(failures, default=str),
    )


def save_metrics(db: str | Path, run_id: str, metrics: pd.DataFrame) -> None:
    """metrics: fold, simulator, metric, value (long format)."""
    transaction(db, "save_metrics", {"new_metrics": metrics[["fold", "simulator", "metric", "value"]]}, run_id=run_id)


def write_checked(
    db: str | Path,
    name: str | tuple[str, ...],
    frames: dict[str, pd.DataFrame],
    contracts: dict[str, str],
    owner: str,
    **params: Any,
) -> None:
    """Run write query `name` as one transaction, validated before it commits.

    contracts: {suite: query} - each query (given `params`) reads back the rows the write made and the
    suite checks them, with `owner` (the run or sandbox id) as the id every row must carry. A failed
    suite rolls the write back and raises ValidationFailed naming what failed.
    """
    from doppel.tasks.validate import validate_frame, warm_up

    warm_up(tuple(contracts))  # GX's import and the suites load before the file is locked
    outcomes: list[ValidationOutcome] = []

    def check(con: duckdb.DuckDBPyConnection) -> None:
        for suite, rows in contracts.items():
            outcomes.append(validate_frame(execute(con, rows, **params), suite, expected_run_id=owner))
        for outcome in outcomes:
            outcome.raise_for_failure()

    try:
        transaction(db, name, frames, check=check, **params)
    finally:
        for o in outcomes:
            save_validation(db, owner, o.suite, o.success, o.n_rows, o.failures)
