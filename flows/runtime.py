"""The engines a run needs, started and stopped by doppel: Prefect API, task runner, LLM server.

Each is a context manager that cleans up on normal exit, errors and Ctrl-C; child processes also
die with their parent (PR_SET_PDEATHSIG), so a SIGKILLed run leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx

from doppel.tasks.settings import LLMSettings, RunSettings

PREFECT_QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    import importlib.util

    # where prefect is, without importing it here (~1 s): that import then overlaps the server's boot
    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    # its output goes to a file: a pipe nobody reads could fill up and stall the server in a long run
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect_dir.parent),
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
        _wait_healthy(f"{url}/health", process, 180, "Prefect API server", log)
        with _prefect_settings(url):
            try:
                yield url
            finally:
                _flush_prefect_logs()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop(process)
        log.close()


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


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float, what: str, log=None) -> None:
    deadline = time.monotonic() + timeout_s
    # one client for all polls: a new one per poll builds an SSL context each time (~25 ms of CPU
    # taken from the server's own start-up; measured 2 s over a Prefect API boot)
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = ""
                if log is not None:
                    log.seek(0)
                    err = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{what} exited with code {process.returncode} during start-up: {err}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def task_runner(settings: RunSettings, n_chunks: int, dask_address: str | None = None):
    """The Prefect task runner for the fan-out: Dask (at an address) or threads."""
    if settings.runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, n_chunks))
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=dask_address or settings.dask_address)


# what unpickling the first chunk imports (the task lives in flows.simulate: prefect, openai,
# diskcache; ~3.5 s of CPU per process): the fork server imports it once and the workers fork from it
WORKER_PRELOAD = ["distributed", "doppel.flows.simulate"]


def _warm_worker() -> None:
    # a worker spawned without the fork server imports it here, while the Prefect API starts
    from prefect.context import refresh_global_settings_context

    import doppel.flows.simulate  # noqa: F401

    # a fork server started by an earlier run in this process imported prefect under that run's
    # settings; the nanny gave this worker today's environment (PREFECT_API_URL): read it again
    refresh_global_settings_context()


async def _ignore_ctrl_c() -> None:
    """On a local worker's event loop (its main thread): a terminal's Ctrl-C reaches the whole process
    group, but only doppel's main process should react (it stops the workers itself, quietly)."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _silence_distributed_logs() -> None:
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _quiet_workers(starting: Future) -> None:
    """Interrupted: the cluster closes under running tasks, whose lease releases and heartbeats then
    log connection errors; nothing is lost (leases expire), so don't print them over the one line."""
    from distributed import Client

    with contextlib.suppress(BaseException):
        _silence_distributed_logs()
        with Client(starting.result(timeout=0), timeout=5) as client:
            client.run(_silence_distributed_logs)


PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def worker_config() -> dict:
    """Dask settings for doppel's local workers (the nannies hand them to the worker processes).

    The statistical profiler samples the task thread's stack every 10 ms for the dashboard's
    Profile tab: ~3% of a worker's CPU in the u1 fan-out (py-spy), where the fan-out is CPU-bound.
    Off unless the user's environment turns it on (DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED).
    """
    return {} if os.environ.get(PROFILER_ENV) else {"distributed.worker.profile.enabled": False}


