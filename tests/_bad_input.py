"""Helpers for the bad-input tests: run the real CLI as a user would, write small MovieLens-100K
folders, read its one error line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOOD_KEY = "sk-good-0123456789"

# ----------------------------------------------------------------------------- helpers


def user_env(**extra: str) -> dict:
    """The environment of a user's shell: conftest's PREFECT_LOGGING_LEVEL=WARNING is not a user default."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"}
    return {**env, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-test", **extra}


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full = user_env(**(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "doppel.flows.cli", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_args(tmp_path: Path, base_url: str, *extra: str, db: Path | None = None) -> list[str]:
    return [
        "run",
        "--base-url",
        base_url,
        "--model",
        "doppel-test-model",
        "--db",
        str(db or tmp_path / "d.duckdb"),
        "--runner",
        "threads",
        "--no-progress",
        "--no-baselines",
        *extra,
    ]


SYNTHETIC = ("--synthetic-users", "24", "--synthetic-items", "60", "--users", "2")


def assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, no traceback anywhere, exactly one non-blank stderr line: `error: ...`."""
    out = done.stdout + done.stderr
    assert done.returncode != 0, f"exit 0; stderr: {done.stderr[-2000:]}"
    assert "Traceback" not in out, f"a traceback:\n{out[-4000:]}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n" + "\n".join(lines[:40])
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


# ----------------------------------------------------------------------------- a tiny ML-100K


def write_ml100k(root: Path, data_lines: list[str] | None = None, test_lines: list[str] | None = None) -> Path:
    """A valid ML-100K-format folder (3 users, 12 items, fold u1); `data_lines` replaces u.data."""
    d = root / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    rows, ts = [], 881250949
    for u in (1, 2, 3):
        for i in range(1, 13):
            if (u + i) % 3:
                rows.append((u, i, 1 + (u * i) % 5, ts))
                ts += 1
    test = rows[::4]
    base = [r for r in rows if r not in test]
    line = lambda r: "\t".join(map(str, r))  # noqa: E731
    files = {
        "u.genre": "unknown|0\nAction|1\nComedy|2\n\n",
        "u.occupation": "engineer\nstudent\nwriter\n",
        "u.user": "1|24|M|engineer|85711\n2|53|F|student|94043\n3|23|M|writer|32067\n",
        "u.item": "".join(
            f"{i}|Movie {i} (199{i % 10})|01-Jan-199{i % 10}||http://x|0|{i % 2}|{1 - i % 2}\n" for i in range(1, 13)
        ),
        "u.data": "\n".join(data_lines if data_lines is not None else map(line, rows)) + "\n",
        "u1.base": "\n".join(map(line, base)) + "\n",
        "u1.test": "\n".join(test_lines if test_lines is not None else map(line, test)) + "\n",
    }
    for name, text in files.items():
        (d / name).write_text(text, encoding="latin-1")
    return d


def good_data_lines(root: Path) -> list[str]:
    return (write_ml100k(root / "good") / "u.data").read_text().splitlines()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
