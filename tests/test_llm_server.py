"""The LLM test server, exercised through the real openai client (fast: no Prefect, no Dask)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from doppel.testing.llm_faults import CONTENT_FAULTS, choose_fault
from doppel.testing.llm_server import LLMTestServer, ServerOptions, admin, expected_rating, start_subprocess

IDS = ["12", "45", "78", "101", "7"]
PROFILE = "Loves gritty crime dramas and film-noir; finds musicals tedious."


def rating_messages(ids=IDS, profile=PROFILE, line=True) -> list[dict]:
    prompt = "Rate each movie from 1 to 5 as this user would.\n"
    if profile is not None:
        prompt = f"<profile>\n{profile}\n</profile>\n\n" + prompt
    if line:
        prompt += f"item_ids: {json.dumps(ids)}\n"
    return [
        {"role": "system", "content": "You simulate a movie viewer. Answer in JSON."},
        {"role": "user", "content": prompt},
    ]


def ratings_format(ids=IDS) -> dict:
    def item(i):
        return {
            "type": "object",
            "required": ["item_id", "rating"],
            "additionalProperties": False,
            "properties": {"item_id": {"const": i}, "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
        }

    ratings = {
        "type": "array",
        "prefixItems": [item(i) for i in ids],
        "items": False,
        "minItems": len(ids),
        "maxItems": len(ids),
    }
    schema = {
        "type": "object",
        "properties": {"ratings": ratings},
        "required": ["ratings"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "ratings", "strict": True, "schema": schema}}


def expected(ids=IDS, profile=PROFILE) -> dict:
    return {"ratings": [{"item_id": i, "rating": expected_rating(i, profile)} for i in ids]}


PROFILE_PROMPT = (
    "Write a profile of this user from their ratings.\n"
    "- Heat (1995) [Action|Crime|Thriller]: 5\n- Fargo (1996) [Crime|Drama|Thriller]: 5\n"
    "- Casablanca (1942) [Drama|Romance|War]: 4\n- Grease (1978) [Comedy|Musical|Romance]: 1\n"
    "- The Big Sleep (1946) [Film-Noir|Mystery]: 4\n- Alien (1979) [Horror|Sci-Fi|Thriller]: 3\n"
)


@pytest.fixture(scope="module")
def server():
    with LLMTestServer() as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.configure(**ServerOptions().as_dict())  # defaults, no faults
    server.reset()
    return server


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0, timeout=10)


def chat(client, messages, **kw):
    return client.chat.completions.create(model="test-model", messages=messages, **kw)


# ----------------------------------------------------------------------------- correct answers


def test_rating_with_schema_only(srv, client):
    messages = rating_messages(line=False)
    r = chat(client, messages, response_format=ratings_format())
    assert json.loads(r.choices[0].message.content) == expected()
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "test-model"
    assert r.choices[0].finish_reason == "stop" and r.created > 0
    chars = sum(len(m["content"]) for m in messages)
    assert r.usage.prompt_tokens == math.ceil(chars / 4)
    assert r.usage.completion_tokens == math.ceil(len(r.choices[0].message.content) / 4)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    [entry] = srv.log()
    assert (entry["kind"], entry["fault"], entry["status"]) == ("rating", None, 200)
    assert entry["request"]["messages"] == messages and entry["response"] == r.choices[0].message.content


@pytest.mark.parametrize("response_format", [None, {"type": "json_object"}])
def test_rating_from_item_ids_line(client, response_format):
    kw = {"response_format": response_format} if response_format else {}
    r = chat(client, rating_messages(), **kw)
    assert json.loads(r.choices[0].message.content) == expected()


def test_rating_without_profile_and_schema_order_wins(client):
    ids = ["3", "1", "2"]
    messages = rating_messages(ids=["9"], profile=None)  # the schema, not the line, decides
    r = chat(client, messages, response_format=ratings_format(ids))
    assert json.loads(r.choices[0].message.content) == expected(ids, "")


@pytest.mark.parametrize("with_schema", [True, False])
def test_repair_reask_is_answered_correctly(client, with_schema):
    messages = rating_messages() + [
        {"role": "assistant", "content": '{"ratings": [{"item_id": "12", "rating": 9}]}'},
        {
            "role": "user",
            "content": "Your previous answer was invalid: rating must be 1..5, 4 ids missing. "
            "Answer again with every requested id exactly once.",
        },
    ]
    kw = {"response_format": ratings_format()} if with_schema else {}
    assert json.loads(chat(client, messages, **kw).choices[0].message.content) == expected()


def test_profile_answer(srv, client):
    messages = [{"role": "user", "content": PROFILE_PROMPT + "item ids seen: 12, 45"}]
    text = chat(client, messages).choices[0].message.content
    assert text.startswith("Profile:") and 40 <= len(text.split()) <= 80
    assert "crime" in text and "thriller" in text
    assert not any(ch.isdigit() for ch in text)
    assert chat(client, messages).choices[0].message.content == text
    assert [e["kind"] for e in srv.log()] == ["text", "text"]


def test_content_faults_never_touch_text_requests(srv, client):
    srv.configure(**{fault: 1 / len(CONTENT_FAULTS) for fault in CONTENT_FAULTS})
    text = chat(client, [{"role": "user", "content": PROFILE_PROMPT}]).choices[0].message.content
    assert text.startswith("Profile:") and srv.log()[0]["fault"] is None


def test_answer_fn_scripts_answers():
    script = lambda kind, body: "scripted!" if kind == "text" else None  # noqa: E731
    with LLMTestServer(answer_fn=script, prose=1.0) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        assert chat(client, [{"role": "user", "content": "hi"}]).choices[0].message.content == "scripted!"
        rating = chat(client, rating_messages()).choices[0].message.content
        assert rating.startswith("Sure!")  # default answers still get content faults
        assert [e["scripted"] for e in srv.log()] == [True, False]


# ----------------------------------------------------------------------------- faults


def _ids(answer: dict) -> list:
    return [r["item_id"] for r in answer["ratings"]]


@pytest.mark.parametrize("fault", CONTENT_FAULTS)
def test_content_fault_at_rate_one(srv, client, fault):
    srv.configure(**{fault: 1.0})
    content = chat(client, rating_messages(), response_format=ratings_format()).choices[0].message.content
    if fault == "malformed_json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
    elif fault == "prose":
        assert not content.startswith("{")
        assert json.loads(content[content.index("{") : content.rindex("}") + 1]) == expected()
    else:
        answer = json.loads(content)
        ids, ratings = _ids(answer), [r["rating"] for r in answer["ratings"]]
        check = {
            "missing_ids": lambda: len(ids) == len(IDS) - 1 and set(ids) < set(IDS),
            "extra_ids": lambda: len(ids) == len(IDS) + 1 and len(set(ids) - set(IDS)) == 1,
            "duplicate_ids": lambda: set(ids) == set(IDS) and max(Counter(ids).values()) == 2,
            "unknown_ids": lambda: len(ids) == len(IDS) and len(set(ids) - set(IDS)) == 1,
            "out_of_range": lambda: ids == IDS and sum(r in (0, 6) for r in ratings) == 1,
            "non_integer": lambda: ids == IDS and sum(r in (3.5, "four") for r in ratings) == 1,
        }[fault]
        assert check(), content
    stats = srv.stats()
    assert stats["by_fault"] == {fault: 1} and stats["ok"] == 0 and srv.log()[0]["fault"] == fault


def test_http_500(srv, client):
    srv.configure(http_500=1.0)
    with pytest.raises(openai.InternalServerError):
        chat(client, rating_messages())
    assert srv.stats()["by_status"] == {"500": 1}


def test_http_429_has_retry_after_and_is_immediate(srv, client):
    # immediate: a 429 skips the latency (600 s here), else the client's 60 s timeout would fire first
    srv.configure(http_429=1.0, retry_after=2, latency=600.0)
    with pytest.raises(openai.RateLimitError) as err:
        chat(client.with_options(timeout=60), [{"role": "user", "content": "hello"}])
    assert err.value.response.headers["retry-after"] == "2"
    assert srv.stats()["by_fault"] == {"http_429": 1}


def test_drop_connection(srv, client):
    srv.configure(drop_connection=1.0)
    with pytest.raises(openai.APIConnectionError) as err:
        chat(client, rating_messages())
    assert not isinstance(err.value, openai.APITimeoutError)
    assert type(err.value.__cause__).__name__ == "RemoteProtocolError"  # httpx (or its fork)
    assert srv.stats()["by_status"] == {"none": 1}


def _wait_idle(srv, timeout=60.0):
    deadline = time.monotonic() + timeout
    while srv.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    return srv.stats()


def test_hang_makes_client_time_out(srv, client):
    srv.configure(hang=1.0, hang_seconds=600)
    with pytest.raises(openai.APITimeoutError):
        chat(client.with_options(timeout=1), rating_messages())
    stats = _wait_idle(srv)  # the server gives up once the client has gone (not after the 600 s hang)
    assert stats["in_flight"] == 0 and stats["ok"] == 0 and srv.log()[0]["completed"] is False


def test_stop_drops_hung_requests_without_waiting_for_them():
    srv = LLMTestServer(hang=1.0, hang_seconds=600)
    client = openai.OpenAI(base_url=srv.start(), api_key="test", max_retries=0, timeout=300)
    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(chat, client, rating_messages())
        while not srv.stats()["in_flight"]:
            time.sleep(0.01)
        stopping = pool.submit(srv.stop)
        stopping.result(timeout=60)  # far below the 600 s hang and the 300 s client timeout
        with pytest.raises(openai.APIConnectionError) as err:
            pending.result(timeout=60)
        assert not isinstance(err.value, openai.APITimeoutError)  # dropped by the server, not timed out


def test_hang_answers_after_hang_seconds(srv, client):
    srv.configure(hang=1.0, hang_seconds=0.3)
    t0 = time.monotonic()
    assert json.loads(chat(client, rating_messages()).choices[0].message.content) == expected()
    assert time.monotonic() - t0 >= 0.3 and srv.stats()["ok"] == 1


def test_trickle_sends_the_body_slowly(srv):
    srv.configure(trickle=1.0, trickle_seconds=0.6)
    body = {"model": "m", "messages": rating_messages()}
    t0, chunks = time.monotonic(), []
    with httpx.stream("POST", f"{srv.base_url}/chat/completions", json=body, timeout=5) as response:
        assert response.status_code == 200
        chunks = list(response.iter_raw())
    assert time.monotonic() - t0 >= 0.55 and len(chunks) > 10
    assert json.loads(json.loads(b"".join(chunks))["choices"][0]["message"]["content"]) == expected()
    assert srv.stats()["ok"] == 1


def _outcomes(base_url: str, bodies: list[dict]) -> list:
    out = []
    with httpx.Client(base_url=base_url, timeout=5) as http:
        for body in bodies:
            r = http.post("/chat/completions", json=body)
            content = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else None
            out.append((r.status_code, content))
    return out


def test_faults_are_deterministic_per_request_and_repetition():
    options = {"seed": 7, "http_500": 0.3, "malformed_json": 0.3, "missing_ids": 0.2}
    same = {"model": "m", "messages": rating_messages()}
    bodies = [same] * 8 + [{"model": "m", "messages": rating_messages(ids=[str(i)])} for i in range(4)]
    runs = []
    for opts in (options, options, {**options, "seed": 8}):
        with LLMTestServer(**opts) as srv:
            runs.append((_outcomes(srv.base_url, bodies), [e["fault"] for e in srv.log()]))
            assert [e["seen_before"] for e in srv.log()[:8]] == list(range(8))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    repeated = runs[0][0][:8]  # the same body fails on some tries and succeeds on others
    good = (200, json.dumps(expected()))
    assert good in repeated and any(outcome != good for outcome in repeated)


def test_choose_fault_rates():
    rng, rates = random.Random(1), {"http_500": 0.2, "prose": 0.3}
    rating = Counter(choose_fault(rates, "rating", rng) for _ in range(5000))
    assert abs(rating["http_500"] / 5000 - 0.2) < 0.03 and abs(rating["prose"] / 5000 - 0.3) < 0.03
    text = Counter(choose_fault(rates, "text", rng) for _ in range(5000))
    assert set(text) == {"http_500", None} and abs(text["http_500"] / 5000 - 0.2) < 0.03


# ----------------------------------------------------------------------------- load


def test_latency_and_max_concurrency(srv, client):
    srv.configure(latency=0.2, max_concurrency=2)
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(client, rating_messages(ids=[str(i)])), range(8)))
    assert time.monotonic() - t0 >= 0.8  # 8 calls of 0.2 s, 2 at a time (a lower bound only: load only adds)
    assert all(json.loads(a.choices[0].message.content) == expected([str(i)]) for i, a in enumerate(answers))
    stats = srv.stats()
    # at most 2 in their latency at once while more waited inside the server (how many arrived before
    # the first answer depends on the machine's load, so only "more than the cap")
    assert stats["max_active"] == 2 and stats["max_in_flight"] > 2 and stats["ok"] == 8


def test_64_concurrent_connections(srv):
    srv.configure(latency=0.5)

    async def run():
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="test", max_retries=0) as aclient:
            return await asyncio.gather(
                *(aclient.chat.completions.create(model="m", messages=rating_messages(ids=[str(i)])) for i in range(64))
            )

    answers = asyncio.run(run())
    assert all(json.loads(a.choices[0].message.content) == expected([str(i)]) for i, a in enumerate(answers))
    stats = srv.stats()  # all 64 were inside the server, in their latency, at once: no connection queued
    assert stats["max_in_flight"] == 64 and stats["max_active"] == 64


# ----------------------------------------------------------------------------- admin, options, subprocess


def test_admin_endpoints_over_http(srv, client):
    root = srv.root_url
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list()] == ["doppel-test-model"]
    assert httpx.get(f"{root}/nope").status_code == 404
    assert httpx.post(f"{srv.base_url}/chat/completions", content=b"{not json").status_code == 400
    config = admin(srv.base_url, "config", {"http_500": 1.0, "latency": 0.01})
    assert config["http_500"] == 1.0 and config["latency"] == 0.01
    assert httpx.post(f"{root}/_admin/config", json={"bogus": 1}).status_code == 400
    assert httpx.post(f"{root}/_admin/config", json={"http_500": 2}).status_code == 400
    assert admin(srv.base_url, "config", {})["http_500"] == 1.0  # bad changes changed nothing
    with pytest.raises(openai.InternalServerError):
        chat(client, rating_messages())
    stats = admin(srv.base_url, "stats")
    assert stats["requests"] == 2 and stats["by_kind"] == {"invalid": 1, "rating": 1}
    assert [e["fault"] for e in admin(srv.base_url, "log")] == [None, "http_500"]
    admin(srv.base_url, "reset")
    assert admin(srv.base_url, "stats")["requests"] == 0 and admin(srv.base_url, "log") == []


def test_configure_by_name_updates_and_faults_map_replaces(srv):
    srv.configure(http_500=0.5, prose=0.25)
    config = srv.configure(prose=0.5)
    assert (config["http_500"], config["prose"]) == (0.5, 0.5)
    config = srv.configure(faults={"hang": 0.1}, latency=0.2)
    assert (config["http_500"], config["prose"], config["hang"], config["latency"]) == (0, 0, 0.1, 0.2)
    assert srv.configure(faults={})["hang"] == 0


def test_bad_options_are_rejected():
    with pytest.raises(ValueError):
        LLMTestServer(bogus=1)
    with pytest.raises(ValueError):
        LLMTestServer(http_500=1.5)
    with pytest.raises(ValueError):
        LLMTestServer(latency=-1)


def test_subprocess_mode():
    proc, base_url = start_subprocess(latency=0.05, seed=3, http_429=0.0)
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
        r = chat(client, rating_messages(), response_format=ratings_format())
        assert json.loads(r.choices[0].message.content) == expected()
        assert admin(base_url, "config", {"http_500": 1.0})["seed"] == 3
        with pytest.raises(openai.InternalServerError):
            chat(client, rating_messages())
        assert admin(base_url, "stats")["by_fault"] == {"none": 1, "http_500": 1}
    finally:
        proc.kill()
        proc.wait()