def worker_start_method() -> str:
    """How local workers start: forked from a fork server that imported WORKER_PRELOAD once (measured:
    2 workers' start-up CPU 6.8 s -> 3.3 s, the same wall on an idle machine), else spawned."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _start_local_cluster(settings: RunSettings):
    import dask
    from distributed import Client, LocalCluster
    from distributed.utils import get_mp_context

    spill = settings.work_dir() / "dask"
    spill.mkdir(parents=True, exist_ok=True)
    method = worker_start_method()
    with dask.config.set({**worker_config(), "distributed.worker.multiprocessing-method": method}):
        if method == "forkserver":
            # distributed sets its own preload list on first use; ours replaces it before the server starts
            get_mp_context().set_forkserver_preload(WORKER_PRELOAD)
        # the scheduler's HTTP routes (dashboard or not) bind a free loopback port: with the default
        # 8787 a second run at the same time warned "Port 8787 is already in use". Each worker gets
        # this process's environment now (a fork server keeps the one it started with).
        cluster = LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            local_directory=str(spill),
            host="127.0.0.1",
            env=dict(os.environ),
        )
    with Client(cluster) as client:
        client.run(_ignore_ctrl_c)
        client.run(_warm_worker)
    return cluster


_PRESTARTED: dict[str, Future] = {}


def _local_cluster_wanted(settings: RunSettings) -> bool:
    return settings.runner == "dask" and not settings.dask_address


def prestart_cluster(settings: RunSettings) -> None:
    """Start the local Dask cluster in the background now; `dask_cluster` takes it over (~3-5 s
    of worker spawning and imports then overlap the Prefect API server's start)."""
    if _local_cluster_wanted(settings) and "local" not in _PRESTARTED:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dask-start")
        _PRESTARTED["local"] = pool.submit(_start_local_cluster, settings)
        pool.shutdown(wait=False)


def discard_prestarted() -> None:
    """Close a pre-started cluster nobody took over (e.g. nothing was left to simulate, or an error)."""
    starting = _PRESTARTED.pop("local", None)
    if starting is not None:
        with contextlib.suppress(Exception):
            starting.result().close()


class ClusterLease:
    """Call it for the scheduler address (waits for the start-up); `close_soon()` starts closing
    the cluster in a thread once the workers are no longer needed, so the close (~3 s of worker
    shutdown) overlaps the scoring; `dask_cluster` waits for it on exit."""

    def __init__(self, address: Callable[[], str | None], starting: Future | None = None) -> None:
        self._address, self._starting = address, starting
        self._closing: threading.Thread | None = None

    def __call__(self) -> str | None:
        return self._address()

    def close_soon(self) -> None:
        if self._starting is None or self._closing is not None:
            return
        starting = self._starting

        def close() -> None:
            with contextlib.suppress(Exception):
                starting.result().close()

        self._closing = threading.Thread(target=close, name="dask-close", daemon=True)
        self._closing.start()

    def close(self) -> None:
        self.close_soon()
        if self._closing is not None:
            self._closing.join()


@contextlib.contextmanager
def dask_cluster(settings: RunSettings, start: bool = True) -> Iterator[ClusterLease]:
    """A local Dask cluster started in the background while the flow does other work.

    Yields a ClusterLease: called, it returns the scheduler address (waiting for the start-up if
    needed), or the given --dask-address, or None for the thread runner.
    """
    if not _local_cluster_wanted(settings) or not start:
        discard_prestarted()
        yield ClusterLease(lambda: settings.dask_address)
        return
    starting = _PRESTARTED.pop("local", None)
    pool = None
    if starting is None:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dask-start")
        starting = pool.submit(_start_local_cluster, settings)
    lease = ClusterLease(lambda: starting.result().scheduler_address, starting)
    try:
        yield lease
    except KeyboardInterrupt:
        _quiet_workers(starting)
        raise
    finally:
        lease.close()
        if pool is not None:
            pool.shutdown(wait=True)


@contextlib.contextmanager
def llm_endpoint(llm: LLMSettings, start: bool = True) -> Iterator[tuple[LLMSettings, str]]:
    """(settings with a base_url, the model id to send): the given endpoint or the embedded server.

    With start=False (nothing left to simulate) the embedded server is not started.
    """
    if llm.base_url or not start:
        yield llm, llm.model
        return
    from doppel.tasks.llm.embedded import EmbeddedServer

    with EmbeddedServer.from_model(llm.gguf or llm.model) as server:
        # one slot on a small CPU: more concurrency only adds latency
        yield (
            llm.model_copy(
                update={"base_url": server.base_url, "concurrency": 1, "timeout_s": max(llm.timeout_s, 600.0)}
            ),
            server.model_name,
        )
