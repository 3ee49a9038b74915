"""Deployments: deployments/prefect.yaml on a real `prefect server`, a process work pool and worker;
and `doppel serve`. Every process started here is stopped (with its children) even on failure.

The round trip (trigger -> COMPLETED) is printed; run with `-s` to see it.
"""

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

from doppel.flows.runtime import die_with_parent, free_port

pytestmark = pytest.mark.slow

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
        PYTHONPATH=str(REPO),
        PWD=str(REPO),
    )
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free loopback port, its database in a temp PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    proc = spawn(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        log,
        prefect_env(home, api),
    )
    try:
        startup = wait_healthy(f"{api}/health", proc, log)
        yield {"api": api, "port": port, "home": home, "log": log, "startup": startup}
    finally:
        stop_tree(proc)


@pytest.fixture(scope="module")
def llm_subprocess(tmp_path_factory):
    from doppel.testing.llm_server import start_subprocess

    proc, base_url = start_subprocess(latency=0.02)
    try:
        yield base_url
    finally:
        stop_tree(proc)


@pytest.fixture
def started(tmp_path):
    """started(name, argv, env) -> (process, log path); at teardown every process is stopped, and any
    process still carrying this test's DOPPEL_TEST_TMP (an orphan: a flow run, a Dask worker) fails it."""
    procs: list[subprocess.Popen] = []

    def start(name: str, argv: list[str], env: dict) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        procs.append(spawn(argv, log, env))
        return procs[-1], log

    yield start
    for proc in reversed(procs):
        stop_tree(proc)
    orphans = processes_with_env("DOPPEL_TEST_TMP", str(tmp_path))
    for p in orphans:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    assert not orphans, f"processes left running: {[(p.pid, p.info['cmdline']) for p in orphans]}"


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


# ----------------------------------------------------------------------------- tests


