"""The LLM endpoint (the given one, or the embedded server) and everything a fan-out runs on, as one context."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from doppel.flows.runtime.cluster import ClusterLease, dask_cluster, discard_prestarted_cluster, task_runner
from doppel.tasks.llm.endpoint import api_key_from_env, check_endpoint
from doppel.tasks.llm.limits import cap_to_server_slots
from doppel.tasks.settings import LLMSettings, RunSettings

if TYPE_CHECKING:
    from doppel.tasks.llm.embedded import EmbeddedServer

# embedded servers started ahead of the flow (by `doppel run` while the Prefect API boots), by what they serve
_PRESTARTED: dict[tuple[str, int], Future] = {}


def _embedded_key(llm: LLMSettings) -> tuple[str, int]:
    return str(llm.gguf or llm.model), llm.embedded_slots


def _start_embedded(llm: LLMSettings) -> EmbeddedServer:
    from doppel.tasks.llm.embedded import EmbeddedServer

    model, slots = _embedded_key(llm)
    return EmbeddedServer.from_model(model, slots=slots).start()


def prestart_embedded(llm: LLMSettings) -> None:
    """Start the embedded server in the background now (no --base-url): its model load then overlaps
    the Prefect API's boot, and `llm_endpoint` takes it over. A start-up error is raised there."""
    if llm.base_url or _embedded_key(llm) in _PRESTARTED:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-start")
    _PRESTARTED[_embedded_key(llm)] = pool.submit(_start_embedded, llm)
    pool.shutdown(wait=False)


def discard_prestarted() -> None:
    """Stop what was started ahead of the flow and not taken over (nothing was left to simulate, or
    an error): the local Dask cluster and the embedded server."""
    discard_prestarted_cluster()
    while _PRESTARTED:
        _stop_when_started(_PRESTARTED.popitem()[1])


def _stop_when_started(starting: Future) -> None:
    """Stop the server of `starting` once it is up (now if it is), whoever was waiting for it."""

    def stop(done: Future) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().stop()

    starting.add_done_callback(stop)


def _embedded_server(llm: LLMSettings) -> EmbeddedServer:
    """The pre-started server for these settings (waits for it), else one started now."""
    asked = time.monotonic()
    starting = _PRESTARTED.pop(_embedded_key(llm), None)
    try:
        server = starting.result() if starting is not None else _start_embedded(llm)
    except BaseException:
        if starting is not None:
            _stop_when_started(starting)  # e.g. Ctrl-C while it loads: it stops once up
        raise
    # benchmarks/startup.py reads this line: what the overlap with the Prefect API's boot saved
    _run_logger().info(
        "embedded server %s: loaded in %.2f s, waited for %.2f s (%s)",
        server.model_name,
        server.load_seconds or 0.0,
        time.monotonic() - asked,
        "started ahead" if starting is not None else "started here",
    )
    return server


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (`--verbose` shows it), or doppel's outside a flow run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("doppel")


@contextlib.contextmanager
def llm_endpoint(llm: LLMSettings, start: bool = True) -> Iterator[tuple[LLMSettings, str]]:
    """(settings with a base_url, the model id to send): the given endpoint or the embedded server.

    With start=False (nothing left to simulate) the embedded server is not started.
    """
    if llm.base_url or not start:
        yield llm, llm.model
        return
    slots = llm.embedded_slots
    with _embedded_server(llm) as server:
        # as many calls in flight as slots: one user per slot, whose calls then reuse that slot's cache
        # (more would only queue in the server); its calls are slow on a CPU, hence the long timeout
        update = {"base_url": server.base_url, "concurrency": slots, "users_per_slot": 1}
        update["timeout_s"] = max(llm.timeout_s, 600.0)
        yield llm.model_copy(update=update), server.model_name


@dataclass
class Engines:
    """What a run's fan-out runs on: the endpoint's settings and model id, the cluster."""

    settings: RunSettings
    llm: LLMSettings
    model_id: str
    cluster: ClusterLease
    concurrency_note: str | None = None  # why the run's LLM concurrency is lower than asked

    def task_runner(self):
        """The Prefect task runner on this run's cluster (waits for its start-up), or threads."""
        return task_runner(self.settings, self.cluster())

    def release_workers(self) -> None:
        """The workers are done: their shutdown starts now and overlaps what follows (e.g. scoring)."""
        self.cluster.close_soon()


@contextlib.contextmanager
def engines(
    settings: RunSettings, llm: LLMSettings | None = None, start: bool = True, preload: Sequence[str] = ()
) -> Iterator[Engines]:
    """The run's Dask cluster (started in the background) and its LLM endpoint, checked before any work.

    With start=False (nothing left to do) neither a local cluster nor the embedded server starts.
    Everything started here stops on every exit: normal, error, Ctrl-C or SIGTERM (see flows/errors.py).
    """
    with (
        dask_cluster(settings, start=start, preload=preload) as cluster,
        llm_endpoint(llm or settings.llm, start=start) as (served, model_id),
    ):
        note = None
        if start:
            check_endpoint(served, model_id)
            capped, note = cap_to_server_slots(served.base_url, served.concurrency, api_key_from_env())
            if note:
                logging.getLogger("doppel").warning(note)
                served = served.model_copy(update={"concurrency": capped})
        yield Engines(settings, served, model_id, cluster, note)
