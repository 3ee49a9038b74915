"""One gateway session per chunk: client, response cache and limiter opened together, closed in order.

Every LLM-driven mode runs its chunk through `run_chunk`: the session opens (the chunk's share of
the run's limits taken), the chunk's jobs run as asyncio coroutines (a few more in flight than
slots), each result goes out through the channel the moment it is ready, and on an error (e.g. a
rejected key) the chunk's other jobs are cancelled before the session closes. A mode supplies only
`work(gateway, job) -> result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from doppel.tasks.channel import CallsSoFar
from doppel.tasks.llm.cache import ResponseCache
from doppel.tasks.llm.calls import CallOwner
from doppel.tasks.llm.gateway import LLMGateway
from doppel.tasks.llm.limits import CallLimiter
from doppel.tasks.settings import LLMSettings

J = TypeVar("J")
R = TypeVar("R")
CALLS_EVERY_S = 1.0  # how often a chunk reports its calls answered so far, when the count moved


@dataclass
class LimitSpec:
    """How one chunk joins the run's limits (picklable; the limiter is built on the worker)."""

    local_slots: int
    dask_semaphore_name: str | None = None
    dask_max_leases: int | None = None
    rpm: float | None = None
    prefect_limit_name: str | None = None

    def limiter(self) -> CallLimiter:
        return CallLimiter(
            self.local_slots, self.dask_semaphore_name, self.dask_max_leases, self.rpm, self.prefect_limit_name
        )


@contextlib.asynccontextmanager
async def gateway_session(
    llm: LLMSettings, model_id: str, cache_dir: str, limits: LimitSpec, owner: CallOwner | None = None
) -> AsyncIterator[LLMGateway]:
    """An open gateway: the cache, the limiter (its share of the run-wide leases taken) and the client;
    `owner`: the run whose calls these are (a resumed run tells its own earlier calls from others' in the cache).

    On exit the client closes first, then the leases go back, then the cache closes (whatever raised).
    """
    cache = ResponseCache(cache_dir)
    limiter = limits.limiter()
    gateway = LLMGateway(llm, cache, limiter, model_id, owner)
    try:
        await limiter.open()
        yield gateway
    finally:
        now, lowest = limiter.concurrency
        if lowest < limits.local_slots:
            logging.getLogger("doppel").warning(
                "LLM concurrency settled at %d of %d (lowest %d) after calls timed out", now, limits.local_slots, lowest
            )
        try:
            await gateway.aclose()
        finally:
            try:
                await limiter.aclose()
            finally:
                cache.close()


async def run_jobs(
    jobs: Sequence[J],
    work: Callable[[J], Awaitable[R]],
    publish: Callable[[R], Awaitable[None]],
    in_flight: int,
    key: Callable[[R], Any],
) -> list:
    """Run `work` on every job, at most `in_flight` at once, publishing each result as it finishes;
    the results' keys. A published result is not kept: a chunk's memory (and the garbage collector's
    walks over it) stays that of the jobs in flight, not of every result so far.

    The first error cancels the jobs still running or waiting (their partial work is lost, finished
    ones are already published) and is raised.
    """
    gate = asyncio.Semaphore(max(1, in_flight))

    async def one(job: J) -> Any:
        async with gate:
            result = await work(job)
        await publish(result)
        return key(result)

    running = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*running))
    except BaseException:
        for job in running:
            job.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise


def run_chunk(
    jobs: Sequence[J],
    work: Callable[[LLMGateway, J], Awaitable[R]],
    llm: LLMSettings,
    model_id: str,
    cache_dir: str,
    limits: LimitSpec,
    channel: Any,
    in_flight: int,
    key: Callable[[R], Any],
    owner: CallOwner | None = None,
) -> list:
    """Synchronous entry for a task-runner thread or a Dask worker: `work` on every job in one gateway
    session (`owner`: see gateway_session); each result goes out through `channel` (`put`) as soon as it
    is ready. Returns the results' keys (the rows travel only once, through the channel)."""

    async def publish(result: R) -> None:
        await asyncio.to_thread(channel.put, result)

    async def report_calls(limiter: CallLimiter, stop: asyncio.Event) -> None:
        """A job's calls show in the progress before the job finishes; none is sent after the last result."""
        chunk, sent = uuid.uuid4().hex, 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CALLS_EVERY_S)
            if not stop.is_set() and limiter.answered != sent:
                sent = limiter.answered
                await asyncio.to_thread(channel.put, CallsSoFar(chunk, sent, limiter.answered_tokens))

    async def main() -> list:
        async with gateway_session(llm, model_id, cache_dir, limits, owner) as gateway:
            stop = asyncio.Event()
            reporter = asyncio.ensure_future(report_calls(gateway.limiter, stop))
            try:
                return await run_jobs(jobs, lambda job: work(gateway, job), publish, in_flight, key)
            finally:
                stop.set()
                await asyncio.gather(reporter, return_exceptions=True)

    return asyncio.run(main())
