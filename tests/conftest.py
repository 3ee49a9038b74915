"""Shared fixtures: a real Prefect API server (temp home), the HTTP LLM test server, run settings."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from doppel.testing.llm_server import LLMTestServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("DOPPEL_ML100K_DIR", REPO.parent / "shared" / "data" / "ml-100k"))
ML100K_TEXT = ML100K.parent / "ml-100k-text" / "ml100k_movie_text.tsv"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect API server for the session, with its database in a temp PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-home")
    old = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    from doppel.flows.runtime import prefect_api

    with prefect_api() as url:
        yield url
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def llm_server_session():
    with LLMTestServer() as server:
        yield server


@pytest.fixture
def llm_server(llm_server_session):
    """The session's test server, reset and fault-free for each test."""
    llm_server_session.app.reset()
    llm_server_session.app.configure(
        latency=0.0, faults={}, max_concurrency=None, llama_cpp=False, other_models="", model="doppel-test-model"
    )
    return llm_server_session


@pytest.fixture
def scripted(llm_server):
    """The test server answering keyword JSON from the genres in the prompt (tests/test_ensemble.py)."""
    from tests.test_ensemble import genre_keywords

    llm_server.app.answer_fn = genre_keywords
    yield llm_server
    llm_server.app.answer_fn = None


@pytest.fixture
def run_settings(tmp_path, llm_server):
    from doppel.tasks.settings import LLMSettings, RunSettings

    def make(**overrides):
        llm = LLMSettings(
            base_url=llm_server.base_url,
            model="doppel-test-model",
            concurrency=8,
            timeout_s=10,
            max_retries=2,
            **overrides.pop("llm", {}),
        )
        base = dict(
            dataset="synthetic",
            synthetic_users=24,
            synthetic_items=60,
            folds=["u1"],
            users=6,
            db=str(tmp_path / "doppel.duckdb"),
            runner="threads",
            progress=False,
            llm=llm,
        )
        base.update(overrides)
        return RunSettings(**base)

    return make


# ----------------------------------------------------------------------------- deployments (test_deployments*)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free loopback port, its database in a temp PREFECT_HOME (test_deployments*)."""
    from doppel.flows.runtime import free_port
    from tests._deployments import prefect_env, spawn, stop_tree, wait_healthy

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
    """The LLM test server in its own process (test_deployments*): flow runs in other processes reach it."""
    from doppel.testing.llm_server import start_subprocess
    from tests._deployments import stop_tree

    proc, base_url = start_subprocess(latency=0.02)
    try:
        yield base_url
    finally:
        stop_tree(proc)


@pytest.fixture
def started(tmp_path):
    """started(name, argv, env) -> (process, log path); at teardown every process is stopped, and any
    process still carrying this test's DOPPEL_TEST_TMP (an orphan: a flow run, a Dask worker) fails it."""
    import psutil

    from tests._deployments import processes_with_env, spawn, stop_tree

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
