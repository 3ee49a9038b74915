"""The ensemble flow end to end against the HTTP test server: real Prefect API, real DuckDB file, reruns,
resume after an interrupt, failed analyses asked again, and the printed summary."""

from __future__ import annotations

import re

import pytest

from doppel.tasks.ensemble.config import EnsembleSettings, SASRecSettings
from tests.test_ensemble import genre_keywords


@pytest.mark.slow
def test_ensemble_flow_end_to_end_and_rerun_makes_no_calls(prefect_server, scripted, run_settings):
    import duckdb

    from doppel.flows.ensemble import ensemble

    settings = EnsembleSettings(
        run=run_settings(synthetic_users=24, synthetic_items=60, runner="threads"),
        fold="u1",
        items=25,
        ensemble_id="ens-test",
        sasrec=SASRecSettings(maxlen=20, dim=16, blocks=1, heads=1, epochs=3, batch_size=16),
    )
    summary = ensemble(settings)
    assert summary["status"] == "finished" and summary["analysis"]["ok"] == 25 == summary["keyword_items"]
    con = duckdb.connect(settings.run.db, read_only=True)
    try:
        votes = con.execute("select * from votes where run_id = 'ens-test'").df()
        pairs = con.execute(
            "select count(*) from splits where dataset = ? and fold = 'u1' and split = 'test'", [summary["dataset"]]
        ).fetchone()[0]
        keywords = con.execute("select * from item_keywords").df()
        analysed = con.execute("select * from item_analysis").df()
        calls = con.execute("select count(*) from llm_calls where run_id = 'ens-test'").fetchone()[0]
        metrics = con.execute("select * from metrics where run_id = 'ens-test'").df()
        vocab = con.execute("select * from keyword_vocabulary").df()
        embedded = con.execute("select count(*) from item_embeddings").fetchone()[0]
    finally:
        con.close()
    assert len(votes) == pairs == summary["pairs"] and not votes.duplicated(["user_id", "item_id"]).any()
    assert set(keywords["polarity"]) == {"pro", "con"} and set(analysed["status"]) == {"ok"} and calls == 25
    assert embedded == 60 and len(vocab) == keywords["keyword"].nunique()
    # the partial catalogue: pairs whose item has no keywords -> f_mat abstained
    uncovered = ~votes["item_id"].isin(set(analysed["item_id"]))
    assert uncovered.any() and votes.loc[uncovered, "f_mat_vote"].isna().all()
    assert votes["f_sta_vote"].notna().all() and votes["ensemble"].notna().all()
    wanted = {f"ensemble:{v}" for v in ("f_mat", "f_sim", "f_sta", "vote")}
    assert wanted <= set(metrics["simulator"]) and {"auc", "accuracy", "coverage", "n"} <= set(metrics["metric"])

    # interrupted before five analyses were written (their calls made, answers cached, nothing recorded):
    # the resume reads them back from the cache and bills them once, as the calls they were
    bill = "select count(*), sum(prompt_tokens + completion_tokens) from llm_calls where run_id = 'ens-test' and not cached"
    with duckdb.connect(settings.run.db) as con:
        paid = con.execute(bill).fetchone()
        lost = [r[0] for r in con.execute("select item_id from item_analysis order by item_id limit 5").fetchall()]
        con.execute(
            "delete from llm_calls where call_key in (select call_key from item_analysis where item_id in ?)", [lost]
        )
        for table in ("item_keywords", "item_analysis"):
            con.execute(f"delete from {table} where item_id in ?", [lost])
        assert con.execute(bill).fetchone()[0] == 20
    before = scripted.stats()["requests"]
    resumed = ensemble(settings)
    assert scripted.stats()["requests"] == before and resumed["analysis"]["jobs"] == 5
    with duckdb.connect(settings.run.db, read_only=True) as con:
        assert con.execute(bill).fetchone() == paid

    # a spine run's LLM ratings on some of the pairs (here: the truth) are scored on exactly those pairs
    con = duckdb.connect(settings.run.db)
    try:
        con.execute(
            "insert into simulated_ratings (run_id, fold, user_id, item_id, rating, status, reason, batch, "
            "attempts, call_key) select 'spine-x', 'u1', user_id, item_id, rating, 'ok', null, 0, 1, "
            "null from votes where run_id = 'ens-test' order by user_id, item_id limit 40"
        )
    finally:
        con.close()
    before = scripted.stats()["requests"]
    again = ensemble(settings.model_copy(update={"compare_run_id": "spine-x"}))
    assert scripted.stats()["requests"] == before and again["analysis"]["jobs"] == 0
    assert again["sasrec"]["loaded"] is True and again["embeddings"]["embedded"] == 0
    scores = {(m["simulator"], m["metric"]): m["value"] for m in again["metrics"]}
    assert scores[("llm:like@llm-rows", "accuracy")] == 1.0 and scores[("llm:like@llm-rows", "n")] == 40
    assert scores[("ensemble:vote@llm-rows", "n")] == 40 and scores[("ensemble:vote", "n")] == len(votes)


