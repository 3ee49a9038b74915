"""Deployments: who may point a run where. The deployed doppel-job on a real `prefect server`, a process
work pool and worker, refuses endpoints the operator did not allow; `doppel serve` starts a Prefect
server that refuses strangers. Every process started here is stopped (with its children) even on
failure. The fixtures (`server`, `llm_subprocess`, `started`) are in conftest.py; the round trips are
in test_deployments_run.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from doppel.flows.runtime import free_port
from tests._deployments import (
    PREFECT_YAML,
    REPO,
    SERVE,
    api_call,
    as_param,
    check_run_rows,
    job_params,
    prefect,
    prefect_env,
    tail,
    wait_flow_run,
)

pytestmark = pytest.mark.slow

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
        log = worker_log.read_text()  # the reason, once, and no traceback of a crash around it
        assert f"refused: {message.removeprefix('refused: ')}" in log and "Traceback" not in log, log[-3000:]
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


def test_serve_imports_every_entrypoint_as_installed(tmp_path):
    """`doppel serve` imports each prefect.yaml entrypoint from the installed package, from any folder and with
    no PYTHONPATH (the console script does not put the checkout on sys.path)."""
    code = (
        "from doppel.flows.deploy import DEFAULT_FILE, load_entrypoint, load_specs\n"
        "print(sorted({load_entrypoint(s['entrypoint']).name for s in load_specs(DEFAULT_FILE)}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "doppel-job" in done.stdout and "doppel-arena" in done.stdout, done.stdout
