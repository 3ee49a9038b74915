"""The Prefect API a run talks to: the one in PREFECT_API_URL, or one local server doppel starts and stops."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from doppel.flows.runtime.processes import die_with_parent, free_port, stop_process, wait_healthy

PREFECT_QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


@contextlib.contextmanager
def prefect_api(on_url: Callable[[], None] | None = None) -> Iterator[str]:
    """Use PREFECT_API_URL if set; else start one local API server shared by every worker process.

    Without it each Dask worker would start its own ephemeral server (and race), so start one
    before the cluster and export its URL for the workers to inherit. `on_url` runs as soon as
    PREFECT_API_URL is exported, before the server answers (e.g. `prestart_cluster`: workers
    inherit the URL and spawn while the server starts; or imports that then overlap its boot).
    """
    for key, value in PREFECT_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ.get("PREFECT_API_URL"):
        if on_url is not None:
            on_url()
        with _prefect_settings(os.environ["PREFECT_API_URL"]):
            yield os.environ["PREFECT_API_URL"]
        return
    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    # its output goes to a file: a pipe nobody reads could fill up and stall the server in a long run
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        api_server_argv(port),
        env=env,
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,  # a terminal's Ctrl-C reaches doppel only; doppel stops the server last
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        os.environ["PREFECT_API_URL"] = url  # for child processes (Dask workers)
        if on_url is not None:
            on_url()
        wait_healthy(f"{url}/health", process, 180, "Prefect API server", log)
        with _prefect_settings(url):
            try:
                yield url
            finally:
                _flush_prefect_logs()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_process(process)
        log.close()


def current_api_url() -> str | None:
    """The API the running flow talks to, for worker processes to inherit: PREFECT_API_URL, or the
    ephemeral server Prefect started in this process for a flow called from Python (a notebook,
    a deployment's flow called directly). Without it each Dask worker starts a server of its own,
    and those outlive the workers."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    with contextlib.suppress(Exception):
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is not None and context.client is not None:
            return str(context.client.api_url).rstrip("/")
    return None


@contextlib.contextmanager
def _prefect_settings(url: str) -> Iterator[None]:
    """This process's Prefect settings were read when prefect was imported: point them at `url` too.

    Otherwise a flow started here would spin up Prefect's own ephemeral server beside ours.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        yield


def _flush_prefect_logs() -> None:
    """Ship buffered run logs while the API server is still up (else: "Error logging to API")."""
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


def api_server_argv(port: int) -> list[str]:
    """The command of a Prefect API server (no UI) on 127.0.0.1:port, as `prefect server start` runs it."""
    # where prefect is, without importing it here (~1 s): that import then overlaps the server's boot
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise RuntimeError("prefect is not installed")
    site = Path(spec.origin).parent.parent
    app = ["--factory", "prefect.server.api.server:create_app"]
    quiet = "--host 127.0.0.1 --log-level error --lifespan on".split()
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(site), *app, *quiet, "--port", str(port)]
