"""doppel's schema as sql/ defines it: tables, migrations, views, and the column lists read from them.

sql/ is the only place a table is defined; this module applies it and answers questions about it.

- Tables: `sql/schema.sql` (the core tables, and the macros over them) first, then every other
  `sql/*.sql` in file-name order (`ensemble.sql`, `sandbox.sql`, ...). A new mode adds its tables as
  one more `sql/<mode>.sql` (e.g. `sql/arena.sql`) and `init_db` applies it: no code change. Each
  file is `create table if not exists` / `create or replace macro`, safe to repeat.
- Migrations: `sql/migrations/NNN_<what>.sql` bring a file written by an older doppel up to date
  (a table file's `create table if not exists` never changes an existing table). Each is applied
  once, in number order, in one transaction, and recorded in `schema_migrations`. A new file (no
  tables yet) gets the current tables and records every migration as applied without running it. A
  file from before `schema_migrations` existed runs them all, so write them idempotent
  (`add column if not exists`).
- Views: `sql/staging/*.sql` (shared joins, jaffle_shop's `stg_*`) and `sql/views/*.sql` (what
  people query), one `create or replace view <file stem>` each, created in dependency order: a
  view after every view it selects from, whatever the file names.
- Columns: `table_columns(name)` lists a table's columns in table order, from the tables as the
  sql/ files create them (an in-memory DuckDB built once per process), so Python keeps no column
  list of its own.
"""

from __future__ import annotations

import re
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import duckdb

from doppel.tasks.paths import SQL_DIR

CORE_TABLES = "schema.sql"
VIEW_DIRS = ("staging", "views")
_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_COMMENT = re.compile(r"--[^\n]*")
_CREATE_VIEW = re.compile(r"create\s+or\s+replace\s+view", re.IGNORECASE)
_MIGRATIONS_TABLE = """create table if not exists schema_migrations (
    version     integer primary key,   -- the NNN of sql/migrations/NNN_<name>.sql
    name        varchar not null,
    applied     boolean not null,      -- false: recorded on a new file, whose tables were already current
    recorded_at timestamp not null default current_timestamp
)"""


def table_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    """The table files in the order they are applied: schema.sql, then the others by name."""
    others = sorted(p for p in sql_dir.glob("*.sql") if p.name != CORE_TABLES)
    return [sql_dir / CORE_TABLES, *others]


def migration_files(sql_dir: Path = SQL_DIR) -> list[tuple[int, Path]]:
    """(version, file) of sql/migrations/NNN_<name>.sql in version order; a bad name is an error."""
    out = []
    for path in sorted((sql_dir / "migrations").glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if not match:
            raise ValueError(f"{path}: a migration is named NNN_<lowercase_name>.sql")
        out.append((int(match.group(1)), path))
    versions = [v for v, _ in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{sql_dir / 'migrations'}: two migrations share a number: {versions}")
    return out


def view_files(sql_dir: Path = SQL_DIR) -> dict[str, Path]:
    """{view name: its file} for sql/staging/ and sql/views/; the file stem is the view's name."""
    out: dict[str, Path] = {}
    for folder in VIEW_DIRS:
        for path in sorted((sql_dir / folder).glob("*.sql")):
            if path.stem in out:
                raise ValueError(f"view {path.stem!r} is defined twice: {out[path.stem]} and {path}")
            out[path.stem] = path
    return out


def views_in_order(sql_dir: Path = SQL_DIR) -> list[tuple[str, str]]:
    """(name, `create or replace view` text) of every view, each after the views it selects from."""
    files = view_files(sql_dir)
    texts = {name: path.read_text() for name, path in files.items()}
    graph = {name: {other for other in files if other != name and _mentions(texts[name], other)} for name in files}
    try:
        order = list(TopologicalSorter({name: graph[name] for name in sorted(graph)}).static_order())
    except CycleError as exc:
        raise ValueError(f"sql views select from each other in a cycle: {' -> '.join(exc.args[1])}") from None
    return [(name, texts[name]) for name in order]


def _mentions(sql: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", _COMMENT.sub("", sql)) is not None


def apply_schema(con: duckdb.DuckDBPyConnection, sql_dir: Path = SQL_DIR) -> list[int]:
    """Create the tables, run the pending migrations, (re)create the views; returns the migrations run."""
    tables = con.execute("select count(*) from duckdb_tables() where schema_name = 'main'").fetchone()
    fresh = not (tables and tables[0])
    con.execute(_MIGRATIONS_TABLE)
    for path in table_files(sql_dir):
        con.execute(path.read_text())
    done = {row[0] for row in con.execute("select version from schema_migrations").fetchall()}
    ran = []
    for version, path in migration_files(sql_dir):
        if version in done:
            continue
        con.begin()
        try:
            if not fresh:
                con.execute(path.read_text())
            con.execute(
                "insert into schema_migrations (version, name, applied) values (?, ?, ?)",
                [version, path.stem, not fresh],
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
        if not fresh:
            ran.append(version)
    for _, text in views_in_order(sql_dir):
        con.execute(text)
    return ran


def declare_temp_views(con: duckdb.DuckDBPyConnection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Every view as a temporary view on this connection (e.g. read-only), shadowing a stored one.

    A file written by an older doppel, opened read-only, may lack a newer mode's tables (or a
    migration's columns): the views over them are left out, and their names returned, instead of
    making every other view unreadable.
    """
    missing = []
    for name, text in views_in_order(sql_dir):
        try:
            con.execute(_CREATE_VIEW.sub("create or replace temp view", text, count=1))
        except (duckdb.CatalogException, duckdb.BinderException):
            missing.append(name)
    return missing


@cache
def _columns(sql_dir: Path) -> dict[str, tuple[str, ...]]:
    con = duckdb.connect(":memory:")
    try:
        for path in table_files(sql_dir):
            con.execute(path.read_text())
        rows = con.execute(
            "select table_name, column_name from duckdb_columns() where schema_name = 'main' "
            "order by table_name, column_index"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return {table: tuple(columns) for table, columns in out.items()}


def table_columns(table: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """The columns of `table` in table order, as the sql/ table files define it."""
    tables = _columns(Path(sql_dir))
    if table not in tables:
        raise KeyError(f"no table {table!r} in {sql_dir}/*.sql (tables: {', '.join(sorted(tables))})")
    return list(tables[table])


def frame_columns(table: str, without: tuple[str, ...]) -> list[str]:
    """A table's columns minus the ones a query binds itself (e.g. run_id) or the table fills (defaults)."""
    columns = table_columns(table)
    if unknown := [c for c in without if c not in columns]:
        raise KeyError(f"table {table!r} has no columns {unknown}")
    return [c for c in columns if c not in without]
