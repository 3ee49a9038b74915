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
# the development copy beside the checkout (or beside the worktrees' folder); elsewhere None: doppel
# downloads the public dataset, which has no item text
_SHARED = next((p / "shared" / "data" for p in REPO.parents[:2] if (p / "shared" / "data" / "ml-100k").is_dir()), None)
DEFAULT_DATA_DIR = _SHARED / "ml-100k" if _SHARED else None
_ITEM_TEXT = _SHARED / "ml-100k-text" / "ml100k_movie_text.tsv" if _SHARED else None
DEFAULT_ITEM_TEXT = _ITEM_TEXT if _ITEM_TEXT and _ITEM_TEXT.is_file() else None
SERVER_MODEL = "doppel-test-model"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--data-dir and --item-text, defaulting to the development copy beside the checkout when there is one."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="ML-100K folder (default: the shared copy, else download)",
    )
    parser.add_argument(
        "--item-text", type=Path, default=DEFAULT_ITEM_TEXT, help="item overview TSV (default: the shared copy, if any)"
    )


def data_argv(data_dir: Path | str | None, item_text: Path | str | None) -> list[str]:
    """The `doppel` options naming where the data comes from: only those given (none: doppel downloads ML-100K)."""
    return (["--data-dir", str(data_dir)] if data_dir else []) + (["--item-text", str(item_text)] if item_text else [])


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
