"""One agent's round: decide, then browse the recommender, chat, post or rest; reflect now and then.

Every decision is one schema-constrained JSON call through the spine's gateway (cache, limits, audit
records), validated with pydantic and repaired by re-asking with the problem quoted. A decision that
stays invalid is recorded as a failed action with its reason; the agent then does nothing more.
Calls of one agent share the system prompt and persona as a stable prefix (the embedded server's
prefix cache reuses it).
"""

from __future__ import annotations

import hashlib
from typing import Any

from doppel.tasks.llm.calls import CallRecord
from doppel.tasks.llm.gateway import LLMGateway
from doppel.tasks.llm.repair import ask_until_valid
from doppel.tasks.llm.templates import render
from doppel.tasks.sandbox import schemas as sc
from doppel.tasks.sandbox.config import SandboxSettings
from doppel.tasks.sandbox.recommender import Recommender
from doppel.tasks.sandbox.records import ItemCard, Outcome, Turn
from doppel.tasks.sandbox.schemas import M

OPTION_TEXT = {
    "recommender": "recommender (find a movie to watch now)",
    "chat": "chat (talk about movies with one friend)",
    "post": "post (share a thought with all your friends)",
    "nothing": "nothing (skip this round)",
}


class Asker:
    """Schema-constrained, validated, repaired calls for one agent's turn."""

    def __init__(self, gateway: LLMGateway, turn: Turn, out: Outcome, max_tokens: int, overview_chars: int):
        self.gateway, self.turn, self.out = gateway, turn, out
        self.max_tokens, self.overview_chars = max_tokens, overview_chars
        agent = turn.agent
        self.persona = render(
            "sandbox_persona", agent_id=agent.agent_id, demographics=agent.demographics, profile=agent.profile
        )
        self.last_key: str | None = None

    async def __call__(
        self,
        prompt: str,
        model: type[M],
        schema: dict,
        check=None,
        max_tokens: int | None = None,
        **variables: Any,
    ) -> tuple[M | None, str | None]:
        """(answer, None) or (None, why it failed after the repairs)."""
        content = render(prompt, overview_chars=self.overview_chars, persona=self.persona, **variables)
        messages = [{"role": "system", "content": render("sandbox_system")}, {"role": "user", "content": content}]
        max_tokens = max_tokens or self.max_tokens
        answer: M | None = None

        async def complete(name: str, messages: list[dict]) -> tuple[str, CallRecord]:
            return await self.gateway.complete_json(name, messages, prompt, schema, max_tokens=max_tokens)

        def valid(text: str, record: CallRecord) -> str | None:
            nonlocal answer
            answer, problem = sc.validate(model, text)
            if answer is not None and check is not None:
                problem = check(answer)
            if problem is None:
                self.last_key = record.call_key
            return problem

        def repair(problem: str) -> tuple[str, str]:
            return "sandbox_repair", render("sandbox_repair", error=problem[:400])

        attempts = self.gateway.settings.repair_attempts + 1
        error = await ask_until_valid(complete, prompt, messages, valid, repair, attempts, self.out.calls, 400)
        return (answer, None) if error is None else (None, error)


def options_for(turn: Turn, seed: int = 0) -> list[str]:
    """The actions open to the agent, in an order shuffled per (agent, round): small models favour a position."""
    options = ["recommender", "chat", "post", "nothing"] if turn.friends else ["recommender", "nothing"]
    digest = hashlib.sha256(f"{seed}|{turn.agent.agent_id}|{turn.round}".encode()).digest()
    return [o for _, o in sorted(zip(digest, options))]


