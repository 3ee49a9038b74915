"""The LLM gateway against the real HTTP test server: rating draws where the server gives no
logprobs, and answer bodies read as plain data whatever they hold.
"""

from __future__ import annotations

import asyncio

import pytest

from doppel.tasks.llm.limits import CallLimiter
from doppel.tasks.llm.schemas import parse_ratings
from doppel.testing.llm_server import LLMTestServer, expected_rating
from tests._gateway import IDS, _close, _rate, gateway, run


def _draw_requests(server) -> list[dict]:
    return [e["request"] for e in server.log() if e["request"].get("temperature")]


def test_draws_give_the_distribution_where_the_server_gives_no_logprobs(tmp_path):
    with LLMTestServer(logprobs=False) as server:
        out = run(_rate(gateway(server, tmp_path, rating_samples=6)))
        assert out.ratings == {i: expected_rating(i, "Likes gentle comedies.") for i in IDS} and not out.failed
        draws = _draw_requests(server)
        assert server.stats()["requests"] == 7 and len(draws) == 6
        answer = server.log()[0]["request"]
        assert answer["temperature"] == 0
        # the same prompt and schema as the answer, at the sample temperature, a seed each, no logprobs
        assert all(
            d["messages"] == answer["messages"]
            and d["response_format"] == answer["response_format"]
            and d["temperature"] == 1.0
            and not d.get("logprobs")
            for d in draws
        )
        assert len({d["seed"] for d in draws}) == 6 and answer["seed"] not in {d["seed"] for d in draws}
        # each rating's distribution is the share of the draws (as the server answered them) giving 1..5
        answered = [parse_ratings(e["response"], IDS).ratings for e in server.log() if e["request"].get("temperature")]
        for item_id in IDS:
            shares = [sum(a[item_id] == k for a in answered) / 6 for k in range(1, 6)]
            assert _close(out.probs[item_id], shares) and out.draws[item_id] == 6
        assert any(max(p) < 1 for p in out.probs.values())  # the draws do spread
        assert [c.prompt_name for c in out.calls] == ["rating"] + ["rating_draw"] * 6
        # every draw is cached: asked again, no request, the same distributions
        again = run(_rate(gateway(server, tmp_path, rating_samples=6)))
        assert again.probs == out.probs and all(c.cached for c in again.calls) and server.stats()["requests"] == 7


def test_no_draws_where_logprobs_gave_the_distribution(llm_server, tmp_path):
    out = run(_rate(gateway(llm_server, tmp_path, rating_samples=4)))
    assert set(out.probs) == set(IDS) and not out.draws and llm_server.stats()["requests"] == 1
    # --no-rating-probs with draws: the distribution comes from the draws instead, also where the
    # cache holds the answer with its logprobs (the same command gives the same table, cached or not)
    drawn = run(_rate(gateway(llm_server, tmp_path, rating_probs=False, rating_samples=4)))
    assert set(drawn.draws.values()) == {4} and drawn.ratings == out.ratings
    assert drawn.calls[0].cached and llm_server.stats()["requests"] == 1 + 4


def test_a_server_rejecting_logprobs_gets_draws(tmp_path):
    with LLMTestServer(reject_logprobs=True) as server:
        gw = gateway(server, tmp_path, rating_samples=3)
        gw.limiter = CallLimiter(1)
        out = run(asyncio.wait_for(_rate(gw), 20))
        assert set(out.probs) == set(IDS) and set(out.draws.values()) == {3}
        assert [e["status"] for e in server.log()] == [400] + [200] * 4


def test_an_invalid_draw_is_recorded_and_counts_for_no_rating(tmp_path):
    def spoil_one_draw(kind, body):
        return "I would rather not say." if body.get("temperature") and body["seed"] % 10 == 1 else None

    with LLMTestServer(answer_fn=spoil_one_draw, logprobs=False) as server:
        out = run(_rate(gateway(server, tmp_path, rating_samples=4)))
        assert not out.failed and set(out.draws.values()) == {3}
        draws = [c for c in out.calls if c.prompt_name == "rating_draw"]
        assert sorted(c.status for c in draws) == ["invalid", "ok", "ok", "ok"]
        assert all(abs(sum(p) - 1) < 1e-9 for p in out.probs.values())
        assert server.stats()["requests"] == 5  # a draw is not repaired


@pytest.mark.parametrize(
    "body, content, prompt_tokens, cached, tokens",
    [
        (
            b'{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":1,'
            b'"prompt_tokens_details":{"cached_tokens":5}}}',
            "hi",
            7,
            5,
            None,
        ),
        (b'{"choices":[{"message":{"content":null}}]}', "", None, 0, None),  # no content, no usage
        (b'{"choices":[]}', "", None, 0, None),
        (b'{"error":{"message":"x"}}', "", None, 0, None),
        (b"<html>bad gateway</html>", "", None, 0, None),  # not JSON: an empty answer, repaired like any bad one
        (b"[1, 2]", "", None, 0, None),
        (
            b'{"choices":[{"message":{"content":"5"},"logprobs":{"content":[{"token":"5","logprob":0.0,'
            b'"top_logprobs":[]},"junk"]}}]}',
            "5",
            None,
            0,
            [{"token": "5", "logprob": 0.0, "top_logprobs": []}],
        ),
    ],
)
def test_an_answer_body_is_read_as_plain_data_whatever_it_holds(body, content, prompt_tokens, cached, tokens):
    from doppel.tasks.llm.schemas import read_completion

    answer = read_completion(body)
    assert (answer.content, answer.prompt_tokens, answer.cached_tokens, answer.tokens) == (
        content,
        prompt_tokens,
        cached,
        tokens,
    )
