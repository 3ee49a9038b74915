"""Dataset loaders: MovieLens-100K, any ratings CSV, and a synthetic dataset -> records.Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from doppel.tasks.data.generic import load_generic
from doppel.tasks.data.movielens import ML100K_URL, ML100K_ZIP_SHA256, download_ml100k, load_movielens
from doppel.tasks.data.registry import FOLDS_ALL, DataSource, builtin, expand_folds, locate
from doppel.tasks.data.synthetic import make_synthetic
from doppel.tasks.records import DataError, Dataset

__all__ = [
    "FOLDS_ALL",
    "DataSource",
    "builtin",
    "expand_folds",
    "locate",
    "DataError",
    "Dataset",
    "ML100K_URL",
    "ML100K_ZIP_SHA256",
    "download_ml100k",
    "load_dataset",
    "load_generic",
    "load_movielens",
    "make_synthetic",
]


def load_dataset(name_or_path: str, data_dir: Path | None = None, item_text: Path | None = None, **kw: Any) -> Dataset:
    """Load "synthetic", "ml-100k" (alias "movielens"; data_dir, or a cached download) or a path.

    A path may be an ML-100K directory (has u.data) or zip, a directory with ratings.csv
    (+ items.csv, users.csv if present), or a ratings CSV file. `kw` goes to the loader.
    Names, aliases and where the files are come from the registry (tasks/data/registry.py).
    """
    name = builtin(name_or_path)
    if name == "synthetic":
        return make_synthetic(**kw)
    if name == "ml-100k" and data_dir is None:
        return load_movielens(item_text=item_text, **kw)  # the cached (or downloaded) official zip
    source = locate(name_or_path, data_dir)
    if source.kind == "movielens-dir":
        return load_movielens(data_dir=source.path, item_text=item_text, **kw)
    if source.kind == "movielens-zip":
        return load_movielens(zip_path=source.path, item_text=item_text, **kw)
    if item_text is not None:
        raise ValueError("item_text applies to ML-100K; pass items_csv for a CSV dataset")
    if source.path is None:
        raise ValueError(f"{name_or_path}: no file to read")
    if source.kind == "csv-dir":
        for opt, fname in (("items_csv", "items.csv"), ("users_csv", "users.csv")):
            if (source.path / fname).exists():
                kw.setdefault(opt, source.path / fname)
        return load_generic(source.path / "ratings.csv", **kw)
    return load_generic(source.path, **kw)