async def play_turn(
    turn: Turn, gateway: LLMGateway, rec: Recommender, catalogue: dict[str, ItemCard], cfg: SandboxSettings
) -> Outcome:
    """The agent's round; returns the rows to write."""
    out = Outcome(agent_id=turn.agent.agent_id, round=turn.round)
    ask = Asker(gateway, turn, out, cfg.max_tokens, cfg.overview_chars)
    if not turn.active:
        out.act("nothing", "inactive this round")
    else:
        options = options_for(turn, cfg.seed)
        friends = list(turn.friends)

        def check(d: sc.Decision) -> str | None:
            if d.action not in options:
                return f"action must be one of {options}"
            if d.action == "chat" and d.friend not in friends:
                return f"friend must be one of {friends} for a chat"
            return None

        decision, error = await ask(
            "sandbox_decide",
            sc.Decision,
            sc.decision_schema(options, friends),
            check,
            max_tokens=24,
            memories=turn.memories,
            inbox=turn.inbox,
            round=turn.round,
            friends=turn.friends,
            options="; ".join(OPTION_TEXT[o] for o in options),
        )
        if decision is None:
            out.act("decide", status="failed", error=error)
        elif decision.action == "recommender":
            out.act("recommender", "entered the recommender", call_key=ask.last_key)
            await browse(ask, turn, rec, catalogue, cfg, out)
        elif decision.action == "chat":
            await chat(ask, turn, decision.friend, cfg, out)
        elif decision.action == "post":
            await post(ask, turn, out)
        else:
            out.act("nothing", "chose to rest", call_key=ask.last_key)
    if turn.reflect_on:
        await reflect(ask, turn, out)
    return out


async def browse(
    ask: Asker, turn: Turn, rec: Recommender, catalogue: dict[str, ItemCard], cfg: SandboxSettings, out: Outcome
) -> None:
    """Pages of recommendations (or search results) until the agent watches, leaves or runs out of steps."""
    agent, page, query, seen = turn.agent, 1, "", set(turn.watched)
    for step in range(cfg.max_steps):
        ids = rec.page(agent.user_id, seen, page, cfg.page_size, query=query, salt=f"{turn.round}:{step}")
        out.pages.append({"step": step, "page": page, "query": query or None, "recommender": rec.kind, "item_ids": ids})
        if not ids:
            out.act("leave", f"nothing to show for {query!r}" if query else "no more recommendations")
            return
        items = [catalogue[i] for i in ids]

        def check(b: sc.Browse) -> str | None:  # uses this step's ids (B023): ask() awaits it in this step
            if b.choice == "watch" and not (b.watch and set(b.watch) <= set(ids)):  # noqa: B023
                return f'to watch, list one or more of the shown ids {ids} in "watch"'  # noqa: B023
            if b.choice == "search" and not b.query.strip():
                return 'to search, put a keyword in "query"'
            return None

        answer, error = await ask(
            "sandbox_browse",
            sc.Browse,
            sc.browse_schema(ids, cfg.max_watch),
            check,
            max_tokens=48,
            memories=turn.memories[:2],
            items=items,
            page=page,
            query=query,
            show_overview=cfg.overview_chars > 0,
        )
        if answer is None:
            out.act("browse", f"page {page}", status="failed", error=error)
            return
        if answer.choice == "watch":
            chosen = list(dict.fromkeys(answer.watch))[: cfg.max_watch]
            out.act("watch", ", ".join(f"{catalogue[i].title} [{i}]" for i in chosen), call_key=ask.last_key)
            await watch(ask, turn, [catalogue[i] for i in chosen], out)
            return
        if answer.choice == "leave":
            out.act("leave", f"left the recommender on page {page}", call_key=ask.last_key)
            return
        if answer.choice == "next":
            out.act("next_page", f"page {page + 1}", call_key=ask.last_key)
            page += 1
        else:
            query = " ".join(answer.query.split())[:24]
            out.act("search", query, call_key=ask.last_key)
            page = 1
    out.act("leave", f"left after {cfg.max_steps} steps")


