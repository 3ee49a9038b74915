"""`doppel run` as a subprocess: its environment and argv, run to the end (output to a file) or timed
line by line (phase timings from the INFO lines `--verbose` prints)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .machine import LoadSampler, RssSampler
from .output import REPO, SERVER_MODEL, data_argv

# a timed run prints phase lines (--verbose); it would also ship every INFO log to the API server,
# which a plain `doppel run` (level CRITICAL) does not: print them, don't ship them
TIMED_ENV = {"COLUMNS": "140", "PREFECT_LOGGING_TO_API_ENABLED": "false"}


def use_repo(repo: Path) -> Path:
    """Import tasks/ and tests/ from `repo` (this checkout by default)."""
    repo = Path(repo).resolve()
    if str(repo) in sys.path:
        sys.path.remove(str(repo))
    sys.path.insert(0, str(repo))
    return repo


def workdir(prefix: str, keep: str | None) -> Path:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=prefix))


def doppel_env(prefect_home: Path, extra: dict | None = None, *, repo: Path = REPO, timed: bool = False) -> dict:
    """The environment of a `doppel run` subprocess: its own Prefect home, doppel starts its own API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(repo),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    env.update((TIMED_ENV if timed else {}) | (extra or {}))
    return env


def ingest_argv(db: Path, data_dir: Path | None, item_text: Path | None) -> list[str]:
    """`doppel ingest` of ML-100K into `db`: from `data_dir`, else doppel's verified download of the public zip."""
    argv = [sys.executable, "-m", "doppel.flows.cli", "ingest", "--dataset", "ml-100k", "--db", str(db)]
    return argv + data_argv(data_dir, item_text)


def doppel_argv(
    *,
    base_url: str,
    db: Path,
    run_id: str,
    dataset: str = "ml-100k",
    data_dir: Path | None = None,
    item_text: Path | None = None,
    fold: str = "u1",
    users: int | None = None,
    concurrency: int = 32,
    timeout: float | None = None,
    runner: str | None = None,
    baselines: bool = False,
    verbose: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    argv = [sys.executable, "-m", "doppel.flows.cli", "run", "--dataset", dataset, "--fold", fold]
    argv += ["--base-url", base_url, "--model", SERVER_MODEL, "--run-id", run_id, "--db", str(db)]
    argv += ["--concurrency", str(concurrency)]
    if runner is not None:
        argv += ["--runner", runner]
    argv.append("--no-progress")
    if not baselines:
        argv.append("--no-baselines")
    if verbose:
        argv.append("--verbose")
    argv += data_argv(data_dir, item_text)
    if users is not None:
        argv += ["--users", str(users)]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    return argv + list(extra or [])


@dataclass
class Finished:
    returncode: int
    wall_s: float
    stdout: str
    stderr: str


def start_doppel(argv: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """Start `doppel run` in its own process group (so the group can be killed), output to a file."""
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def run_doppel(argv: list[str], env: dict, log_path: Path, timeout: float = 3600) -> Finished:
    started = time.monotonic()
    before = log_path.stat().st_size if log_path.exists() else 0
    proc = start_doppel(argv, env, log_path)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    text = log_path.read_bytes()[before:].decode(errors="replace")
    return Finished(proc.returncode, time.monotonic() - started, text, "")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


@dataclass
class Timed:
    returncode: int
    wall_s: float
    lines: list[tuple[float, str]]  # (seconds since start, line)
    rss: RssSampler | None = None
    load_mean: float = float("nan")
    load_max: float = float("nan")
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


PHASE_PATTERNS = {
    # seconds since the command started at which each line was printed
    "prefect_temp_server": re.compile(r"Starting temporary server"),
    "flow_begin": re.compile(r"Beginning flow run .* for flow 'doppel-run'"),
    "dataset_ready": re.compile(r"dataset \S+ (loaded|already in the database)"),
    "fanout_begin": re.compile(r"Beginning subflow run .* for flow 'doppel-fan-out'"),
    "planned": re.compile(r"planned \d+ users in"),
    "submitted": re.compile(r"submitted \d+ chunks in"),
    "fanout_end": re.compile(r"fan-out [\d.]+ s: "),
    "score_begin": re.compile(r"Beginning subflow run .* for flow 'doppel-score'"),
    "validated": re.compile(r"Task run 'validate-outputs-\w+' - Finished"),
    "scored": re.compile(r"Task run 'score-ratings-\w+' - Finished"),
    "summary": re.compile(r"this invocation: "),
}
VALUES = {
    "planned_s": re.compile(r"planned \d+ users in ([\d.]+) s"),
    "submitted_s": re.compile(r"submitted \d+ chunks in ([\d.]+) s"),
    "fanout_s": re.compile(r"fan-out ([\d.]+) s: "),
    "first_user_s": re.compile(r"first result at ([\d.]+) s"),
    "write_s": re.compile(r"users written \(([\d.]+) s of writes\)"),
    "flow_wall_s": re.compile(r"this invocation: .*?([\d.]+) s\s*$"),
    "new_calls": re.compile(r"this invocation: [\d,]+ users? simulated, ([\d,]+) LLM calls?"),
}


def parse_phases(lines: list[tuple[float, str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, line in lines:
        for name, pattern in PHASE_PATTERNS.items():
            if name not in out and pattern.search(line):
                out[name] = round(t, 2)
        for name, pattern in VALUES.items():
            m = pattern.search(line)
            if m and name not in out:
                out[name] = float(m.group(1).replace(",", ""))
    return out


def run_timed(
    argv: list[str], env: dict, cwd: Path, log_path: Path, timeout: float = 7200, sample_rss: bool = True
) -> Timed:
    """Run the command in its own session; timestamp every line; sample the RSS of its process tree."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    rss = RssSampler(proc.pid).start() if sample_rss else None
    lines: list[tuple[float, str]] = []

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append((time.monotonic() - started, raw.decode(errors="replace").rstrip("\n")))

    thread = threading.Thread(target=reader, daemon=True)
    with LoadSampler() as load:
        thread.start()
        try:
            proc.wait(timeout=timeout)
        except BaseException:  # timeout, Ctrl-C, SIGTERM: leave no doppel process behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if rss is not None:
                rss.stop()
            raise
        wall = time.monotonic() - started
        thread.join(timeout=10)
    if rss is not None:
        rss.stop()
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.writelines(f"{t:8.2f} {line}\n" for t, line in lines)
        f.write(f"exit {proc.returncode} after {wall:.2f} s\n")
    timed = Timed(proc.returncode, wall, lines, rss, load.mean, load.max)
    timed.phases = parse_phases(lines)
    return timed
