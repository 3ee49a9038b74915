"""Shared helpers for the reliability benchmarks (faults.py, resume.py).

Each benchmark drives the real CLI (`python -m doppel.flows.cli run ...`) as a subprocess against the
OpenAI-compatible test server (`tests/llm_server.py`, also a subprocess), then reads the DuckDB file
read-only. The last line a benchmark prints is `RESULT key=value ...`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` from anywhere: tests.llm_server must import
    sys.path.insert(0, str(REPO))

DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "ml-100k"
SERVER_MODEL = "doppel-test-model"


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- the test server


@contextlib.contextmanager
def llm_server(**options: Any) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m doppel.testing.llm_server` as a subprocess with these options; yields (process, base_url)."""
    from doppel.testing.llm_server import start_subprocess

    proc, base_url = start_subprocess(**options)
    try:
        yield proc, base_url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def admin(base_url: str, action: str, payload: dict | None = None) -> Any:
    from doppel.testing.llm_server import admin as _admin

    return _admin(base_url, action, payload)


def server_requests(base_url: str) -> int:
    """Chat requests the server has settled (answered, failed or dropped)."""
    return int(admin(base_url, "stats")["requests"])


# ----------------------------------------------------------------------------- running doppel


def doppel_env(prefect_home: Path, extra: dict | None = None) -> dict:
    """The environment of a `doppel run` subprocess: its own Prefect home, doppel starts its own API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    env.update(extra or {})
    return env


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
    extra: list[str] | None = None,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "doppel.flows.cli",
        "run",
        "--dataset",
        dataset,
        "--fold",
        fold,
        "--base-url",
        base_url,
        "--model",
        SERVER_MODEL,
        "--run-id",
        run_id,
        "--db",
        str(db),
        "--concurrency",
        str(concurrency),
        "--no-progress",
        "--no-baselines",
    ]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if item_text is not None:
        argv += ["--item-text", str(item_text)]
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


# ----------------------------------------------------------------------------- DuckDB, read-only


def read_db(db: Path, sql: str, params: list | dict | None = None, wait_s: float = 60.0):
    """A DataFrame from a short read-only connection (retrying while a writer holds the file)."""
    import duckdb

    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(db), read_only=True)
            break
        except duckdb.Error as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


def db_is_locked(db: Path) -> bool:
    """True while another process holds the file read-write (a read-only open fails on the lock)."""
    import duckdb

    try:
        duckdb.connect(str(db), read_only=True).close()
        return False
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            return True
        raise


# ----------------------------------------------------------------------------- processes


class ProcessTree:
    """Every descendant a run ever had (sampled while it runs), to find survivors after a kill."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.seen: dict[tuple[int, float], str] = {}
        self.sample()

    def sample(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.root_pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    key = (proc.pid, proc.create_time())
                    if key not in self.seen:
                        self.seen[key] = " ".join(proc.cmdline())[:200]

    def alive(self) -> list[dict]:
        import psutil

        out = []
        for (pid, created), cmd in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append({"pid": pid, "ppid": proc.ppid(), "cmd": cmd})
        return out

    def survivors(self, grace_s: float = 10.0) -> list[dict]:
        """Descendants still alive `grace_s` after the run ended (children die by PDEATHSIG)."""
        deadline = time.monotonic() + grace_s
        left = self.alive()
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = self.alive()
        return left


def describe(procs: list[dict]) -> str:
    return "; ".join(f"pid {p['pid']} (ppid {p['ppid']}): ...{p['cmd'][-110:]}" for p in procs) or "none"


def kill_pids(procs: list[dict]) -> None:
    """Clean up what a kill left behind (by pid, never by name)."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p["pid"], signal.SIGKILL)


def workdir(prefix: str, keep: str | None) -> Path:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=prefix))


def result_line(**values: Any) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return f"{v:.3f}".rstrip("0").rstrip(".") if v == v else "nan"
        return str(v)

    return "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())
