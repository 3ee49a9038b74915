"""DuckDB access: short connections, statements from sql/, DataFrames in and out.

DuckDB lets no other process open a file that one process holds read-write, so writers hold the
file only for one short transaction and retry with backoff while someone else holds it; that is
what lets `doppel sql` and `duckdb -readonly` look at a live run.

Within one process, one connection per file is open at a time (`_file_lock`): DuckDB shares one
database instance per file in a process, and threads opening and closing it side by side (the web UI's
reads beside the sandbox's writes) met "pandas_scan does not exist" while an instance was being made
and "a different configuration" when a read-only connection met a writing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from doppel.tasks.paths import sql_text
from doppel.tasks.store.schema import apply_schema, declare_temp_views

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class DatabaseLockedError(RuntimeError):
    """The DuckDB file stayed locked by another process for longer than the wait allowed."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def lock_wait_s() -> float:
    """How long to wait for a file another process holds: DOPPEL_DB_LOCK_WAIT_S, default 120 s."""
    value = os.environ.get("DOPPEL_DB_LOCK_WAIT_S", "120")
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"DOPPEL_DB_LOCK_WAIT_S={value!r} is not a number of seconds") from None


_FILE_LOCKS: dict[Path, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.RLock:
    """This process's lock for one database file (re-entrant: a thread may nest its own connections)."""
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(path.resolve(), threading.RLock())


@contextlib.contextmanager
def connect(
    db_path: str | Path, read_only: bool = False, wait_s: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the file (waiting with backoff while another process holds it), then close it."""
    wait_s = lock_wait_s() if wait_s is None else wait_s
    path = Path(db_path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no DuckDB file at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    in_process = _file_lock(path)
    if not in_process.acquire(timeout=wait_s):
        raise DatabaseLockedError(f"{path} is held by another thread of this process (waited {wait_s:.0f} s)")
    try:
        con = _open(path, read_only, deadline, wait_s)
        try:
            yield con
        finally:
            con.close()
    finally:
        in_process.release()


def _open(path: Path, read_only: bool, deadline: float, wait_s: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, waiting with backoff while another process holds the file."""
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            if not _is_lock_error(exc):
                raise
            if time.monotonic() > deadline:
                raise DatabaseLockedError(
                    f"{path} is locked by another process (waited {wait_s:.0f} s): {str(exc).splitlines()[0]}"
                ) from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


def statements(name: str) -> list[str]:
    """The statements of sql/queries/<name>.sql, split on `;` at line ends."""
    text = "\n".join(line for line in sql_text(f"queries/{name}.sql").splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*\n", text + "\n") if s.strip().rstrip(";").strip()]


def execute(
    con: duckdb.DuckDBPyConnection,
    name: str | tuple[str, ...],
    frames: dict[str, pd.DataFrame] | None = None,
    **params: Any,
) -> pd.DataFrame | None:
    """Run every statement of a query file (or of several, in order); returns the last statement's rows
    (if it has any)."""
    for view, frame in (frames or {}).items():
        con.register(view, frame)
    try:
        out = None
        for sql in (s for n in ((name,) if isinstance(name, str) else name) for s in statements(n)):
            used = {k: params[k] for k in dict.fromkeys(_PARAM.findall(sql)) if k in params}
            cursor = con.execute(sql.rstrip(";"), used)
            out = cursor.df() if cursor.description else None
        return out
    finally:
        for view in frames or {}:
            with contextlib.suppress(duckdb.Error):  # an aborted transaction refuses; the error that aborted it counts
                con.unregister(view)


def query(db_path: str | Path, name: str, read_only: bool = False, **params: Any) -> pd.DataFrame:
    """A query file's rows. Read-only, the views are declared on the connection first, so a query over
    them also reads a file written by an older doppel (whose stored views may predate them)."""
    with connect(db_path, read_only=read_only) as con:
        if read_only:
            declare_temp_views(con)
        out = execute(con, name, **params)
    return out if out is not None else pd.DataFrame()


def run_not_found(con: duckdb.DuckDBPyConnection, db_path: str | Path, run_id: str) -> ValueError:
    """The error for a run id the file does not hold, naming the (latest ten) runs it does hold."""
    try:
        known = [r[0] for r in con.execute("select run_id from runs order by started").fetchall()]
    except duckdb.CatalogException:  # not a file doppel has set up
        known = []
    hint = f"; runs: {', '.join(known[-10:])}" if known else "; it has no runs"
    return ValueError(f"no run {run_id!r} in {db_path}{hint}")


def require_run(db_path: str | Path, run_id: str) -> None:
    """Raise (FileNotFoundError, or ValueError naming the runs there are) unless the file holds run `run_id`:
    before any engine starts, and without creating the file."""
    with connect(db_path, read_only=True) as con:
        try:
            found = con.execute("select 1 from runs where run_id = ?", [run_id]).fetchone()
        except duckdb.CatalogException:
            found = None
        if found is None:
            raise run_not_found(con, db_path, run_id)


def first_run(db_path: str | Path, name: str, **params: Any) -> dict | None:
    """The first row of the runs query `name` (sql/queries), its JSON config parsed; None if it has none."""
    rows = query(db_path, name, **params)
    if rows.empty:
        return None
    row = rows.iloc[0].to_dict()
    row["config"] = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
    return row


def transaction(
    db_path: str | Path,
    name: str | tuple[str, ...],
    frames: dict[str, pd.DataFrame] | None = None,
    check: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    **params: Any,
) -> None:
    """Run a query file (or several, in order) as one transaction on a short-lived connection; `check(con)`
    sees the written rows before the commit, and whatever it raises rolls the transaction back."""
    with connect(db_path) as con:
        con.begin()
        try:
            execute(con, name, frames, **params)
            if check is not None:
                check(con)
            con.commit()
        except BaseException:
            con.rollback()
            raise


def init_db(db_path: str | Path) -> list[int]:
    """Create every table, migrate an older file, (re)create every view (tasks/store/schema.py); safe to
    repeat. Returns the migrations it ran."""
    with connect(db_path) as con:
        return apply_schema(con)
