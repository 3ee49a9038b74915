"""`doppel sql` and `doppel report`: look at a DuckDB file (read-only, briefly) and write the HTML report.

A sub-app of the `doppel` command (flows/cli.py adds it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import typer
from rich.table import Table
from rich.text import Text

from doppel.flows.cli_output import TERMINAL, console, count, fail, show
from doppel.flows.options import DB

app = typer.Typer()


@app.command()
def sql(
    query: str | None = typer.Argument(None, help='SQL to run read-only, e.g. "select * from run_costs"'),
    view: str | None = typer.Option(None, "--view", "-v", help="show one of doppel's views (see --list)"),
    run_id: str | None = typer.Option(None, help="with --view: only this run's rows"),
    list_views: bool = typer.Option(False, "--list", help="list doppel's views"),
    db: Path = DB,
    limit: int = typer.Option(50, min=1, help="rows to print"),
    max_width: int | None = typer.Option(
        None, min=4, help="characters per cell before it is cut (default: 60 on a terminal, no cut into a pipe)"
    ),
    allow_files: bool = typer.Option(
        False, "--allow-files", help="let the query read and write other files (read_csv, COPY ... TO, ATTACH)"
    ),
) -> None:
    """Query the DuckDB file read-only (safe beside a live run) and print a table.

    The query sees only the database unless --allow-files: no other file is read or written.
    """
    from doppel.tasks.report import read_view, run_sql, view_names

    if list_views:
        console.print("\n".join(view_names()), highlight=False)
        return
    if (query is None) == (view is None):
        fail('give a query ("select ...") or --view NAME (--list shows the views)', 2)
    if run_id is not None and view is None:
        fail("--run-id filters a --view; put the filter in the query instead", 2)
    with _explore_errors():
        if view:
            frame, more = read_view(db, view, run_id, limit)
        else:
            assert query is not None  # exactly one of query and --view, checked above
            frame, more = run_sql(db, query, limit, allow_files)
    if run_id is not None and "run_id" in frame:
        frame = frame.drop(columns="run_id")  # one run: the column says nothing
    show(frame_table(frame, max_width or (60 if TERMINAL else None), title=view))
    shown = count(len(frame), "row")
    console.print(f"{shown}, more left out (--limit)" if more else shown, style="dim", highlight=False)


@app.command()
def report(
    run_id: str | None = typer.Option(None, help="the run to report (default: the latest run that simulated users)"),
    db: Path = DB,
    out: Path = typer.Option(Path("report.html"), help="HTML file to write"),
    arena_run: str | None = typer.Option(
        None, help="the arena run of the arena section (default: the latest finished one; none in the file: no section)"
    ),
) -> None:
    """Write a self-contained HTML report of a run: plots, fidelity vs baselines, cost, validation, and the
    recommender arena (rank agreement, calibration) when the file holds an arena run."""
    from doppel.tasks.report import write_report

    with _explore_errors():
        path = write_report(db, run_id, out, arena_run)
    console.print(f"report written to [bold]{path}[/]", highlight=False)


@contextlib.contextmanager
def _explore_errors() -> Iterator[None]:
    """One clear line instead of a traceback (without flows.errors, which imports Prefect: slow)."""
    import duckdb

    from doppel.tasks.store.db import DatabaseLockedError

    try:
        yield
    except (ValueError, FileNotFoundError, DatabaseLockedError) as exc:
        fail(str(exc), 2)
    except duckdb.PermissionException as exc:  # a file outside the database, refused
        fail(f"{str(exc).strip()} (doppel sql --allow-files lets a query read and write files)", 2)
    except duckdb.Error as exc:  # the query's parser / binder / catalog error, as DuckDB words it
        fail(str(exc).strip(), 2)


def frame_table(frame: pd.DataFrame, max_width: int | None = 60, title: str | None = None) -> Table:
    """A Rich table of a frame; cells longer than `max_width` characters are cut with an ellipsis.

    A frame too wide for the terminal (or a single wide row, e.g. `run_costs` of one run) is printed
    as column / value pairs, one block per row: squeezed into the terminal, its columns would shrink
    to nothing.
    """
    cells = [[_cell(v, max_width) for v in row] for row in frame.itertuples(index=False)]
    # a column is as wide as its widest value (a header may fold): values are never squeezed
    widths = [max((Text.from_markup(row[i]).cell_len for row in cells), default=1) for i in range(len(frame.columns))]
    too_wide = TERMINAL and sum(widths) + 3 * len(widths) + 1 > console.width
    if not (too_wide or (len(frame) == 1 and len(frame.columns) > 6)):
        table = Table(title=title, title_justify="left")
        for (name, dtype), width in zip(frame.dtypes.items(), widths, strict=True):
            numeric = pd.api.types.is_numeric_dtype(dtype)
            table.add_column(str(name), justify="right" if numeric else "left", min_width=width, overflow="fold")
        for row in cells:
            table.add_row(*row)
        return table
    records = Table(title=title, title_justify="left")
    records.add_column("column")
    records.add_column("value", overflow="fold")
    for _, row in frame.iterrows():
        for position, (name, value) in enumerate(row.items()):
            records.add_row(str(name), _cell(value, max_width), end_section=position == len(row) - 1)
    return records


def _cell(value, max_width: int | None) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "[dim]null[/]"
    if isinstance(value, float):
        text = f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    else:
        text = " ".join(str(value).split())  # one line: profiles and responses are multi-line
    text = text if max_width is None or len(text) <= max_width else text[: max_width - 1] + "…"
    return text.replace("[", r"\[")
