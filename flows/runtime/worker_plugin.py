"""A plugin on doppel's local Dask workers: closing in order (imported only where distributed is)."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin


class StopLeaseRefresh(WorkerPlugin):
    """Closing a worker (the end of a run, Ctrl-C, SIGTERM): its chunk's LLM limiter stops refreshing
    the run-wide semaphore's leases first; the worker closes its connection pool after its plugins."""

    name = "doppel-stop-lease-refresh"

    def teardown(self, worker) -> None:
        from doppel.tasks.llm.limits import stop_lease_refresh

        stop_lease_refresh()
