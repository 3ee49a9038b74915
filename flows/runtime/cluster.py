"""The Dask cluster a run fans out on: a local one doppel starts (in the background) and stops, or a given address."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from doppel.flows.runtime.prefect_api import current_api_url
from doppel.tasks.settings import RunSettings

PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def worker_config() -> dict:
    """Dask settings for doppel's local workers (the nannies hand them to the worker processes).

    The statistical profiler samples the task thread's stack every 10 ms for the dashboard's
    Profile tab: ~3% of a worker's CPU in the u1 fan-out (py-spy), where the fan-out is CPU-bound.
    Off unless the user's environment turns it on (DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED).
    """
    return {} if os.environ.get(PROFILER_ENV) else {"distributed.worker.profile.enabled": False}


def worker_start_method() -> str:
    """How local workers start: forked from a fork server that imported the preload modules once
    (measured: 2 workers' start-up CPU 6.8 s -> 3.3 s, the same wall on an idle machine), else spawned."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _warm_worker(preload: Sequence[str]) -> None:
    import importlib

    # a worker spawned without the fork server imports these here, while the Prefect API starts
    from prefect.context import refresh_global_settings_context

    for module in preload:
        importlib.import_module(module)
    # a fork server started by an earlier run in this process imported prefect under that run's
    # settings; the nanny gave this worker today's environment (PREFECT_API_URL): read it again
    refresh_global_settings_context()


async def _ignore_ctrl_c() -> None:
    """On a local worker's event loop (its main thread): a terminal's Ctrl-C reaches the whole process
    group, but only doppel's main process should react (it stops the workers itself, quietly)."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, or SIGTERM as doppel (KeyboardInterrupt) or Prefect's flow engine (TerminationSignal) raises it."""
    return isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal"


def _silence_distributed_logs() -> None:
    # above CRITICAL: the scheduler logs a comm closed under it as CRITICAL, with a traceback
    logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)


def _quiet_workers(starting: Future) -> None:
    """Interrupted: the cluster closes under running tasks, whose heartbeats then log connection
    errors; nothing is lost (leases expire), so don't print them over the one line."""
    from distributed import Client

    with contextlib.suppress(BaseException):
        _silence_distributed_logs()
        with Client(starting.result(timeout=0), timeout=5) as client:
            client.run(_silence_distributed_logs)


def start_local_cluster(settings: RunSettings, preload: Sequence[str] = (), api_url: str | None = None):
    """A LocalCluster of `settings.dask_workers` single-threaded worker processes that inherit this
    process's environment and the Prefect API the run talks to (`api_url`, else `current_api_url()`
    here), and ignore a terminal's Ctrl-C."""
    import dask
    from distributed import Client, LocalCluster
    from distributed.utils import get_mp_context

    spill = settings.work_dir() / "dask"
    spill.mkdir(parents=True, exist_ok=True)
    method = worker_start_method()
    env = dict(os.environ)
    if api := api_url or current_api_url():
        env["PREFECT_API_URL"] = api
    with dask.config.set({**worker_config(), "distributed.worker.multiprocessing-method": method}):
        if method == "forkserver":
            # distributed sets its own preload list on first use; ours replaces it before the server starts
            get_mp_context().set_forkserver_preload(["distributed", *preload])
        # the scheduler's HTTP routes (dashboard or not) bind a free loopback port: with the default
        # 8787 a second run at the same time warned "Port 8787 is already in use". Each worker gets
        # this environment now (a fork server keeps the one it started with).
        cluster = LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            local_directory=str(spill),
            host="127.0.0.1",
            env=env,
        )
    from doppel.flows.runtime.worker_plugin import QuietGonePeers, StopLeaseRefresh, drop_gone_peer_logs

    drop_gone_peer_logs()  # the scheduler's, in this process
    try:
        with Client(cluster) as client:
            client.register_plugin(StopLeaseRefresh(), name=StopLeaseRefresh.name)
            client.register_plugin(QuietGonePeers(), name=QuietGonePeers.name)  # also on a restarted worker
            client.run(_ignore_ctrl_c)
            client.run(_warm_worker, list(preload))
    except BaseException:
        cluster.close()
        raise
    return cluster


_PRESTARTED: dict[str, Future] = {}


def _local_cluster_wanted(settings: RunSettings) -> bool:
    return settings.runner == "dask" and not settings.dask_address


def prestart_cluster(settings: RunSettings, preload: Sequence[str] = ()) -> None:
    """Start the local Dask cluster in the background now; `dask_cluster` takes it over (~3-5 s
    of worker spawning and imports then overlap the Prefect API server's start)."""
    if _local_cluster_wanted(settings) and "local" not in _PRESTARTED:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dask-start")
        _PRESTARTED["local"] = pool.submit(start_local_cluster, settings, preload, current_api_url())
        pool.shutdown(wait=False)


def discard_prestarted() -> None:
    """Close a pre-started cluster nobody took over (e.g. nothing was left to simulate, or an error)."""
    starting = _PRESTARTED.pop("local", None)
    if starting is not None:
        with contextlib.suppress(BaseException):
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
            with contextlib.suppress(BaseException):
                starting.result().close()

        self._closing = threading.Thread(target=close, name="dask-close", daemon=True)
        self._closing.start()

    def close(self) -> None:
        self.close_soon()
        if self._closing is not None:
            self._closing.join()


@contextlib.contextmanager
def dask_cluster(settings: RunSettings, start: bool = True, preload: Sequence[str] = ()) -> Iterator[ClusterLease]:
    """A local Dask cluster started in the background while the flow does other work.

    Yields a ClusterLease: called, it returns the scheduler address (waiting for the start-up if
    needed), or the given --dask-address, or None for the thread runner. `preload`: the modules the
    chunks' tasks live in (imported once by the fork server, not by every worker).
    """
    if not _local_cluster_wanted(settings) or not start:
        discard_prestarted()
        yield ClusterLease(lambda: settings.dask_address)
        return
    starting = _PRESTARTED.pop("local", None)
    pool = None
    if starting is None:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dask-start")
        # the API URL is read here: the flow run's context does not reach the start-up thread
        starting = pool.submit(start_local_cluster, settings, preload, current_api_url())
    lease = ClusterLease(lambda: starting.result().scheduler_address, starting)
    try:
        yield lease
    except BaseException as exc:
        if is_interrupt(exc):
            _quiet_workers(starting)
        raise
    finally:
        lease.close()
        if pool is not None:
            pool.shutdown(wait=True)


def task_runner(settings: RunSettings, dask_address: str | None = None):
    """The Prefect task runner for a fan-out: Dask (at an address) or threads (one per chunk)."""
    if settings.runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, settings.dask_workers))
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=dask_address or settings.dask_address)
