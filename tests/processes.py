"""Commands and process-tree bookkeeping for tests that run, kill or interrupt doppel: no child may outlive it."""

from __future__ import annotations

import contextlib
import sys

import psutil


def descendants(pid: int, seen: dict) -> None:
    """Add `pid` and its children, keyed by (pid, create time) so reused pids don't confuse."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                seen.setdefault((proc.pid, proc.create_time()), " ".join(proc.cmdline())[:200])


def alive(seen: dict) -> list[str]:
    """The processes of `seen` still running (zombies don't count)."""
    out = []
    for (pid, created), cmd in seen.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid}: {cmd}")
    return out


def wait_gone(seen: dict, timeout: float) -> list[str]:
    """Wait (up to `timeout` s, returning as soon as they are) for the processes of `seen` to end;
    the ones still running then."""
    procs = []
    for (pid, created), _ in seen.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                procs.append(proc)
    psutil.wait_procs(procs, timeout=timeout)
    return alive(seen)


def marked(marker: str) -> dict:
    """Running processes whose environment holds `marker` (inherited by every descendant, even re-parented)."""
    found = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if marker in proc.environ().values() and proc.status() != psutil.STATUS_ZOMBIE:
                found[(proc.pid, proc.create_time())] = " ".join(proc.cmdline())[:200]
    return found


def doppel_run(base_url: str, db, run_id: str, users: int, concurrency: int, *extra: str) -> list[str]:
    """The argv of `doppel run` on a 24-user, 60-item synthetic dataset against `base_url`'s test model."""
    return [
        sys.executable,
        "-m",
        "doppel.flows.cli",
        "run",
        "--dataset",
        "synthetic",
        "--synthetic-users",
        "24",
        "--synthetic-items",
        "60",
        "--users",
        str(users),
        "--base-url",
        base_url,
        "--model",
        "doppel-test-model",
        "--concurrency",
        str(concurrency),
        "--db",
        str(db),
        "--run-id",
        run_id,
        "--no-progress",
        *extra,
    ]
