"""A run's lifecycle in one place: started when the block opens, then finished, failed or interrupted."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from doppel.flows.runtime.cluster import is_interrupt


@dataclass
class RunRecord:
    """What the block decides: `status` ("failed" until the body sets one) and what it did."""

    status: str = "failed"
    outcome: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def lifecycle(finish: Callable[[str], None], start: Callable[[], None] | None = None) -> Iterator[RunRecord]:
    """`start()`, the body, then `finish(status)` on every exit: the status the body set, "interrupted"
    on Ctrl-C or SIGTERM (flows/errors.py turns SIGTERM into KeyboardInterrupt), "failed" on an error."""
    record = RunRecord()
    try:
        if start is not None:
            start()
        yield record
    except BaseException as exc:
        record.status = "interrupted" if is_interrupt(exc) else "failed"
        raise
    finally:
        finish(record.status)
