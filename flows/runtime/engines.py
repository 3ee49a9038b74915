"""The LLM endpoint (the given one, or the embedded server) and everything a fan-out runs on, as one context."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from doppel.flows.runtime.cluster import ClusterLease, dask_cluster, task_runner
from doppel.tasks.llm.endpoint import api_key_from_env, check_endpoint
from doppel.tasks.llm.limits import cap_to_server_slots
from doppel.tasks.settings import LLMSettings, RunSettings


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
    from doppel.tasks.llm.embedded import EmbeddedServer

    slots = llm.embedded_slots
    asked = time.monotonic()
    with EmbeddedServer.from_model(llm.gguf or llm.model, slots=slots) as server:
        # benchmarks/startup.py reads this line (the start-up's phases)
        _run_logger().info(
            "embedded server %s: loaded in %.2f s, waited for %.2f s",
            server.model_name,
            server.load_seconds or 0.0,
            time.monotonic() - asked,
        )
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
            model_id = check_endpoint(served, model_id)  # the id the server answers with (a llama.cpp file path)
            capped, note = cap_to_server_slots(served.base_url, served.concurrency, api_key_from_env())
            if note:
                logging.getLogger("doppel").warning(note)
                served = served.model_copy(update={"concurrency": capped})
        yield Engines(settings, served, model_id, cluster, note)
