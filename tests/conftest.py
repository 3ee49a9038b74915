"""Shared fixtures: a real Prefect API server (temp home), the HTTP LLM test server, run settings."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
