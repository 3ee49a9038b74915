"""MovieLens-100K: strict loader for a directory or the official zip, with an optional download."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pandas as pd

from doppel.tasks.data.lines import Table, quote, read_bytes, read_int_rows, read_rows
from doppel.tasks.records import ITEM_COLUMNS, RATING_COLUMNS, SPLIT_COLUMNS, USER_COLUMNS, DataError, Dataset

log = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# sha256 of the official ml-100k.zip. NOT confirmed by a download here (no network): it is the value
# pinned by many independent public projects whose u.data / u.item hashes match our local copy.
# Confirm it on the first real download; a mismatch is a DataError.
ML100K_ZIP_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
FOLDS = ["u1", "u2", "u3", "u4", "u5", "ua", "ub"]
_DATE = r"\d{1,2}-[A-Z][a-z]{2}-\d{4}"  # real data has "4-Feb-1971" (item 1373)
_TITLE = r"^(?P<t>.*?)\s*\((?P<y>\d{4})\)(?P<rest>(?:\s*\([^)]*\))*)\s*$"
_TEXT_ID_COLUMNS = ("item_id", "movie_id", "movieid", "id")
_TEXT_COLUMNS = ("overview", "tmdb_overview", "text", "description")


class _Source:
    """Files of ML-100K in a directory or inside the zip (top folder ml-100k/)."""

    def __init__(self, data_dir: Path | None, zip_path: Path | None):
        self.dir, self.zip_path, self.zip = data_dir, zip_path, None
        if zip_path is not None:
            try:
                self.zip = zipfile.ZipFile(zip_path)
            except FileNotFoundError:
                raise DataError(str(zip_path), None, "file not found") from None
            except zipfile.BadZipFile as e:
                raise DataError(str(zip_path), None, f"not a zip file ({e})") from None
            names = set(self.zip.namelist())
            self.prefix = "ml-100k/" if "ml-100k/u.data" in names else ""
            self.members = names
        elif data_dir is not None and not Path(data_dir).is_dir():
            raise DataError(str(data_dir), None, "not a directory")

    def label(self, name: str) -> str:
        if self.zip is not None:
            return f"{self.zip_path}/{self.prefix}{name}"
        return str(self._path(name))

    def _path(self, name: str) -> Path:
        if self.dir is None:
            raise ValueError("an ML-100K source needs a directory or a zip")
        return Path(self.dir) / name

    @overload
    def read(self, name: str, required: Literal[True] = True) -> bytes: ...

    @overload
    def read(self, name: str, required: bool) -> bytes | None: ...

    def read(self, name: str, required: bool = True) -> bytes | None:
        if self.zip is not None:
            member = self.prefix + name
            if member in self.members:
                return self.zip.read(member)
            if required:
                raise DataError(self.label(name), None, "file not found in zip")
            return None
        path = self._path(name)
        if not required and not path.exists():
            return None
        return read_bytes(path)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def cache_root(cache_dir: Path | None = None) -> Path:
    """Dataset cache: `cache_dir`, else $DOPPEL_CACHE_DIR/datasets, else ~/.cache/doppel/datasets."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("DOPPEL_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "doppel") / "datasets"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_ml100k(cache_dir: Path | None = None, url: str | None = None, sha256: str | None = None) -> Path:
    """Download the official zip once into the cache and verify its sha256; return its path."""
    url, want = url or ML100K_URL, (sha256 or ML100K_ZIP_SHA256).lower()
    target = cache_root(cache_dir) / "ml-100k.zip"
    if target.exists():
        got = _sha256(target)
        if got != want:
            raise DataError(
                str(target), None, f"sha256 mismatch: got {got}, expected {want} (delete the file to download it again)"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    log.info("downloading %s -> %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        got = _sha256(tmp)
        if got != want:
            raise DataError(url, None, f"sha256 mismatch: got {got}, expected {want}")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as e:
        reason = f"download failed: {e}; or give a local copy: --data-dir <the unzipped ml-100k folder>"
        raise DataError(url, None, reason) from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


def split_title_year(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """ "Toy Story (1995)" -> ("Toy Story", "1995"); titles without a year keep NA."""
    m = raw.str.extract(_TITLE)
    title = (m["t"] + m["rest"].fillna("")).where(m["t"].notna(), raw).str.strip()
    return title, m["y"]


def _genres(src: _Source) -> list[str]:
    t = read_rows(src.read("u.genre"), src.label("u.genre"), "|", ["name", "index"])
    idx = t.ints("index", lo=0, hi=len(t.df) - 1)
    t.unique(["index"], "genre index")
    names = t.text("name", required=True)
    return [names[i] for i in np.argsort(idx.to_numpy())]


def _occupations(src: _Source) -> set[str] | None:
    data = src.read("u.occupation", required=False)
    if data is None:
        return None
    return set(read_rows(data, src.label("u.occupation"), "|", ["occupation"]).text("occupation"))


def _items(src: _Source, genres: list[str]) -> pd.DataFrame:
    flags = [f"g{i}" for i in range(len(genres))]
    names = ["item_id", "title", "release", "video_release", "url", *flags]
    t = read_rows(src.read("u.item"), src.label("u.item"), "|", names, encoding="latin-1")
    ids = t.ints("item_id", lo=1)
    t.df["item_id"] = ids
    t.unique(["item_id"], "item")
    raw_title = t.text("title", required=True)
    release = t.text("release")
    t.check(
        ~(release.str.fullmatch(_DATE) | (release == "")).to_numpy(dtype=bool),
        lambda i: f"release date is not DD-Mon-YYYY: {quote(release.iloc[i])}",
    )
    f = t.df[flags]
    bad = ~f.isin(["0", "1"]).to_numpy()
    t.check(
        bad.any(axis=1),
        lambda i: (
            f"genre flag {genres[int(np.argmax(bad[i]))]!r} is not 0/1: {quote(f.iloc[i, int(np.argmax(bad[i]))])}"
        ),
    )
    on = f.to_numpy() == "1"
    g = np.asarray(genres, dtype=object)
    title, year = split_title_year(raw_title)
    year = year.where(year.notna(), release.str[-4:].where(release != ""))
    return pd.DataFrame(
        {
            "item_id": ids.astype(str).to_numpy(),
            "title": title.to_numpy(),
            "year": pd.to_numeric(year).to_numpy(dtype="float64", na_value=np.nan),
            "genres": ["|".join(g[row]) for row in on],
            "text": "",
        }
    )[ITEM_COLUMNS].astype({"item_id": str, "title": str, "year": "Int64", "genres": str, "text": str})


def _users(src: _Source, occupations: set[str] | None) -> pd.DataFrame:
    names = ["user_id", "age", "gender", "occupation", "zip"]
    t = read_rows(src.read("u.user"), src.label("u.user"), "|", names)
    ids = t.ints("user_id", lo=1)
    t.df["user_id"] = ids
    t.unique(["user_id"], "user")
    age = t.ints("age", lo=0, hi=120)
    gender = t.text("gender")
    t.check(~gender.isin(["M", "F"]).to_numpy(), lambda i: f"gender is not M/F: {quote(gender.iloc[i])}")
    occ = t.text("occupation", required=True)
    if occupations is not None:
        t.check(
            ~occ.isin(occupations).to_numpy(),
            lambda i: f"unknown occupation {quote(occ.iloc[i])} (not in u.occupation)",
        )
    return pd.DataFrame(
        {
            "user_id": ids.astype(str).to_numpy(),
            "age": age.to_numpy(),
            "gender": gender.to_numpy(),
            "occupation": occ.to_numpy(),
            "zip": t.text("zip").to_numpy(),
            "text": "",
        }
    )[USER_COLUMNS].astype({"user_id": str, "age": "Int64", "gender": str, "occupation": str, "zip": str, "text": str})


def _read_ratings(src: _Source, name: str, users: np.ndarray, items: np.ndarray) -> Table:
    t = read_int_rows(src.read(name), src.label(name), "\t", RATING_COLUMNS)
    t.ints("rating", lo=1, hi=5)
    t.ints("ts", lo=0)
    u, i = t.df["user_id"].to_numpy(), t.df["item_id"].to_numpy()
    t.check(~np.isin(u, users), lambda r: f"unknown user_id {quote(u[r])} (not in u.user)")
    t.check(~np.isin(i, items), lambda r: f"unknown item_id {quote(i[r])} (not in u.item)")
    return t


def _splits(src: _Source, ratings: Table, users: np.ndarray, items: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    r = ratings.df
    base = int(items.max()) + 1
    keys = r["user_id"].to_numpy() * base + r["item_id"].to_numpy()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    uid, iid = r["user_id"].astype(str).to_numpy(), r["item_id"].astype(str).to_numpy()
    frames, folds = [], []
    for fold in FOLDS:
        parts = {s: src.read(f"{fold}.{s}", required=False) for s in ("base", "test")}
        if all(p is None for p in parts.values()):
            continue
        positions: dict[str, np.ndarray] = {}
        for part, data in parts.items():
            name = f"{fold}.{part}"
            if data is None:
                raise DataError(src.label(name), None, "file not found (the fold's other file exists)")
            t = _read_ratings(src, name, users, items)
            # the message lambdas below use loop variables safely (B023): check() calls them at once
            k = t.df["user_id"].to_numpy() * base + t.df["item_id"].to_numpy()
            pos = np.minimum(np.searchsorted(sorted_keys, k), len(sorted_keys) - 1)
            t.check(
                sorted_keys[pos] != k,
                lambda j: (
                    f"rating of user_id {quote(t.df.user_id[j])} for item_id {quote(t.df.item_id[j])} is not in u.data"  # noqa: B023
                ),
            )
            row = order[pos]
            for col in ("rating", "ts"):
                v, want = t.df[col].to_numpy(), r[col].to_numpy()[row]
                t.check(
                    v != want,
                    lambda j: (
                        f"{col} {quote(v[j])} differs from u.data line {ratings.lines[row[j]]} ({quote(want[j])})"  # noqa: B023
                    ),
                )
            t.unique(["user_id", "item_id"], "rating")
            if part == "test":
                other = np.isin(row, positions["base"])
                t.check(
                    other,
                    lambda j: (
                        f"rating of user_id {quote(t.df.user_id[j])} for item_id "  # noqa: B023
                        f"{quote(t.df.item_id[j])} is also in {fold}.base"  # noqa: B023
                    ),
                )
            positions[part] = row
            split = "train" if part == "base" else "test"
            frames.append(pd.DataFrame({"fold": fold, "split": split, "user_id": uid[row], "item_id": iid[row]}))
        folds.append(fold)
    if not frames:
        log.warning("%s: no split files (u1..u5, ua, ub .base/.test) found", src.label(""))
        return pd.DataFrame({c: pd.Series([], dtype=str) for c in SPLIT_COLUMNS}), []
    return pd.concat(frames, ignore_index=True)[SPLIT_COLUMNS].astype(str), folds


def attach_item_text(items: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Fill items.text from a TSV with a header (e.g. movie_id ... tmdb_overview ...)."""
    t = read_rows(read_bytes(Path(path)), str(path), "\t", header=True)
    id_col = next((c for c in _TEXT_ID_COLUMNS if c in t.df.columns), None)
    text_col = next((c for c in _TEXT_COLUMNS if c in t.df.columns), None)
    if id_col is None or text_col is None:
        raise DataError(
            str(path),
            1,
            f"header needs one of {_TEXT_ID_COLUMNS} and one of {_TEXT_COLUMNS}, found {quote(','.join(t.df.columns))}",
        )
    ids = t.text(id_col, required=True)
    t.check(
        ~ids.isin(items["item_id"]).to_numpy(),
        lambda i: f"unknown item_id {quote(ids.iloc[i])} (not among the dataset's items)",
    )
    t.df[id_col] = ids
    t.unique([id_col], "item text")
    text = dict(zip(ids, t.text(text_col), strict=True))
    out = items.copy()
    out["text"] = out["item_id"].map(text).fillna("").astype(str)
    return out


def load_movielens(
    data_dir: Path | None = None,
    zip_path: Path | None = None,
    item_text: Path | None = None,
    cache_dir: Path | None = None,
) -> Dataset:
    """Load MovieLens-100K from a directory, the official zip, or (neither given) a cached download."""
    if data_dir is not None and zip_path is not None:
        raise ValueError("give data_dir or zip_path, not both")
    source = str(data_dir or zip_path or "")
    if data_dir is None and zip_path is None:
        zip_path, source = download_ml100k(cache_dir), ML100K_URL
    src = _Source(Path(data_dir) if data_dir is not None else None, Path(zip_path) if zip_path is not None else None)
    try:
        items = _items(src, _genres(src))
        users = _users(src, _occupations(src))
        uids, iids = users["user_id"].astype("int64").to_numpy(), items["item_id"].astype("int64").to_numpy()
        t = _read_ratings(src, "u.data", uids, iids)
        t.unique(["user_id", "item_id"], "rating")
        splits, folds = _splits(src, t, uids, iids)
    finally:
        src.close()
    ratings = t.df.astype({"user_id": str, "item_id": str, "rating": "int64", "ts": "int64"})
    if item_text is not None:
        items = attach_item_text(items, Path(item_text))
    return Dataset(
        name="ml-100k",
        items=items,
        users=users,
        ratings=ratings[RATING_COLUMNS],
        splits=splits,
        source=source,
        folds=folds,
    )
