"""The sandbox end to end against the HTTP LLM test server: real Prefect API, real DuckDB file, resume, export."""

from __future__ import annotations

import json

import duckdb
import pytest

from doppel.tasks.sandbox.config import MemorySettings, SandboxSettings
from doppel.tasks.sandbox.store import TABLES, export

pytestmark = pytest.mark.slow

CONTENT = {
    "sandbox_actions": "round, agent_id, step, action, detail, status, error",
    "sandbox_pages": "round, agent_id, step, page, query, item_ids",
    "sandbox_ratings": "round, agent_id, item_id, rating, feeling",
    "sandbox_messages": "round, chat_id, turn, speaker_id, text",
    "sandbox_posts": "round, agent_id, text",
    "sandbox_memories": "agent_id, round, kind, text, importance",
}


def tables(db: str, sandbox_id: str) -> dict[str, list[tuple]]:
    with duckdb.connect(db, read_only=True) as con:
        return {
            t: sorted(con.execute(f"select {cols} from {t} where sandbox_id = ?", [sandbox_id]).fetchall(), key=repr)
            for t, cols in CONTENT.items()
        }


@pytest.fixture
def sandbox(prefect_server, run_settings, llm_server):
    def make(**overrides) -> SandboxSettings:
        run = run_settings(synthetic_users=16, synthetic_items=60)
        base = dict(
            run=run,
            agents=4,
            rounds=2,
            friends=2,
            activity=0.9,
            recommender="mf",
            memory=MemorySettings(reflect_every=2),
            seed=3,
        )
        return SandboxSettings(**{**base, **overrides})

    return make


def always_post(kind: str, body: dict) -> str | None:
    """Scripted answers: every decision that offers "post" takes it; everything else as the server answers."""
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
    action = schema.get("properties", {}).get("action", {})
    return json.dumps({"action": "post", "friend": "none"}) if "post" in action.get("enum", []) else None


def test_a_post_is_read_by_the_authors_friends_next_round(sandbox, llm_server):
    from doppel.flows.sandbox import run_sandbox

    settings = sandbox(sandbox_id="sbx-posts", agents=3, activity=1.0)
    llm_server.app.answer_fn = always_post
    try:
        assert run_sandbox(settings)["status"] == "finished"
    finally:
        llm_server.app.answer_fn = None
    with duckdb.connect(settings.run.db, read_only=True) as con:
        posts = con.execute("select agent_id, text from sandbox_posts where round = 1").fetchall()
        edges = con.execute("select agent_id, friend_id from sandbox_friends where sandbox_id = 'sbx-posts'").fetchall()
        reads = con.execute(
            "select agent_id, text from sandbox_memories where kind = 'post_read' and round = 2"
        ).fetchall()
    assert len(posts) == 3, "every agent was scripted to post in round 1"
    friends: dict[str, list[str]] = {}
    for a, b in edges:  # stored once per pair (agent_id < friend_id)
        friends.setdefault(a, []).append(b)
        friends.setdefault(b, []).append(a)
    expected = sorted(
        (reader, f"Round 1: {author} posted: {text}") for author, text in posts for reader in friends[author]
    )
    assert expected and sorted(reads) == expected  # each post reaches exactly the author's friends, word for word


