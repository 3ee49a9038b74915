"""Writes, each one transaction on a short connection (only the flow process calls these)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from doppel.tasks.records import Dataset
from doppel.tasks.store.db import transaction
from doppel.tasks.store.schema import frame_columns

# the workers' rows as frames: each table's columns (sql/) minus the ones the insert binds itself
PROFILE_COLUMNS = frame_columns("profiles", ("run_id", "fold", "user_id"))
RATING_COLUMNS = frame_columns("simulated_ratings", ("run_id", "fold", "user_id"))
CALL_COLUMNS = frame_columns("llm_calls", ("run_id", "fold", "user_id", "created_at"))


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
        columns=["fold", "user_id", *CALL_COLUMNS],
    )
    transaction(
        db,
        "save_user_results",
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