def test_prefect_deploy_worker_round_trip(tmp_path, server, llm_subprocess, started):
    """prefect.yaml -> `prefect deploy --all` -> `prefect deployment run` -> worker --run-once -> rows."""
    api, server_log = server["api"], server["log"]
    env = prefect_env(server["home"], api)
    env["DOPPEL_TEST_TMP"] = str(tmp_path)  # marks every process of this test (orphan check)
    # the operator's trust, in the worker's environment: this endpoint, this folder
    env.update(DOPPEL_ALLOWED_ENDPOINTS=llm_subprocess, DOPPEL_DATA_ROOTS=str(tmp_path))
    cli_log = tmp_path / "cli.log"
    prefect(env, "work-pool", "create", "doppel-process", "--type", "process", "--overwrite", log=cli_log)
    prefect(env, "deploy", "--all", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)), log=cli_log)

    job = httpx.get(f"{api}/deployments/name/doppel-job/weekly", timeout=10).json()
    assert job["work_pool_name"] == "doppel-process" and job["tags"] == ["doppel"]
    assert job["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert [s["schedule"]["cron"] for s in job["schedules"]] == ["0 3 * * 1"]
    assert job["parameter_openapi_schema"]["properties"]["users"]["description"]
    score = httpx.get(f"{api}/deployments/name/doppel-score/on-demand", timeout=10).json()
    assert score["work_pool_name"] == "doppel-process" and "run_id" in score["parameter_openapi_schema"]["required"]

    params = job_params(tmp_path, llm_subprocess, "deploy-it")
    t0 = time.monotonic()
    out = prefect(
        env,
        "deployment",
        "run",
        "doppel-job/weekly",
        *[a for k, v in params.items() for a in ("--param", as_param(k, v))],
        log=cli_log,
    )
    triggered = time.monotonic() - t0
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    worker, worker_log = started(
        "worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", "doppel-process", "--run-once"], env
    )
    run = wait_flow_run(api, flow_run_id, 300, {"worker": worker_log, "server": server_log})
    round_trip = time.monotonic() - t0
    check_run_rows(params["db"], "deploy-it", n_users=3)
    assert worker.wait(timeout=60) == 0

    # the scoring deployment on the same file
    out = prefect(
        env,
        "deployment",
        "run",
        "doppel-score/on-demand",
        "--param",
        f"db={params['db']}",
        "--param",
        "run_id=deploy-it",
        "--param",
        "baselines=false",
        log=cli_log,
    )
    score_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    worker2, worker2_log = started(
        "worker2", [sys.executable, "-m", "prefect", "worker", "start", "--pool", "doppel-process", "--run-once"], env
    )
    wait_flow_run(api, score_run_id, 180, {"worker": worker2_log})
    gates = table(params["db"], "select success from validation_results where run_id = 'deploy-it'")
    assert len(gates) == 4 and gates["success"].all()  # the run's own gate + the rescore's
    assert worker2.wait(timeout=60) == 0

    # `doppel serve` will not take over a deployment bound to the pool (its runs would crash)
    refused = subprocess.run(
        SERVE + ["--deployment", "weekly"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "work pool 'doppel-process'" in refused.stderr, refused.stderr

    print(
        f"\nDEPLOYMENT server_start={server['startup']:.1f}s trigger_cli={triggered:.1f}s "
        f"round_trip={round_trip:.1f}s (trigger -> COMPLETED, worker start included) "
        f"flow_run={run['total_run_time']:.1f}s "
        f"queued={_seconds(run['start_time']) - _seconds(run['expected_start_time']):.1f}s"
    )


def test_doppel_serve_runs_a_triggered_deployment(tmp_path, server, llm_subprocess, started):
    """`doppel serve` on a server the operator names (PREFECT_API_URL) serves the yaml's job; an
    API-triggered run completes in a child of the serve process; SIGTERM stops everything. Without
    PREFECT_API_URL, doppel serve will not use (nor send its secret to) a server it did not start."""
    api, port = server["api"], server["port"]
    env = prefect_env(server["home"], None)
    env["DOPPEL_TEST_TMP"] = str(tmp_path)
    stranger = subprocess.run(
        SERVE + ["--port", str(port), "--deployment", "weekly"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stranger.returncode == 2 and f"did not start answers on 127.0.0.1:{port}" in stranger.stderr, stranger.stderr
    env = prefect_env(server["home"], api)
    env["DOPPEL_TEST_TMP"] = str(tmp_path)
    params = job_params(tmp_path, llm_subprocess, "serve-it")
    argv = SERVE + [
        "--deployment",
        "weekly",
        "--suffix",
        "-served",
        *[a for k, v in params.items() if k != "run_id" for a in ("-p", as_param(k, v))],
    ]
    serve, serve_log = started("serve", argv, env)
    t0 = time.monotonic()
    deployment = None
    while time.monotonic() - t0 < 120 and deployment is None:
        response = httpx.get(f"{api}/deployments/name/doppel-job/weekly-served", timeout=10)
        if response.status_code == 200:
            deployment = response.json()
        elif serve.poll() is not None:
            pytest.fail(f"doppel serve exited with {serve.returncode}:\n{tail(serve_log)}")
        else:
            time.sleep(0.3)
    assert deployment, f"doppel serve registered nothing:\n{tail(serve_log)}"
    startup = time.monotonic() - t0
    assert deployment["work_pool_name"] is None and deployment["parameters"]["db"] == params["db"]
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * 1"]

    t1 = time.monotonic()
    created = api_call(
        "POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"run_id": "serve-it"}}
    )
    run = wait_flow_run(api, created["id"], 300, {"serve": serve_log})
    round_trip = time.monotonic() - t1
    check_run_rows(params["db"], "serve-it", n_users=3)
    assert "run serve-it: finished" in tail(serve_log, 200_000), "the served run's logs print in serve's output"

    children = psutil.Process(serve.pid).children(recursive=True)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0, tail(serve_log)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"doppel serve left {[p.pid for p in alive]} running"
    print(
        f"\nSERVE startup={startup:.1f}s (until the deployment is registered) round_trip={round_trip:.1f}s "
        f"(API trigger -> COMPLETED) flow_run={run['total_run_time']:.1f}s"
    )


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------------------- who may point a run where


def test_a_flow_run_cannot_send_the_key_to_an_endpoint_the_operator_did_not_allow(tmp_path, server, started):
    """A capturing OpenAI-compatible server on loopback, named as base_url by an API-created run of the
    deployed doppel-job: the worker holds the key, yet the server receives nothing and the run's error
    names the endpoint. The same run on a worker whose environment allows the endpoint completes."""
    from doppel.testing.llm_server import LLMTestServer
    from tests.test_security import KeyRecorder

    api = server["api"]
    key = "sk-SENTINEL-deploy-0123456789"
    env = prefect_env(server["home"], api)
    env.update(DOPPEL_TEST_TMP=str(tmp_path), OPENAI_API_KEY=key, DOPPEL_DATA_ROOTS=str(tmp_path))
    cli_log = tmp_path / "cli.log"
    prefect(env, "work-pool", "create", "doppel-process", "--type", "process", "--overwrite", log=cli_log)
    prefect(env, "deploy", "--name", "weekly", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)), log=cli_log)
    deployment = httpx.get(f"{api}/deployments/name/doppel-job/weekly", timeout=10).json()

    capture = LLMTestServer(latency=0.0)
    capture.app = KeyRecorder(capture.app)
    capture.start()
    try:
        params = job_params(tmp_path, capture.base_url, "not-yours")
        created = api_call("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": params})
        worker, worker_log = started(
            "worker",
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "doppel-process", "--run-once"],
            env,
        )
        run = wait_flow_run(api, created["id"], 300, {"worker": worker_log}, want="FAILED")
        message = run["state"]["message"]
        assert capture.base_url in message and "DOPPEL_ALLOWED_ENDPOINTS" in message, message
        assert dict(capture.app.auth) == {}, f"the endpoint received requests: {dict(capture.app.auth)}"
        assert not Path(params["db"]).exists(), "the refused run wrote a database"
        assert worker.wait(timeout=60) == 0

        # the operator allows it (the worker's environment): the same parameters run
        allowed = {**env, "DOPPEL_ALLOWED_ENDPOINTS": capture.base_url}
        created = api_call("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": params})
        worker2, worker2_log = started(
            "worker2",
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "doppel-process", "--run-once"],
            allowed,
        )
        wait_flow_run(api, created["id"], 300, {"worker": worker2_log})
        assert capture.app.auth.get(f"Bearer {key}", 0) > 0, dict(capture.app.auth)
        check_run_rows(params["db"], "not-yours", n_users=3)
        assert worker2.wait(timeout=60) == 0

        # a data path outside the worker's data root is refused the same way, before any request
        before = sum(capture.app.auth.values())
        outside = {**params, "run_id": "outside", "db": "/tmp/doppel-elsewhere/doppel.duckdb"}
        created = api_call(
            "POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": outside}
        )
        worker3, worker3_log = started(
            "worker3",
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "doppel-process", "--run-once"],
            allowed,
        )
        run = wait_flow_run(api, created["id"], 300, {"worker": worker3_log}, want="FAILED")
        assert (
            "/tmp/doppel-elsewhere/doppel.duckdb" in run["state"]["message"]
            and "DOPPEL_DATA_ROOTS" in run["state"]["message"]
        )
        assert sum(capture.app.auth.values()) == before and not Path("/tmp/doppel-elsewhere").exists()
    finally:
        capture.stop()


