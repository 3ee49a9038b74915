"""Turn a run's settings into per-user work: who to simulate, with which history and items."""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from doppel.tasks.records import CandidateItem, HistoryItem, UserWork
from doppel.tasks.settings import RunSettings, SimulationSettings, resume_conflicts
from doppel.tasks.store.db import connect, execute, query


def select_users(
    db: str | Path, dataset: str, fold: str, n_users: int | None, user_ids: list[str] | None, seed: int
) -> list[str]:
    """The fold's test users: all, the given ids, or a seeded sample of n_users."""
    with connect(db, read_only=True) as con:
        frame = execute(con, "fold_test_users", dataset=dataset, fold=fold)
    available = frame["user_id"].tolist() if frame is not None else []
    if not available:
        raise ValueError(f"fold {fold!r} of dataset {dataset!r} has no test users")
    if user_ids:
        unknown = sorted(set(user_ids) - set(available))
        if unknown:
            raise ValueError(f"user ids {unknown[:10]} are not test users of fold {fold!r} of {dataset!r}")
        return [u for u in available if u in set(user_ids)]
    if n_users is None or n_users >= len(available):
        return available
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(np.array(available, dtype=object), size=n_users, replace=False).tolist())
    return [u for u in available if u in chosen]


def build_work(
    db: str | Path,
    dataset: str,
    fold: str,
    user_ids: list[str],
    sim: SimulationSettings,
    pending: dict[str, list[str] | None] | None = None,
    retries: dict[str, int] | None = None,
) -> list[UserWork]:
    """One `UserWork` per user: last N train ratings (oldest first) and held-out items in time order."""
    params = dict(dataset=dataset, fold=fold, user_ids=list(user_ids), **sim.split_params())
    with connect(db, read_only=True) as con:
        history = execute(con, "user_histories", history_n=sim.history_n, **params)
        candidates = execute(con, "user_candidates", **params)
        demographics = _selected(con, "user_demographics", **params)
    demo = dict(zip(demographics["user_id"], demographics["demographics"].fillna("")))
    hist_by_user, cand_by_user = _rows_by_user(history), _rows_by_user(candidates)
    # one string object per distinct value: an item's overview is pickled once per chunk, not once per
    # user who rated it (the peak RSS of a fold-all run: benchmarks/results/overhead_all.md)
    strings: dict[str, str] = {}
    one = lambda text: strings.setdefault(text, text)  # noqa: E731
    works = []
    for user_id in user_ids:
        items = cand_by_user.get(user_id)
        if not items:
            continue
        if sim.max_test_items:
            items = items[: sim.max_test_items]
        works.append(
            UserWork(
                fold=fold,
                user_id=user_id,
                demographics=demo.get(user_id) or "unknown",
                history=[
                    HistoryItem(
                        one(r.item_id), one(r.title), r.year, one(r.genres), one(r.text), int(r.rating), int(r.ts)
                    )
                    for r in hist_by_user.get(user_id, [])
                ],
                candidates=[
                    CandidateItem(
                        one(r.item_id), one(r.title), r.year, one(r.genres), one(r.text), _int_or_none(r.truth)
                    )
                    for r in items
                ],
                pending_item_ids=(pending or {}).get(user_id),
                retry_round=(retries or {}).get(user_id, 0),
            )
        )
    return works


def requested_pairs(
    db: str | Path, dataset: str, fold: str, user_ids: list[str], sim: SimulationSettings
) -> pd.DataFrame:
    """fold, user_id, item_id of the held-out items `build_work` would give these users (cheaper:
    no histories, no item objects)."""
    with connect(db, read_only=True) as con:
        items = _selected(
            con, "user_candidates", dataset=dataset, fold=fold, user_ids=list(user_ids), **sim.split_params()
        )
    if sim.max_test_items:
        items = items.groupby("user_id", sort=False).head(sim.max_test_items)
    return items[["user_id", "item_id"]].assign(fold=fold)[["fold", "user_id", "item_id"]].reset_index(drop=True)


def _selected(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> pd.DataFrame:
    """The rows of a query file that ends in a select (execute gives None only for one that does not)."""
    rows = execute(con, name, **params)
    if rows is None:
        raise ValueError(f"query {name!r} returned no rows to read")
    return rows


def _rows_by_user(frame: pd.DataFrame | None) -> dict[str, list]:
    """The frame's rows (named tuples, in frame order, `year` an int or None) per user_id, in one pass
    over plain column lists: a groupby and an itertuples per user made `build_work` take 1.2 s for a
    MovieLens fold's 459 users, this 0.5 s (most of it the queries)."""
    by_user: dict[str, list] = {}
    if frame is None or frame.empty:
        return by_user
    # the fields are the frame's columns, known at run time only: a row type mypy cannot see into
    make_row_type: Callable[..., Any] = namedtuple
    row = make_row_type("Row", frame.columns)
    columns = [[_int_or_none(v) for v in frame[c]] if c == "year" else frame[c].tolist() for c in frame.columns]
    for values in zip(*columns):
        record = row._make(values)
        by_user.setdefault(record.user_id, []).append(record)
    return by_user


def _int_or_none(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def partition(works: list[UserWork], n_chunks: int, cost) -> list[list[UserWork]]:
    """Split users into n_chunks with balanced total cost (longest first, to the lightest chunk)."""
    chunks: list[list[UserWork]] = [[] for _ in range(max(1, n_chunks))]
    loads = [0.0] * len(chunks)
    for work in sorted(works, key=lambda w: -cost(w)):
        lightest = loads.index(min(loads))
        chunks[lightest].append(work)
        loads[lightest] += cost(work)
    return [c for c in chunks if c]


def check_resume_settings(db: str | Path, run_id: str, settings: RunSettings) -> None:
    """A run id that exists must be resumed with the settings it was started with: else its stored
    config would describe rows simulated some other way."""
    try:
        stored = query(db, "run_config", read_only=True, run_id=run_id)
    except duckdb.CatalogException:  # a file doppel has not set up yet: no run to resume
        return
    if stored.empty:
        return
    conflicts = resume_conflicts(json.loads(stored["config"].iloc[0]), settings)
    if conflicts:
        raise ValueError(
            f"run {run_id} was started with other settings ({'; '.join(conflicts)}): "
            "resume it with the settings it has, or start a new run (another --run-id)"
        )
