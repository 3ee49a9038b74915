"""The scripted LLM test server (`doppel.testing.llm_server`) and a Prefect API server, as subprocesses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doppel.testing.llm_server import admin, start_subprocess

__all__ = ["admin", "llm_server", "prefect_server", "server_requests", "server_reset", "server_stats"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def llm_server(**options: Any) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m doppel.testing.llm_server` with these options (latency, cap, faults); yields (process, base_url)."""
    proc, base_url = start_subprocess(**options)
    try:
        yield proc, base_url
    finally:
        stop(proc)


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
        stop(proc)
