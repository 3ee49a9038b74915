"""The scripted LLM test server (`doppel.testing.llm_server`) and a Prefect API server, as subprocesses."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doppel.flows.runtime.prefect_api import api_server_argv
from doppel.flows.runtime.processes import free_port, stop_process, wait_healthy
from doppel.testing.llm_server import admin, start_subprocess

__all__ = ["admin", "llm_server", "prefect_server", "server_requests", "server_reset", "server_stats"]


@contextlib.contextmanager
def llm_server(**options: Any) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m doppel.testing.llm_server` with these options (latency, cap, faults); yields (process, base_url)."""
    proc, base_url = start_subprocess(**options)
    try:
        yield proc, base_url
    finally:
        stop_process(proc)


def server_stats(base_url: str) -> dict:
    return admin(base_url, "stats")


def server_requests(base_url: str) -> int:
    """Chat requests the server has settled (answered, failed or dropped)."""
    return int(server_stats(base_url)["requests"])


def server_reset(base_url: str) -> None:
    admin(base_url, "reset")


@contextlib.contextmanager
def prefect_server(prefect_home: Path) -> Iterator[str]:
    """A running Prefect API server (as a lab's `prefect server start`), started outside the timed
    runs; yields its PREFECT_API_URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_UI_ENABLED="0", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen(api_server_argv(port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(f"{url}/health", proc, 180, "the Prefect API server")
        yield url
    finally:
        stop_process(proc)