async def watch(ask: Asker, turn: Turn, items: list[ItemCard], out: Outcome) -> None:
    ids = [i.item_id for i in items]

    def check(r: sc.Reviews) -> str | None:
        got = [x.item_id for x in r.reviews]
        return None if got == ids else f"give exactly one review per watched id, in order: {ids}"

    answer, error = await ask(
        "sandbox_watch", sc.Reviews, sc.reviews_schema(ids), check, max_tokens=24 + 40 * len(ids), items=items
    )
    if answer is None:
        out.act("rate", ", ".join(ids), status="failed", error=error)
        return
    for review, item in zip(answer.reviews, items):
        out.ratings.append(
            {
                "item_id": item.item_id,
                "rating": review.rating,
                "feeling": review.feeling.strip(),
                "call_key": ask.last_key,
            }
        )
        out.remember(
            turn.agent.agent_id,
            "watch",
            f"Round {turn.round}: watched {item.title} and gave it {review.rating} stars: {review.feeling.strip()}",
            answer.importance,
        )
    out.act("rate", "; ".join(f"{i.title}: {r.rating}/5" for r, i in zip(answer.reviews, items)), call_key=ask.last_key)


async def chat(ask: Asker, turn: Turn, friend_id: str, cfg: SandboxSettings, out: Outcome) -> None:
    me = turn.agent.agent_id
    speakers = [me if k % 2 == 0 else friend_id for k in range(cfg.chat_turns)]
    answer, error = await ask(
        "sandbox_chat",
        sc.Chat,
        sc.chat_schema(speakers),
        None,
        max_tokens=24 + 36 * cfg.chat_turns,
        memories=turn.memories[:2],
        friend_id=friend_id,
        friend=turn.friends[friend_id],
        turns=cfg.chat_turns,
        agent_id=me,
    )
    if answer is None:
        out.act("chat", f"with {friend_id}", status="failed", error=error)
        return
    chat_id = hashlib.sha1(f"{turn.round}|{me}|{friend_id}".encode()).hexdigest()[:12]
    lines = [(speakers[k], line.text.strip()) for k, line in enumerate(answer.dialogue[: len(speakers)])]
    for k, (speaker, text) in enumerate(lines):
        out.messages.append(
            {
                "chat_id": chat_id,
                "turn": k,
                "speaker_id": speaker,
                "listener_id": friend_id if speaker == me else me,
                "text": text,
            }
        )
    summary = " / ".join(f"{s}: {t}" for s, t in lines)
    out.remember(me, "chat", f"Round {turn.round}: chatted with {friend_id}: {summary}", answer.importance)
    out.remember(friend_id, "chat", f"Round {turn.round}: {me} chatted with me: {summary}", answer.importance)
    out.act("chat", f"with {friend_id}: {lines[0][1]}", call_key=ask.last_key)


async def post(ask: Asker, turn: Turn, out: Outcome) -> None:
    answer, error = await ask(
        "sandbox_post", sc.Post, sc.post_schema(), None, max_tokens=56, memories=turn.memories[:2]
    )
    if answer is None:
        out.act("post", status="failed", error=error)
        return
    text = " ".join(answer.post.split())
    post_id = hashlib.sha1(f"{turn.round}|{turn.agent.agent_id}".encode()).hexdigest()[:12]
    out.posts.append({"post_id": post_id, "text": text})
    out.remember(turn.agent.agent_id, "post", f"Round {turn.round}: I posted: {text}", 3)
    out.act("post", text, call_key=ask.last_key)


async def reflect(ask: Asker, turn: Turn, out: Outcome) -> None:
    answer, error = await ask(
        "sandbox_reflect", sc.Reflection, sc.reflection_schema(), None, max_tokens=72, memories=turn.reflect_on
    )
    if answer is None:
        out.act("reflect", status="failed", error=error)
        return
    for insight in answer.insights[:2]:
        out.remember(turn.agent.agent_id, "reflection", f"Round {turn.round} insight: {insight}", 7)
    out.act("reflect", " | ".join(answer.insights[:2]), call_key=ask.last_key)
