"""Memory streams: retrieval by relevance (sentence embeddings), recency and importance; reflection input.

Time is the round number, so a rerun retrieves exactly the same memories (and the prompts hit the cache).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from doppel.tasks.sandbox.config import MemorySettings
from doppel.tasks.sandbox.records import Agent

POST_READ_IMPORTANCE = 3


def scores(
    embeddings: np.ndarray, rounds: np.ndarray, importance: np.ndarray, query: np.ndarray, now: int, cfg: MemorySettings
) -> np.ndarray:
    """Retrieval score per memory (shape (n,)): w_rel * cos + w_rec * decay**age + w_imp * importance / 10.

    embeddings: (n, d) unit rows; query: (d,) unit vector; rounds, importance: (n,).
    """
    if len(rounds) == 0:
        return np.zeros(0)
    relevance = embeddings @ query if embeddings.size and query.size else np.zeros(len(rounds))
    recency = cfg.decay ** np.maximum(0, now - rounds)
    return cfg.w_relevance * relevance + cfg.w_recency * recency + cfg.w_importance * importance / 10.0


def retrieve(memories: pd.DataFrame, query: np.ndarray, now: int, cfg: MemorySettings) -> list[str]:
    """The k best memories' texts, best first (memories: text, round, importance, embedding; one agent's)."""
    if memories.empty or cfg.k == 0:
        return []
    matrix = np.stack([np.asarray(e, dtype=np.float32) for e in memories["embedding"]])
    score = scores(matrix, memories["round"].to_numpy(), memories["importance"].to_numpy(dtype=float), query, now, cfg)
    order = np.lexsort((memories["seq"].to_numpy(), -score))[: cfg.k]
    return memories["text"].to_numpy()[order].tolist()


def reflection_input(memories: pd.DataFrame, now: int, cfg: MemorySettings) -> list[str]:
    """What a reflection in round `now` summarises: the most important memories since the last reflection."""
    if cfg.reflect_every <= 0 or now % cfg.reflect_every != 0 or memories.empty:
        return []
    last = memories.loc[memories["kind"] == "reflection", "round"]
    since = last.max() if len(last) else -1
    recent = memories[(memories["round"] > since) & (memories["kind"] != "reflection")]
    if recent.empty:
        return []
    recent = recent.sort_values(["importance", "round", "seq"], ascending=[False, False, True])
    return recent["text"].head(cfg.reflect_on).tolist()


def history_memories(history: pd.DataFrame) -> list[dict]:
    """Round-0 memories from an agent's real ratings (history: title, rating; oldest first)."""
    return [
        {
            "kind": "history",
            "text": f"Before: watched {r.title} and gave it {int(r.rating)} stars",
            "importance": 2 + 2 * abs(int(r.rating) - 3),
        }
        for r in history.itertuples(index=False)
    ]


def post_read_memories(agents: list[Agent], posts: pd.DataFrame, round_no: int, encode) -> pd.DataFrame:
    """Each post of the last round becomes a memory of every friend of its author (read this round)."""
    friends = {a.agent_id: a.friends for a in agents}
    rows = [
        {
            "agent_id": reader,
            "kind": "post_read",
            "text": f"Round {round_no - 1}: {p.agent_id} posted: {p.text}",
            "importance": POST_READ_IMPORTANCE,
        }
        for p in posts.itertuples(index=False)
        for reader in friends.get(p.agent_id, ())
    ]
    frame = pd.DataFrame(rows, columns=["agent_id", "kind", "text", "importance"])
    frame["k"] = np.arange(len(frame))
    frame["embedding"] = [v.tolist() for v in encode(frame["text"].tolist())] if len(frame) else []
    return frame