def wait_registered(url: str, auth: tuple[str, str], serve: subprocess.Popen, timeout: float = 120) -> int:
    """The status of GET url once it is 200 (prefect.serve applied the deployment) or time is up."""
    t0, status = time.monotonic(), None
    while time.monotonic() - t0 < timeout and status != 200 and serve.poll() is None:
        time.sleep(0.3)
        status = httpx.get(url, auth=auth, timeout=10).status_code
    return status


def test_doppel_serve_starts_a_prefect_server_that_refuses_strangers(tmp_path, llm_subprocess, started):
    """`doppel serve` with no server on its port starts one with Prefect's basic auth (a secret made at
    first start, 0600), CSRF protection and CORS limited to its own origin; serve itself gets in."""
    home = tmp_path / "prefect-home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, None)
    env["DOPPEL_TEST_TMP"] = str(tmp_path)
    params = job_params(tmp_path, llm_subprocess, "unused")
    argv = SERVE + ["--port", str(port), "--deployment", "weekly", "--no-schedules", "-p", as_param("db", params["db"])]
    serve, serve_log = started("serve", argv, env)
    secret_file = home / "doppel-serve-auth"
    t0, registered = time.monotonic(), None
    while time.monotonic() - t0 < 180 and registered is None:
        if serve.poll() is not None:
            pytest.fail(f"doppel serve exited with {serve.returncode}:\n{tail(serve_log)}")
        if "serving doppel-job/weekly" in tail(serve_log):
            registered = True
        time.sleep(0.3)
    assert registered, f"doppel serve registered nothing:\n{tail(serve_log)}"
    assert (secret_file.stat().st_mode & 0o777) == 0o600
    user, _, password = secret_file.read_text().strip().partition(":")
    assert user and len(password) >= 32 and str(secret_file) in tail(serve_log)

    assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes stay open
    # without the secret (or with a wrong one): 401; a POST may meet the CSRF check first (403)
    for method, path, body in [
        ("POST", "/deployments/filter", {}),
        ("GET", "/deployments/name/doppel-job/weekly", None),
    ]:
        refused = {401} if method == "GET" else {401, 403}
        assert httpx.request(method, api + path, json=body, timeout=10).status_code in refused, path
        wrong = httpx.request(method, api + path, json=body, auth=(user, "wrong"), timeout=10)
        assert wrong.status_code in refused, path
    # with the secret: serve registers its deployment (its own client gets in)
    assert wait_registered(f"{api}/deployments/name/doppel-job/weekly", (user, password), serve) == 200
    deployment = httpx.get(f"{api}/deployments/name/doppel-job/weekly", auth=(user, password), timeout=10)
    assert deployment.json()["parameters"]["db"] == params["db"]
    # CSRF: a state-changing request with the secret but without a CSRF token is refused
    no_csrf = httpx.post(f"{api}/flow_runs/filter", json={}, auth=(user, password), timeout=10)
    assert no_csrf.status_code == 403 and "csrf" in no_csrf.text.lower(), no_csrf.text
    # CORS: another origin's page is not allowed to read answers
    preflight = httpx.options(
        f"{api}/flow_runs/filter",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")

    # a second doppel serve on the same port shares the server (it is ours: it holds our secret)
    second, second_log = started(
        "serve2", SERVE + ["--port", str(port), "--deployment", "weekly", "--no-schedules", "--suffix", "-two"], env
    )
    assert wait_registered(f"{api}/deployments/name/doppel-job/weekly-two", (user, password), second) == 200, tail(
        second_log
    )
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0, tail(second_log)

    # the secret outlives the server: the next start reuses it, and so can the user's own prefect CLI
    secret = secret_file.read_text()
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0, tail(serve_log)
    assert secret_file.read_text() == secret
