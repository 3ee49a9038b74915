"""Progress of a run: a live bar on a terminal; into a pipe or file, a full line every few seconds.

Rich draws nothing into a pipe until the end, so a 20-minute run logged to a file showed nothing for
20 minutes. `live_progress` gives Rich's Progress on a terminal and `PlainProgress` (the same
add_task / update calls) elsewhere: one plain line per task every `PLAIN_EVERY_S` seconds, whether or
not anything finished meanwhile, and a last line at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from doppel.flows.cli_output import count

PLAIN_EVERY_S = 5.0


class PlainProgress:
    """Rich Progress's add_task / update for a stream that is not a terminal: full lines, never redrawn."""

    def __init__(
        self, enabled: bool = True, every_s: float = PLAIN_EVERY_S, unit: str = "", stream=None, eta: bool = True
    ) -> None:
        self.enabled, self.every_s, self.unit, self.eta = enabled, every_s, unit, eta
        self._stream = stream
        self._tasks: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        with self._lock:
            task_id = TaskID(len(self._tasks))
            self._tasks[task_id] = {
                "description": description,
                "total": total,
                "completed": 0,
                "fields": fields,
                "started": time.monotonic(),
            }
        return task_id

    def update(
        self,
        task_id: int,
        *,
        advance: float = 0,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        with self._lock:
            task = self._tasks[task_id]
            task["completed"] = completed if completed is not None else task["completed"] + advance
            task["total"] = total if total is not None else task["total"]
            task["description"] = description or task["description"]
            task["fields"].update(fields)

    def line(self, task_id: int) -> str:
        """'simulating 3/20 users · <fields> · 1:05 elapsed · ETA 6:10'."""
        task = self._tasks[task_id]
        done, total = task["completed"], task["total"]
        elapsed = time.monotonic() - task["started"]
        count = f"{done:,.0f}/{total:,.0f}" if total is not None else f"{done:,.0f}"
        parts = [f"{task['description']} {count}" + (f" {self.unit}" if self.unit else "")]
        parts += [str(v) for v in task["fields"].values() if v not in ("", None)]
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.eta and total and 0 < done < total:
            parts.append(f"ETA {_clock(elapsed / done * (total - done))}")
        return " · ".join(parts)

    def _print_all(self) -> None:
        with self._lock:
            lines = [self.line(task_id) for task_id in self._tasks]
        stream = self._stream or sys.stderr
        for text in lines:
            print(text, file=stream, flush=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            self._print_all()

    def __enter__(self) -> PlainProgress:
        if self.enabled:
            self._thread = threading.Thread(target=self._beat, name="doppel-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._print_all()  # the final counts


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def live_progress(
    *columns: Any, enabled: bool = True, unit: str = "", eta: bool = True, **kwargs: Any
) -> Progress | PlainProgress:
    """Rich's Progress (with these columns) on a terminal; PlainProgress into a pipe or file (stderr).
    `eta`: whether the plain line estimates the time left (not for steps of very unequal length)."""
    if not sys.stderr.isatty():
        return PlainProgress(enabled=enabled, unit=unit, eta=eta)
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, **kwargs)


@dataclass
class Tally:
    """Counts over the results that arrived: each has `.calls` (CallRecords) and `.n_failed`."""

    results: int = 0
    failed: int = 0  # sum of n_failed (failed pairs, failed items, failed agent actions)
    with_failures: int = 0  # results with at least one failure
    calls: int = 0  # calls made now (not answered from the cache)
    cached: int = 0  # calls answered from the response cache
    replayed: int = 0  # of those, this owner's own calls from an invocation that did not record them
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_s: float = 0.0  # seconds spent in calls made now
    with_new_calls: int = 0  # results that needed at least one call made now

    def add(self, result) -> None:
        new = [c for c in result.calls if not c.cached]  # a replayed call is the run's, but not made now
        self.results += 1
        self.failed += result.n_failed
        self.with_failures += result.n_failed > 0
        self.calls += len(new)
        self.cached += len(result.calls) - len(new)
        self.replayed += sum(c.replayed for c in result.calls)
        self.prompt_tokens += sum(c.prompt_tokens for c in new)
        self.completion_tokens += sum(c.completion_tokens for c in new)
        self.llm_s += sum(c.latency_s for c in new)
        self.with_new_calls += bool(new)

    def line(self, calls_so_far: int = 0, tokens_so_far: int = 0) -> str:
        """`calls_so_far`, `tokens_so_far`: what the endpoint answered so far, unfinished jobs' included."""
        made = count(max(self.calls, calls_so_far), "call")
        tokens = max(self.prompt_tokens + self.completion_tokens, tokens_so_far)
        return f"{self.failed} failed · {made} made, {self.cached} from the cache · {tokens:,} tokens"


class _OneTask:
    """One task of `live_progress` as a context manager: the columns between the label and the elapsed
    time, the task's own fields, and whether the plain line estimates the time left."""

    def __init__(self, label: str, total: int, columns: list, fields: dict, enabled: bool, unit: str, eta: bool):
        self._progress = live_progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            *columns,
            enabled=enabled,
            unit=unit,
            eta=eta,
            transient=False,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task(label, total=total, **fields)

    def _update(self, **changes: Any) -> None:
        self._progress.update(self._task, **changes)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)


class Bar(_OneTask):
    """The fan-out's progress: `label` done/total, the tally's line, elapsed time and ETA (live_progress)."""

    def __init__(self, label: str, total: int, enabled: bool = True, unit: str = "") -> None:
        columns = [TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        super().__init__(label, total, columns, {"stats": ""}, enabled, unit, eta=True)

    def show(self, tally: Tally, advance: int, calls_so_far: int = 0, tokens_so_far: int = 0) -> None:
        self._update(advance=advance, stats=tally.line(calls_so_far, tokens_so_far))


class Steps(_OneTask):
    """A job of a known number of steps: `label` done/total, what it is doing now, elapsed time (live_progress)."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        # no ETA: a fit takes a second, the hybrid a minute, so the steps done say nothing of the time left
        columns = [TextColumn("{task.fields[doing]}"), TimeElapsedColumn()]
        super().__init__(label, total, columns, {"doing": ""}, enabled, "steps", eta=False)

    def doing(self, what: str) -> None:
        """Say what the job does now (no step finished)."""
        self._update(doing=what)

    def done(self, then: str = "") -> None:
        """One step finished; `then` is what comes next."""
        self._update(advance=1, doing=then)
