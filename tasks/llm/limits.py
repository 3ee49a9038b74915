"""Limits on LLM calls: who may call now, in which order, and how many per minute.

Three layers, each optional but the first:
- `PrioritySlots`: this process's share of the run's concurrency; waiters with the longest
  remaining chain go first (critical-path scheduling keeps the tail short), FIFO on ties.
- a `distributed.Semaphore` named per run: the hard cap shared by every Dask worker process.
- a Prefect global concurrency limit: caps several runs/deployments that share an endpoint.
Plus an `aiolimiter` requests-per-minute bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiolimiter import AsyncLimiter


class PrioritySlots:
    """An asyncio semaphore that wakes the highest-priority waiter first."""

    def __init__(self, slots: int):
        self._free = max(1, slots)
        self._waiters: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    async def acquire(self, priority: float = 0.0) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just before the cancel: hand it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


class CallLimiter:
    """All limits for one process's calls, used as `async with limiter.slot(priority)`.

    The Dask semaphore is taken once per slot when the limiter opens (`open()`), not per call: a
    lease is a scheduler round trip, and 2 per call cost ~40% of the wall time at 64 calls/s.
    Holding `local_slots` leases for the chunk's life still caps the whole run: a chunk that starts
    while others hold every lease (a retried or duplicated chunk) waits until leases come free.
    """

    def __init__(
        self,
        local_slots: int,
        dask_semaphore_name: str | None = None,
        dask_max_leases: int | None = None,
        rpm: float | None = None,
        prefect_limit_name: str | None = None,
    ):
        self.local = PrioritySlots(local_slots)
        self._slots = local_slots
        self._leases = 0
        self._rpm = AsyncLimiter(rpm, 60) if rpm else None
        self._prefect_limit = prefect_limit_name
        self._dask_sem = None
        self._pool: ThreadPoolExecutor | None = None
        if dask_semaphore_name:
            from distributed import Semaphore

            self._dask_sem = Semaphore(max_leases=dask_max_leases or local_slots, name=dask_semaphore_name)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-lease")

    @contextlib.asynccontextmanager
    async def slot(self, priority: float = 0.0) -> AsyncIterator[None]:
        await self.local.acquire(priority)
        try:
            async with self._shared_lease():
                if self._rpm is not None:
                    await self._rpm.acquire()
                yield
        finally:
            self.local.release()

    @contextlib.asynccontextmanager
    async def _shared_lease(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if self._prefect_limit:
                from prefect.concurrency.asyncio import concurrency

                await stack.enter_async_context(concurrency(self._prefect_limit, occupy=1, strict=True))
            yield

    async def open(self) -> None:
        """Take this process's share of the run-wide Dask semaphore (blocks while it is full)."""
        if self._dask_sem is None or self._leases:
            return
        loop = asyncio.get_running_loop()
        # the dask client lives on the worker's own loop: take the leases from a thread
        for _ in range(self._slots):
            await loop.run_in_executor(self._pool, self._dask_sem.acquire)
            self._leases += 1

    async def aclose(self) -> None:
        if self._dask_sem is not None and self._leases:
            loop = asyncio.get_running_loop()
            while self._leases:
                await loop.run_in_executor(self._pool, self._dask_sem.release)
                self._leases -= 1
        if self._pool is not None:
            self._pool.shutdown(wait=False)
