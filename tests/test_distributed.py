"""`--dask-address`: the run flow on a real `dask scheduler` + two `dask worker` processes gives the same
tables as on the LocalCluster. Prints both walls (run with `-s` to see them).

The workers run in their own processes, as on other machines: they report task runs to the session's
Prefect server (PREFECT_API_URL in their environment), import doppel from the repo (PYTHONPATH) and
reach the LLM endpoint over HTTP. The DuckDB file is only touched by the flow (this process).
"""

from __future__ import annotations

import os
import sys
import time

import duckdb
import pytest

from doppel.flows.runtime import free_port
from tests._deployments import REPO, processes_with_env, spawn, stop_tree, tail

pytestmark = pytest.mark.slow

LATENCY_S = 0.1
N_USERS = 24


@pytest.fixture
def dask_cluster(prefect_server, tmp_path):
    """A scheduler and two single-thread workers on loopback; yields the scheduler address."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(REPO), "DOPPEL_TEST_TMP": str(tmp_path)}
    dask = [sys.executable, "-m", "dask"]  # the `dask` command
    procs = [
        spawn(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            tmp_path / "scheduler.log",
            env,
        )
    ]
    try:
        for name in ("w1", "w2"):
            (tmp_path / name).mkdir()
            procs.append(
                spawn(
                    [
                        *dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--name",
                        name,
                        "--no-dashboard",
                        "--local-directory",
                        str(tmp_path / name),
                    ],
                    tmp_path / f"{name}.log",
                    env,
                )
            )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    except Exception:
        print("\n".join(f"--- {log}\n{tail(tmp_path / log)}" for log in ("scheduler.log", "w1.log", "w2.log")))
        raise
    finally:
        for proc in reversed(procs):
            stop_tree(proc)
        orphans = processes_with_env("DOPPEL_TEST_TMP", str(tmp_path))
        for p in orphans:
            p.kill()
        assert not orphans, f"processes left running: {[p.pid for p in orphans]}"


def tables(db: str, run_id: str) -> dict:
    con = duckdb.connect(db, read_only=True)
    try:
        return {
            "ratings": con.execute(
                "select fold, user_id, item_id, rating, status, batch from simulated_ratings "
                "where run_id = ? order by all",
                [run_id],
            ).df(),
            "profiles": con.execute(
                "select fold, user_id, version, stage, text from profiles where run_id = ? order by all", [run_id]
            ).df(),
            "users": con.execute(
                "select fold, user_id, status, n_pairs from run_users where run_id = ? order by all", [run_id]
            ).df(),
            "status": con.execute("select status from runs where run_id = ?", [run_id]).fetchone()[0],
        }
    finally:
        con.close()


def test_dask_address_matches_local_cluster(prefect_server, llm_server, run_settings, dask_cluster, tmp_path):
    from doppel.flows.simulate import simulate

    llm_server.configure(latency=LATENCY_S)
    common = dict(runner="dask", users=None, synthetic_users=N_USERS, dask_workers=2, baselines=False)
    remote = run_settings(
        run_id="dist", db=str(tmp_path / "remote" / "doppel.duckdb"), dask_address=dask_cluster, **common
    )
    local = run_settings(run_id="dist", db=str(tmp_path / "local" / "doppel.duckdb"), **common)
    walls = {}
    for name, settings in (("remote", remote), ("local", local)):
        os.makedirs(os.path.dirname(settings.db), exist_ok=True)
        t0 = time.monotonic()
        summary = simulate(settings)
        walls[name] = (time.monotonic() - t0, summary["this_invocation"]["new_calls"])
    a, b = tables(remote.db, "dist"), tables(local.db, "dist")
    assert a["status"] == b["status"] == "finished"
    assert len(a["users"]) > 0 and set(a["users"]["status"]) == {"done"}
    for key in ("users", "ratings", "profiles"):
        assert a[key].equals(b[key]), f"{key} differ between the remote cluster and the LocalCluster"
    assert walls["remote"][1] == walls["local"][1] > 0, "both runs made every call (separate caches)"
    print(
        f"\nDISTRIBUTED users={len(a['users'])} calls={walls['remote'][1]} latency={LATENCY_S}s "
        f"remote_wall={walls['remote'][0]:.1f}s local_wall={walls['local'][0]:.1f}s "
        "(local includes starting its LocalCluster; remote: scheduler + 2 workers already up)"
    )


def _profiler_state(dask_worker) -> tuple[bool, bool]:
    import dask

    return dask.config.get("distributed.worker.profile.enabled"), "profile" in dask_worker.periodic_callbacks


@pytest.mark.parametrize("env_value", [None, "True"])
def test_local_workers_run_without_the_statistical_profiler(tmp_path, monkeypatch, env_value):
    """doppel's LocalCluster workers skip Dask's 10 ms stack sampler, unless the user's environment asks for it."""
    from distributed import Client

    from doppel.flows.runtime import PROFILER_ENV, start_local_cluster
    from doppel.tasks.settings import RunSettings

    if env_value is None:
        monkeypatch.delenv(PROFILER_ENV, raising=False)
    else:
        monkeypatch.setenv(PROFILER_ENV, env_value)
    cluster = start_local_cluster(RunSettings(db=str(tmp_path / "d.duckdb")))
    try:
        with Client(cluster) as client:
            states = set(client.run(_profiler_state).values())
    finally:
        cluster.close()
    assert states == ({(False, False)} if env_value is None else {(True, True)})


def _worker_view() -> dict:
    import os
    import sys

    from prefect.settings import get_current_settings

    return {
        "api_url": get_current_settings().api.url,
        "env": os.environ.get("PREFECT_API_URL"),
        "preloaded": "doppel.flows.simulate" in sys.modules,
    }


def test_local_workers_see_this_runs_prefect_api_after_an_earlier_run(tmp_path, monkeypatch):
    """The workers fork from a fork server that outlives a run and imported prefect under the first run's
    environment: a later run's workers must still report to that run's API server, not the first one's."""
    from distributed import Client

    from doppel.flows.runtime import start_local_cluster, worker_start_method
    from doppel.tasks.settings import RunSettings

    views = []
    for port in (4201, 4202):  # two runs in one process, each with its own (here: unstarted) API server
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
        cluster = start_local_cluster(RunSettings(db=str(tmp_path / f"{port}.duckdb")))
        try:
            with Client(cluster) as client:
                views.append(list(client.run(_worker_view).values()))
        finally:
            cluster.close()
    for port, seen in zip((4201, 4202), views):
        url = f"http://127.0.0.1:{port}/api"
        assert seen == [{"api_url": url, "env": url, "preloaded": True}] * 2
    assert worker_start_method() == "forkserver"  # Linux: the preload path was the one tested
