"""Agent sandbox units: answer contracts, the test server's schema answers, recommenders, memory, graph, one turn."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pandas as pd
import pytest

from doppel.tasks.llm.cache import ResponseCache
from doppel.tasks.llm.gateway import LLMGateway
from doppel.tasks.llm.limits import CallLimiter
from doppel.tasks.sandbox import memory, social
from doppel.tasks.sandbox import schemas as sc
from doppel.tasks.sandbox.agent import play_turn
from doppel.tasks.sandbox.build import activity_levels, choose_users, is_active
from doppel.tasks.sandbox.config import MemorySettings, SandboxSettings
from doppel.tasks.sandbox.recommender import build_recommender
from doppel.tasks.sandbox.records import Agent, ItemCard, Turn
from doppel.testing.llm_faults import request_kind, schema_answer

SCHEMAS = [
    (sc.Decision, sc.decision_schema(["recommender", "chat", "post", "nothing"], ["A02", "A03"])),
    (sc.Browse, sc.browse_schema(["7", "8", "9"], 2)),
    (sc.Reviews, sc.reviews_schema(["7", "9"])),
    (sc.Chat, sc.chat_schema(["A01", "A02", "A01", "A02"])),
    (sc.Post, sc.post_schema()),
    (sc.Reflection, sc.reflection_schema()),
]


# ----------------------------------------------------------------------------- contracts and the test server


@pytest.mark.parametrize("model, schema", SCHEMAS, ids=[m.__name__ for m, _ in SCHEMAS])
def test_test_server_answers_are_valid_instances_of_each_schema(model, schema):
    validator = jsonschema.Draft202012Validator(schema)
    answers = [schema_answer(schema, f"request {k}") for k in range(30)]
    for answer in answers:
        validator.validate(answer)  # what a grammar-constrained model could say
        parsed, problem = sc.validate(model, json.dumps(answer))
        assert problem is None, (answer, problem)
    assert schema_answer(schema, "same") == schema_answer(schema, "same")
    assert len({json.dumps(a, sort_keys=True) for a in answers}) > 1  # answers vary with the request


def test_request_kind_of_sandbox_schemas_and_old_kinds_unchanged():
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "sandbox_decide", "schema": {}}},
    }
    assert request_kind(body) == "sandbox"
    assert request_kind({"messages": [{"role": "user", "content": 'item_ids: ["1"]'}]}) == "rating"
    assert request_kind({"messages": [{"role": "user", "content": "write a profile"}]}) == "text"


def test_validate_reports_problems_a_model_can_act_on():
    assert sc.validate(sc.Decision, "I would like to watch a movie")[1].startswith("not valid JSON")
    _, problem = sc.validate(sc.Decision, '{"action": "dance", "friend": "none"}')
    assert "action" in problem
    parsed, problem = sc.validate(
        sc.Reviews, 'Sure: {"reviews": [{"item_id": "1", "rating": 4, "feeling": "fun"}], "importance": 5} ok'
    )
    assert problem is None and parsed.reviews[0].rating == 4
    assert (
        "rating"
        in sc.validate(sc.Reviews, '{"reviews": [{"item_id": "1", "rating": 9, "feeling": "x"}], "importance": 5}')[1]
    )


# ----------------------------------------------------------------------------- recommenders


def world():
    items = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(1, 9)],
            "title": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta"],
            "genres": ["Comedy", "Drama", "Comedy|Drama", "Horror", "Comedy", "Sci-Fi", "Drama", "War"],
        }
    )
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", str(i), int(rng.integers(1, 6))) for u in range(1, 13) for i in range(1, 9) if rng.random() < 0.6]
    train = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    return items, train


def test_popular_ranks_by_count_and_pages_skip_watched_items():
    items, train = world()
    rec = build_recommender("popular", items, train, train.iloc[:0], ["u1"])
    counts = train.groupby("item_id").size()
    ranked = rec.ranked("u1", set())
    assert [counts.get(i, 0) for i in ranked] == sorted([counts.get(i, 0) for i in ranked], reverse=True)
    first = rec.page("u1", set(), 1, 3)
    assert first == ranked[:3] and rec.page("u1", set(), 2, 3) == ranked[3:6]
    assert first[0] not in rec.page("u1", {first[0]}, 1, 3)
    assert set(rec.page("u1", set(), 1, 5, query="comedy")) == {"1", "3", "5"}
    assert rec.page("u1", set(), 1, 5, query="western") == []


def test_mf_retrains_on_sandbox_ratings_and_random_is_seeded_per_visit():
    items, train = world()
    base = build_recommender("mf", items, train, train.iloc[:0], ["u1"], seed=1)
    liked = pd.DataFrame({"user_id": [f"u{k}" for k in range(1, 7)], "item_id": ["8"] * 6, "rating": [5] * 6})
    again = build_recommender("mf", items, train, liked, ["u1"], seed=1)
    frozen = build_recommender("mf", items, train, liked, ["u1"], seed=1, retrain=False)
    pos = list(items["item_id"]).index("8")
    assert again.scores["u1"][pos] > base.scores["u1"][pos]  # six 5-star sandbox ratings lift item 8
    assert np.allclose(frozen.scores["u1"], base.scores["u1"])
    assert again.info["trained_on"] > base.info["trained_on"]
    rand = build_recommender("random", items, train, train.iloc[:0], ["u1"], seed=3)
    assert rand.page("u1", set(), 1, 5, salt="1:0") == rand.page("u1", set(), 1, 5, salt="1:0")
    assert len({tuple(rand.page("u1", set(), 1, 5, salt=f"{r}:0")) for r in range(5)}) > 1
    with pytest.raises(ValueError, match="unknown recommender"):
        build_recommender("knn", items, train, train.iloc[:0], ["u1"])


# ----------------------------------------------------------------------------- memory, graph, agents


def test_retrieval_weighs_relevance_recency_and_importance():
    cfg = MemorySettings(k=1, decay=0.5)
    e = np.eye(3, dtype=np.float32)
    frame = pd.DataFrame(
        {
            "text": ["old relevant", "new", "important"],
            "round": [0, 5, 0],
            "importance": [1, 1, 10],
            "seq": [1, 2, 3],
            "kind": ["watch"] * 3,
            "embedding": [e[0], e[1], e[2]],
        }
    )
    assert memory.retrieve(frame, e[0], 5, cfg) == ["old relevant"]  # relevance 1 beats recency 1 at w = 1
    assert memory.retrieve(frame, e[0], 5, cfg.model_copy(update={"w_relevance": 0.0})) == ["new"]
    only_imp = cfg.model_copy(update={"w_relevance": 0.0, "w_recency": 0.0})
    assert memory.retrieve(frame, e[0], 5, only_imp) == ["important"]
    assert memory.retrieve(frame.iloc[:0], e[0], 5, cfg) == []
    frame["kind"] = ["reflection", "watch", "chat"]
    frame["round"] = [1, 5, 2]
    reflect = MemorySettings(reflect_every=3, reflect_on=5)
    assert memory.reflection_input(frame, 6, reflect) == ["important", "new"]  # since the last reflection
    assert memory.reflection_input(frame, 6, reflect.model_copy(update={"reflect_on": 1})) == ["important"]
    assert memory.reflection_input(frame, 5, reflect) == []


def test_generated_graph_is_seeded_and_a_file_graph_maps_user_ids(tmp_path):
    ids = [f"A{k:02d}" for k in range(1, 21)]
    edges = social.generate(ids, 3, seed=4)
    assert edges == social.generate(ids, 3, seed=4) and edges != social.generate(ids, 3, seed=5)
    degree = social.neighbours(edges, ids)
    assert 2.0 <= np.mean([len(f) for f in degree.values()]) <= 4.5 and all(a < b for a, b in edges)
    path = tmp_path / "friends.csv"
    path.write_text("a,b\nA01,A02\n196,A03\nA02,A01\n")
    assert social.load(path, ids, {"196": "A01"}) == [("A01", "A02"), ("A01", "A03")]
    path.write_text("A01,A99\n")
    with pytest.raises(ValueError, match="names no agent"):
        social.load(path, ids, {})


def test_agent_choice_and_activity_are_seeded():
    _, train = world()
    assert choose_users(train, 4, 0) == choose_users(train, 4, 0)
    assert choose_users(train, 3, 0, prefer={"u5", "u7"})[:2] == ["u5", "u7"]
    levels = activity_levels(train, ["u1", "u2"], "data")
    assert all(0.3 <= x <= 1.0 for x in levels) and activity_levels(train, ["u1"], 0.4) == [0.4]
    draws = [is_active(0, "A01", r, 0.3) for r in range(400)]
    assert draws == [is_active(0, "A01", r, 0.3) for r in range(400)] and 0.2 < np.mean(draws) < 0.4


# ----------------------------------------------------------------------------- one turn over HTTP


CARDS = {
    str(i): ItemCard(str(i), t, 1990 + i, g)
    for i, t, g in [
        (1, "Alpha", "Comedy"),
        (2, "Beta", "Drama"),
        (3, "Gamma", "Comedy|Drama"),
        (4, "Delta", "Horror"),
        (5, "Epsilon", "Comedy"),
        (6, "Zeta", "Sci-Fi"),
        (7, "Eta", "Drama"),
        (8, "Theta", "War"),
    ]
}


def _turn(**kw) -> Turn:
    agent = Agent("A01", "u1", "24 years old, male, student", "Likes comedies.", 1.0, ("A02",))
    base = dict(
        agent=agent,
        round=1,
        active=True,
        memories=["Before: watched Alpha and gave it 5 stars"],
        inbox=[],
        friends={"A02": "30 years old, female"},
        watched=frozenset({"1"}),
    )
    return Turn(**{**base, **kw})


def _play(llm_server, tmp_path, turn: Turn, answers: dict | None = None, **cfg):
    from doppel.tasks.settings import LLMSettings

    items, train = world()
    rec = build_recommender("popular", items, train, train.iloc[:0], ["u1"])
    settings = SandboxSettings(**cfg)
    llm = LLMSettings(base_url=llm_server.base_url, model="doppel-test-model", timeout_s=10, max_retries=0)
    if answers is not None:
        llm_server.app.answer_fn = lambda kind, body: answers.get(body["response_format"]["json_schema"]["name"])

    async def go():
        cache = ResponseCache(tmp_path / f"cache-{len(list(tmp_path.iterdir()))}")  # a fresh cache per turn
        gateway = LLMGateway(llm, cache, CallLimiter(2), "doppel-test-model")
        try:
            return await play_turn(turn, gateway, rec, CARDS, settings)
        finally:
            await gateway.aclose()
            cache.close()

    try:
        return asyncio.run(go())
    finally:
        llm_server.app.answer_fn = None


def test_a_recommender_visit_pages_watches_rates_and_remembers(llm_server, tmp_path):
    answers = {
        "sandbox_decide": '{"action": "recommender", "friend": "none"}',
        "sandbox_browse": '{"choice": "watch", "watch": ["3"], "query": ""}',
        "sandbox_watch": '{"reviews": [{"item_id": "3", "rating": 4, "feeling": "warm and funny"}], "importance": 6}',
    }
    out = _play(llm_server, tmp_path, _turn(), answers)
    assert [a["action"] for a in out.actions] == ["recommender", "watch", "rate"]
    assert all(a["status"] == "ok" and a["call_key"] for a in out.actions)
    assert len(out.pages) == 1 and len(out.pages[0]["item_ids"]) == 5 and "1" not in out.pages[0]["item_ids"]
    assert out.ratings == [
        {"item_id": "3", "rating": 4, "feeling": "warm and funny", "call_key": out.calls[-1].call_key}
    ]
    assert out.memories[0]["importance"] == 6 and "Gamma" in out.memories[0]["text"]
    sent = [e["request"] for e in llm_server.log()]
    assert [b["response_format"]["json_schema"]["name"] for b in sent] == [
        "sandbox_decide",
        "sandbox_browse",
        "sandbox_watch",
    ]
    browse_schema = sent[1]["response_format"]["json_schema"]["schema"]
    assert browse_schema["properties"]["watch"]["items"]["enum"] == out.pages[0]["item_ids"]
    # the stable prefix: the same system prompt and persona open every call of the agent
    assert len({b["messages"][0]["content"] for b in sent}) == 1
    assert len({b["messages"][1]["content"].split("\n<data>")[0] for b in sent}) == 1


def test_chat_is_remembered_by_both_and_posts_are_recorded(llm_server, tmp_path):
    out = _play(llm_server, tmp_path, _turn(), {"sandbox_decide": '{"action": "chat", "friend": "A02"}'})
    assert [m["speaker_id"] for m in out.messages] == ["A01", "A02", "A01", "A02"]  # the test server's schema answer
    assert {m["agent_id"] for m in out.memories} == {"A01", "A02"}
    out = _play(llm_server, tmp_path, _turn(), {"sandbox_decide": '{"action": "post", "friend": "none"}'})
    assert len(out.posts) == 1 and out.actions[0]["action"] == "post" and out.posts[0]["text"]


def test_an_invalid_decision_is_repaired_then_recorded_failed(llm_server, tmp_path):
    out = _play(llm_server, tmp_path, _turn(), {"sandbox_decide": "I think I will watch something"})
    assert out.actions == [
        {
            "step": 0,
            "action": "decide",
            "detail": "",
            "status": "failed",
            "call_key": None,
            "error": out.actions[0]["error"],
        }
    ]
    assert "invalid answer after 3 attempts: not valid JSON" in out.actions[0]["error"]
    assert [c.status for c in out.calls] == ["invalid"] * 3 and [c.prompt_name for c in out.calls] == [
        "sandbox_decide",
        "sandbox_repair",
        "sandbox_repair",
    ]
    # a chat with a stranger is invalid too (the schema allows only friends; a server ignoring it is checked)
    out = _play(llm_server, tmp_path, _turn(), {"sandbox_decide": '{"action": "chat", "friend": "A09"}'})
    assert out.actions[0]["status"] == "failed" and "friend must be one of" in out.actions[0]["error"]


def test_inactive_agents_make_no_call_and_reflection_adds_insights(llm_server, tmp_path):
    out = _play(llm_server, tmp_path, _turn(active=False, reflect_on=["Round 2: watched Beta"]))
    assert [a["action"] for a in out.actions] == ["nothing", "reflect"]
    assert [c.prompt_name for c in out.calls] == ["sandbox_reflect"]
    assert out.memories and all(m["kind"] == "reflection" and m["importance"] == 7 for m in out.memories)


def test_options_are_shuffled_per_agent_and_round_and_sent_in_that_order(llm_server, tmp_path):
    from doppel.tasks.sandbox.agent import options_for

    orders = {tuple(options_for(_turn(round=r), seed=0)) for r in range(12)}
    assert len(orders) > 3 and all(sorted(o) == ["chat", "nothing", "post", "recommender"] for o in orders)
    assert options_for(_turn(round=2)) == options_for(_turn(round=2))
    assert options_for(_turn(friends={})) in (["recommender", "nothing"], ["nothing", "recommender"])
    from doppel.tasks.channel import CallsSoFar, ChannelReader, ResultChannel
    from doppel.tasks.llm.session import LimitSpec
    from doppel.tasks.sandbox.build import run_turns
    from doppel.tasks.sandbox.records import PackedTurns
    from doppel.tasks.settings import LLMSettings

    items, train = world()
    rec = build_recommender("popular", items, train, train.iloc[:0], ["u1"])
    llm = LLMSettings(base_url=llm_server.base_url, model="doppel-test-model", timeout_s=10, max_retries=0)
    channel = ResultChannel("test-options", "local")
    llm_server.app.answer_fn = lambda kind, body: '{"action": "nothing", "friend": "none"}'
    try:  # the chunk entry samples decisions at the sandbox's temperature (profiles keep the run's)
        done = run_turns(
            PackedTurns([_turn(round=5)]),
            rec,
            CARDS,
            SandboxSettings(temperature=0.6),
            llm,
            "doppel-test-model",
            str(tmp_path / "cache"),
            LimitSpec(local_slots=1),
            channel,
        )
    finally:
        llm_server.app.answer_fn = None
    reader = ChannelReader(channel)
    (out,) = [m for m in reader.drain(timeout=1) if not isinstance(m, CallsSoFar)]  # results, not progress
    reader.close()
    assert done == ["A01"]
    body = llm_server.log()[0]["request"]
    enum = body["response_format"]["json_schema"]["schema"]["properties"]["action"]["enum"]
    assert enum == options_for(_turn(round=5)) and body["temperature"] == 0.6
    assert body["messages"][1]["content"].index(enum[0]) < body["messages"][1]["content"].index(enum[-1] + " (")
    assert out.actions[0]["detail"] == "chose to rest"
