"""Helpers for the gateway tests: candidate items, prompt variables, a gateway on the test server."""

from __future__ import annotations

import asyncio

from doppel.tasks.llm.cache import ResponseCache
from doppel.tasks.llm.gateway import LLMGateway
from doppel.tasks.llm.limits import CallLimiter
from doppel.tasks.records import CandidateItem, HistoryItem
from doppel.tasks.settings import LLMSettings

ITEMS = [CandidateItem(str(i), f"Movie {i}", 1990 + i, "Drama|Comedy", f"A story about {i}.", 4) for i in range(1, 6)]
IDS = [c.item_id for c in ITEMS]


def variables(profile="Likes gentle comedies."):
    return {
        "demographics": "30 years old, female, writer",
        "max_words": 80,
        "profile": profile,
        "recent": [HistoryItem("9", "Old", 1980, "Drama", "", 5, 1)],
        "candidates": ITEMS,
    }


def gateway(server, tmp_path, **overrides) -> LLMGateway:
    options = {"timeout_s": 5, "max_retries": 2, **overrides}
    settings = LLMSettings(base_url=server.base_url, model="doppel-test-model", **options)
    return LLMGateway(settings, ResponseCache(tmp_path / "cache"), CallLimiter(4), "doppel-test-model")


def run(coro):
    return asyncio.run(coro)


async def _rate(gw, **kw):
    try:
        return await gw.ratings(variables(), IDS, **kw)
    finally:
        await gw.aclose()


def _close(a, b):
    return all(abs(x - y) < 1e-9 for x, y in zip(a, b, strict=True))
