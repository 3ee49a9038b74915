"""What a gateway call gives back: the audit record of each call, the outcomes, the errors."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CallOwner:
    """Whose calls a gateway makes: a run, in this invocation of it (a resumed run is a new invocation)."""

    run_id: str
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class CallRecord:
    """One row of `llm_calls` (run/fold/user are added by the caller)."""

    call_key: str
    prompt_name: str
    prompt_hash: str
    model: str
    status: str  # ok | invalid | error
    cached: bool
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # the HTTP call itself (from slot acquired to answer), not time queued
    error: str | None = None
    response: str | None = None
    cached_prompt_tokens: int = 0  # prompt tokens the server reused from its prefix cache
    # not an llm_calls column: [byte offset, p1..p5] of the answer's digit tokens (schemas.digit_distributions)
    digits: list[list[float]] | None = field(default=None, repr=False)
    # not an llm_calls column: this run's own earlier call, read back from the cache (an invocation that was
    # interrupted before it recorded the call): free now, but the run paid for it (save_user_results.sql)
    replayed: bool = False


def cache_entry(record: CallRecord, owner: CallOwner | None) -> dict:
    """What the response cache keeps of an answered call: the answer, what it cost, who made it."""
    entry = {
        "content": record.response,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_s": record.latency_s,
        "attempts": record.attempts,
        "cached_prompt_tokens": record.cached_prompt_tokens,
        "made_by": owner.run_id if owner else None,
        "made_in": owner.invocation if owner else None,
    }
    return entry if record.digits is None else {**entry, "digits": record.digits}


def cached_record(hit: dict, base: dict, owner: CallOwner | None) -> CallRecord:
    """A cache entry as the record of a call answered from it: free, unless it is this run's own call from
    an earlier invocation (which may have ended before recording it): that one keeps what it cost."""
    replayed = owner is not None and hit.get("made_by") == owner.run_id and hit.get("made_in") != owner.invocation
    return CallRecord(
        **base,
        status="ok",
        cached=True,
        attempts=hit.get("attempts", 1) if replayed else 0,
        prompt_tokens=hit["prompt_tokens"],
        completion_tokens=hit["completion_tokens"],
        latency_s=hit["latency_s"] if replayed else 0.0,
        cached_prompt_tokens=hit.get("cached_prompt_tokens", 0) if replayed else 0,
        response=hit["content"],
        digits=hit.get("digits"),
        replayed=replayed,
    )


@dataclass
class TextOutcome:
    text: str | None  # None when every attempt failed
    error: str | None
    calls: list[CallRecord] = field(default_factory=list)


@dataclass
class RatingOutcome:
    ratings: dict[str, int]
    failed: dict[str, str]  # item_id -> reason, for ids with no valid rating after repairs
    calls: list[CallRecord] = field(default_factory=list)
    probs: dict[str, list[float]] = field(default_factory=dict)  # item_id -> P(1..5), from logprobs or draws
    draws: dict[str, int] = field(default_factory=dict)  # item_id -> valid draws behind probs (absent: logprobs)


class GatewayError(RuntimeError):
    """A call that failed after the client's retries (network, HTTP, timeout)."""


class EndpointError(RuntimeError):
    """The endpoint cannot serve this run (unreachable, bad key, unknown model)."""


def failed_call(base: dict, exc: Exception, attempts: int, started: float) -> GatewayError:
    """The error of a call that failed after the client's `attempts`, carrying its record for the audit log."""
    record = CallRecord(
        **base,
        status="error",
        cached=False,
        attempts=attempts,
        prompt_tokens=0,
        completion_tokens=0,
        latency_s=time.monotonic() - started,
        error=describe_error(exc),
    )
    return GatewayError(record.error, record)


def describe_error(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{text}: {detail}" if detail else text
