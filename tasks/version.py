"""The code version recorded with each run: package version plus the git commit when available."""

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

from doppel.tasks.paths import ROOT


@lru_cache(maxsize=1)
def code_version() -> str:
    try:
        base = version("doppel")
    except PackageNotFoundError:
        base = "0+unknown"
    if ROOT is None:
        return base
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{sha}{'.dirty' if dirty else ''}" if sha else base
