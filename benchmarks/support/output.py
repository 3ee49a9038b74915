"""Paths, printing and the results-file header shared by the benchmarks."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import _provenance  # benchmarks/ is on sys.path wherever support/ is imported

HERE = Path(__file__).resolve().parents[1]  # benchmarks/
REPO = HERE.parent
RESULTS = HERE / "results"
# the development copy beside the checkout; elsewhere None: doppel downloads the public dataset (no item text)
_SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA_DIR = _SHARED / "ml-100k" if (_SHARED / "ml-100k").is_dir() else None
DEFAULT_ITEM_TEXT = _SHARED / "ml-100k-text" / "ml100k_movie_text.tsv"
SERVER_MODEL = "doppel-test-model"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--data-dir and --item-text, defaulting to the development copy beside the checkout when there is one."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    item_text = DEFAULT_ITEM_TEXT if DEFAULT_ITEM_TEXT.exists() else None
    parser.add_argument("--item-text", type=Path, default=item_text)


def log(message: str = "") -> None:
    print(message, flush=True)


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def result_line(**values: Any) -> str:
    return "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        out.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def provenance() -> str:
    """One line for a results file: date, command, commit (`_provenance`'s, uncommitted changes said) and machine."""
    return (
        f"{_provenance.STARTED:%Y-%m-%d %H:%M} UTC; `{_provenance.command()}`; commit {_provenance.COMMIT}; {machine()}"
    )
