"""sql/ views on a tiny hand-made DuckDB file: they install in one statement each, and every view's
numbers, checked by hand. The schema (migrations, tables, views in dependency order, column lists) is
in test_schema.py.

The toy run r1 (dataset toy, fold f1):
  u1 train {i4}; test i1 (real 5, simulated 4, batch 0), i2 (real 3, simulated 3, batch 1), i3 (failed, batch 1)
  u2 train {i1, i2}; test i3 (real 5, simulated 2, batch 0)
  u3 pending (nothing simulated yet)
Run r2 exists but has no rows anywhere (every per-run view must still give zeros, not drop it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pytest

from doppel.tasks.store.db import init_db
from doppel.tasks.store.schema import view_files, views_in_order

STAGING = ["stg_runs_preferred", "stg_simulated_pairs"]
RATING_MARTS = ["confusion_matrix", "failed_pairs", "rating_distributions", "rating_histograms", "user_error"]
VIEWS = [
    "arena_scatter",
    "confusion_matrix",
    "failed_pairs",
    "profile_evolution",
    "rating_distributions",
    "rating_histograms",
    "run_costs",
    "run_overview",
    "user_error",
]
CONFIG_R1 = {
    "llm": {"price_prompt_per_mtok": 2.0, "price_completion_per_mtok": 10.0},
    "sim": {"update_profile": True, "rate_batch": 2},
}
CONFIG_R2 = {"llm": {}, "sim": {"update_profile": False}}

TOY_ROWS = """
insert into items values
    ('toy', 'i1', 'Item One', 1999, 'Drama', ''),
    ('toy', 'i2', 'Item Two', 2001, 'Comedy', ''),
    ('toy', 'i3', 'Alien <3', 1979, 'Sci-Fi', 'a title that needs escaping'),
    ('toy', 'i4', 'Item Four', 2010, 'Action', '');
insert into ratings values
    ('toy', 'u1', 'i1', 5, 10), ('toy', 'u1', 'i2', 3, 11), ('toy', 'u1', 'i3', 1, 12), ('toy', 'u1', 'i4', 4, 1),
    ('toy', 'u2', 'i1', 2, 1), ('toy', 'u2', 'i2', 4, 2), ('toy', 'u2', 'i3', 5, 10),
    ('toy', 'u3', 'i1', 3, 1), ('toy', 'u3', 'i2', 3, 10);
insert into splits values
    ('toy', 'f1', 'train', 'u1', 'i4'), ('toy', 'f1', 'test', 'u1', 'i1'), ('toy', 'f1', 'test', 'u1', 'i2'),
    ('toy', 'f1', 'test', 'u1', 'i3'),
    ('toy', 'f1', 'train', 'u2', 'i1'), ('toy', 'f1', 'train', 'u2', 'i2'), ('toy', 'f1', 'test', 'u2', 'i3'),
    ('toy', 'f1', 'train', 'u3', 'i1'), ('toy', 'f1', 'test', 'u3', 'i2'),
    -- another fold: must not count as u1's f1 activity
    ('toy', 'f2', 'train', 'u1', 'i1');
insert into runs values
    ('r1', 'toy', ['f1'], timestamp '2026-01-01 10:00:00', null, 'running', $config_r1::json, 'test', '{}', 'm',
     'http://x/v1'),
    ('r2', 'toy', ['f1'], timestamp '2026-01-02 10:00:00', timestamp '2026-01-02 10:00:30', 'finished',
     $config_r2::json, 'test', '{}', 'm', 'http://x/v1');
insert into run_users (run_id, fold, user_id, status, n_pairs, n_failed) values
    ('r1', 'f1', 'u1', 'partial', 3, 1), ('r1', 'f1', 'u2', 'done', 1, 0), ('r1', 'f1', 'u3', 'pending', 2, 0);
insert into simulated_ratings values
    ('r1', 'f1', 'u1', 'i1', 4, 'ok', null, 0, 1, 'c2', [0.0, 0.0, 0.0, 0.5, 0.5], 'logprobs', null),
    ('r1', 'f1', 'u1', 'i2', 3, 'ok', null, 1, 1, 'c3', null, null, null),
    ('r1', 'f1', 'u1', 'i3', null, 'failed', 'id i3 missing from the answer', 1, 3, 'c4', null, null, null),
    ('r1', 'f1', 'u2', 'i3', 2, 'ok', null, 0, 1, 'c2', [0.25, 0.25, 0.25, 0.25, 0.0], 'samples', 4);
insert into profiles values
    ('r1', 'f1', 'u1', 1, 'initial', 'likes action films', 'c1'),
    ('r1', 'f1', 'u1', 2, 'refine', 'likes action and drama films', 'c1'),
    ('r1', 'f1', 'u1', 3, 'update', 'Dislikes  drama.', 'c1'),
    ('r1', 'f1', 'u2', 1, 'initial', 'enjoys comedy', 'c1');
