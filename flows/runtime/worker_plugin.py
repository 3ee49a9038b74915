"""Plugins on doppel's local Dask workers: closing in order, quietly (imported only where distributed is)."""

from __future__ import annotations

import logging

from distributed.diagnostics.plugin import WorkerPlugin


class StopLeaseRefresh(WorkerPlugin):
    """Closing a worker (the end of a run, Ctrl-C, SIGTERM): its chunk's LLM limiter stops refreshing
    the run-wide semaphore's leases first; the worker closes its connection pool after its plugins."""

    name = "doppel-stop-lease-refresh"

    def teardown(self, worker) -> None:
        from doppel.tasks.llm.limits import stop_lease_refresh

        stop_lease_refresh()


class _GonePeerFilter(logging.Filter):
    """As an interrupt unwinds the flow, the fan-out's task runner closes its client and the cluster
    closes under running tasks: the scheduler logs CRITICAL when it reports to the gone client, a
    worker ERROR when its heartbeat finds the scheduler gone, each with a traceback. Nothing is lost
    (leases expire, the rerun picks up): keep them off the one line the user reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return type(exc).__name__ != "CommClosedError"


def drop_gone_peer_logs() -> None:
    """On distributed's own handler (its records do not propagate past it), in this process."""
    for handler in logging.getLogger("distributed").handlers:
        if not any(isinstance(f, _GonePeerFilter) for f in handler.filters):
            handler.addFilter(_GonePeerFilter())


class QuietGonePeers(WorkerPlugin):
    """A worker (also one the nanny restarts as the run is interrupted) drops the logs of peers gone."""

    name = "doppel-quiet-gone-peers"

    def setup(self, worker) -> None:
        drop_gone_peer_logs()
