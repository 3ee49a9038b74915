"""Deployments: deployments/prefect.yaml on a real `prefect server`, a process work pool and worker;
and `doppel serve`. Every process started here is stopped (with its children) even on failure.

The round trip (trigger -> COMPLETED) is printed; run with `-s` to see it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

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
    table,
    tail,
    wait_flow_run,
)

pytestmark = pytest.mark.slow


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
    env.pop("PREFECT_LOGGING_LEVEL")  # serve's own --log-level (INFO) must reach the runs, as in a user's shell
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