insert into llm_calls (call_key, run_id, fold, user_id, prompt_name, prompt_hash, model, status, cached, attempts,
                       prompt_tokens, completion_tokens, latency_s, error, response) values
    ('c1', 'r1', 'f1', 'u1', 'profile_create', 'h', 'm', 'ok', false, 1, 100, 20, 1.0, null, 'p'),
    ('c2', 'r1', 'f1', 'u1', 'rating', 'h', 'm', 'ok', false, 2, 200, 30, 2.0, null, '{}'),
    ('c3', 'r1', 'f1', 'u1', 'rating', 'h', 'm', 'ok', true, 0, 200, 30, 0.0, null, '{}'),
    ('c4', 'r1', 'f1', 'u1', 'rating', 'h', 'm', 'invalid', false, 1, 150, 10, 0.5, 'missing id', '{}');
insert into metrics values
    ('r1', 'f1', 'llm', 'rmse', 1.8257), ('r1', 'f1', 'llm', 'mae', 1.3333), ('r1', 'f1', 'llm', 'exact', 33.3),
    ('r1', 'f1', 'llm', 'close', 66.7), ('r1', 'f1', 'llm', 'tv', 0.6667), ('r1', 'f1', 'llm', 'n', 3),
    ('r1', 'f1', 'baseline:user_mean', 'rmse', 1.2), ('r1', 'f1', 'baseline:user_mean', 'mae', 1.0),
    ('r1', 'f1', 'baseline:user_mean', 'exact', 0.0), ('r1', 'f1', 'baseline:user_mean', 'close', 100.0),
    ('r1', 'f1', 'baseline:user_mean', 'tv', 0.3333), ('r1', 'f1', 'baseline:user_mean', 'n', 3);
insert into validation_results (run_id, suite, success, n_rows, failures) values
    ('r1', 'simulated_ratings', false, 4,
     '[{"expectation": "expect_column_values_to_not_be_null", "column": "rating"}]'),
    ('r1', 'profiles', true, 4, '[]');
