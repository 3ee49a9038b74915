"""Integration: the whole `doppel run` flow on a tiny synthetic dataset.

Real Prefect API server, real Dask LocalCluster (or the thread runner), real DuckDB file, real GX
gate, and the real openai client talking HTTP to the local test server.
"""

from __future__ import annotations

import duckdb
import pytest

from doppel.testing.llm_faults import digit_probs

pytestmark = pytest.mark.slow


def table(db: str, sql: str, *params):
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(sql, list(params)).df()
    finally:
        con.close()


def check_complete_run(db: str, run_id: str, n_users: int) -> None:
    runs = table(db, "select * from runs where run_id = ?", run_id)
    assert runs["status"].tolist() == ["finished"]
    users = table(db, "select * from run_users where run_id = ?", run_id)
    assert len(users) == n_users and set(users["status"]) == {"done"}
    ratings = table(db, "select * from simulated_ratings where run_id = ?", run_id)
    assert len(ratings) == users["n_pairs"].sum()
    assert ratings.duplicated(["fold", "user_id", "item_id"]).sum() == 0
    assert ratings["rating"].between(1, 5).all() and set(ratings["status"]) == {"ok"}
    # each rating with the test server's distribution at its digit (tests/llm_faults.digit_probs)
    assert all(
        len(p) == 5 and abs(p[r - 1] - digit_probs(r)[r - 1]) < 1e-9 and abs(sum(p) - 1) < 1e-9
        for p, r in zip(ratings["rating_probs"], ratings["rating"])
    )
    profiles = table(db, "select * from profiles where run_id = ?", run_id)
    assert set(profiles["user_id"]) == set(users["user_id"])
    assert {"initial", "update"} <= set(profiles["stage"])
    gate = table(db, "select suite, success from validation_results where run_id = ?", run_id)
    assert set(gate["suite"]) == {"simulated_ratings", "profiles"} and gate["success"].all()
    metrics = table(db, "select * from metrics where run_id = ?", run_id)
    assert {"llm", "baseline:item_knn", "baseline:svd", "baseline:global_mean"} <= set(metrics["simulator"])
    llm_n = metrics.query("simulator == 'llm' and metric == 'n'")["value"].iloc[0]
    assert llm_n == len(ratings)


@pytest.mark.parametrize("runner", ["dask", "threads"])
def test_run_writes_every_table_and_rerun_makes_no_calls(prefect_server, llm_server, run_settings, runner):
    from doppel.flows.simulate import simulate

    settings = run_settings(runner=runner, run_id=f"it-{runner}")
    summary = simulate(settings)
    check_complete_run(settings.db, "it-" + runner, n_users=6)
    calls = table(settings.db, "select count(*) n from llm_calls where run_id = ? and not cached", summary["run_id"])
    assert llm_server.stats()["requests"] == calls["n"][0] > 0
    # every stored rating is what the server answered for that item
    answered = {}
    for entry in llm_server.log():
        if entry["kind"] == "rating" and entry.get("response"):
            from doppel.tasks.llm.schemas import parse_ratings
            from doppel.testing.llm_server import requested_ids

            ids = requested_ids(entry["request"])
            for item_id, rating in parse_ratings(entry["response"], ids).ratings.items():
                answered.setdefault(item_id, set()).add(rating)
    ratings = table(settings.db, "select item_id, rating from simulated_ratings where run_id = ?", summary["run_id"])
    assert all(row.rating in answered[row.item_id] for row in ratings.itertuples())

    before = llm_server.stats()["requests"]
    again = simulate(settings)
    assert llm_server.stats()["requests"] == before, "a rerun of a finished run must make no LLM calls"
    assert again["this_invocation"]["new_calls"] == 0
    check_complete_run(settings.db, "it-" + runner, n_users=6)


