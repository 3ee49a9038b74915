"""LLM item analysis: pros and cons keywords per item, objective (item facts) and subjective (reviews).

One call per (item, source), through the spine's gateway: same response cache, same limits, same
audit records. The answer is JSON `{"pros": [...], "cons": [...]}`, constrained by a JSON schema
(`response_format` json_schema; json_object or plain text on servers without it, as the gateway
downgrades), validated here, and repaired by re-asking in the same conversation with the problem
quoted. An item that still has no valid answer is recorded as failed, never dropped.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from doppel.tasks.llm.calls import CallOwner, CallRecord
from doppel.tasks.llm.gateway import LLMGateway
from doppel.tasks.llm.repair import ask_until_valid
from doppel.tasks.llm.schemas import load_json
from doppel.tasks.llm.session import LimitSpec, run_chunk
from doppel.tasks.llm.templates import render
from doppel.tasks.records import Packed

SOURCES = {"obj": "item_keywords", "sub": "item_keywords_reviews"}  # source -> prompt template
_WORD = re.compile(r"[a-z0-9][a-z0-9'&+-]*")
_VAGUE = {
    "none",
    "n/a",
    "na",
    "nothing",
    "unknown",
    "good",
    "bad",
    "movie",
    "film",
    "great",
    "poor",
    "pro",
    "pros",
    "con",
    "cons",
    "keyword",
    "keywords",
}
MAX_WORDS = 4
MAX_CHARS = 40


@dataclass(frozen=True)
class ItemFacts:
    """What the LLM sees of one item (objective facts, and reviews for the subjective source)."""

    item_id: str
    title: str
    year: int | None
    genres: str
    text: str
    reviews: tuple[str, ...] = ()


@dataclass
class ItemAnalysis:
    """The keywords of one (item, source), ready for the flow to write."""

    item_id: str
    source: str  # obj | sub
    status: str = "failed"  # ok | failed
    pros: list[str] = field(default_factory=list)
    cons: list[str] = field(default_factory=list)
    error: str | None = None
    calls: list[CallRecord] = field(default_factory=list)
    retries: int = 0  # reruns that asked again after it failed (each a new sample)

    @property
    def n_failed(self) -> int:
        return int(self.status != "ok")

    @property
    def llm_seconds(self) -> float:
        return sum(c.latency_s for c in self.calls if not c.cached)


class KeywordAnswer(BaseModel):
    pros: list[str]
    cons: list[str]


def keywords_json_schema(max_keywords: int) -> dict:
    """Short lowercase keyword lists; the pattern keeps small models from writing sentences."""
    words = {"type": "string", "minLength": 2, "maxLength": MAX_CHARS, "pattern": "^[a-z][a-z0-9 '&-]*$"}
    array = {"type": "array", "items": words, "minItems": 1, "maxItems": max_keywords}
    return {
        "type": "object",
        "properties": {"pros": array, "cons": array},
        "required": ["pros", "cons"],
        "additionalProperties": False,
    }


def normalise_keyword(raw: Any) -> str | None:
    """Lowercase words joined by one space; None for empty, vague or sentence-long keywords."""
    if not isinstance(raw, str):
        return None
    words = _WORD.findall(raw.lower().replace("_", " "))
    text = " ".join(words).strip("'&+-")
    if len(words) == 0 or len(words) > MAX_WORDS or len(text) > MAX_CHARS or len(text) < 2 or text in _VAGUE:
        return None
    return text


@dataclass
class ParsedKeywords:
    pros: list[str] = field(default_factory=list)
    cons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_keywords(text: str | None, max_keywords: int) -> ParsedKeywords:
    """Validate an answer; keep at most `max_keywords` distinct normalised keywords per list.

    A keyword listed as both pro and con is ambiguous and dropped from both. An answer with no
    usable keyword at all is a problem (the caller re-asks); an empty `cons` list alone is fine.
    """
    out = ParsedKeywords()
    try:
        answer = KeywordAnswer.model_validate(load_json(text))
    except json.JSONDecodeError as exc:
        out.problems.append(f"not valid JSON ({exc.msg} at char {exc.pos})")
        return out
    except ValidationError as exc:
        err = exc.errors()[0]
        out.problems.append(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}")
        return out
    lists = {}
    for name in ("pros", "cons"):
        kept: list[str] = []
        for raw in getattr(answer, name):
            word = normalise_keyword(raw)
            if word and word not in kept:
                kept.append(word)
        lists[name] = kept[:max_keywords]
    both = set(lists["pros"]) & set(lists["cons"])
    out.pros = [k for k in lists["pros"] if k not in both]
    out.cons = [k for k in lists["cons"] if k not in both]
    if not out.pros and not out.cons:
        if both:
            out.problems.append(
                f"the same keywords are listed as pros and as cons ({', '.join(sorted(both)[:5])}): "
                "pros name what viewers like, cons what they dislike, never the same keyword"
            )
        else:
            out.problems.append("no usable keyword: give short keywords of 1-3 words, not sentences or titles")
    return out


def _quote(text: str, limit: int) -> str:
    """Dataset text stays data: one line, our delimiters neutralised, cut to `limit` characters."""
    text = " ".join(str(text or "").split())
    for tag in ("<data>", "</data>"):
        text = text.replace(tag, tag.replace("<", "(").replace(">", ")"))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def prompt_variables(item: ItemFacts, source: str, max_keywords: int, review_chars: int = 300) -> dict:
    variables: dict[str, Any] = {"item": item, "max_keywords": max_keywords, "repair_error": None}
    if source == "sub":
        variables["reviews"] = [_quote(r, review_chars) for r in item.reviews]
    return variables


async def analyse_item(
    gateway: LLMGateway,
    item: ItemFacts,
    source: str,
    *,
    max_keywords: int = 5,
    max_tokens: int = 200,
    overview_chars: int = 400,
    review_chars: int = 300,
    priority: float = 0.0,
    retries: int = 0,
) -> ItemAnalysis:
    """Pros/cons keywords of one item from one source, repairing bad answers by re-asking.

    The prompt is one user message (no viewer-simulation system prompt: this is item analysis). `retries` > 0:
    a rerun asks again after a failure, a new sample (not the cached failure).
    """
    prompt = SOURCES[source]
    out = ItemAnalysis(item_id=item.item_id, source=source, retries=retries)
    variables = prompt_variables(item, source, max_keywords, review_chars)
    messages = [{"role": "user", "content": render(prompt, overview_chars=overview_chars, **variables)}]
    schema = keywords_json_schema(max_keywords)

    async def complete(name: str, messages: list[dict]) -> tuple[str, CallRecord]:
        return await gateway.complete_json(
            name, messages, "item_keywords", schema, max_tokens=max_tokens, sample=retries, priority=priority
        )

    def check(content: str, record: CallRecord) -> str | None:
        parsed = parse_keywords(content, max_keywords)
        out.pros, out.cons = parsed.pros, parsed.cons
        return None if parsed.ok else "; ".join(parsed.problems)[:400]

    def repair(problem: str) -> tuple[str, str]:
        return prompt, render(prompt, overview_chars=overview_chars, **{**variables, "repair_error": problem})

    attempts = gateway.settings.repair_attempts + 1
    out.error = await ask_until_valid(complete, prompt, messages, check, repair, attempts, out.calls, 400)
    out.status = "ok" if out.error is None else "failed"
    return out


class PackedItems(Packed):
    """A chunk of (ItemFacts, source, retries) jobs for one item-analysis task."""


def run_analysis_chunk(
    packed: PackedItems,
    llm,
    model_id: str,
    cache_dir: str,
    limits: LimitSpec,
    options: dict,
    channel,
    owner: CallOwner | None = None,
) -> list[str]:
    """Synchronous entry for a task-runner thread or Dask worker: analyse the chunk's (item, source) jobs
    concurrently (a few more in flight than slots); each result goes out through `channel` as it finishes.
    `owner`: the ensemble's invocation (tasks.llm.calls.CallOwner)."""

    async def work(gateway: LLMGateway, job: tuple[ItemFacts, str, int]) -> ItemAnalysis:
        facts, source, retries = job
        return await analyse_item(gateway, facts, source, **options, retries=retries)

    started = time.monotonic()
    done = run_chunk(
        packed.unpack(),
        work,
        llm,
        model_id,
        cache_dir,
        limits,
        channel,
        2 * limits.local_slots,
        lambda r: r.item_id,
        owner,
    )
    logging.getLogger("doppel").info("item chunk of %d jobs done in %.2f s", packed.n, time.monotonic() - started)
    return done
