"""Where a stored result came from: date, command, commit and machine, written at the top of the file.

    from _provenance import write_result
    write_result("env_speed", "# RL env speed", body_markdown, result_line)

The header is what benchmarks/results/README.md and the docs show beside every figure.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> str:
    """HEAD's hash, with "+ uncommitted changes" when tracked files outside benchmarks/results/ differ from it
    (a benchmark rewriting its own results files is not a change to what ran)."""
    head = _git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return head + (" + uncommitted changes" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, load average {load:.1f} at the end"
    )


def command(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return "python " + shlex.join([str(script), *argv[1:]])


STARTED = datetime.now(UTC)  # when the benchmark started (this module is imported at its start)
COMMIT = commit()  # what ran: taken before the benchmark writes anything


def header(extra: dict[str, str] | None = None) -> str:
    rows = {
        "date": STARTED.strftime("%Y-%m-%d %H:%M UTC") + f" (started; written {datetime.now(UTC):%H:%M UTC})",
        "command": f"`{command()}`",
        "commit": COMMIT,
        "machine": machine(),
        **(extra or {}),
    }
    return "\n".join(f"- {key}: {value}" for key, value in rows.items())


def write_result(name: str, title: str, body: str, result_line: str, extra: dict[str, str] | None = None) -> Path:
    """benchmarks/results/<name>.md: the title, the provenance header, the body, the RESULT line."""
    path = RESULTS / f"{name}.md"
    text = f"{title}\n\n{header(extra)}\n\n{body.strip()}\n\n`{result_line}`\n"
    path.write_text(text)
    return path
