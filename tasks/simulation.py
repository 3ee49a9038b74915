"""Simulate users with the profile-and-rate method (Lusifer), many users at once with asyncio.

Per user the calls form a chain with leaves:
    profile_create -> profile_refine ... -> [rate batch 0] -> update 0 -> [rate batch 1] -> update 1 ...
Rating batch j needs only profile j, so it runs beside the update chain. Every call waits for a
slot with priority = the user's remaining chain length, which finishes the longest users first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from doppel.tasks.llm.calls import CallOwner, CallRecord
from doppel.tasks.llm.gateway import DRAW_PROMPT, LLMGateway
from doppel.tasks.llm.session import LimitSpec, run_chunk
from doppel.tasks.records import CandidateItem, HistoryItem, PackedWork, UserWork
from doppel.tasks.settings import LLMSettings, SimulationSettings

PROFILE_WORDS = 60  # at 110 the 0.5B model looped to its token cap (benchmarks/results/answer_shapes.md)


@dataclass
class UserResult:
    """Rows for one finished user; the flow writes them in one transaction."""

    fold: str
    user_id: str
    profiles: list[dict] = field(default_factory=list)
    ratings: list[dict] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.ratings)

    @property
    def status(self) -> str:
        return "partial" if self.n_failed else "done"


def batches(seq: list, size: int) -> list[list]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def chain_shape(work: UserWork, sim: SimulationSettings) -> tuple[int, int, int]:
    """(profile calls, rating calls, update calls) for one user."""
    n_profile = len(batches(work.history, sim.profile_batch))
    n_rate = len(batches(work.candidates, sim.rate_batch))
    n_update = max(0, n_rate - 1) if sim.update_profile else 0
    return n_profile, n_rate, n_update


def critical_path(work: UserWork, sim: SimulationSettings) -> int:
    """Calls on the user's longest dependency chain (the lower bound on its wall time)."""
    n_profile, n_rate, n_update = chain_shape(work, sim)
    return n_profile + n_update + (1 if n_rate else 0)


def _mean(values: list[int]) -> str:
    return f"{sum(values) / len(values):.1f}" if values else "n/a"


async def simulate_user(work: UserWork, gateway: LLMGateway, sim: SimulationSettings) -> UserResult:
    """Phase 1 (profile from history batches) then Phase 2 (rate held-out batches)."""
    result = UserResult(fold=work.fold, user_id=work.user_id)
    n_profile, n_rate, n_update = chain_shape(work, sim)
    remaining = critical_path(work, sim)
    common = {"demographics": work.demographics, "max_words": PROFILE_WORDS}
    profile: str | None = None

    async def next_profile(prompt: str, stage: str, variables: dict) -> str | None:
        nonlocal remaining
        outcome = await gateway.text(
            prompt,
            {**common, **variables},
            priority=remaining,
            overview_chars=sim.overview_chars,
            prompts=sim.prompts,
            retry=work.retry_round,  # a profile that failed last time (the same way from the cache) is asked anew
        )
        remaining -= 1
        result.calls.extend(outcome.calls)
        if outcome.text is None:
            return None
        result.profiles.append(
            {
                "version": len(result.profiles) + 1,
                "stage": stage,
                "text": outcome.text,
                "call_key": outcome.calls[-1].call_key,
            }
        )
        return outcome.text

    failure: str | None = None
    for i, batch in enumerate(batches(work.history, sim.profile_batch)):
        prompt, stage = ("profile_create", "initial") if i == 0 else ("profile_refine", "refine")
        new = await next_profile(
            prompt, stage, {"profile": profile, "items": batch, "mean_rating": _mean([h.rating for h in batch])}
        )
        if new is None and profile is None:  # no profile at all: nothing to rate from
            failure = f"profile call failed: {result.calls[-1].error}"
            break
        profile = new or profile  # a refine that stayed bad keeps the last good profile (its calls say why)

    recent = work.history[-sim.recent_k :] if sim.recent_k else []
    pending = set(work.pending_item_ids) if work.pending_item_ids is not None else None
    rating_jobs: list[asyncio.Task] = []
    for j, batch in enumerate(batches(work.candidates, sim.rate_batch)):
        wanted = [c for c in batch if pending is None or c.item_id in pending]
        if failure is not None:
            result.ratings.extend(_failed_rows(wanted, j, failure))
            continue
        if wanted:
            rating_jobs.append(
                asyncio.create_task(_rate_batch(gateway, common, profile, recent, wanted, j, work.retry_round, sim))
            )
        if sim.update_profile and j < n_rate - 1:
            new = await next_profile("profile_update", "update", {"profile": profile, "items": batch})
            profile = new or profile  # an update that stayed bad keeps the last good profile (its calls say why)
    for rows, calls in await asyncio.gather(*rating_jobs):
        result.ratings.extend(rows)
        result.calls.extend(calls)
    return result