def test_two_rounds_resume_and_export(sandbox, llm_server, tmp_path):
    from doppel.flows.sandbox import run_sandbox

    settings = sandbox(sandbox_id="sbx-test")
    db = settings.run.db
    summary = run_sandbox(settings)
    assert summary["status"] == "finished" and [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(r["status"] == "finished" and r["wall_s"] > 0 for r in summary["rounds"])
    first_calls = llm_server.stats()["requests"]
    with duckdb.connect(db, read_only=True) as con:
        agents = con.execute("select agent_id, profile_source, profile from sandbox_agents").fetchall()
        assert len(agents) == 4 and all(src == "built" and len(p) > 20 for _, src, p in agents)
        per_round = con.execute(
            "select round, count(distinct agent_id) from sandbox_actions "
            "where sandbox_id = 'sbx-test' group by round order by round"
        ).fetchall()
        assert per_round == [(1, 4), (2, 4)]  # every agent acts (or rests) and is recorded in every round
        pages = con.execute("select item_ids, page, query from sandbox_pages").fetchall()
        assert pages and all(len(ids) <= 5 for ids, _, _ in pages)
        assert all(len(ids) == 5 for ids, page, q in pages if page == 1 and q is None)  # 60 items: a full page
        # a rated item was on the page the agent watched it from, and never watched twice
        assert con.execute(
            "select count(*) from sandbox_ratings r where not exists (select 1 from sandbox_pages p "
            "where p.agent_id = r.agent_id and p.round = r.round and "
            "list_contains(p.item_ids, r.item_id))"
        ).fetchone() == (0,)
        dims = con.execute("select distinct len(embedding) from sandbox_memories").fetchall()
        assert dims == [(384,)]
        assert con.execute("select count(*) from sandbox_memories where kind = 'reflection'").fetchone()[0] >= 1
        calls = con.execute(
            "select count(*), count(distinct call_key) from llm_calls where run_id = 'sbx-test' and not cached"
        ).fetchone()
        assert calls[0] == first_calls  # every HTTP call is in the audit log
        keys = con.execute(
            "select count(*) from sandbox_actions where call_key is not null and call_key not in "
            "(select call_key from llm_calls)"
        ).fetchone()
        assert keys == (0,)
    mix = {m["action"]: m["n"] for m in summary["action_mix"]}
    assert sum(mix.values()) == 8 and len(mix) >= 2
    before = tables(db, "sbx-test")

    # a rerun of the finished sandbox: nothing to do, no call
    again = run_sandbox(settings)
    assert llm_server.stats()["requests"] == first_calls and again["new_rounds"] == []

    # a third round continues after the last finished one
    run_sandbox(settings.model_copy(update={"rounds": 3}))
    third_calls = llm_server.stats()["requests"] - first_calls
    assert third_calls > 0
    after3 = tables(db, "sbx-test")
    assert {
        k: [r for r in v if r[0] != 3 and not (k == "sandbox_memories" and r[1] == 3)] for k, v in after3.items()
    } == before

    # round 3 interrupted half-way (marked running; A01 and A02 had made their calls, but neither their rows
    # nor their calls were written): the rerun redoes it from the cache, and bills those calls once
    bill = "select count(*), sum(prompt_tokens + completion_tokens) from llm_calls where run_id = 'sbx-test' and not cached"
    round3 = "select new_calls, cached_calls from sandbox_rounds where sandbox_id = 'sbx-test' and round = 3"
    with duckdb.connect(db) as con:
        paid, round3_bill = con.execute(bill).fetchone(), con.execute(round3).fetchone()
        con.execute(
            "delete from llm_calls where run_id = 'sbx-test' and created_at >= (select started from sandbox_rounds "
            "where sandbox_id = 'sbx-test' and round = 3) and user_id in (select user_id from sandbox_agents "
            "where sandbox_id = 'sbx-test' and agent_id in ('A01', 'A02'))"
        )
        assert con.execute(bill).fetchone()[0] < paid[0]
        con.execute("update sandbox_rounds set status = 'running', finished = null where round = 3")
        con.execute("delete from sandbox_actions where round = 3 and agent_id in ('A01', 'A02')")
    calls_before = llm_server.stats()["requests"]
    run_sandbox(settings.model_copy(update={"rounds": 3}))
    assert llm_server.stats()["requests"] == calls_before  # cached answers: no call made again
    assert tables(db, "sbx-test") == after3
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute(bill).fetchone() == paid and con.execute(round3).fetchone() == round3_bill

    # exported files hold exactly the sandbox's rows
    with duckdb.connect(db, read_only=True) as con:
        counts = {
            t: con.execute(f"select count(*) from {t} where sandbox_id = 'sbx-test'").fetchone()[0] for t in TABLES
        }
    for fmt, reader in (("parquet", "read_parquet"), ("csv", "read_csv_auto"), ("json", "read_json_auto")):
        paths = export(db, "sbx-test", tmp_path / fmt, fmt)
        assert [p.stem for p in paths] == list(TABLES)
        with duckdb.connect() as con:
            got = {p.stem: con.execute(f"select count(*) from {reader}('{p}')").fetchone()[0] for p in paths}
        assert got == counts, fmt
    with pytest.raises(ValueError, match="no sandbox"):
        export(db, "sbx-missing", tmp_path / "x", "csv")
    assert not (tmp_path / "x").exists()  # a failed export leaves no empty folder behind

    # the CLI: `doppel sandbox export` and the printed summary
    from typer.testing import CliRunner

    from doppel.flows.cli import app
    from doppel.flows.cli_sandbox import console, print_sandbox, sandbox_header, stored_sandbox

    done = CliRunner().invoke(
        app,
        [
            "sandbox",
            "export",
            "--sandbox-id",
            "sbx-test",
            "--db",
            db,
            "--out",
            str(tmp_path / "cli"),
            "--format",
            "csv",
        ],
    )
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == sorted(f"{t}.csv" for t in TABLES)
    missing = CliRunner().invoke(
        app, ["sandbox", "export", "--sandbox-id", "nope", "--db", db, "--out", str(tmp_path / "none")]
    )
    assert missing.exit_code == 2 and "no sandbox 'nope'" in missing.output  # one line, no traceback
    assert not (tmp_path / "none").exists()
    # the first line says whether an id resumes a sandbox or starts one (a typo starts one)
    for sandbox_id, said in (("sbx-test", "resuming sandbox [bold]sbx-test[/]"), ("sbx-tset", "new sandbox")):
        agents, used = stored_sandbox(db, sandbox_id)
        header = sandbox_header(settings.model_copy(update={"sandbox_id": sandbox_id}), agents, used)
        assert header.startswith(said) and ("as stored" in header) == (sandbox_id == "sbx-test"), header
    with console.capture() as captured:
        print_sandbox({**summary, "status": "finished"})
    text = captured.get()
    assert "action mix" in text and "sbx-test" in text and ("items watched: none" in text or "distinct items" in text)
    with duckdb.connect(db, read_only=True) as con:
        profile_calls = con.execute(
            "select count(*) from llm_calls where run_id = 'sbx-test' and prompt_name like 'profile_%' and not cached"
        ).fetchone()[0]
    assert profile_calls > 0 and f"agent profiles: {profile_calls:,} LLM calls, 0 from the cache" in text, text


def test_a_new_sandbox_with_the_same_settings_replays_from_the_cache(sandbox, llm_server):
    from doppel.flows.sandbox import run_sandbox

    settings = sandbox(sandbox_id="sbx-a", rounds=1, recommender="popular")
    run_sandbox(settings)
    calls = llm_server.stats()["requests"]
    assert calls > 0
    twin = run_sandbox(settings.model_copy(update={"sandbox_id": "sbx-b"}))
    assert llm_server.stats()["requests"] == calls  # same world, same prompts: every answer is cached
    assert tables(settings.run.db, "sbx-a") == tables(settings.run.db, "sbx-b")
    assert twin["rounds"][0]["new_calls"] == 0 and twin["rounds"][0]["cached_calls"] > 0


def test_a_llama_cpp_server_is_asked_and_recorded_under_the_model_it_serves(sandbox, llm_server):
    """Under the same --model, a second llama.cpp server (another file) is asked anew, not answered from the
    first one's cache, and each sandbox records the model that answered it; a sandbox is not resumed on
    another model."""
    from doppel.flows.sandbox import run_sandbox

    llm_server.configure(llama_cpp=True, model="/models/first.gguf")
    settings = sandbox(sandbox_id="sbx-first", rounds=1, recommender="popular")
    settings = settings.model_copy(
        update={"run": settings.run.model_copy(update={"llm": settings.llm.model_copy(update={"model": "local"})})}
    )
    run_sandbox(settings)
    calls = llm_server.stats()["requests"]
    llm_server.configure(model="/models/second.gguf")
    run_sandbox(settings.model_copy(update={"sandbox_id": "sbx-second"}))
    assert llm_server.stats()["requests"] > calls
    with duckdb.connect(settings.run.db, read_only=True) as con:
        rows = con.execute("select sandbox_id, model from sandbox_runs order by sandbox_id").fetchall()
        served = con.execute("select distinct model from llm_calls order by model").fetchall()
    assert rows == [("sbx-first", "/models/first.gguf"), ("sbx-second", "/models/second.gguf")]
    assert served == [("/models/first.gguf",), ("/models/second.gguf",)]
    asked = llm_server.stats()["requests"]  # a second round of the first sandbox, on the second server: refused
    with pytest.raises(ValueError, match="sandbox sbx-first was played by model '/models/first.gguf'.*second.gguf"):
        run_sandbox(settings.model_copy(update={"rounds": 2}))
    assert llm_server.stats()["requests"] == asked


def test_a_resume_may_switch_the_recommender_and_says_so(sandbox, llm_server):
    """An intervention: round 1 with one recommender, round 2 with another; each round records its own,
    and the summary and the CLI's header name both."""
    from doppel.flows.cli_sandbox import stored_sandbox
    from doppel.flows.sandbox import run_sandbox

    settings = sandbox(sandbox_id="sbx-switch", rounds=1, recommender="popular")
    assert run_sandbox(settings)["recommender"] == "popular"
    assert stored_sandbox(settings.run.db, "sbx-switch") == (4, "popular")
    summary = run_sandbox(settings.model_copy(update={"rounds": 2, "recommender": "random"}))
    assert summary["recommender"] == "popular -> random"
    assert [json.loads(r["recommender"])["kind"] for r in summary["rounds"]] == ["popular", "random"]
    assert stored_sandbox(settings.run.db, "sbx-switch") == (4, "popular -> random")
    assert stored_sandbox(settings.run.db, "sbx-none") == (0, None)


def test_agents_take_phase1_profiles_from_a_doppel_run(sandbox, llm_server, tmp_path):
    from doppel.flows.sandbox import run_sandbox
    from doppel.tasks.store.db import init_db

    settings = sandbox(sandbox_id="sbx-p", rounds=0, profile_run_id="run-x", agents=3)
    init_db(settings.run.db)
    with duckdb.connect(settings.run.db) as con:  # a run's profiles: versions 1-2 Phase 1, version 3 an update
        for user, version, stage in [("3", 1, "initial"), ("3", 2, "refine"), ("3", 3, "update"), ("5", 1, "initial")]:
            con.execute(
                "insert into profiles (run_id, fold, user_id, version, stage, text) values (?, 'u1', ?, ?, ?, ?)",
                ["run-x", user, version, stage, f"profile {user} v{version}"],
            )
    summary = run_sandbox(settings)
    with duckdb.connect(settings.run.db, read_only=True) as con:
        agents = dict(
            con.execute(
                "select user_id, profile || ' / ' || profile_source from sandbox_agents where sandbox_id = 'sbx-p'"
            ).fetchall()
        )
    assert agents["3"] == "profile 3 v2 / run:run-x" and agents["5"] == "profile 5 v1 / run:run-x"
    assert len(agents) == 3 and summary["rounds"] == []  # rounds=0: the set-up only
    built = [u for u, text in agents.items() if text.endswith("/ built")]
    assert len(built) == 1 and llm_server.stats()["by_kind"] == {"text": 1}  # one profile built for the third
    with pytest.raises(ValueError, match="no Phase-1 profiles"):
        run_sandbox(sandbox(sandbox_id="sbx-q", rounds=0, profile_run_id="run-none"))


def test_a_resume_builds_again_the_profiles_that_failed(sandbox, llm_server):
    """A profile that failed at set-up (an empty answer every time, re-asks too) is asked again by each resume,
    even with no round left, as fresh samples (not the cached failures): new calls only for it, recorded under
    the sandbox, until it is built; the built profiles are kept. A resume with no failed profile asks nothing."""
    from doppel.flows.sandbox import run_sandbox
    from doppel.testing.llm_server import message_text

    victim: list[str] = []

    def one_user_answers_nothing(kind: str, body: dict) -> str | None:
        """The first user whose profile is asked gets an empty answer each time (its re-asks repeat the ask)."""
        if kind != "text":
            return None
        asked = message_text(body["messages"][1])
        victim[:] = victim or [asked]
        return "" if asked == victim[0] else None

    settings = sandbox(sandbox_id="sbx-fix", agents=3, rounds=0)
    db = settings.run.db
    agents = "select agent_id, user_id, profile, profile_source, profile_error from sandbox_agents order by agent_id"
    paid = "select count(*) from llm_calls where run_id = 'sbx-fix' and not cached"
    llm_server.app.answer_fn = one_user_answers_nothing
    try:
        assert run_sandbox(settings)["profiles_failed"] == 1
        with duckdb.connect(db, read_only=True) as con:
            before = {r[0]: r[1:] for r in con.execute(agents).fetchall()}
            paid_before = con.execute(paid).fetchone()[0]
        asked = llm_server.stats()["by_kind"].get("text", 0)
        assert run_sandbox(settings)["profiles_failed"] == 1  # asked again, and failed again
    finally:
        llm_server.app.answer_fn = None
    failed = [a for a, (_, _, source, _) in before.items() if source == "failed"]
    assert len(failed) == 1 and before[failed[0]][1] == "(no profile)" and before[failed[0]][3]
    user = before[failed[0]][0]
    tries = settings.llm.repair_attempts + 1
    assert llm_server.stats()["by_kind"].get("text", 0) - asked == tries  # new samples, each as bad
    with duckdb.connect(db, read_only=True) as con:
        assert {r[0]: r[1:] for r in con.execute(agents).fetchall()} == before
        assert con.execute(paid).fetchone()[0] == paid_before + tries
        paid_before += tries
    asked += tries

    summary = run_sandbox(settings)  # healthy server, no round left: only the failed profile is asked again
    assert summary["profiles_failed"] == 0 and summary["status"] == "finished"
    new_calls = llm_server.stats()["by_kind"].get("text", 0) - asked
    assert new_calls == len(failed)
    with duckdb.connect(db, read_only=True) as con:
        after = {r[0]: r[1:] for r in con.execute(agents).fetchall()}
        assert con.execute(paid).fetchone()[0] == paid_before + new_calls  # billed to the sandbox
        rebuilt_calls = con.execute(
            "select count(*) from llm_calls where run_id = 'sbx-fix' and not cached and status = 'ok' and user_id = ?",
            [user],
        ).fetchone()[0]
    from doppel.flows.cli_sandbox import console, print_sandbox

    with console.capture() as captured:  # the bill of the profiles: the set-up's calls and every resume's
        print_sandbox(summary)
    assert f"agent profiles: {paid_before + new_calls:,} LLM calls" in captured.get(), captured.get()
    _, profile, source, error = after[failed[0]]
    assert source == "built" and error is None and len(profile) > 20 and rebuilt_calls == 1
    assert {a: r for a, r in after.items() if a not in failed} == {a: r for a, r in before.items() if a not in failed}

    requests = llm_server.stats()["requests"]
    run_sandbox(settings)  # nothing failed any more: no call at all
    assert llm_server.stats()["requests"] == requests
    with duckdb.connect(db, read_only=True) as con:
        assert {r[0]: r[1:] for r in con.execute(agents).fetchall()} == after
