"""Token counts with the model's real tokenizer agree with what llama.cpp itself counts."""

from __future__ import annotations

import httpx
import pytest

from doppel.tasks.llm.embedded import EmbeddedServer
from doppel.tasks.llm.templates import rating_variables, render
from doppel.tasks.llm.tokens import count_messages, count_text
from doppel.tasks.records import CandidateItem

pytestmark = [pytest.mark.slow]


def test_prompt_tokens_match_the_embedded_servers_count():
    items = [CandidateItem(str(i), f"Movie {i}", 1990 + i, "Drama|War", "A soldier comes home.", 3) for i in range(3)]
    messages = [
        {"role": "system", "content": render("system")},
        {
            "role": "user",
            "content": render(
                "rating",
                demographics="34, F",
                profile="Likes dramas.",
                recent=[],
                candidates=items,
                **rating_variables([c.item_id for c in items], "positions", constrained=True),
            ),
        },
    ]
    with EmbeddedServer.from_model() as server:
        body = {"model": server.model_name, "messages": messages, "max_tokens": 1, "temperature": 0}
        usage = httpx.post(server.base_url + "/chat/completions", json=body, timeout=600).json()["usage"]
        words = httpx.post(server.address + "/tokenize", json={"content": "Toy Story (1995)"}, timeout=60).json()
    assert count_messages(messages) == usage["prompt_tokens"]
    assert count_text("Toy Story (1995)") == len(words["tokens"])