@pytest.mark.slow
def test_a_rerun_asks_a_failed_analysis_again_as_a_new_sample(prefect_server, llm_server, run_settings):
    """At temperature 0 a failed analysis would fail the same way from the cache at every rerun: the rerun
    asks it again as a new sample (seed, cache key, temperature >= 0.7), and records how often it did."""
    import duckdb

    from doppel.flows.ensemble import ensemble

    stubborn: list[str] = []  # the first movie asked about: prose at temperature 0, keywords otherwise

    def answer(kind: str, body: dict) -> str | None:
        movie = re.search(r"Movie: [^\n]*", body["messages"][0]["content"])
        if movie is None:
            return None
        stubborn[:] = stubborn or [movie.group(0)]
        if movie.group(0) == stubborn[0] and body.get("temperature", 0) == 0:
            return "I would rather not say."
        return genre_keywords(kind, body)

    llm_server.app.answer_fn = answer
    try:
        settings = EnsembleSettings(
            run=run_settings(synthetic_users=24, synthetic_items=60, runner="threads"),
            fold="u1",
            items=4,
            sasrec=SASRecSettings(maxlen=20, dim=16, blocks=1, heads=1, epochs=1, batch_size=16),
        )
        first = ensemble(settings)
        assert first["analysis"]["ok"] == 3 and first["analysis"]["failed"] == 1
        before = llm_server.stats()["requests"]
        second = ensemble(settings)
        assert second["analysis"]["jobs"] == 1 and second["analysis"]["ok"] == 1
        assert llm_server.stats()["requests"] == before + 1  # asked again, not read back from the cache
        assert llm_server.log()[-1]["request"]["temperature"] >= 0.7
        with duckdb.connect(settings.run.db, read_only=True) as con:
            rows = con.execute("select status, retries from item_analysis order by retries").fetchall()
        assert rows == [("ok", 0)] * 3 + [("ok", 1)]
        assert ensemble(settings)["analysis"]["jobs"] == 0
    finally:
        llm_server.app.answer_fn = None


@pytest.mark.slow
def test_keywords_are_stored_under_the_model_a_llama_cpp_server_serves(prefect_server, scripted, run_settings):
    """llama.cpp answers under any name. The keywords were stored under the --model typed, so a second such
    server asked under the same name got the first one's keywords: now they are stored under the model the
    server serves (its file path), and `doppel rl` and the arena read them back by the run's model."""
    import duckdb

    from doppel.flows.ensemble import ensemble
    from doppel.tasks.rl.rewards import read_ensemble_inputs

    first_gguf, second_gguf = "/models/first.gguf", "/models/second.gguf"
    scripted.configure(llama_cpp=True, model=first_gguf)
    run = run_settings(synthetic_users=24, synthetic_items=60, runner="threads")
    settings = EnsembleSettings(
        run=run.model_copy(update={"llm": run.llm.model_copy(update={"model": "local"})}),
        fold="u1",
        items=3,
        ensemble_id="ens-first",
        sasrec=SASRecSettings(maxlen=20, dim=16, blocks=1, heads=1, epochs=1, batch_size=16),
    )
    assert ensemble(settings)["analysis"]["ok"] == 3
    scripted.configure(model=second_gguf)  # another server, the same --model
    before = scripted.stats()["requests"]
    second = ensemble(settings.model_copy(update={"ensemble_id": "ens-second"}))
    assert second["analysis"]["jobs"] == 3 and scripted.stats()["requests"] == before + 3  # not the first's
    with duckdb.connect(settings.run.db, read_only=True) as con:
        stored = con.execute("select model, count(distinct item_id) from item_keywords group by model").fetchall()
        models = con.execute("select run_id, model from runs order by run_id").fetchall()
    assert sorted(stored) == [(first_gguf, 3), (second_gguf, 3)]
    assert models == [("ens-first", first_gguf), ("ens-second", second_gguf)]
    for run_id in ("ens-first", "ens-second"):
        assert read_ensemble_inputs(settings.run.db, run_id).keywords["item_id"].nunique() == 3
    asked = scripted.stats()["requests"]
    with pytest.raises(ValueError, match=f"run ens-first was answered by model '{first_gguf}'.*'{second_gguf}'"):
        ensemble(settings)  # resuming the first run against the second server: refused, nothing asked
    assert scripted.stats()["requests"] == asked


def test_the_summary_quotes_a_failed_answer_verbatim_and_says_when_every_analysis_failed():
    """The first failure quotes the model's answer: console markup in it is shown, not read (it raised)."""
    from doppel.flows.cli_ensemble import summary_lines
    from doppel.flows.cli_output import console

    summary = {
        **{"db": "x.duckdb", "run_id": "e", "status": "finished", "dataset": "d", "fold": "u1"},
        **{"like_rate_test": 0.5, "keyword_items": 0, "catalogue_items": 60, "pairs": 10, "wall_s": 3.0},
        **{"vocabulary": {}, "sasrec": {}, "embeddings": {"embedded": 0}, "timings": {}},
        "analysis": {"jobs": 4, "written": 4, "ok": 0, "failed": 4, "first_error": "item 1 (obj): said [/bold] x"},
    }
    with console.capture() as captured:
        for line in summary_lines(summary):
            console.print(line, highlight=False)
    text = captured.get()
    assert "said [/bold] x" in text and "every analysis failed" in text and "0 with keywords, 4 failed" in text
