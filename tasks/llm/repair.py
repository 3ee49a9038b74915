"""The one validate-and-repair call: ask, check the answer, re-ask in the same conversation quoting the problem.

Used by rating (tasks/llm/gateway.py), item keywords (tasks/ensemble/keywords.py) and agent
decisions (tasks/sandbox/agent.py). A mode supplies how to ask (`complete`), what a good answer
is (`check`) and how the re-ask reads (`repair`); every attempt's `CallRecord` is appended to
`calls` (an invalid one marked with its problem), and the result is None (valid) or the reason
the answer stayed invalid or the call failed. It never raises on a bad answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from doppel.tasks.llm.calls import CallRecord, GatewayError

Complete = Callable[[str, list[dict]], Awaitable[tuple[str, CallRecord]]]


async def ask_until_valid(
    complete: Complete,
    prompt: str,
    messages: list[dict],
    check: Callable[[str, CallRecord], str | None],
    repair: Callable[[str], tuple[str, str]],
    attempts: int,
    calls: list[CallRecord],
    error_chars: int = 600,
) -> str | None:
    """None once `check` accepts an answer; else why not, after `attempts` answers or a failed call.

    Args:
        complete: (prompt name, messages) -> (content, record): one cached, limited completion.
        check: (content, record) -> None for a valid answer, else the problem (quoted in the re-ask).
        repair: problem -> (prompt name, user message) of the re-ask.
    """
    for attempt in range(attempts):
        try:
            content, record = await complete(prompt, messages)
        except GatewayError as exc:
            calls.append(exc.args[1])
            return f"call failed: {exc.args[0]}"
        problem = check(content, record)
        calls.append(record)
        if problem is None:
            return None
        record.status, record.error = "invalid", problem[:error_chars]
        if attempt == attempts - 1:
            return f"invalid answer after {attempt + 1} attempts: {problem}"
        prompt, text = repair(problem)
        messages = messages + [{"role": "assistant", "content": content or ""}, {"role": "user", "content": text}]
    return "no attempt made"
