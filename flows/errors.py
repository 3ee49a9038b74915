"""Turn known failures into one clear line and a non-zero exit (no traceback).

Entering `friendly_errors` imports nothing: the error classes (openai, Prefect's flows) are imported
only when an exception arrives, so the checks made before any engine starts stay fast.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def friendly_errors(
    fail: Callable[[str, int], None], interrupted: str | Callable[[], str] = "interrupted"
) -> Iterator[None]:
    """Known failures as one line; Ctrl-C and SIGTERM as `interrupted` (a callable: what to rerun, known late).

    Exit codes as a shell reports a process killed by the signal: 130 (128 + SIGINT), 143 (128 + SIGTERM)."""
    terminated = threading.Event()
    try:
        with sigterm_interrupts(terminated):
            yield
    except BaseException as exc:
        # Ctrl-C, or SIGTERM as Prefect's flow engine raises it
        by_prefect = type(exc).__name__ == "TerminationSignal"
        if isinstance(exc, KeyboardInterrupt) or by_prefect:
            code = 128 + (signal.SIGTERM if terminated.is_set() or by_prefect else signal.SIGINT)
            fail(interrupted if isinstance(interrupted, str) else interrupted(), code)
        if not isinstance(exc, Exception):
            raise
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
    user_fixable: tuple[type, ...] = (DataError, DatabaseLockedError, FileNotFoundError, NotADirectoryError)
    user_fixable += _raised_by("doppel.tasks.llm.calls", "EndpointError")
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


@contextlib.contextmanager
def sigterm_interrupts(terminated: threading.Event | None = None) -> Iterator[None]:
    """SIGTERM to the main process ends a command as Ctrl-C does: KeyboardInterrupt, so every engine
    stops through its context manager and the user reads the one line (`terminated` is set, for the
    exit code). A second SIGTERM during that shutdown is ignored (it would interrupt the clean-up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if terminated is not None:
            terminated.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
