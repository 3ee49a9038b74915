"""Dataset loaders: MovieLens-100K, any ratings CSV, and a synthetic dataset -> records.Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from doppel.tasks.data.generic import load_generic
from doppel.tasks.data.movielens import ML100K_URL, ML100K_ZIP_SHA256, download_ml100k, load_movielens
from doppel.tasks.data.synthetic import make_synthetic
from doppel.tasks.records import DataError, Dataset

__all__ = [
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

ML100K_NAMES = ("ml-100k", "ml100k", "movielens-100k")


def load_dataset(name_or_path: str, data_dir: Path | None = None, item_text: Path | None = None, **kw: Any) -> Dataset:
    """Load "synthetic", "ml-100k" (data_dir / zip_path / cached download) or a path.

    A path may be an ML-100K directory (has u.data) or zip, a directory with ratings.csv
    (+ items.csv, users.csv if present), or a ratings CSV file. `kw` goes to the loader.
    """
    key = str(name_or_path).strip()
    if key.lower() == "synthetic":
        return make_synthetic(**kw)
    if key.lower() in ML100K_NAMES:
        return load_movielens(data_dir=data_dir, item_text=item_text, **kw)
    path = Path(key).expanduser()
    if path.is_dir():
        if (path / "u.data").exists():
            return load_movielens(data_dir=path, item_text=item_text, **kw)
        if (path / "ratings.csv").exists():
            for opt, fname in (("items_csv", "items.csv"), ("users_csv", "users.csv")):
                if (path / fname).exists():
                    kw.setdefault(opt, path / fname)
            return load_generic(path / "ratings.csv", **kw)
        raise DataError(str(path), None, "directory has neither u.data (ML-100K) nor ratings.csv")
    if path.is_file() and path.suffix.lower() == ".zip":
        return load_movielens(zip_path=path, item_text=item_text, **kw)
    if path.is_file() and path.suffix.lower() == ".csv":
        if item_text is not None:
            raise ValueError("item_text applies to ML-100K; pass items_csv for a CSV dataset")
        return load_generic(path, **kw)
    raise DataError(
        key, None, "unknown dataset: expected 'synthetic', 'ml-100k', or an existing directory, .zip or .csv path"
    )
