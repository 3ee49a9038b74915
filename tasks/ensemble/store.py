"""The ensemble's reads and writes (statements in sql/ensemble.sql and sql/queries/ensemble_*.sql).

Writes are one transaction each on a short connection; only the flow process calls them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from doppel.tasks.ensemble.keywords import ItemAnalysis
from doppel.tasks.llm.templates import prompt_hash
from doppel.tasks.paths import sql_text
from doppel.tasks.store.db import connect, query, transaction
from doppel.tasks.store.schema import frame_columns
from doppel.tasks.store.writes import RECORDED_CALL_COLUMNS, write_checked

# the tables' columns (sql/ensemble.sql) minus the ones the insert binds itself or fills by default
ANALYSIS_COLUMNS = frame_columns("item_analysis", ("dataset", "model", "run_id", "analysed_at"))
KEYWORD_COLUMNS = frame_columns("item_keywords", ("dataset", "model", "run_id"))


def ensure_tables(db: str | Path) -> None:
    """Create the ensemble tables (idempotent; `init_db` may run the same file)."""
    with connect(db) as con:
        con.execute(sql_text("ensemble.sql"))


def save_item_results(db: str | Path, run_id: str, dataset: str, model: str, results: list[ItemAnalysis]) -> None:
    """Finished item analyses, their keywords and their calls, in one transaction."""
    from doppel.tasks.ensemble.keywords import SOURCES

    if not results:
        return
    analysis = pd.DataFrame(
        [
            {
                "item_id": r.item_id,
                "source": r.source,
                "status": r.status,
                "n_pros": len(r.pros),
                "n_cons": len(r.cons),
                "error": r.error,
                "call_key": r.calls[-1].call_key if r.calls else None,
                "prompt_hash": prompt_hash(SOURCES[r.source]),
                "retries": r.retries,
            }
            for r in results
        ],
        columns=ANALYSIS_COLUMNS,
    )
    keywords = pd.DataFrame(
        [
            {"item_id": r.item_id, "source": r.source, "polarity": polarity, "keyword": k}
            for r in results
            for polarity, words in (("pro", r.pros), ("con", r.cons))
            for k in words
        ],
        columns=KEYWORD_COLUMNS,
    )
    calls = pd.DataFrame(
        [{"fold": None, "user_id": None, **asdict(c)} for r in results for c in r.calls], columns=RECORDED_CALL_COLUMNS
    )
    transaction(
        db,
        ("record_calls", "ensemble_save_items"),
        {"new_analysis": analysis, "new_keywords": keywords, "new_calls": calls},
        run_id=run_id,
        dataset=dataset,
        model=model,
    )


def save_reviews(db: str | Path, dataset: str, reviews: pd.DataFrame) -> None:
    transaction(
        db, "ensemble_save_reviews", {"new_reviews": reviews[["item_id", "user_id", "review"]]}, dataset=dataset
    )


def save_vocabulary(
    db: str | Path, run_id: str, dataset: str, model: str, vocabulary: pd.DataFrame, method: str
) -> None:
    transaction(
        db,
        "ensemble_save_vocabulary",
        {"new_vocabulary": vocabulary},
        run_id=run_id,
        dataset=dataset,
        model=model,
        method=method,
    )


def save_embeddings(db: str | Path, dataset: str, model: str, rows: pd.DataFrame) -> None:
    if not rows.empty:
        transaction(db, "ensemble_save_embeddings", {"new_embeddings": rows}, dataset=dataset, model=model)


def save_votes(db: str | Path, run_id: str, fold: str, votes: pd.DataFrame) -> None:
    """A fold's votes under the votes contract (expectations/votes.json): rows that break it are not stored."""
    contracts = {"votes": "ensemble_votes_rows"}
    write_checked(db, "ensemble_save_votes", {"new_votes": votes}, contracts, run_id, run_id=run_id, fold=fold)


def save_metrics(db: str | Path, run_id: str, metrics: pd.DataFrame) -> None:
    """metrics: fold, simulator, metric, value; replaces only these simulators' rows."""
    transaction(
        db, "ensemble_save_metrics", {"new_metrics": metrics[["fold", "simulator", "metric", "value"]]}, run_id=run_id
    )


def read(db: str | Path, name: str, **params) -> pd.DataFrame:
    return query(db, name, **params)
