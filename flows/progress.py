"""A live progress bar for a run: users done/failed, calls, tokens, elapsed and ETA."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self, total_users: int, enabled: bool = True, label: str = "simulating"):
        self.calls = self.cached = self.prompt_tokens = self.completion_tokens = self.failed_pairs = 0
        self.partial_users = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("users · {task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task(label, total=total_users, stats=self._stats())
        self._plain = enabled and not sys.stderr.isatty()
        self._total = total_users
        self._done = 0

    def _stats(self) -> str:
        return (
            f"{self.partial_users} with failed pairs ({self.failed_pairs}) · {self.calls} calls "
            f"({self.cached} cached) · {self.prompt_tokens + self.completion_tokens:,} tokens"
        )

    def advance(self, result) -> None:
        new_calls = [c for c in result.calls if not c.cached]
        self.calls += len(new_calls)
        self.cached += len(result.calls) - len(new_calls)
        self.prompt_tokens += sum(c.prompt_tokens for c in new_calls)
        self.completion_tokens += sum(c.completion_tokens for c in new_calls)
        self.failed_pairs += result.n_failed
        self.partial_users += result.n_failed > 0
        self._done += 1
        self._progress.update(self._task, advance=1, stats=self._stats())

    def __enter__(self) -> RunProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)
