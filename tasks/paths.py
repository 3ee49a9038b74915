"""Where doppel's non-Python sources live: sql/ and expectations/, shipped as package data.

Installed (wheel or editable) they are the packages `doppel.sql` and `doppel.expectations`, found
through importlib.resources, so `doppel` works from any directory, not only from a checkout.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

# a checkout's root, when doppel runs from one (the git commit recorded with a run); None when installed
_CHECKOUT = Path(__file__).resolve().parents[1]
ROOT: Path | None = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None


def _package_dir(package: str) -> Path:
    with as_file(files(package)) as path:  # a real directory for both wheel and editable installs
        return Path(path)


SQL_DIR = _package_dir("doppel.sql")
EXPECTATIONS_DIR = _package_dir("doppel.expectations")


def sql_text(relative: str) -> str:
    """The text of sql/<relative> (e.g. "queries/test_users.sql")."""
    path = SQL_DIR / relative
    if not path.exists():
        raise FileNotFoundError(f"missing SQL file {path} (is the doppel package installed whole?)")
    return path.read_text()
