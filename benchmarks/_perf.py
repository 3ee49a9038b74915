"""Helpers for the performance benchmarks (overhead.py, scaling.py, tokens.py).

- `quiet_machine`: wait (bounded) until the 1-minute load average is low enough to time anything.
- `RssSampler`: peak RSS of a process tree (sampled every 0.2 s), total and per process / role.
- `run_timed`: run `doppel run` as a subprocess, timestamp every output line (phase timings come
  from the INFO lines `--verbose` prints: planned / submitted / fan-out / flow finished).
- `run_facts`: calls, tokens, pairs and the longest user chain of a run, read from DuckDB.
- `simulate_schedule`: a discrete-event model of doppel's scheduler at a fixed latency (no CPU cost),
  which separates the scheduling policy's own tail from process and CPU overhead.

The benchmarks can time another checkout of the code (`--repo /tmp/wt`): the CLI subprocess, its
Dask workers and the planning imports then all come from there.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "ml-100k"
DEFAULT_ITEM_TEXT = REPO.parent / "shared" / "data" / "ml-100k-text" / "ml100k_movie_text.tsv"
SERVER_MODEL = "doppel-test-model"
RESULTS = HERE / "results"


def log(message: str = "") -> None:
    print(message, flush=True)


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the test server and doppel subprocesses are stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def use_repo(repo: Path) -> Path:
    """Import tasks/ and tests/ from `repo` (this checkout by default)."""
    repo = Path(repo).resolve()
    if str(repo) in sys.path:
        sys.path.remove(str(repo))
    sys.path.insert(0, str(repo))
    return repo


# ----------------------------------------------------------------------------- machine load


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


# ----------------------------------------------------------------------------- the test server


@contextlib.contextmanager
def llm_server(**options: Any) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m doppel.testing.llm_server` as a subprocess (fixed latency, server-side cap); yields (proc, base_url)."""
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


def server_stats(base_url: str) -> dict:
    from doppel.testing.llm_server import admin

    return admin(base_url, "stats")


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def server_reset(base_url: str) -> None:
    from doppel.testing.llm_server import admin

    admin(base_url, "reset")


@contextlib.contextmanager
def prefect_server(prefect_home: Path) -> Iterator[str]:
    """A running Prefect API server (as a lab's `prefect server start`), started outside the timed
    runs; yields its PREFECT_API_URL."""
    import importlib.util
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site = Path(importlib.util.find_spec("prefect").origin).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_UI_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(site),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError("the Prefect API server did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- memory


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


# ----------------------------------------------------------------------------- running doppel


def doppel_env(repo: Path, prefect_home: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(repo),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "140",
            # --verbose (for the phase lines) would also ship every INFO log to the API server,
            # which a plain `doppel run` (level CRITICAL) does not: print them, don't ship them
            "PREFECT_LOGGING_TO_API_ENABLED": "false",
        }
    )
    env.update(extra or {})
    return env


def doppel_argv(
    *,
    base_url: str,
    db: Path,
    run_id: str,
    data_dir: Path | None,
    item_text: Path | None,
    fold: str = "u1",
    users: int | None = None,
    concurrency: int = 32,
    runner: str = "dask",
    baselines: bool = True,
    verbose: bool = True,
    extra: list[str] | None = None,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "doppel.flows.cli",
        "run",
        "--dataset",
        "ml-100k",
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
        "--runner",
        runner,
        "--no-progress",
    ]
    if not baselines:
        argv.append("--no-baselines")
    if verbose:
        argv.append("--verbose")
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if item_text is not None:
        argv += ["--item-text", str(item_text)]
    if users is not None:
        argv += ["--users", str(users)]
    return argv + list(extra or [])


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
    "first_user_s": re.compile(r"first user at ([\d.]+) s"),
    "write_s": re.compile(r"users written in ([\d.]+) s of writes"),
    "flow_wall_s": re.compile(r"this invocation: .*?([\d.]+) s\s*$"),
    "new_calls": re.compile(r"this invocation: \d+ users simulated, ([\d,]+) LLM calls"),
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


