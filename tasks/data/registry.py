"""The one registry of datasets and folds: names and aliases, where a dataset's files are, which folds it has.

Everything here only looks at file names (no dataset is read), so a wrong path or fold is reported in
well under a second, before any engine starts.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from doppel.tasks.records import DataError

# what `--fold all` means: the five-fold cross-validation every built-in dataset has
FOLDS_ALL = ("u1", "u2", "u3", "u4", "u5")
# ML-100K also ships ua / ub (10 test ratings per user); they load and run, but are not advertised
ML100K_FOLDS = (*FOLDS_ALL, "ua", "ub")
GENERIC_FOLDS = ("t1",)  # a ratings CSV: per user, the latest ratings are the test split (tasks/data/generic.py)

ALIASES = {
    "synthetic": "synthetic",
    "ml-100k": "ml-100k",
    "ml100k": "ml-100k",
    "movielens": "ml-100k",
    "movielens-100k": "ml-100k",
}
NAMES_HELP = "synthetic | ml-100k (alias movielens) | a ratings CSV, a directory or an ML-100K zip"

Kind = Literal["synthetic", "movielens-dir", "movielens-zip", "movielens-download", "csv-dir", "csv"]


def builtin(name: str) -> str | None:
    """The registry name of a built-in dataset ("movielens" -> "ml-100k"), None for a path."""
    return ALIASES.get(str(name).strip().lower())


@dataclass(frozen=True)
class DataSource:
    """Where a dataset's files are and which folds it has, found from file names alone."""

    kind: Kind
    path: Path | None
    folds: tuple[str, ...]
    label: str  # the dataset as the user named it (and where), for messages

    def check_folds(self, folds: list[str]) -> None:
        """Every asked fold exists, else one line naming the fold, the dataset and what to use instead."""
        check_folds(self.label, self.folds, folds)


def check_folds(label: str, have: list[str] | tuple[str, ...], asked: list[str]) -> None:
    """Raise a DataError in the user's terms (`--fold`, u1..u5) when a fold in `asked` is not in `have`."""
    missing = [f for f in asked if f not in have]
    if not missing:
        return
    if set(FOLDS_ALL) <= set(have):
        hint = f"use {FOLDS_ALL[0]}..{FOLDS_ALL[-1]}, a comma list of them, or all"
    else:
        hint = f"its folds: {', '.join(have) or 'none (no split files)'}"
    raise DataError(label, None, f"no fold {', '.join(map(repr, missing))} (--fold); {hint}")


def locate(dataset: str, data_dir: str | Path | None = None, download_dir: Path | None = None) -> DataSource:
    """Find the dataset's files (and, for ml-100k without --data-dir, the cached or downloaded zip)."""
    name = builtin(dataset)
    if name == "synthetic":
        return DataSource("synthetic", None, FOLDS_ALL, "synthetic")
    if name == "ml-100k":
        if data_dir is None:
            from doppel.tasks.data.movielens import download_ml100k

            zip_path = download_ml100k(download_dir)
            return DataSource("movielens-download", zip_path, _zip_folds(zip_path), f"ml-100k ({zip_path})")
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(
                str(path), None, "no such directory (--data-dir)" if not path.exists() else "not a directory"
            )
        if not (path / "u.data").is_file():
            raise DataError(str(path), None, "not an ML-100K folder: it has no u.data (--data-dir)")
        return DataSource("movielens-dir", path, _dir_folds(path), f"ml-100k ({path})")
    path = Path(str(dataset).strip()).expanduser()
    if path.is_dir():
        if (path / "u.data").is_file():
            return DataSource("movielens-dir", path, _dir_folds(path), str(path))
        if (path / "ratings.csv").is_file():
            return DataSource("csv-dir", path, GENERIC_FOLDS, str(path))
        raise DataError(str(path), None, "directory has neither u.data (ML-100K) nor ratings.csv")
    if path.is_file() and path.suffix.lower() == ".zip":
        return DataSource("movielens-zip", path, _zip_folds(path), str(path))
    if path.is_file() and path.suffix.lower() == ".csv":
        return DataSource("csv", path, GENERIC_FOLDS, str(path))
    raise DataError(str(dataset), None, f"unknown dataset: expected {NAMES_HELP} (an existing path)")


def _dir_folds(path: Path) -> tuple[str, ...]:
    return tuple(f for f in ML100K_FOLDS if (path / f"{f}.base").is_file() or (path / f"{f}.test").is_file())


def _zip_folds(path: Path) -> tuple[str, ...]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).name for n in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(str(path), None, f"not a zip file ({exc})") from None
    return tuple(f for f in ML100K_FOLDS if f"{f}.base" in names or f"{f}.test" in names)


def default_folds(dataset: str, data_dir: str | Path | None = None) -> list[str]:
    """What no --fold means: u1, or the dataset's first fold where it has no u1 (a ratings CSV: t1, its one
    split). File names only, never a download; a path that cannot be read gets u1 (preflight names the path)."""
    if builtin(dataset) is not None:
        return [FOLDS_ALL[0]]
    try:
        folds = locate(dataset, data_dir).folds
    except (DataError, OSError, zipfile.BadZipFile):
        return [FOLDS_ALL[0]]
    return [FOLDS_ALL[0]] if FOLDS_ALL[0] in folds or not folds else [folds[0]]


def expand_folds(fold: str | list[str] | tuple[str, ...]) -> list[str]:
    """`--fold` as the user writes it (u1 | u1,u3 | all) -> the list of folds."""
    parts = [p.strip() for p in (fold.split(",") if isinstance(fold, str) else fold) if p.strip()]
    return list(FOLDS_ALL) if parts == ["all"] else parts
