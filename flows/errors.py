"""Turn known failures into one clear line and a non-zero exit (no traceback).

Entering `friendly_errors` imports nothing: the error classes (openai, Prefect's flows) are imported
only when an exception arrives, so the checks made before any engine starts stay fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def friendly_errors(fail: Callable[[str, int], None]) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        fail("interrupted: finished users are saved; rerun with the same --run-id to continue", 130)
    except Exception as exc:
        known = describe(exc)
        if known is None:
            raise
        fail(*known)


def describe(exc: Exception) -> tuple[str, int] | None:
    """(message, exit code) for a failure the user can fix; None for a bug (its traceback is shown)."""
    from doppel.tasks.records import DataError
    from doppel.tasks.store.db import DatabaseLockedError

    if isinstance(exc, _raised_by("doppel.flows.score", "GateFailed")):
        return str(exc), 3
    user_fixable = (DataError, DatabaseLockedError, FileNotFoundError, NotADirectoryError)
    user_fixable += _raised_by("doppel.tasks.llm.gateway", "EndpointError")
    user_fixable += _raised_by("doppel.tasks.llm.gguf", "EmbeddedModelError")
    if isinstance(exc, user_fixable):
        return str(exc), 2
    if isinstance(exc, _raised_by("openai", "AuthenticationError")):
        return f"the endpoint rejected the API key (HTTP 401): {exc.message}", 2  # type: ignore[attr-defined]
    if isinstance(exc, ValueError):
        return str(exc), 2
    return None


def _raised_by(module: str, name: str) -> tuple[type, ...]:
    """The class `module.name` if that module is loaded (an exception of it can only come from there)."""
    cls = getattr(sys.modules.get(module), name, None)
    return (cls,) if isinstance(cls, type) else ()
