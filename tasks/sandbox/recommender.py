"""Pluggable recommenders for the sandbox: random, most-popular, and matrix factorisation (Surprise SVD).

Each builds one score row per agent over the catalogue; pages and keyword search rank by it and never
show what the agent already watched. MF trains on the fold's real train ratings plus, when retraining
between rounds, the ratings the agents gave in the sandbox so far.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("random", "popular", "mf")


@dataclass
class Recommender:
    """Scores (agents x items); higher first. `texts` are lowercase title + genres for keyword search."""

    kind: str
    item_ids: np.ndarray
    texts: np.ndarray
    scores: dict[str, np.ndarray]
    seed: int = 0
    info: dict | None = None

    def ranked(self, user_id: str, exclude: set[str], query: str = "", salt: str = "") -> list[str]:
        score = self.scores[user_id]
        if self.kind == "random":  # a fresh shuffle per visit and step, reproducible
            digest = hashlib.sha256(f"{self.seed}|{user_id}|{salt}".encode()).digest()
            score = np.random.default_rng(int.from_bytes(digest[:8], "little")).random(len(self.item_ids))
        keep = np.array([i not in exclude for i in self.item_ids], dtype=bool)
        if query:
            words = [w for w in query.lower().split() if w]
            keep &= np.array([all(w in t for w in words) for t in self.texts], dtype=bool)
        order = np.lexsort((self.item_ids, -score))  # ties by id: stable across runs
        return [str(self.item_ids[k]) for k in order if keep[k]]

    def page(self, user_id: str, exclude: set[str], page: int, size: int, query: str = "", salt: str = "") -> list[str]:
        ranked = self.ranked(user_id, exclude, query, salt)
        return ranked[(page - 1) * size : page * size]


def _texts(items: pd.DataFrame) -> np.ndarray:
    return (items["title"].astype(str) + " " + items["genres"].astype(str).str.replace("|", " ")).str.lower().to_numpy()


def build_recommender(
    kind: str,
    items: pd.DataFrame,
    train: pd.DataFrame,
    sandbox: pd.DataFrame,
    user_ids: list[str],
    seed: int = 0,
    retrain: bool = True,
    factors: int = 32,
    epochs: int = 25,
) -> Recommender:
    """items: item_id, title, genres; train / sandbox: user_id, item_id, rating (sandbox: the agents' own)."""
    item_ids = items["item_id"].astype(str).to_numpy()
    texts = _texts(items)
    if kind not in KINDS:
        raise ValueError(f"unknown recommender {kind!r}; choose one of {KINDS}")
    if kind == "random":
        zero = np.zeros(len(item_ids))
        return Recommender(kind, item_ids, texts, {u: zero for u in user_ids}, seed, {"trained_on": 0})
    data = pd.concat(
        [train[["user_id", "item_id", "rating"]], sandbox[["user_id", "item_id", "rating"]]]
        if retrain and not sandbox.empty
        else [train[["user_id", "item_id", "rating"]]],
        ignore_index=True,
    )
    data = data.drop_duplicates(["user_id", "item_id"], keep="last")  # a sandbox rating replaces the real one
    if kind == "popular":
        counts = data.groupby("item_id").size().reindex(item_ids, fill_value=0).to_numpy(dtype=float)
        return Recommender(kind, item_ids, texts, {u: counts for u in user_ids}, seed, {"trained_on": len(data)})
    return _mf(item_ids, texts, data, user_ids, seed, factors, epochs)


def _mf(
    item_ids: np.ndarray,
    texts: np.ndarray,
    data: pd.DataFrame,
    user_ids: list[str],
    seed: int,
    factors: int,
    epochs: int,
) -> Recommender:
    from surprise import SVD, Dataset, Reader

    frame = data.astype({"user_id": str, "item_id": str})
    trainset = Dataset.load_from_df(
        frame[["user_id", "item_id", "rating"]], Reader(rating_scale=(1, 5))
    ).build_full_trainset()
    algo = SVD(n_factors=factors, n_epochs=epochs, random_state=seed)
    algo.fit(trainset)
    inner = {trainset.to_raw_iid(k): k for k in trainset.all_items()}
    rows = np.array([inner.get(i, -1) for i in item_ids])
    known = rows >= 0
    qi = np.zeros((len(item_ids), factors))
    bi = np.zeros(len(item_ids))
    qi[known], bi[known] = algo.qi[rows[known]], algo.bi[rows[known]]
    scores = {}
    for user in user_ids:
        base = trainset.global_mean + bi
        if trainset.knows_user(inner_uid := _inner_user(trainset, user)):
            base = base + algo.bu[inner_uid] + qi @ algo.pu[inner_uid]
        scores[user] = np.where(known, base, -np.inf)  # items nobody rated come last
    return Recommender("mf", item_ids, texts, scores, seed, {"trained_on": len(frame), "factors": factors})


def _inner_user(trainset, user: str) -> int:
    try:
        return trainset.to_inner_uid(user)
    except ValueError:
        return -1
