"""What a fitted recommender hands the judges: scores of held-out items and top-k catalogue lists.

Ties (and NaN scores: pairs a model cannot score, ranked last) are broken by a fixed hash of the
pair, the same for every recommender, so no entrant gains from the input order.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from doppel.tasks.arena.zoo import Entrant, build, pair_hash

TIE_SEED = 7919  # the tie-break hash's seed (not the random entrant's)


def rank_by_score(users: np.ndarray, items: np.ndarray, score: np.ndarray) -> np.ndarray:
    """1-based rank of each (user, item) row within its user (1 = recommended first)."""
    s = np.where(np.isnan(score), -np.inf, np.asarray(score, dtype=float))
    codes = pd.factorize(np.asarray(users, dtype=object))[0]
    order = np.lexsort((pair_hash(users, items, TIE_SEED), -s, codes))
    sorted_codes = codes[order]
    pos = np.arange(order.size)
    starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]] if order.size else np.zeros(0, bool)
    ranks = np.empty(order.size, dtype=np.int64)
    ranks[order] = pos - np.maximum.accumulate(np.where(starts, pos, 0)) + 1
    return ranks


def catalogue_candidates(train: pd.DataFrame, users: list[str]) -> pd.DataFrame:
    """user_id, item_id: every item with a train rating that the user has not rated in train."""
    items = np.sort(train["item_id"].astype(str).unique())
    user_ids = np.asarray(users, dtype=str)
    item_code = pd.Series(np.arange(items.size), index=items)
    user_code = pd.Series(np.arange(user_ids.size), index=user_ids)
    rated = np.zeros((user_ids.size, items.size), dtype=bool)
    t = train[train["user_id"].astype(str).isin(set(user_ids))]
    rated[user_code[t["user_id"].astype(str)].to_numpy(), item_code[t["item_id"].astype(str)].to_numpy()] = True
    u, i = np.nonzero(~rated)
    return pd.DataFrame({"user_id": user_ids[u], "item_id": items[i]})


def recommend(
    entrant: Entrant, train: pd.DataFrame, observed: pd.DataFrame, users: list[str], k: int = 10, seed: int = 0
) -> dict[str, Any]:
    """Fit `entrant` on `train` (only), rank each user's `observed` items and its unrated catalogue.

    Returns {"observed": user_id, item_id, score, rank; "catalogue": user_id, item_id, score,
    rank <= k; "fit_s", "score_s"}. `observed` is user_id, item_id (no ratings needed).
    """
    rec = build(entrant, seed)
    t = time.monotonic()
    rec.fit(train.astype({"user_id": str, "item_id": str}).reset_index(drop=True))
    fit_s = time.monotonic() - t
    t = time.monotonic()
    frames = {}
    for name, pairs in (("observed", observed), ("catalogue", catalogue_candidates(train, users))):
        pairs = pairs[["user_id", "item_id"]].astype(str).reset_index(drop=True)
        u, i = pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy()
        pairs["score"] = _checked(rec.score(u, i), len(pairs), entrant)
        pairs["rank"] = rank_by_score(u, i, pairs["score"].to_numpy())
        frames[name] = pairs
    top = frames["catalogue"]
    top = top[top["rank"] <= k].sort_values(["user_id", "rank"]).reset_index(drop=True)
    return {"observed": frames["observed"], "catalogue": top, "fit_s": fit_s, "score_s": time.monotonic() - t}


def _checked(score: Any, n: int, entrant: Entrant) -> np.ndarray:
    s = np.asarray(score, dtype=float).reshape(-1)
    if s.size != n:
        raise ValueError(f"recommender {entrant.name!r}: score() returned {s.size} values for {n} pairs")
    if np.isinf(s).any():
        raise ValueError(f"recommender {entrant.name!r}: score() returned infinite values (use NaN for 'cannot score')")
    return s
