"""Shared record types passed between loaders, tasks and flows.

Frames use these columns (ids are strings everywhere, so any dataset's ids fit):
- items:   item_id, title, year (Int64, may be NA), genres ("|"-joined), text (overview, may be "")
- users:   user_id, age (Int64, may be NA), gender, occupation, zip, text (free text, may be "")
- ratings: user_id, item_id, rating (int 1..5), ts (int, seconds)
- splits:  fold, split ("train" | "test"), user_id, item_id
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field

import pandas as pd

# a loader's frames have their table's columns (sql/schema.sql) minus `dataset`: ITEM_COLUMNS (items),
# USER_COLUMNS (users), RATING_COLUMNS (ratings), SPLIT_COLUMNS (splits), read on first use
_FRAME_TABLES = {
    "ITEM_COLUMNS": "items",
    "USER_COLUMNS": "users",
    "RATING_COLUMNS": "ratings",
    "SPLIT_COLUMNS": "splits",
}


def __getattr__(name: str) -> list[str]:
    if name in _FRAME_TABLES:  # lazy: workers that never load a dataset never build the schema
        from doppel.tasks.store.schema import frame_columns

        return frame_columns(_FRAME_TABLES[name], ("dataset",))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DataError(ValueError):
    """Bad input data: the message names the file, line and reason."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass
class Dataset:
    """A loaded dataset, ready to be written to DuckDB."""

    name: str
    items: pd.DataFrame
    users: pd.DataFrame
    ratings: pd.DataFrame
    splits: pd.DataFrame
    source: str = ""  # where it came from (path, url or "synthetic:seed=..")
    folds: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HistoryItem:
    """One rated item as the LLM sees it."""

    item_id: str
    title: str
    year: int | None
    genres: str
    text: str
    rating: int
    ts: int


@dataclass(frozen=True)
class CandidateItem:
    """One item to rate; `truth` (its real rating; None for an arena list's unrated item) is used only
    for the dynamic profile update."""

    item_id: str
    title: str
    year: int | None
    genres: str
    text: str
    truth: int | None


@dataclass
class UserWork:
    """Everything a worker needs to simulate one user (no database access on workers)."""

    fold: str
    user_id: str
    demographics: str
    history: list[HistoryItem]  # last N train ratings, oldest first
    candidates: list[CandidateItem]  # held-out items in time order
    pending_item_ids: list[str] | None = None  # resume: only these still need a rating (None = all)
    retry_round: int = 0  # >0 on a rerun that retries failed pairs (new cache sample index)


class Packed:
    """A chunk of work items, pickled once.

    Task runners inspect their arguments: Prefect walks nested collections looking for futures and
    Dask tokenizes them, ~13 s for the 459 users of a MovieLens fold. An opaque blob costs ~0.1 s.
    """

    def __init__(self, items: list):
        self.blob = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        self.n = len(items)

    def unpack(self) -> list:
        return pickle.loads(self.blob)

    def __dask_tokenize__(self) -> str:
        return hashlib.sha1(self.blob).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n} items, {len(self.blob):,} bytes)"


class PackedWork(Packed):
    """A chunk of `UserWork` for one simulation task."""
