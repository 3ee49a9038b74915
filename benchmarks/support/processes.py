"""The processes of a run: every descendant it ever had, and the ones a kill left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time


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
