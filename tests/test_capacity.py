"""Endpoint capacity: a server that queues must not make pairs fail.

The run's concurrency is capped at the slots a llama.cpp server reports (/props); where a server
reports none, calls that time out in its queue lower the gateway's concurrency (additive increase,
multiplicative decrease) and are asked again instead of failing their pairs.
"""

from __future__ import annotations

import asyncio
import time

from doppel.tasks.llm.cache import ResponseCache
from doppel.tasks.llm.gateway import LLMGateway
from doppel.tasks.llm.limits import CallLimiter, PrioritySlots, cap_to_server_slots, server_slots
from doppel.tasks.records import CandidateItem
from doppel.tasks.settings import LLMSettings
from doppel.testing.llm_server import LLMTestServer, expected_rating


def test_limit_halves_once_per_round_and_grows_back_by_one():
    async def scenario():
        slots = PrioritySlots(8)
        before = -1.0  # a call sent before any decrease
        assert slots.congested(started=0.0) and slots.limit == 4
        assert slots.congested(started=before) and slots.limit == 4  # sent under the old limit: no second cut
        await asyncio.sleep(0.01)
        assert slots.congested(started=time.monotonic()) and slots.limit == 2
        for _ in range(2):
            slots.succeeded()
        assert slots.limit == 3 and slots.lowest == 2
        slots.limit = 1
        assert not slots.congested(started=time.monotonic() + 1)  # at one call in flight a timeout is real

    asyncio.run(scenario())


def test_the_limit_gates_acquire():
    async def scenario():
        slots = PrioritySlots(4)
        slots.congested(started=0.0)
        slots.congested(started=10.0**9)  # -> 1
        assert slots.limit == 1
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        slots.release()
        await asyncio.wait_for(waiter, 1)

    asyncio.run(scenario())


def test_the_concurrency_is_capped_at_the_slots_llama_cpp_reports():
    with LLMTestServer(llama_cpp=True, max_concurrency=1) as server:
        assert server_slots(server.base_url) == 1
        capped, why = cap_to_server_slots(server.base_url, 8)
        assert capped == 1 and "reports 1 parallel slot: concurrency capped at 1 (asked 8)" in why
        assert cap_to_server_slots(server.base_url, 1) == (1, None)
    with LLMTestServer() as plain:  # no /props: nothing known, nothing capped
        assert server_slots(plain.base_url) is None and cap_to_server_slots(plain.base_url, 8) == (8, None)


def test_calls_that_time_out_in_a_servers_queue_are_asked_again_under_a_lower_limit(tmp_path):
    items = [CandidateItem(str(i), f"Movie {i}", 1990, "Drama", "", 3) for i in range(1, 3)]
    ids = [c.item_id for c in items]
    # one slot at 0.5 s per call, 8 calls at once, 2 s timeout: the last ones wait past it in the queue
    with LLMTestServer(latency=0.5, max_concurrency=1) as server:
        settings = LLMSettings(base_url=server.base_url, timeout_s=2.0, max_retries=0, concurrency=8)
        limiter = CallLimiter(8)

        async def scenario():
            gateway = LLMGateway(settings, ResponseCache(tmp_path / "cache"), limiter, "m")
            try:
                return await asyncio.gather(
                    *(
                        gateway.ratings(
                            {
                                "demographics": f"user {u}",
                                "profile": "Likes dramas.",
                                "recent": [],
                                "candidates": items,
                            },
                            ids,
                        )
                        for u in range(8)
                    )
                )
            finally:
                await gateway.aclose()

        outcomes = asyncio.run(scenario())
        timeouts = [e for e in server.log() if not e.get("completed")]
    assert all(not o.failed and o.ratings == {i: expected_rating(i, "Likes dramas.") for i in ids} for o in outcomes)
    assert timeouts, "no call waited past its timeout: the test did not load the queue"
    now, lowest = limiter.concurrency
    assert lowest < 8 and 1 <= now <= 8