"""


def make_toy_db(path: Path) -> Path:
    """The toy database above: schema + views via init_db, then the hand-made rows."""
    init_db(path)
    con = duckdb.connect(str(path))
    try:
        for statement in [s for s in TOY_ROWS.split(";\n") if s.strip()]:  # one statement at a time
            params = {
                k: json.dumps(v)
                for k, v in (("config_r1", CONFIG_R1), ("config_r2", CONFIG_R2))
                if f"${k}" in statement
            }
            con.execute(statement, params or None)
    finally:
        con.close()
    return path


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory) -> Path:
    return make_toy_db(tmp_path_factory.mktemp("views") / "toy.duckdb")


def rows(db: Path, sql: str) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(sql).df().to_dict("records")
    finally:
        con.close()


def by(records: list[dict], *keys: str) -> dict:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in records}


def test_views_install_on_an_empty_database(tmp_path):
    db = tmp_path / "fresh.duckdb"
    init_db(db)
    init_db(db)  # idempotent: create or replace
    con = duckdb.connect(str(db), read_only=True)
    try:
        installed = {r[0] for r in con.sql("select view_name from duckdb_views() where not internal").fetchall()}
        assert set(VIEWS) <= installed
        for view in STAGING + VIEWS:
            assert con.sql(f"select count(*) from {view}").fetchall() == [(0,)]
    finally:
        con.close()


def test_every_view_file_is_one_create_or_replace_ending_in_final():
    files = view_files()
    assert sorted(files) == sorted(STAGING + VIEWS)
    for name, path in files.items():
        text = path.read_text()
        assert f"create or replace view {name} as" in text
        assert text.rstrip().endswith("select * from final"), path.name


def test_the_rating_views_take_the_shared_join_from_the_staging_view():
    files = view_files()
    for name in RATING_MARTS:
        text = files[name].read_text()
        assert (
            "from stg_simulated_pairs" in text
            and "from simulated_ratings" not in text
            and "join" not in text.split("from stg")[0]
        ), name
    order = [name for name, _ in views_in_order()]
    assert all(order.index("stg_simulated_pairs") < order.index(name) for name in RATING_MARTS)


def test_user_error(toy_db):
    got = by(rows(toy_db, "select * from user_error"), "user_id")
    assert set(got) == {"u1", "u2"}  # u3 has nothing simulated yet
    u1, u2 = got["u1"], got["u2"]
    assert (u1["n"], u1["n_failed"], u1["n_train"]) == (2, 1, 1)  # errors -1 and 0; train {i4} in f1 only
    assert u1["rmse"] == pytest.approx(math.sqrt(0.5))
    assert u1["mae"] == pytest.approx(0.5)
    assert u1["exact_pct"] == pytest.approx(50.0)
    assert (u1["mean_real"], u1["mean_simulated"]) == (pytest.approx(4.0), pytest.approx(3.5))
    assert (u2["n"], u2["n_failed"], u2["n_train"]) == (1, 0, 2)
    assert (u2["rmse"], u2["mae"], u2["exact_pct"]) == (pytest.approx(3.0), pytest.approx(3.0), pytest.approx(0.0))
    assert (u2["mean_real"], u2["mean_simulated"]) == (pytest.approx(5.0), pytest.approx(2.0))


def test_rating_distributions(toy_db):
    got = by(rows(toy_db, "select * from rating_distributions"), "item_id")
    assert set(got) == {"i1", "i3"}  # i2 has no distribution (no logprobs), i3 of u1 failed
    i1, i3 = got["i1"], got["i3"]
    assert (i1["simulated"], i1["real"], i1["p4"], i1["p5"]) == (4, 5, 0.5, 0.5)
    assert i1["expected"] == pytest.approx(4.5) and i1["p_simulated"] == i1["p_real"] == 0.5
    assert i1["entropy_bits"] == pytest.approx(1.0)
    assert i3["expected"] == pytest.approx(2.5) and (i3["p_simulated"], i3["p_real"]) == (0.25, 0.0)
    assert i3["entropy_bits"] == pytest.approx(2.0)
    assert (i1["source"], i1["draws"], i3["source"], i3["draws"]) == ("logprobs", None, "samples", 4)


def test_confusion_matrix(toy_db):
    got = {(r["real"], r["simulated"]): r["n"] for r in rows(toy_db, "select * from confusion_matrix")}
    assert got == {(5, 4): 1, (3, 3): 1, (5, 2): 1}  # the failed pair is not a cell


def test_rating_histograms(toy_db):
    got = rows(toy_db, "select * from rating_histograms")
    assert len(got) == 10  # 2 sources x ratings 1..5, zeros included
    counts = {(r["source"], r["rating"]): (r["n"], r["share"]) for r in got}
    assert counts[("real", 5)] == (2, pytest.approx(2 / 3))
    assert counts[("real", 3)] == (1, pytest.approx(1 / 3))
    assert counts[("real", 1)] == (0, 0)  # u1's i3 (real 1) failed: not in either histogram
    for rating in (2, 3, 4):
        assert counts[("simulated", rating)] == (1, pytest.approx(1 / 3))
    for source in ("real", "simulated"):
        assert sum(n for (s, _), (n, _) in counts.items() if s == source) == 3


def test_run_costs(toy_db):
    got = by(rows(toy_db, "select * from run_costs"), "run_id")
    r1 = got["r1"]
    assert (r1["calls"], r1["cached_calls"], r1["failed_calls"], r1["http_attempts"]) == (3, 1, 1, 4)
    assert (r1["prompt_tokens"], r1["completion_tokens"]) == (450, 60)  # the cached call costs nothing
    assert r1["latency_s"] == pytest.approx(3.5)
    assert r1["cost_usd"] == pytest.approx((450 * 2.0 + 60 * 10.0) / 1e6)
    assert r1["ratings"] == 3
    assert r1["tokens_per_rating"] == pytest.approx(510 / 3)
    r2 = got["r2"]  # no calls, no prices in its config
    assert (r2["calls"], r2["prompt_tokens"], r2["cost_usd"], r2["ratings"]) == (0, 0, 0, 0)
    assert r2["tokens_per_rating"] is None or math.isnan(r2["tokens_per_rating"])


def test_profile_evolution(toy_db):
    got = by(rows(toy_db, "select * from profile_evolution"), "user_id", "version")
    v1, v2, v3 = got[("u1", 1)], got[("u1", 2)], got[("u1", 3)]
    assert (v1["stage"], v1["words"]) == ("initial", 3)
    assert all(v1[k] is None or math.isnan(v1[k]) for k in ("words_delta", "new_words", "dropped_words"))
    assert (v2["stage"], v2["words"], v2["words_delta"], v2["new_words"], v2["dropped_words"]) == ("refine", 5, 2, 2, 0)
    # "Dislikes  drama." -> words {dislikes, drama}: new {dislikes}; dropped {likes, action, and, films}
    assert (v3["stage"], v3["words"], v3["words_delta"], v3["new_words"], v3["dropped_words"]) == (
        "update",
        2,
        -3,
        1,
        4,
    )
    assert got[("u2", 1)]["words"] == 2


def test_failed_pairs(toy_db):
    got = rows(toy_db, "select * from failed_pairs")
    assert len(got) == 1
    assert {k: got[0][k] for k in ("run_id", "fold", "user_id", "item_id", "title", "reason", "attempts", "batch")} == {
        "run_id": "r1",
        "fold": "f1",
        "user_id": "u1",
        "item_id": "i3",
        "title": "Alien <3",
        "reason": "id i3 missing from the answer",
        "attempts": 3,
        "batch": 1,
    }


def test_run_overview(toy_db):
    got = by(rows(toy_db, "select * from run_overview"), "run_id")
    r1 = got["r1"]
    assert (r1["status"], r1["users"], r1["users_done"], r1["users_partial"], r1["users_pending"]) == (
        "running",
        3,
        1,
        1,
        1,
    )
    assert (r1["pairs_requested"], r1["pairs"], r1["pairs_rated"], r1["pairs_failed"]) == (6, 4, 3, 1)
    assert r1["pairs_later_batches"] == 1  # u1's i2 was rated in batch 1
    assert r1["wall_s"] is None or math.isnan(r1["wall_s"])  # still running
    r2 = got["r2"]
    assert (r2["users"], r2["pairs"], r2["pairs_failed"], r2["wall_s"]) == (0, 0, 0, pytest.approx(30.0))
