"""Helpers for the deployment tests: start and stop process trees, talk to a Prefect server and its CLI,
check a run's rows."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import psutil
import pytest

from doppel.flows.runtime import die_with_parent

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
SERVE = [sys.executable, "-c", "import doppel.flows.cli_deploy; from doppel.flows.cli import app; app()", "serve"]


# ----------------------------------------------------------------------------- processes


def spawn(argv: list[str], log: Path, env: dict | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """A child in its own session, dying with us, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def stop_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Signal a process and everything under it (its group too); kill what is left after `grace`."""
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.2)
    pytest.fail(f"no answer at {url} within {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def prefect_env(home: Path, api_url: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        PWD=str(REPO),
    )
    env.pop("PYTHONPATH", None)  # doppel as installed, the way a user's shell finds it
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def prefect(env: dict, *args: str, log: Path, timeout: float = 120) -> str:
    """Run the prefect CLI; fail the test with its output when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    with open(log, "a") as out:
        out.write(f"$ prefect {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def api_call(method: str, url: str, **kwargs) -> dict:
    """One Prefect API request; transient server errors (SQLite busy while the scheduler and the
    serve process write) are retried for up to 60 s, anything else fails with the response body."""
    t0 = time.monotonic()
    while True:
        response = httpx.request(method, url, timeout=10, **kwargs)
        if response.is_success:
            return response.json()
        if response.status_code < 500 or time.monotonic() - t0 > 60:
            pytest.fail(f"{method} {url} -> {response.status_code}: {response.text[:2000]}")
        time.sleep(0.5)


def wait_flow_run(api: str, run_id: str, timeout: float, procs: dict, want: str = "COMPLETED") -> dict:
    """Poll until the flow run is final; fail with the logs of `procs` if it did not end in `want`."""
    t0 = time.monotonic()
    run = {}
    while time.monotonic() - t0 < timeout:
        run = api_call("GET", f"{api}/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.2)
    if run.get("state_type") != want:
        logs = "\n".join(f"--- {name}\n{tail(path)}" for name, path in procs.items())
        pytest.fail(f"flow run {run_id} ended {run.get('state_type')}: {run.get('state', {}).get('message')}\n{logs}")
    return run


def table(db: str, sql: str):
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def check_run_rows(db: str, run_id: str, n_users: int) -> None:
    assert table(db, f"select status from runs where run_id = '{run_id}'")["status"].tolist() == ["finished"]
    users = table(db, f"select * from run_users where run_id = '{run_id}'")
    assert len(users) == n_users and set(users["status"]) == {"done"}
    ratings = table(db, f"select * from simulated_ratings where run_id = '{run_id}'")
    assert len(ratings) == users["n_pairs"].sum() > 0 and set(ratings["status"]) == {"ok"}
    metrics = table(db, f"select * from metrics where run_id = '{run_id}' and simulator = 'llm'")
    assert metrics.query("metric == 'n'")["value"].iloc[0] == len(ratings)


def job_params(tmp_path: Path, base_url: str, run_id: str) -> dict:
    """The weekly job pointed at a temp DuckDB and the test LLM server: 3 synthetic users, threads."""
    return {
        "dataset": "synthetic",
        "synthetic_users": 24,
        "synthetic_items": 60,
        "users": 3,
        "db": str(tmp_path / "doppel.duckdb"),
        "cache_dir": str(tmp_path / "llm-cache"),
        "base_url": base_url,
        "model": "doppel-test-model",
        "runner": "threads",
        "run_id": run_id,
        "baselines": False,
    }


def processes_with_env(key: str, prefix: str) -> list[psutil.Process]:
    """Live processes whose environment has `key` starting with `prefix`."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get(key, "").startswith(prefix):
                found.append(p)
    return found


def as_param(key: str, value) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"
