"""The one LLM fan-out: jobs split into chunks, chunks on the task runner, results written as they arrive.

Used by `doppel run` (users), `doppel ensemble` (item analyses) and `doppel sandbox` (agent profiles
and turns). `fan_out` splits the jobs into one chunk per worker, balanced by measured cost; gives
each chunk its share of the run's LLM limits (local slots, the run-wide Dask semaphore, rpm, a
Prefect limit); submits the chunks; drains the result channel as results arrive, counting them
(`Tally`), showing a bar and handing them to `write`; on Ctrl-C or an error it writes what did
arrive and cancels the chunks not started; at the end it reports failed chunks and the
EndpointError that stopped one, if any.

A new LLM-driven mode needs only:
1. in tasks/: an async `work(gateway, job) -> result` (the result has `.calls` and `.n_failed`),
   and a chunk entry `def run_x(packed, ..., limits, channel)` that calls
   `tasks.llm.session.run_chunk(jobs, work, llm, model_id, cache_dir, limits, channel, in_flight, key)`;
2. in flows/: `x_chunk = task(run_x, ...)` and a short flow: plan the jobs, then
   `fan_out(x_chunk, jobs, ...)` with a `write(results)` that stores them, then gate and score.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import get_run_logger
from prefect.context import FlowRunContext

from doppel.flows.progress import Bar, Tally
from doppel.tasks.channel import CallsSoFar, ChannelReader, ResultChannel
from doppel.tasks.llm.gateway import EndpointError
from doppel.tasks.llm.session import LimitSpec
from doppel.tasks.planning import partition
from doppel.tasks.records import Packed
from doppel.tasks.settings import LLMSettings


def chunk_count(llm: LLMSettings, workers: int) -> int:
    """One chunk per worker (its jobs run as coroutines); one chunk when there is one slot."""
    return 1 if llm.concurrency <= 1 else max(1, min(workers, llm.concurrency))


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal whole shares (the first ones one larger), each at least 1."""
    return [max(1, total // parts + (1 if k < total % parts else 0)) for k in range(parts)]


def limit_shares(llm: LLMSettings, n_chunks: int, semaphore: str | None) -> list[LimitSpec]:
    """Each chunk's share of the run's limits: concurrency and rpm split evenly; the run-wide Dask
    semaphore (named `semaphore`, None on the thread runner) caps all of them together."""
    return [
        LimitSpec(
            local_slots=share,
            dask_semaphore_name=semaphore,
            dask_max_leases=llm.concurrency if semaphore else None,
            rpm=llm.rpm / n_chunks if llm.rpm else None,
            prefect_limit_name=llm.concurrency_limit_name,
        )
        for share in shares(llm.concurrency, n_chunks)
    ]


@dataclass
class Gathered:
    """What a fan-out gathered: the tally, failed chunks, and the EndpointError that stopped one."""

    tally: Tally
    written: int = 0
    write_s: float = 0.0  # seconds spent in `write`
    submitted_s: float = 0.0  # from the fan-out's start: every chunk submitted
    first_result_s: float | None = None  # the first result arrived
    chunk_errors: list[str] = field(default_factory=list)
    endpoint_error: EndpointError | None = None
    wall_s: float = 0.0

    def raise_for_errors(self, what: str) -> None:
        """Raise the EndpointError that stopped a chunk, or one error naming the failed `what` chunks."""
        if self.endpoint_error is not None:
            raise self.endpoint_error
        if self.chunk_errors:
            raise RuntimeError(f"{len(self.chunk_errors)} {what} failed: {'; '.join(self.chunk_errors)[:500]}")


def fan_out(
    chunk_task: Any,
    jobs: list,
    *,
    name: str,
    llm: LLMSettings,
    runner: str,
    workers: int,
    write: Callable[[list], None],
    key: Callable[[Any], Any],
    label: str,
    progress: bool,
    cost: Callable[[Any], float] | None = None,
    pack: Callable[[list], Any] = Packed,
    write_every_s: float = 0.0,
    **kwargs: Any,
) -> Gathered:
    """Run `chunk_task(pack(chunk), llm=llm, limits=..., channel=..., **kwargs)` on every chunk of `jobs` on the
    current flow's task runner (`runner`: dask | threads); `write(results)` as they arrive, at most
    every `write_every_s` seconds. A result whose `key` arrived before (a retried chunk sends its
    finished jobs again) is neither written nor counted twice."""
    started = time.monotonic()
    chunks = partition(jobs, chunk_count(llm, workers), cost or (lambda job: 1.0))
    kind: Literal["local", "dask"] = "dask" if runner == "dask" else "local"
    channel = ResultChannel(f"doppel-{name}-{uuid.uuid4().hex[:8]}", kind)
    reader = ChannelReader(channel, _dask_client() if kind == "dask" else None)
    limits = limit_shares(llm, len(chunks), f"doppel-llm-{name}" if kind == "dask" else None)
    futures = [
        chunk_task.submit(pack(chunk), llm=llm, limits=limit, channel=channel, **kwargs)
        for chunk, limit in zip(chunks, limits, strict=True)
    ]
    gathered = Gathered(Tally(), submitted_s=round(time.monotonic() - started, 2))
    logger = get_run_logger()
    logger.info("submitted %d chunks in %.2f s", len(futures), gathered.submitted_s)
    try:
        with Bar(label, len(jobs), enabled=progress) as bar:
            gathered.written = _drain(reader, futures, write, key, gathered, bar, write_every_s, started)
    except BaseException:
        for future in futures:  # chunks not started yet never start
            with contextlib.suppress(Exception):
                future.wrapped_future.cancel()
        raise
    finally:
        reader.close()
    gathered.chunk_errors = [str(f.state.message) for f in futures if not f.state.is_completed()]
    gathered.endpoint_error = endpoint_error(futures)
    gathered.wall_s = round(time.monotonic() - started, 2)
    return gathered


def _dask_client() -> Any:
    """The Dask client of the running flow's task runner (the channel's queue lives on its scheduler)."""
    context = FlowRunContext.get()
    if context is None or context.task_runner is None:
        raise RuntimeError("a Dask fan-out runs inside a flow with the Dask task runner")
    runner: Any = context.task_runner  # a DaskTaskRunner (its client is not on the base type)
    return runner.client


def _drain(
    reader: ChannelReader, futures: list, write, key, gathered: Gathered, bar: Bar, every_s: float, started: float
) -> int:
    """Until every chunk is done: take what arrived, count it, and write it (at most every `every_s`).

    On Ctrl-C or an error the results that did arrive are written before it propagates.
    """
    tally = gathered.tally
    seen: set = set()
    so_far: dict[str, CallsSoFar] = {}  # chunk -> its calls answered, unfinished jobs' included
    written, last_write = 0, time.monotonic()
    waiting: list = []

    def flush() -> None:
        nonlocal written, waiting, last_write
        batch, waiting, last_write = waiting, [], time.monotonic()  # taken first: never written twice
        if batch:
            write(batch)
            written += len(batch)
            gathered.write_s += time.monotonic() - last_write

    try:
        while True:
            all_done = all(f.wrapped_future.done() for f in futures)
            fresh, moved = [], False
            for result in reader.drain(timeout=0.5 if all_done else 0.25):
                if isinstance(result, CallsSoFar):
                    so_far[result.chunk], moved = result, True
                elif key(result) not in seen:
                    seen.add(key(result))
                    tally.add(result)
                    fresh.append(result)
            if fresh:
                if gathered.first_result_s is None:
                    gathered.first_result_s = round(time.monotonic() - started, 2)
                    get_run_logger().info("first result at %.2f s", gathered.first_result_s)
            if fresh or moved:
                bar.show(
                    tally, len(fresh), sum(c.calls for c in so_far.values()), sum(c.tokens for c in so_far.values())
                )
            waiting += fresh
            if all_done and not fresh:
                flush()
                return written
            if time.monotonic() - last_write >= every_s:
                flush()
    except BaseException:
        with contextlib.suppress(Exception):  # Ctrl-C or an error: keep the results that did arrive
            flush()
        raise


def endpoint_error(futures: list) -> EndpointError | None:
    """The EndpointError that stopped a chunk (e.g. a key rejected mid-run), if any."""
    for future in futures:
        state = future.state
        if not state.is_failed():
            continue
        with contextlib.suppress(Exception):
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, EndpointError):
                return exc
        # a Dask worker's failed state may not carry the exception back: its message names it
        marker = f"{EndpointError.__name__}: "
        if marker in (state.message or ""):
            return EndpointError(state.message.split(marker, 1)[1])
    return None