def test_a_server_without_logprobs_gets_distributions_from_draws(prefect_server, llm_server, run_settings):
    """--rating-samples 3 where the server ignores logprobs: each rating's distribution is the share
    of 3 draws, the draws are audited in llm_calls, the gate passes, and a rerun asks nothing."""
    from doppel.flows.simulate import simulate

    llm_server.configure(logprobs=False)
    try:
        settings = run_settings(run_id="draws", llm={"rating_samples": 3})
        simulate(settings)
        ratings = table(settings.db, "select * from simulated_ratings where run_id = 'draws'")
        assert set(ratings["status"]) == {"ok"} and set(ratings["rating_probs_source"]) == {"samples"}
        assert set(ratings["rating_probs_draws"]) == {3}
        assert all(
            abs(sum(p) - 1) < 1e-9 and all(abs(3 * x - round(3 * x)) < 1e-9 for x in p)  # thirds
            for p in ratings["rating_probs"]
        )
        calls = table(settings.db, "select prompt_name, count(*) n from llm_calls where run_id = 'draws' group by all")
        n = dict(zip(calls["prompt_name"], calls["n"]))
        assert n["rating_draw"] == 3 * n["rating"] > 0
        gate = table(settings.db, "select success from validation_results where run_id = 'draws'")
        assert gate["success"].all()
        before = llm_server.stats()["requests"]
        simulate(settings)
        assert llm_server.stats()["requests"] == before
    finally:
        llm_server.configure(logprobs=True)


def test_a_profile_update_that_stays_degenerate_keeps_the_last_good_profile(prefect_server, llm_server, run_settings):
    """A profile update that loops on every re-ask (the 0.5B model did, on a u1 user) no longer fails the
    user's remaining pairs: the last good profile rates them, the bad calls stay in llm_calls as invalid."""
    from doppel.flows.simulate import simulate

    def answer(kind, body):
        asked = " ".join(str(m.get("content", "")) for m in body["messages"])
        return "drama " * 200 if kind == "text" and "Update the profile" in asked else None

    llm_server.app.answer_fn = answer
    try:
        settings = run_settings(run_id="stale-profile")
        simulate(settings)
    finally:
        llm_server.app.answer_fn = None
    ratings = table(settings.db, "select status from simulated_ratings where run_id = 'stale-profile'")
    assert len(ratings) > 0 and set(ratings["status"]) == {"ok"}
    calls = table(settings.db, "select prompt_name, status from llm_calls where run_id = 'stale-profile'")
    updates = calls[calls["prompt_name"] == "profile_update"]
    assert len(updates) > 0 and set(updates["status"]) == {"invalid"}
    stages = table(settings.db, "select distinct stage from profiles where run_id = 'stale-profile'")
    assert "update" not in set(stages["stage"]) and "initial" in set(stages["stage"])


def test_a_rerun_asks_a_failed_profile_again_as_new_samples(prefect_server, llm_server, run_settings):
    """A user whose first profile failed on every re-ask (empty answers) has all its pairs failed; at
    temperature 0 the rerun would read the same failures back from the cache. It asks fresh samples after
    them (other seeds and cache keys), and the user's pairs get rated."""
    from doppel.flows.simulate import simulate

    stubborn: list[str] = []  # the first user's create prompt: empty answers to its first three samples

    def answer(kind, body):
        if kind != "text" or len(body["messages"]) < 2:
            return None
        stubborn[:] = stubborn or [body["messages"][1]["content"]]
        return "" if body["messages"][1]["content"] == stubborn[0] and body["seed"] < 3 else None

    llm_server.app.answer_fn = answer
    try:
        settings = run_settings(run_id="stubborn-profile", users=3)
        simulate(settings)
        failed = table(settings.db, "select user_id, reason from simulated_ratings where status = 'failed'")
        assert failed["user_id"].nunique() == 1 and failed["reason"].str.startswith("profile call failed").all()
        before = llm_server.stats()["requests"]
        simulate(settings)
    finally:
        llm_server.app.answer_fn = None
    assert llm_server.stats()["requests"] > before  # asked anew, not read back from the cache
    ratings = table(settings.db, "select status from simulated_ratings where run_id = 'stubborn-profile'")
    assert set(ratings["status"]) == {"ok"}
    asked = [e["request"] for e in llm_server.log()]
    seeds = [r["seed"] for r in asked if len(r["messages"]) > 1 and r["messages"][1]["content"] == stubborn[0]]
    assert seeds == [0, 1, 2, 3]  # three failed and were cached; the rerun drew sample 3, which answered


