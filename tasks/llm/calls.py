"""What a gateway call gives back: the audit record of each call, the outcomes, the errors."""

from __future__ import annotations

from dataclasses import dataclass, field


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


def describe_error(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{text}: {detail}" if detail else text
