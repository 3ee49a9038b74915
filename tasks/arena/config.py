"""Settings of `doppel arena` and the result cache that makes a rerun fit only what changed."""

from __future__ import annotations

import hashlib
import pickle
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel, Field

T = TypeVar("T")


def new_arena_id() -> str:
    return datetime.now(UTC).strftime("arena-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class ArenaSettings(BaseModel):
    dataset: str = "synthetic"
    data_dir: str | None = None
    folds: list[str] = Field(default_factory=lambda: ["u1"])
    db: str = "doppel.duckdb"
    run_id: str | None = None
    recommenders: list[str] = Field(default_factory=list, description="extra module:factory plug-ins")
    only: list[str] = Field(default_factory=list, description="built-in entrants to keep (empty: all)")
    ensemble_id: str | None = Field(None, description="the ensemble run that judges (default: the latest of the fold)")
    llm_run: str | None = Field(
        None, description="the `doppel run --target arena` run that judges (default: the latest of this arena run)"
    )
    rl_run: str | None = Field(None, description="a finished `doppel rl` run whose saved agents enter (on its fold)")
    k: int = Field(10, ge=1, description="catalogue list length")
    seed: int = 0
    n_boot: int = Field(500, ge=0, description="bootstrap resamples of users for the intervals")
    runner: str = Field("dask", pattern="^(dask|threads)$")
    dask_address: str | None = None
    workers: int = Field(2, ge=1)
    cache_dir: str = ".doppel/arena-cache"
    progress: bool = Field(
        True, description="show each fold's steps (a bar on a terminal, a line every few seconds elsewhere)"
    )


def frame_digest(*frames: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for frame in frames:
        h.update(repr(list(frame.columns)).encode())
        h.update(pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:20]


def same_pairs(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two rating frames hold the same (user_id, item_id) pairs (e.g. the same train split)."""
    return set(zip(a["user_id"].astype(str), a["item_id"].astype(str))) == set(
        zip(b["user_id"].astype(str), b["item_id"].astype(str))
    )


def code_digest(*modules: Any) -> str:
    """Hash of the source files of `modules` (a cache entry is reused only with the same code)."""
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def cached(cache_dir: str | Path | None, kind: str, key: str, compute: Callable[[], T]) -> tuple[T, bool]:
    """(value, was_cached): `compute()` once per (kind, key), pickled under cache_dir."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{kind}-{key}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f), True
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(value)}")
    with open(tmp, "wb") as f:
        pickle.dump(value, f)
    tmp.replace(path)
    return value, False
