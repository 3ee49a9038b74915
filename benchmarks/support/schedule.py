"""doppel's own scheduler at a fixed latency and zero CPU cost, on a virtual clock.

The product's functions run unchanged: `build_work` plans the users, `partition` chunks them by
calls, each chunk gets its share of the concurrency in a `CallLimiter` (slots handed to the waiter
with the longest remaining chain), users start longest chain first a few per slot, and
`simulate_user` issues their calls. Only the gateway is replaced: each call takes a slot and
`latency` seconds of virtual time (aiotools.VirtualClock), so a plan of hours is modelled in
seconds. This separates the scheduling policy's own tail from process and CPU overhead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from aiotools import VirtualClock

from doppel.flows.fanout import shares
from doppel.tasks.llm.limits import CallLimiter
from doppel.tasks.planning import build_work, partition, select_users
from doppel.tasks.records import UserWork
from doppel.tasks.settings import LLMSettings, SimulationSettings
from doppel.tasks.simulation import chain_shape, critical_path, simulate_user, users_in_flight


@dataclass
class Plan:
    """The users a run would simulate, as the product plans them."""

    works: list[UserWork]
    sim: SimulationSettings

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """(profile calls, rating calls, update calls) per user."""
        return [chain_shape(w, self.sim) for w in self.works]

    @property
    def calls(self) -> int:
        return sum(sum(s) for s in self.shapes)

    @property
    def longest_chain(self) -> int:
        return max((critical_path(w, self.sim) for w in self.works), default=0)


def planned_work(
    db: Path, fold: str, users: int | None, seed: int = 0, dataset: str = "ml-100k", update: bool = True
) -> Plan:
    """The plan of `doppel run` on an ingested database, with the code's own planner."""
    sim = SimulationSettings(update_profile=update)
    folds = [f"u{k}" for k in range(1, 6)] if fold == "all" else [f.strip() for f in fold.split(",")]
    works = []
    for one in folds:  # a run over several folds (--fold all or a comma list) plans each fold's users
        ids = select_users(db, dataset, one, users, None, seed)
        works += build_work(db, dataset, one, ids, sim)
    return Plan(works, sim)


def ideal_wall(calls: int, longest_chain: int, latency: float, concurrency: int) -> float:
    """The LLM-bound limit: all calls over the allowed concurrency, or the longest user chain."""
    return max(calls * latency / max(1, concurrency), longest_chain * latency)


class _ClockGateway:
    """The gateway's interface to `simulate_user`: a call waits for a slot by priority, then takes `latency`."""

    def __init__(self, limiter: CallLimiter, latency: float):
        self.limiter, self.latency = limiter, latency

    async def _call(self, prompt: str, priority: float) -> SimpleNamespace:
        async with self.limiter.slot(priority):
            await asyncio.sleep(self.latency)
        return SimpleNamespace(prompt_name=prompt, call_key=prompt, error=None)

    async def text(self, prompt: str, variables: dict, *, priority: float = 0.0, **_) -> SimpleNamespace:
        return SimpleNamespace(text="profile", calls=[await self._call(prompt, priority)])

    async def ratings(self, variables: dict, item_ids: list[str], *, priority: float = 1, **_) -> SimpleNamespace:
        record = await self._call("rating", priority)
        return SimpleNamespace(calls=[record], ratings=dict.fromkeys(item_ids, 3), probs={}, draws={}, failed={})


async def _chunk(works: list[UserWork], sim: SimulationSettings, latency: float, slots: int) -> None:
    # as tasks/simulation.simulate_users: longest chain first, a few users per slot (one with one slot)
    limiter = CallLimiter(slots)
    gateway = _ClockGateway(limiter, latency)
    in_flight = asyncio.Semaphore(users_in_flight(slots, LLMSettings().users_per_slot))

    async def one(work: UserWork) -> None:
        async with in_flight:
            await simulate_user(work, gateway, sim)  # type: ignore[arg-type]

    await limiter.open()
    await asyncio.gather(*(one(w) for w in sorted(works, key=lambda w: -critical_path(w, sim))))


def simulate_schedule(plan: Plan, latency: float, concurrency: int, chunks: int = 2) -> float:
    """Wall seconds of the plan with every call taking exactly `latency`, `chunks` chunks side by side
    (at most `concurrency`, as the flow chunks: a chunk without a slot would never finish)."""
    if not 1 <= chunks <= concurrency:
        raise ValueError(f"chunks must be in 1..concurrency ({concurrency}), got {chunks}")
    parts = partition(plan.works, chunks, cost=lambda w: sum(chain_shape(w, plan.sim)))

    async def run() -> float:
        with VirtualClock().patch_loop():
            loop = asyncio.get_running_loop()
            start = loop.time()
            slots = shares(concurrency, len(parts))
            await asyncio.gather(*(_chunk(p, plan.sim, latency, s) for p, s in zip(parts, slots, strict=True)))
            return loop.time() - start

    return asyncio.run(run())
