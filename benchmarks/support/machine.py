"""The machine while a benchmark runs: load average, and RSS and CPU seconds of a process tree."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .output import log


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the test server and doppel subprocesses are stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def load1() -> float:
    return os.getloadavg()[0]


def quiet_machine(max_load: float = 2.5, max_wait_s: float = 600, poll_s: float = 60) -> float:
    """Wait until the 1-min load average is <= max_load (at most max_wait_s); return the load then.

    Other jobs share this machine: every measurement is printed with the load it started under.
    """
    deadline = time.monotonic() + max_wait_s
    load = load1()
    while load > max_load and time.monotonic() < deadline:
        log(f"  load {load:.2f} > {max_load}: waiting {poll_s:.0f} s")
        time.sleep(min(poll_s, max(1.0, deadline - time.monotonic())))
        load = load1()
    if load > max_load:
        log(f"  load still {load:.2f} after {max_wait_s:.0f} s: measuring anyway (noted)")
    return load


class LoadSampler:
    """Mean and max of the 1-min load average while something runs (sampled every 5 s)."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(load1())
            self._stop.wait(5.0)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(load1())

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def role_of(proc_cmd: str, is_root: bool) -> str:
    if is_root:
        return "flow"
    if "uvicorn" in proc_cmd and "prefect" in proc_cmd:
        return "prefect-api"
    if "prefect" in proc_cmd and "server" in proc_cmd:
        return "prefect-api"
    if "resource_tracker" in proc_cmd:
        return "mp-tracker"
    if "spawn_main" in proc_cmd or "multiprocessing" in proc_cmd:
        return "dask-worker"
    return "other"


class RssSampler:
    """Samples RSS of `root_pid` and all its descendants every `interval` s in a thread.

    peak_total_mb: the largest sum over one sample (what the machine had to hold at once);
    per process: each pid's own peak, with its role (flow / prefect-api / dask-worker / ...).
    RSS counts shared pages in every process, so the total slightly overstates the real footprint.
    """

    def __init__(self, root_pid: int, interval: float = 0.2):
        self.root_pid = root_pid
        self.interval = interval
        self.peak_total = 0
        self.peak_by_role: dict[str, int] = {}
        self.procs: dict[int, dict] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root_pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            total, by_role = 0, {}
            for proc in tree:
                try:
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_times()
                    info = self.procs.get(proc.pid)
                    if info is None:
                        cmd = " ".join(proc.cmdline())
                        info = self.procs[proc.pid] = {
                            "pid": proc.pid,
                            "role": role_of(cmd, proc.pid == self.root_pid),
                            "cmd": cmd[:160],
                            "peak": 0,
                        }
                except psutil.Error:
                    continue
                info["peak"] = max(info["peak"], rss)
                info["cpu_s"] = cpu.user + cpu.system  # the last sample before the process ends
                total += rss
                by_role[info["role"]] = by_role.get(info["role"], 0) + rss
            if tree:
                self.samples += 1
                self.peak_total = max(self.peak_total, total)
                for role, rss in by_role.items():
                    self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), rss)
            self._stop.wait(self.interval)

    @property
    def peak_total_mb(self) -> float:
        return self.peak_total / 2**20

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds (user + system) per role, as last sampled (up to 0.2 s short per process)."""
        out: dict[str, float] = {}
        for p in self.procs.values():
            out[p["role"]] = out.get(p["role"], 0.0) + p.get("cpu_s", 0.0)
        return out

    def describe(self) -> list[str]:
        lines = [f"peak RSS of the whole tree at once: {self.peak_total_mb:,.0f} MB ({self.samples} samples)"]
        for role, rss in sorted(self.peak_by_role.items(), key=lambda kv: -kv[1]):
            n = sum(1 for p in self.procs.values() if p["role"] == role)
            lines.append(f"  {role:12s} {n} process(es), peak together {rss / 2**20:,.0f} MB")
        for p in sorted(self.procs.values(), key=lambda p: -p["peak"]):
            lines.append(
                f"    pid {p['pid']:>7} {p['role']:12s} peak {p['peak'] / 2**20:7,.0f} MB  "
                f"cpu {p.get('cpu_s', 0.0):6.1f} s  {p['cmd'][:80]}"
            )
        cpu = self.cpu_by_role()
        lines.append(
            f"CPU seconds (user+sys): total {sum(cpu.values()):.1f} = "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        )
        return lines