async def _rate_batch(
    gateway: LLMGateway,
    common: dict,
    profile: str | None,
    recent: list[HistoryItem],
    batch: list[CandidateItem],
    batch_index: int,
    retry_round: int,
    sim: SimulationSettings,
) -> tuple[list[dict], list[CallRecord]]:
    item_ids = [c.item_id for c in batch]
    outcome = await gateway.ratings(
        {**common, "profile": profile, "recent": recent, "candidates": batch},
        item_ids,
        sample=retry_round,
        priority=1,
        overview_chars=sim.overview_chars,
        prompts=sim.prompts,
    )
    answers = [c for c in outcome.calls if c.prompt_name != DRAW_PROMPT]  # draws only annotate the answer
    answering_key = answers[-1].call_key if answers else None
    rows = []
    attempts = max(1, len(answers))
    for item_id in item_ids:
        ok = item_id in outcome.ratings
        probs = outcome.probs.get(item_id) if ok else None
        draws = outcome.draws.get(item_id) if probs is not None else None
        rows.append(
            {
                "item_id": item_id,
                "rating": outcome.ratings.get(item_id),
                "status": "ok" if ok else "failed",
                "reason": None if ok else outcome.failed.get(item_id, "no answer"),
                "batch": batch_index,
                "attempts": attempts,
                "call_key": answering_key,
                "rating_probs": probs,
                "rating_probs_source": None if probs is None else "samples" if draws else "logprobs",
                "rating_probs_draws": draws,
            }
        )
    return rows, outcome.calls


def _failed_rows(batch: list[CandidateItem], batch_index: int, reason: str) -> list[dict]:
    return [
        {
            "item_id": c.item_id,
            "rating": None,
            "status": "failed",
            "reason": reason,
            "batch": batch_index,
            "attempts": 0,
            "call_key": None,
            "rating_probs": None,
            "rating_probs_source": None,
            "rating_probs_draws": None,
        }
        for c in batch
    ]


def users_in_flight(local_slots: int, users_per_slot: int) -> int:
    """Users simulated at once: one on one slot (its calls then run back to back and its prompt cache
    hits), else `users_per_slot` per slot."""
    return 1 if local_slots == 1 else users_per_slot * local_slots


def simulate_users(
    packed: PackedWork,
    llm: LLMSettings,
    sim: SimulationSettings,
    model_id: str,
    cache_dir: str,
    limits: LimitSpec,
    channel,
    owner: CallOwner | None = None,
) -> list[str]:
    """Synchronous entry for a task-runner thread or Dask worker: simulate the chunk's users concurrently;
    each user's rows go out through `channel` the moment the user finishes. `owner`: the run's invocation.

    Users start longest chain first, a few per slot (`users_in_flight`): enough ready calls to keep every
    slot busy, and users finish (and are written) all along instead of all at the end.
    """
    started = time.monotonic()
    works = sorted(packed.unpack(), key=lambda w: -critical_path(w, sim))
    in_flight = users_in_flight(limits.local_slots, llm.users_per_slot)

    async def work(gateway: LLMGateway, user: UserWork) -> UserResult:
        return await simulate_user(user, gateway, sim)

    done = run_chunk(works, work, llm, model_id, cache_dir, limits, channel, in_flight, lambda r: r.user_id, owner)
    logging.getLogger("doppel").info("chunk of %d users done in %.2f s", len(works), time.monotonic() - started)
    return done
