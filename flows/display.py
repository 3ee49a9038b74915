"""Rich rendering of run summaries and metric tables for the CLI."""

from __future__ import annotations

import pandas as pd
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from doppel.flows.cli_output import console, count, show

METRIC_COLUMNS = [
    ("rmse", "RMSE", "{:.3f}"),
    ("mae", "MAE", "{:.3f}"),
    ("exact", "exact %", "{:.1f}"),
    ("off_by_one", "off-by-1 %", "{:.1f}"),
    ("close", "close %", "{:.1f}"),
    ("tv", "TV", "{:.3f}"),
    ("n", "n", "{:,.0f}"),
    ("n_missing", "failed", "{:,.0f}"),
]


def metrics_table(records: list[dict]) -> Group:
    """One table per fold: a row per simulator (the LLM first, then baselines)."""
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return Group("no metrics")
    tables = []
    for fold, group in frame.groupby("fold", sort=True):
        wide = group.pivot_table(index="simulator", columns="metric", values="value", aggfunc="first")
        order = sorted(wide.index, key=lambda s: (s != "llm", s))
        title = "mean over folds" if fold == "all" else f"fold {fold}"
        table = Table(title=f"fidelity — {title}", title_justify="left")
        table.add_column("simulator")
        for _, label, _ in METRIC_COLUMNS:
            table.add_column(label, justify="right")
        for sim in order:
            cells = [_fmt(wide.loc[sim].get(key), fmt) for key, _, fmt in METRIC_COLUMNS]
            table.add_row("[bold]" + sim + "[/]" if sim == "llm" else sim, *cells)
        tables.append(table)
    return Group(*tables)


def _fmt(value, fmt: str) -> str:
    return "–" if value is None or pd.isna(value) else fmt.format(value)


def print_summary(summary: dict) -> None:
    summary = {
        k: int(v) if isinstance(v, float) and k not in ("wall_s",) and float(v).is_integer() else v
        for k, v in summary.items()
    }
    show(metrics_table(summary.get("scores") or []))
    now = summary.get("this_invocation") or {}
    console.print(
        f"run [bold]{summary['run_id']}[/] {summary['status']}: {count(summary['users'], 'user')}, "
        f"{count(summary['pairs'], 'pair')} ({summary['failed_pairs']} failed), {count(summary['calls'], 'LLM call')}, "
        f"{summary['prompt_tokens']:,} prompt + {summary['completion_tokens']:,} completion tokens in all",
        highlight=False,
    )
    console.print(
        f"this invocation: {count(now.get('users', 0), 'user')} simulated, {count(now.get('new_calls', 0), 'LLM call')} made, "
        f"{now.get('cached_calls', 0):,} answered from the cache, {summary['wall_s']:.1f} s",
        highlight=False,
    )
    if summary.get("gate"):
        console.print(f"output contracts (GX gate): {summary['gate']}", highlight=False)
    if summary.get("concurrency_note"):
        console.print(summary["concurrency_note"], highlight=False)
    for error in now.get("chunk_errors") or []:
        console.print(f"[red]a worker chunk failed:[/] {escape(error)}", highlight=False)
    if summary["failed_pairs"] or summary["status"] != "finished":
        console.print(f"rerun with [bold]--run-id {summary['run_id']}[/] to retry what is left.")
    console.print(
        f'tables in [bold]{summary["db"]}[/]: doppel sql --db {summary["db"]} "select * from metrics"',
        highlight=False,
    )


def print_estimate(est, settings, measured: tuple[float, int] | None = None) -> None:
    """The dry-run table: calls, tokens, cost and the LLM-bound wall time at the speed measured in --db's
    own runs of this model (`measured`: mean seconds per call, calls), else at a few speeds."""
    llm = settings.llm
    embedded = not llm.base_url
    concurrency = llm.embedded_slots if embedded else llm.concurrency
    table = Table(title="dry run: nothing was called", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("users", f"{est.users:,}"),
        ("requested pairs", f"{est.pairs:,}"),
        ("LLM calls", f"{est.calls:,}"),
        ("longest user chain (calls)", f"{est.longest_chain}"),
        ("prompt tokens (approx.)", f"{est.prompt_tokens:,}"),
        ("completion tokens (at most)", f"{est.completion_tokens:,}"),
        ("prompt tokens per rating", f"{est.prompt_tokens / max(1, est.pairs):.0f}"),
        ("cost (USD, at the given prices)", f"{est.cost_usd:,.2f}"),
    ]
    if measured is not None:
        seconds, calls = measured
        label = f"wall at {seconds:.1f} s/call (mean of {calls:,} calls in --db), concurrency {concurrency}"
        rows.append((label, f"{est.wall_s(seconds, concurrency) / 60:,.1f} min"))
    else:
        for seconds in [5.0, 10.0, 20.0] if embedded else [0.5, 1.0, 2.0]:
            label = f"wall at {seconds:g} s/call, concurrency {concurrency}"
            rows.append((label, f"{est.wall_s(seconds, concurrency) / 60:,.1f} min"))
    for key, value in rows:
        table.add_row(key, value)
    show(table)
    if measured is None:
        console.print(
            f"no call of {llm.model} is recorded in {settings.db} yet: a short run "
            "(e.g. --users 2) measures this machine's speed, and the dry run then uses it",
            highlight=False,
        )
    if llm.rating_samples and llm.rating_probs:
        console.print(
            f"plus up to {llm.rating_samples} draws per rating call where the server gives no logprobs "
            "(--rating-samples)"
        )