# ----------------------------------------------------------------------------- DuckDB facts


def read_db(db: Path, sql: str, params: list | None = None):
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


FACTS_SQL = """
select count(*) filter (where not cached)                        as calls,
       count(*) filter (where cached)                            as cached_calls,
       coalesce(sum(prompt_tokens) filter (where not cached), 0) as prompt_tokens,
       coalesce(sum(completion_tokens) filter (where not cached), 0) as completion_tokens,
       count(*) filter (where not cached and status <> 'ok')     as bad_calls
from llm_calls where run_id = ?
"""
BY_PROMPT_SQL = """
select prompt_name, count(*) as calls, avg(prompt_tokens) as prompt_tokens_avg,
       sum(prompt_tokens) as prompt_tokens, avg(completion_tokens) as completion_tokens_avg
from llm_calls where run_id = ? and not cached group by 1 order by 1
"""
CHAINS_SQL = """
select fold, user_id,
       count(*) filter (where prompt_name like 'profile%')             as chain_profile_calls,
       count(*) filter (where prompt_name = 'rating')                  as rating_calls
from llm_calls where run_id = ? and not cached group by 1, 2
"""
LATENCY_SQL = """
select avg(latency_s) as mean, quantile_cont(latency_s, 0.5) as p50, quantile_cont(latency_s, 0.95) as p95,
       max(latency_s) as max, sum(latency_s) as total
from llm_calls where run_id = ? and not cached
"""
RATINGS_SQL = """
select count(*) as pairs, count(*) filter (where status = 'ok') as rated,
       count(*) filter (where status <> 'ok') as failed
from simulated_ratings where run_id = ?
"""


def run_facts(db: Path, run_id: str) -> dict:
    facts = {k: int(v) for k, v in read_db(db, FACTS_SQL, [run_id]).iloc[0].items()}
    facts.update({k: int(v) for k, v in read_db(db, RATINGS_SQL, [run_id]).iloc[0].items()})
    chains = read_db(db, CHAINS_SQL, [run_id])
    if not chains.empty:
        # a user's chain: profile create/refine/update calls in sequence + one rating call at the end
        chain = chains["chain_profile_calls"] + (chains["rating_calls"] > 0).astype(int)
        facts["longest_chain_calls"] = int(chain.max())
    else:
        facts["longest_chain_calls"] = 0
    facts["by_prompt"] = read_db(db, BY_PROMPT_SQL, [run_id])
    lat = read_db(db, LATENCY_SQL, [run_id]).iloc[0]
    facts["latency"] = {k: float(v) if v == v else float("nan") for k, v in lat.items()}
    return facts


def planned_work(
    db: Path, fold: str, users: int | None, seed: int = 0, dataset: str = "ml-100k", update: bool = True
) -> list[tuple[int, int, int]]:
    """(profile calls, rating calls, update calls) per planned user, with the code's own planner."""
    from doppel.tasks.planning import build_work, select_users
    from doppel.tasks.settings import SimulationSettings
    from doppel.tasks.simulation import chain_shape

    sim = SimulationSettings(update_profile=update)
    ids = select_users(db, dataset, fold, users, None, seed)
    return [chain_shape(w, sim) for w in build_work(db, dataset, fold, ids, sim)]


def critical_path(shape: tuple[int, int, int]) -> int:
    n_profile, n_rate, n_update = shape
    return n_profile + n_update + (1 if n_rate else 0)


def ideal_wall(calls: int, longest_chain: int, latency: float, concurrency: int) -> float:
    """The LLM-bound limit: all calls over the allowed concurrency, or the longest user chain."""
    return max(calls * latency / max(1, concurrency), longest_chain * latency)


# ----------------------------------------------------------------------------- scheduling model


