"""Where the `doppel` command writes: Rich on a terminal; full lines and Markdown tables into a pipe or file.

A pipe has no width: Rich would assume 80 columns and cut tables and lines with an ellipsis. Into a
pipe every line is printed whole (no wrapping, no cutting) and tables use Markdown's pipe layout.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

TERMINAL = sys.stdout.isatty()
UNBOUNDED = 100_000  # columns of a pipe: wide enough that nothing is wrapped or cut


def _console(stream_is_tty: bool, stderr: bool = False) -> Console:
    if stream_is_tty:
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNBOUNDED, soft_wrap=True)


console = _console(TERMINAL)
err = _console(sys.stderr.isatty(), stderr=True)


def count(n: int, noun: str) -> str:
    """'1 user', '1,200 users'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def fail(message: str, code: int = 1) -> NoReturn:
    """One `error: ...` line on stderr and exit `code`.

    The message quotes user data (dataset lines, paths): shown verbatim, never read as markup.
    """
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def show(renderable: RenderableType) -> None:
    """Print a table (or a group of them): boxed on a terminal, Markdown pipe tables elsewhere."""
    if TERMINAL:
        console.print(renderable)
        return
    tables: list[RenderableType] = [*_tables(renderable)] or [renderable]
    for table in tables:
        if isinstance(table, Table):
            table.box, table.show_edge = box.MARKDOWN, True
        with console.capture() as captured:
            console.print(table)
        # Markdown's box draws its top and bottom edges as lines of spaces: left out
        lines = [line.rstrip() for line in captured.get().splitlines() if line.strip()]
        console.out("\n".join(lines), highlight=False)


def _tables(renderable: RenderableType) -> list[Table]:
    if isinstance(renderable, Table):
        return [renderable]
    if isinstance(renderable, Group):
        return [t for r in renderable.renderables for t in _tables(r)]
    return []
