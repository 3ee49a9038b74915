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
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiolimiter import AsyncLimiter

logger = logging.getLogger("doppel.llm")


class PrioritySlots:
    """An asyncio semaphore that wakes the highest-priority waiter first, with an adaptive limit.

    The limit starts at `slots` and adapts to the endpoint (additive increase, multiplicative
    decrease): `congested` halves it when a call timed out (at most once per round: calls that
    started before the last decrease were sent under the old limit and do not lower it again), and
    every `limit` successes in a row raise it by one, up to `slots`.
    """

    def __init__(self, slots: int):
        self.slots = max(1, slots)
        self.limit = self.slots
        self.lowest = self.slots  # the lowest limit the run fell to
        self._in_use = 0
        self._successes = 0
        self._last_decrease = float("-inf")
        self._waiters: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    async def acquire(self, priority: float = 0.0) -> None:
        if self._in_use < self.limit and not self._waiters:
            self._in_use += 1
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
        self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self.limit:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                self._in_use += 1
                future.set_result(None)

    def congested(self, started: float) -> bool:
        """A call started at `started` (time.monotonic) timed out: may it be asked again? Yes if the
        limit could still come down (it is halved now) or the call was sent under an older limit."""
        if started < self._last_decrease:
            return True
        if self.limit <= 1:
            return False
        self.limit = max(1, self.limit // 2)
        self.lowest = min(self.lowest, self.limit)
        self._successes, self._last_decrease = 0, time.monotonic()
        logger.warning(
            "LLM calls time out while others succeed: the endpoint queues them; concurrency lowered to %d",
            self.limit,
        )
        return True

    def succeeded(self) -> None:
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.slots:
            self.limit, self._successes = self.limit + 1, 0
            self._wake()


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
        self.answered = self.answered_tokens = 0  # calls the endpoint answered here, their tokens (for progress)
        self._slots = local_slots
        self._leases = 0
        self._rpm = AsyncLimiter(rpm, 60) if rpm else None
        self._prefect_limit = prefect_limit_name
        self._dask_sem = None
        self._pool: ThreadPoolExecutor | None = None
        if dask_semaphore_name:
            from distributed import Semaphore

            self._dask_sem = Semaphore(max_leases=dask_max_leases or local_slots, name=dask_semaphore_name)
            _LEASED.add(self)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-lease")

    def congested(self, started: float) -> bool:
        """A call timed out while the endpoint queues: lower this process's concurrency (see PrioritySlots)."""
        return self.local.congested(started)

    def succeeded(self, tokens: int = 0) -> None:
        self.answered, self.answered_tokens = self.answered + 1, self.answered_tokens + tokens
        self.local.succeeded()

    @property
    def concurrency(self) -> tuple[int, int]:
        """(the limit now, the lowest it fell to)."""
        return self.local.limit, self.local.lowest

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
            while self._leases and self not in _CLOSED:
                await loop.run_in_executor(self._pool, self._dask_sem.release)
                self._leases -= 1
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def cap_to_server_slots(base_url: str | None, concurrency: int, api_key: str | None = None) -> tuple[int, str | None]:
    """(the concurrency to use, a line saying why it is lower than asked, or None): at most the
    slots the server reports, since calls beyond them only wait in its queue (and time out there)."""
    slots = server_slots(base_url, api_key)
    if slots is None or slots >= concurrency:
        return concurrency, None
    return slots, (
        f"the LLM server reports {slots} parallel slot{'s' if slots > 1 else ''}: "
        f"concurrency capped at {slots} (asked {concurrency})"
    )


def server_slots(base_url: str | None, api_key: str | None = None, timeout: float = 5.0) -> int | None:
    """The parallel slots an endpoint reports (llama.cpp: `total_slots` of GET /props, else the length
    of GET /slots), or None where it reports none (a hosted API, vLLM, an older server)."""
    if not base_url:
        return None
    root = base_url.rstrip("/").removesuffix("/v1")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}) if _loopback(root) else urllib.request.ProxyHandler()
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "no-key" else {}
    for path, read in (
        ("/props", lambda d: d.get("total_slots")),
        ("/slots", lambda d: len(d) if isinstance(d, list) else None),
    ):
        try:
            with opener.open(urllib.request.Request(root + path, headers=headers), timeout=timeout) as resp:
                value = read(json.loads(resp.read()))
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


_LEASED: weakref.WeakSet = weakref.WeakSet()  # this process's CallLimiters holding a distributed Semaphore
_CLOSED: weakref.WeakSet = weakref.WeakSet()  # ... whose worker is closing: their leases die with it


def stop_lease_refresh() -> None:
    """The worker is closing (on its event loop, before its connection pool closes): every limiter here
    stops refreshing its leases and will not release them (they expire on the scheduler). A refresh or a
    release after the close raised `ConnectionPool is closed` into the log over the one-line message."""
    for limiter in list(_LEASED):
        _CLOSED.add(limiter)
        semaphore = limiter._dask_sem
        if semaphore is None:
            continue
        semaphore.refresh_leases = False
        with contextlib.suppress(Exception):
            semaphore.refresh_callback.stop()
