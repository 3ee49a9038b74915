"""Record types of the sandbox: agents, one agent's round of work, and what it returns for the flow to write."""

from __future__ import annotations

from dataclasses import dataclass, field

from doppel.tasks.llm.calls import CallRecord
from doppel.tasks.records import Packed


@dataclass(frozen=True)
class Agent:
    """A dataset user turned agent (its profile is Phase 1's, or built when the sandbox starts)."""

    agent_id: str
    user_id: str
    demographics: str
    profile: str
    activity: float
    friends: tuple[str, ...] = ()


@dataclass(frozen=True)
class ItemCard:
    """What a page shows of one item."""

    item_id: str
    title: str
    year: int | None
    genres: str
    text: str = ""


@dataclass
class Turn:
    """Everything one agent needs for one round (no database access on workers)."""

    agent: Agent
    round: int
    active: bool
    memories: list[str]  # retrieved: relevance x recency x importance, best first
    inbox: list[str]  # posts of friends from the previous round, "A03: text"
    friends: dict[str, str]  # friend id -> one-line description
    watched: frozenset[str]  # items this agent watched before (never shown again)
    reflect_on: list[str] = field(default_factory=list)  # memories to summarise (empty: no reflection)


@dataclass
class Outcome:
    """One agent's round: rows for the sandbox tables plus the calls, written by the flow in one transaction."""

    agent_id: str
    round: int
    actions: list[dict] = field(default_factory=list)  # step, action, detail, status, error, call_key
    pages: list[dict] = field(default_factory=list)  # step, page, query, item_ids
    ratings: list[dict] = field(default_factory=list)  # item_id, rating, feeling, call_key
    messages: list[dict] = field(default_factory=list)  # chat_id, turn, speaker_id, listener_id, text
    posts: list[dict] = field(default_factory=list)  # post_id, text
    memories: list[dict] = field(default_factory=list)  # agent_id (owner), kind, text, importance
    calls: list[CallRecord] = field(default_factory=list)
    wall_s: float = 0.0

    def act(
        self, action: str, detail: str = "", status: str = "ok", error: str | None = None, call_key: str | None = None
    ) -> None:
        self.actions.append(
            {
                "step": len(self.actions),
                "action": action,
                "detail": detail[:300],
                "status": status,
                "error": error,
                "call_key": call_key,
            }
        )

    def remember(self, owner: str, kind: str, text: str, importance: int) -> None:
        self.memories.append(
            {"agent_id": owner, "kind": kind, "text": text[:400], "importance": int(min(10, max(1, importance)))}
        )

    @property
    def n_failed(self) -> int:
        return sum(a["status"] == "failed" for a in self.actions)


class PackedTurns(Packed):
    """A chunk of agent turns for one sandbox task."""