def simulate_schedule(
    shapes: list[tuple[int, int, int]],
    latency: float,
    concurrency: int,
    chunks: int = 2,
    users_per_slot: float | None = 3,
    order: str = "longest",
) -> float:
    """Wall time of doppel's scheduler with every call taking exactly `latency` and zero CPU cost.

    Mirrors tasks/simulation.py: users are split into `chunks` (balanced by calls, longest first),
    each chunk gets concurrency/chunks slots handed to the waiter with the longest remaining chain
    (rating leaves have priority 1), and at most users_per_slot x slots users of a chunk are in
    flight (None: all at once), admitted longest chain first (order="longest") or as listed ("fifo").
    """
    # partition like tasks.planning.partition: longest first to the lightest chunk
    parts: list[list[tuple[int, int, int]]] = [[] for _ in range(max(1, chunks))]
    loads = [0] * len(parts)
    for shape in sorted(shapes, key=lambda s: -sum(s)):
        i = loads.index(min(loads))
        parts[i].append(shape)
        loads[i] += sum(shape)
    shares = [concurrency // len(parts) + (1 if i < concurrency % len(parts) else 0) for i in range(len(parts))]
    return max(_simulate_chunk(p, latency, s, users_per_slot, order) for p, s in zip(parts, shares) if p)


def _simulate_chunk(shapes, latency, slots, users_per_slot, order) -> float:
    if order == "longest":
        shapes = sorted(shapes, key=lambda s: -critical_path(s))
    admit = len(shapes) if users_per_slot is None else max(1, int(users_per_slot * slots))
    if slots == 1:
        admit = 1
    # per user: a list of chain steps; each profile step may release a rating leaf
    users = []
    for n_profile, n_rate, n_update in shapes:
        steps = ["p"] * n_profile
        for j in range(n_rate):
            steps.append("r")  # spawn a rating leaf (not on the chain)
            if j < n_update:
                steps.append("p")
        users.append(
            {"steps": steps, "pos": 0, "open_leaves": 0, "remaining": critical_path((n_profile, n_rate, n_update))}
        )
    now, free, seq = 0.0, slots, 0
    waiting: list[tuple[float, int, int, str]] = []  # (-priority, seq, user, kind)
    events: list[tuple[float, int, int, str]] = []  # (time, seq, user, kind)
    next_user, in_flight, done = 0, 0, 0

    def request(u: int, kind: str, priority: float) -> None:
        nonlocal seq, free
        seq += 1
        if free > 0 and not waiting:
            free -= 1
            heapq.heappush(events, (now + latency, seq, u, kind))
        else:
            heapq.heappush(waiting, (-priority, seq, u, kind))

    def advance(u: int) -> None:
        """Issue the user's next chain call (spawning rating leaves on the way) or finish it."""
        nonlocal in_flight, done
        user = users[u]
        while user["pos"] < len(user["steps"]) and user["steps"][user["pos"]] == "r":
            user["pos"] += 1
            user["open_leaves"] += 1
            request(u, "r", 1)
        if user["pos"] < len(user["steps"]):
            user["pos"] += 1
            user["chain_busy"] = True
            request(u, "p", user["remaining"])
        elif user["open_leaves"] == 0:
            in_flight -= 1
            done += 1

    def admit_users() -> None:
        nonlocal next_user, in_flight
        while next_user < len(users) and in_flight < admit:
            in_flight += 1
            next_user += 1
            advance(next_user - 1)

    admit_users()
    while events:
        now, _, u, kind = heapq.heappop(events)
        # the slot goes to the best waiter at once
        if waiting:
            _, s, wu, wkind = heapq.heappop(waiting)
            heapq.heappush(events, (now + latency, s, wu, wkind))
        else:
            free += 1
        user = users[u]
        if kind == "r":
            user["open_leaves"] -= 1
            if user["pos"] >= len(user["steps"]) and user["open_leaves"] == 0 and not _chain_busy(user):
                in_flight -= 1
                done += 1
        else:
            user["remaining"] -= 1
            user["chain_busy"] = False
            advance(u)
        admit_users()
    return now


def _chain_busy(user: dict) -> bool:
    return bool(user.get("chain_busy"))


# ----------------------------------------------------------------------------- output


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


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
