"""sql/ schema on real DuckDB files: migrations of files from before a column, new table files and
migrations picked up without code, views created in dependency order, column lists from the tables, and
files without a newer mode's tables still readable read-only.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from doppel.tasks.store.db import init_db
from doppel.tasks.store.schema import apply_schema, table_columns, table_files, views_in_order

OLD_SIMULATED_RATINGS = (  # as doppel wrote it before 2026-12-02
    "create table simulated_ratings (run_id varchar not null, fold varchar not null, user_id varchar "
    "not null, item_id varchar not null, rating integer, status varchar not null, reason varchar, "
    "batch integer not null, attempts integer not null, call_key varchar, "
    "primary key (run_id, fold, user_id, item_id))"
)


def test_a_file_from_before_rating_probs_gains_the_column_and_keeps_its_rows(tmp_path):
    db = str(tmp_path / "old.duckdb")
    con = duckdb.connect(db)
    con.execute(OLD_SIMULATED_RATINGS)
    con.execute("insert into simulated_ratings values ('old', 'u1', '1', '2', 4, 'ok', null, 0, 1, 'k')")
    con.close()
    init_db(db)
    init_db(db)  # and again: safe to repeat
    con = duckdb.connect(db, read_only=True)
    try:
        got = con.execute("select rating, rating_probs from simulated_ratings").fetchall()
        columns = [r[0] for r in con.execute("describe simulated_ratings").fetchall()]
    finally:
        con.close()
    assert got == [(4, None)] and columns[-3:] == ["rating_probs", "rating_probs_source", "rating_probs_draws"]


def test_a_sandbox_from_before_profile_retries_gains_the_column_and_keeps_its_agents(tmp_path):
    db = str(tmp_path / "old.duckdb")
    con = duckdb.connect(db)
    con.execute(  # as doppel wrote it before profile_retries
        "create table sandbox_agents (sandbox_id varchar not null, agent_id varchar not null, user_id varchar "
        "not null, demographics varchar not null, profile varchar not null, profile_source varchar not null, "
        "profile_error varchar, activity double not null, primary key (sandbox_id, agent_id))"
    )
    con.execute("insert into sandbox_agents values ('s', 'A01', '7', 'a viewer', '(no profile)', 'failed', 'e', 1.0)")
    con.close()
    init_db(db)
    con = duckdb.connect(db, read_only=True)
    try:
        got = con.execute("select agent_id, profile_source, profile_retries from sandbox_agents").fetchall()
    finally:
        con.close()
    assert got == [("A01", "failed", 0)]


def test_the_migration_runs_once_and_is_recorded(tmp_path):
    db = str(tmp_path / "old.duckdb")
    con = duckdb.connect(db)
    con.execute(OLD_SIMULATED_RATINGS)
    con.close()
    assert init_db(db) == [1, 2, 3, 4] and init_db(db) == []  # 001..004 ran on the old file, then never again
    con = duckdb.connect(db, read_only=True)
    try:
        assert con.execute("select version, name, applied from schema_migrations order by version").fetchall() == [
            (1, "001_simulated_ratings_rating_probs", True),
            (2, "002_arena_judgments_votes", True),
            (3, "003_item_analysis_retries", True),
            (4, "004_sandbox_agents_profile_retries", True),
        ]
    finally:
        con.close()


def test_a_new_file_records_the_migrations_without_running_them(tmp_path):
    db = str(tmp_path / "new.duckdb")
    assert init_db(db) == []
    con = duckdb.connect(db, read_only=True)
    try:
        assert con.execute("select version, applied from schema_migrations order by version").fetchall() == [
            (1, False),
            (2, False),
            (3, False),
            (4, False),
        ]
    finally:
        con.close()


def _copy_sql(tmp_path: Path) -> Path:
    import shutil

    from doppel.tasks.paths import SQL_DIR

    return Path(shutil.copytree(SQL_DIR, tmp_path / "sql", ignore=shutil.ignore_patterns("__pycache__", "*.py")))


def test_a_new_table_file_and_a_new_migration_are_picked_up_without_code(tmp_path):
    sql = _copy_sql(tmp_path)
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    try:
        apply_schema(con, sql)
        (sql / "zz_mode.sql").write_text("create table if not exists zz_lists (run_id varchar, item_id varchar);")
        (sql / "migrations" / "999_zz_lists_rank.sql").write_text(
            "alter table zz_lists add column if not exists rank integer;"
        )
        assert table_files(sql)[0].name == "schema.sql" and table_files(sql)[-1].name == "zz_mode.sql"
        assert apply_schema(con, sql) == [999]  # an existing file: the new migration runs, once
        columns = [r[0] for r in con.execute("describe zz_lists").fetchall()]
    finally:
        con.close()
    assert columns == ["run_id", "item_id", "rank"]
    assert table_columns("zz_lists", sql) == ["run_id", "item_id"]  # as the table file defines it


def test_views_are_created_in_dependency_order_not_file_name_order(tmp_path):
    sql = _copy_sql(tmp_path)
    (sql / "views" / "a_first_by_name.sql").write_text(
        "create or replace view a_first_by_name as\nwith final as (select * from z_last_by_name)\nselect * from final"
    )
    (sql / "staging" / "z_last_by_name.sql").write_text(
        "-- mentions a_first_by_name only in a comment\ncreate or replace view z_last_by_name as\n"
        "with final as (select run_id from runs)\nselect * from final"
    )
    order = [name for name, _ in views_in_order(sql)]
    assert order.index("z_last_by_name") < order.index("a_first_by_name")
    con = duckdb.connect(":memory:")
    try:
        apply_schema(con, sql)
        assert con.sql("select count(*) from a_first_by_name").fetchall() == [(0,)]
    finally:
        con.close()
    (sql / "staging" / "z_last_by_name.sql").write_text(
        "create or replace view z_last_by_name as\nwith final as (select * from a_first_by_name)\nselect * from final"
    )
    with pytest.raises(ValueError, match="cycle"):
        views_in_order(sql)


def test_column_lists_come_from_the_tables(tmp_path):
    from doppel.tasks.records import ITEM_COLUMNS, SPLIT_COLUMNS
    from doppel.tasks.store.writes import CALL_COLUMNS, RATING_COLUMNS

    db = str(tmp_path / "db.duckdb")
    init_db(db)
    con = duckdb.connect(db, read_only=True)
    try:
        tables = [r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()]
        stored = {t: [r[0] for r in con.execute(f"describe {t}").fetchall()] for t in tables}
    finally:
        con.close()
    for table, columns in stored.items():
        if table != "schema_migrations":
            assert table_columns(table) == columns, table
    assert ITEM_COLUMNS == stored["items"][1:] and SPLIT_COLUMNS == stored["splits"][1:]
    assert RATING_COLUMNS == stored["simulated_ratings"][3:]
    assert CALL_COLUMNS == [c for c in stored["llm_calls"] if c not in ("run_id", "fold", "user_id", "created_at")]


def test_a_file_without_a_newer_modes_tables_still_reads_read_only(tmp_path):
    """`doppel sql` / `doppel report` open read-only and cannot migrate: a file written before the arena
    existed reads every view but the arena's, and asking for that one says how to bring the file up to date."""
    from doppel.tasks.report import read_view, run_sql

    db = tmp_path / "old.duckdb"
    init_db(db)
    with duckdb.connect(str(db)) as con:  # what a file from before sql/arena.sql looks like
        for (name,) in con.execute("select view_name from duckdb_views() where not internal").fetchall():
            con.execute(f'drop view "{name}"')
        for (name,) in con.execute("select table_name from duckdb_tables() where table_name like 'arena%'").fetchall():
            con.execute(f'drop table "{name}"')
    frame, _ = read_view(db, "run_overview")
    assert frame.empty and "run_id" in frame.columns
    assert run_sql(db, "select count(*) as n from user_error")[0]["n"].tolist() == [0]
    with pytest.raises(ValueError, match="arena_scatter.*older doppel.*doppel score --db"):
        read_view(db, "arena_scatter")
