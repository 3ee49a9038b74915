"""Any ratings CSV (+ optional items/users CSVs) as a Dataset, with time or random splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from doppel.tasks.data.lines import INT_PATTERN, Table, quote, read_csv_rows
from doppel.tasks.data.movielens import split_title_year
from doppel.tasks.records import ITEM_COLUMNS, RATING_COLUMNS, SPLIT_COLUMNS, USER_COLUMNS, DataError, Dataset

log = logging.getLogger(__name__)

_RATING_ALIASES = {
    "userid": "user_id",
    "user": "user_id",
    "itemid": "item_id",
    "item": "item_id",
    "movieid": "item_id",
    "movie_id": "item_id",
    "ts": "timestamp",
}
_ITEM_ALIASES = {"itemid": "item_id", "movieid": "item_id", "movie_id": "item_id", "description": "text"}
_USER_ALIASES = {"userid": "user_id", "zip_code": "zip", "zipcode": "zip", "description": "text", "profile": "text"}


def _timestamps(t: Table) -> np.ndarray:
    """Integer seconds, or ISO-8601 dates converted to seconds (UTC)."""
    s = t.text("timestamp", required=True)
    is_int = s.str.fullmatch(INT_PATTERN).to_numpy(dtype=bool)
    if is_int.all():
        return t.ints("timestamp", lo=0).to_numpy()
    out = np.zeros(len(s), dtype=np.int64)
    out[is_int] = s[is_int].astype("int64").to_numpy()
    dt = pd.to_datetime(s[~is_int], format="ISO8601", errors="coerce", utc=True)
    bad = np.zeros(len(s), dtype=bool)
    bad[~is_int] = dt.isna().to_numpy()
    t.check(bad, lambda i: f"timestamp is neither integer seconds nor an ISO date: {quote(s.iloc[i])}")
    out[~is_int] = ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()
    t.check(out < 0, lambda i: f"timestamp {quote(s.iloc[i])} is before 1970")
    return out


def _ratings(path: Path) -> pd.DataFrame:
    t = read_csv_rows(path, ["user_id", "item_id", "rating", "timestamp"], ["review"], _RATING_ALIASES)
    if "review" in t.df.columns:
        log.info("%s: ignoring the review column (Dataset has no field for reviews yet)", path)
    users, items = t.text("user_id", required=True), t.text("item_id", required=True)
    t.df["user_id"], t.df["item_id"] = users, items
    rating = t.ints("rating", lo=1, hi=5)
    ts = _timestamps(t)
    t.unique(["user_id", "item_id"], "rating")
    if not len(users):
        raise DataError(str(path), None, "no ratings")
    return pd.DataFrame({"user_id": users, "item_id": items, "rating": rating.to_numpy(), "ts": ts}).astype(
        {"user_id": str, "item_id": str}
    )[RATING_COLUMNS]


def _items(path: Path | None, rated: pd.Series) -> pd.DataFrame:
    if path is None:
        frame = pd.DataFrame({c: pd.Series([], dtype=str) for c in ITEM_COLUMNS})
    else:
        t = read_csv_rows(path, ["item_id"], ["title", "text", "overview", "year", "genres"], _ITEM_ALIASES)
        ids = t.text("item_id", required=True)
        t.df["item_id"] = ids
        t.unique(["item_id"], "item")
        col = lambda c: t.text(c) if c in t.df.columns else pd.Series([""] * len(ids), dtype=str)  # noqa: E731
        title, text = col("title"), col("text")
        if "overview" in t.df.columns:
            text = text.where(text != "", col("overview"))
        if "year" in t.df.columns:
            year = t.ints("year", allow_empty=True)
        else:
            title, year = split_title_year(title)
        genres = col("genres").str.replace(r"\s*[,;|]\s*", "|", regex=True)
        title = title.where(title != "", "item " + ids)
        frame = pd.DataFrame(
            {"item_id": ids, "title": title, "year": pd.to_numeric(year), "genres": genres, "text": text}
        )
    missing = pd.unique(rated[~rated.isin(frame["item_id"])])
    if len(missing):
        if path is not None:
            log.warning(
                "%s: %d rated item(s) missing, added as placeholders (e.g. %s)", path, len(missing), quote(missing[0])
            )
        extra = pd.DataFrame(
            {"item_id": missing, "title": ["item " + m for m in missing], "year": np.nan, "genres": "", "text": ""}
        )
        frame = pd.concat([frame, extra], ignore_index=True) if len(frame) else extra
    return frame.astype({"item_id": str, "title": str, "year": "Int64", "genres": str, "text": str})[ITEM_COLUMNS]


def _users(path: Path | None, rated: pd.Series) -> pd.DataFrame:
    if path is None:
        frame = pd.DataFrame({c: pd.Series([], dtype=str) for c in USER_COLUMNS})
    else:
        t = read_csv_rows(path, ["user_id"], ["age", "gender", "occupation", "zip", "text"], _USER_ALIASES)
        ids = t.text("user_id", required=True)
        t.df["user_id"] = ids
        t.unique(["user_id"], "user")
        col = lambda c: t.text(c) if c in t.df.columns else pd.Series([""] * len(ids), dtype=str)  # noqa: E731
        age = t.ints("age", lo=0, hi=150, allow_empty=True) if "age" in t.df.columns else np.nan
        frame = pd.DataFrame(
            {
                "user_id": ids,
                "age": age,
                "gender": col("gender"),
                "occupation": col("occupation"),
                "zip": col("zip"),
                "text": col("text"),
            }
        )
    missing = pd.unique(rated[~rated.isin(frame["user_id"])])
    if len(missing):
        if path is not None:
            log.warning(
                "%s: %d rating user(s) missing, added as placeholders (e.g. %s)", path, len(missing), quote(missing[0])
            )
        extra = pd.DataFrame({"user_id": missing, "age": np.nan, "gender": "", "occupation": "", "zip": "", "text": ""})
        frame = pd.concat([frame, extra], ignore_index=True) if len(frame) else extra
    return frame.astype({"user_id": str, "age": "Int64", "gender": str, "occupation": str, "zip": str, "text": str})[
        USER_COLUMNS
    ]


def time_split(ratings: pd.DataFrame, test_fraction: float) -> np.ndarray:
    """Test mask: per user, the last `test_fraction` of ratings by time (>= 1 test, >= 1 train)."""
    codes = pd.factorize(ratings["user_id"])[0]
    order = np.lexsort((np.arange(len(ratings)), ratings["ts"].to_numpy(), codes))
    sorted_codes = codes[order]
    counts = np.bincount(codes)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(order)) - starts[sorted_codes]
    n = counts[sorted_codes]
    n_test = np.where(n >= 2, np.clip(np.rint(n * test_fraction), 1, n - 1), 0)
    test = np.zeros(len(ratings), dtype=bool)
    test[order] = rank >= n - n_test
    return test


def random_folds(n: int, n_folds: int, test_fraction: float, seed: int) -> np.ndarray:
    """Fold index of each rating's test set (-1 = in no test set), seeded.

    n_folds >= 2: disjoint folds covering every rating (like ML-100K's u1..u5; test_fraction unused).
    n_folds == 1: one random test set of round(n * test_fraction) ratings.
    """
    perm = np.random.default_rng(seed).permutation(n)
    fold = np.full(n, -1, dtype=np.int64)
    if n_folds == 1:
        fold[perm[: int(round(n * test_fraction))]] = 0
    else:
        fold[perm] = np.arange(n) % n_folds
    return fold


def _splits(ratings: pd.DataFrame, names: list[str], test_fold: np.ndarray) -> pd.DataFrame:
    frames = [
        pd.DataFrame(
            {
                "fold": name,
                "split": np.where(test_fold == k, "test", "train"),
                "user_id": ratings["user_id"].to_numpy(),
                "item_id": ratings["item_id"].to_numpy(),
            }
        )
        for k, name in enumerate(names)
    ]
    return pd.concat(frames, ignore_index=True)[SPLIT_COLUMNS].astype(str)


def load_generic(
    ratings_csv: Path,
    items_csv: Path | None = None,
    users_csv: Path | None = None,
    split: str = "time",
    test_fraction: float = 0.2,
    n_folds: int = 1,
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    """Load ratings (user_id,item_id,rating,timestamp) plus optional item/user CSVs and split them.

    split="time": fold "t1", per user the latest `test_fraction` of ratings are test.
    split="random": folds "r1".."rk" (k = n_folds), seeded; see `random_folds`.
    Rated items/users missing from items_csv/users_csv become placeholder rows (logged).
    """
    if split not in ("time", "random"):
        raise ValueError(f"split must be 'time' or 'random', not {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), not {test_fraction}")
    if n_folds < 1 or (split == "time" and n_folds != 1):
        raise ValueError(f"n_folds must be >= 1 (and 1 for split='time'), not {n_folds}")
    ratings_csv = Path(ratings_csv)
    ratings = _ratings(ratings_csv)
    items = _items(Path(items_csv) if items_csv else None, ratings["item_id"])
    users = _users(Path(users_csv) if users_csv else None, ratings["user_id"])
    if split == "time":
        names, test_fold = ["t1"], np.where(time_split(ratings, test_fraction), 0, -1)
    else:
        names = [f"r{k + 1}" for k in range(n_folds)]
        test_fold = random_folds(len(ratings), n_folds, test_fraction, seed)
    if name is None:
        stem = ratings_csv.stem
        name = ratings_csv.resolve().parent.name if stem == "ratings" else stem
    return Dataset(
        name=name,
        items=items,
        users=users,
        ratings=ratings,
        splits=_splits(ratings, names, test_fold),
        source=str(ratings_csv),
        folds=names,
    )