def test_lost_database_rows_are_rebuilt_from_the_cache(prefect_server, llm_server, run_settings, tmp_path):
    """A second database with the same cache replays every answer: zero calls, same ratings."""
    from doppel.flows.simulate import simulate

    first = run_settings(run_id="cache-a")
    simulate(first)
    before = llm_server.stats()["requests"]
    second = first.model_copy(
        update={
            "db": str(tmp_path / "other.duckdb"),
            "llm": first.llm.model_copy(update={"cache_dir": str(first.cache_dir())}),
        }
    )
    simulate(second)
    assert llm_server.stats()["requests"] == before
    a = table(first.db, "select user_id, item_id, rating from simulated_ratings order by all")
    b = table(second.db, "select user_id, item_id, rating from simulated_ratings order by all")
    assert a.equals(b)


def test_faults_lose_nothing_and_rerun_retries_failed_pairs(prefect_server, llm_server, run_settings):
    from doppel.flows.simulate import simulate

    llm_server.configure(malformed_json=0.3, missing_ids=0.2, http_500=0.1, http_429=0.05, retry_after=0.05)
    settings = run_settings(run_id="faulty", users=8, llm={"repair_attempts": 1})
    simulate(settings)
    db = settings.db
    users = table(db, "select * from run_users where run_id = 'faulty'")
    ratings = table(db, "select * from simulated_ratings where run_id = 'faulty'")
    assert len(ratings) == users["n_pairs"].sum(), "every requested pair has exactly one row"
    failed = ratings[ratings["status"] == "failed"]
    assert failed["reason"].notna().all()
    assert ratings.loc[ratings["status"] == "ok", "rating"].between(1, 5).all()

    llm_server.configure(malformed_json=0.0, missing_ids=0.0, http_500=0.0, http_429=0.0)
    summary = simulate(settings)
    assert summary["failed_pairs"] == 0 and summary["status"] == "finished"
    if len(failed):
        assert summary["this_invocation"]["new_calls"] > 0
    check_complete_run(db, "faulty", n_users=8)


def test_gate_blocks_scoring_of_corrupted_ratings(prefect_server, llm_server, run_settings):
    from doppel.flows.score import GateFailed, score_run
    from doppel.flows.simulate import simulate

    settings = run_settings(run_id="corrupt")
    simulate(settings)
    con = duckdb.connect(settings.db)
    con.execute(
        "update simulated_ratings set rating = 7 where run_id = 'corrupt' and item_id in "
        "(select item_id from simulated_ratings where run_id = 'corrupt' limit 2)"
    )
    con.execute("delete from metrics where run_id = 'corrupt'")
    con.close()
    with pytest.raises(GateFailed, match="rating"):
        score_run(db=settings.db, run_id="corrupt")
    assert table(settings.db, "select count(*) n from metrics where run_id = 'corrupt'")["n"][0] == 0
    gate = table(settings.db, "select * from validation_results where run_id = 'corrupt' and not success")
    assert "expect_column_values_to_be_in_set" in gate["failures"].iloc[-1]


def test_rerun_fast_path_answers_only_while_nothing_changed(prefect_server, llm_server, run_settings):
    """A finished, scored run asked for again is answered from DuckDB (no flow, no calls); more users,
    or rows edited since scoring, take the normal path (which simulates or re-gates them)."""
    from doppel.flows.plan import finished_summary
    from doppel.flows.simulate import simulate

    settings = run_settings(run_id="fast")
    assert finished_summary(settings) is None  # nothing there yet
    first = simulate(settings)
    before = llm_server.stats()["requests"]
    again = finished_summary(settings)
    assert again is not None and again["status"] == "finished" and again["this_invocation"]["new_calls"] == 0
    assert llm_server.stats()["requests"] == before
    assert {k: again[k] for k in ("users", "pairs", "failed_pairs", "calls")} == {
        k: first[k] for k in ("users", "pairs", "failed_pairs", "calls")
    }
    stored = table(settings.db, "select fold, simulator, metric, value from metrics where run_id = 'fast'")
    assert len(again["scores"]) == len(stored) > 0

    assert finished_summary(settings.model_copy(update={"users": 8})) is None  # two users to simulate

    con = duckdb.connect(settings.db)
    con.execute(
        "update simulated_ratings set rating = case when rating = 5 then 4 else rating + 1 end where run_id = 'fast' and rating is not null "
        "and item_id = (select min(item_id) from simulated_ratings where run_id = 'fast')"
    )
    con.close()
    assert finished_summary(settings) is None  # edited after scoring: validate and score again
    rescored = simulate(settings)
    assert rescored["this_invocation"]["new_calls"] == 0 and llm_server.stats()["requests"] == before
    assert finished_summary(settings) is not None
