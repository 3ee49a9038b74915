"""Load a dataset, check its input contracts, and write it to DuckDB (once per source)."""

from __future__ import annotations

from pathlib import Path

from doppel.tasks.data.registry import builtin, check_folds
from doppel.tasks.records import DataError, Dataset
from doppel.tasks.settings import RunSettings
from doppel.tasks.store.db import connect, execute
from doppel.tasks.store.writes import save_dataset

INPUT_SUITES = (("ratings", "input_ratings"), ("items", "input_items"), ("users", "input_users"))


def dataset_label(settings: RunSettings) -> str:
    """The dataset as the user named it, and where it is: for messages."""
    where = settings.data_dir if builtin(settings.dataset) == "ml-100k" else None
    return f"{settings.dataset} ({where})" if where else settings.dataset


def dataset_name(settings: RunSettings) -> str:
    if builtin(settings.dataset) == "synthetic":
        default = (settings.synthetic_users, settings.synthetic_items, settings.sample_seed) == (60, 120, 0)
        return (
            "synthetic"
            if default
            else (f"synthetic-{settings.synthetic_users}u-{settings.synthetic_items}i-s{settings.sample_seed}")
        )
    return builtin(settings.dataset) or Path(settings.dataset).stem


def load(settings: RunSettings) -> Dataset:
    """Read the dataset named by the settings (no database access)."""
    from doppel.tasks.data import load_dataset

    if builtin(settings.dataset) == "synthetic":
        ds = load_dataset(
            "synthetic", n_users=settings.synthetic_users, n_items=settings.synthetic_items, seed=settings.sample_seed
        )
    else:
        ds = load_dataset(
            settings.dataset,
            data_dir=Path(settings.data_dir) if settings.data_dir else None,
            item_text=Path(settings.item_text) if settings.item_text else None,
        )
    ds.name = dataset_name(settings)
    ds.source = source_of(settings)
    return ds


def check_inputs(ds: Dataset) -> None:
    """Input contracts (expectations/input_*.json); a failure names the table and expectations."""
    from doppel.tasks.validate import format_failures, validate_frame

    for attr, suite in INPUT_SUITES:
        outcome = validate_frame(getattr(ds, attr), suite)
        if not outcome.success:
            raise DataError(ds.source or ds.name, None, f"{attr} failed contract {suite}:\n{format_failures(outcome)}")


def stored_source(db: str | Path, name: str) -> str | None:
    with connect(db) as con:
        frame = execute(con, "dataset_source", dataset=name)
    return None if frame is None or frame.empty else str(frame["source"].iloc[0])


def ingest(settings: RunSettings, force: bool = False) -> tuple[str, bool]:
    """(dataset name, whether it was (re)loaded). Skips loading when the same source is stored."""
    name = dataset_name(settings)
    if not force and stored_source(settings.db, name) == source_of(settings):
        return name, False
    ds = load(settings)
    check_inputs(ds)
    check_folds(dataset_label(settings), ds.folds, settings.folds)
    save_dataset(settings.db, ds)
    return name, True


def source_of(settings: RunSettings) -> str:
    """What identifies the loaded data: a stored dataset with the same source is not reloaded."""
    if builtin(settings.dataset) == "synthetic":
        return (
            f"synthetic:seed={settings.sample_seed},users={settings.synthetic_users},items={settings.synthetic_items}"
        )
    where = str(Path(settings.data_dir).resolve()) if settings.data_dir else "download"
    if builtin(settings.dataset) is None:
        where = str(Path(settings.dataset).resolve())
    text = str(Path(settings.item_text).resolve()) if settings.item_text else "none"
    return f"{dataset_name(settings)}:{where};item_text={text}"
