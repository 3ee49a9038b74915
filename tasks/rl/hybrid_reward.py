"""The calibrated hybrid as the RL env's simulated user: P(like) per (user, item), drawn per step.

The hybrid (tasks/fidelity: CF features, a calibrator fit on a slice of train) is fit on the
ensemble run's fold train split only, so an agent trained on it has never seen a held-out rating:
what the arena's sim-to-real protocol needs. P(like) = P(rating >= threshold) for a seeded sample
of train users x every catalogue item (943 x 1,682 pairs would cost ~5x the sample's 200 users).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np
import pandas as pd

from doppel.tasks.rl.world import EnsembleInputs, UserItemLikes
from doppel.tasks.store.db import query


def sample_users(train: pd.DataFrame, n_users: int, seed: int) -> list[str]:
    """A seeded sample of the train users (all of them when n_users is 0 or covers them), sorted."""
    users = np.array(sorted(train["user_id"].astype(str).unique()), dtype=object)
    if not n_users or n_users >= users.size:
        return users.tolist()
    picked = np.random.default_rng(seed).choice(users, size=n_users, replace=False)
    return sorted(picked.tolist())


def hybrid_p_like(
    train: pd.DataFrame, items: pd.DataFrame, users: list[str], item_ids: list[str], threshold: int, seed: int = 0
) -> np.ndarray:
    """(len(users), len(item_ids)) P(rating >= threshold) from the hybrid fit on `train` only."""
    from doppel.tasks.fidelity.hybrid import fold_features, predict_proba

    pairs = pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(users, dtype=object), len(item_ids)),
            "item_id": np.tile(np.asarray(item_ids, dtype=object), len(users)),
        }
    )
    ff = fold_features(train[["user_id", "item_id", "rating"]], pairs, items, seed=seed)
    proba = predict_proba(ff, seed=seed)
    return proba[:, threshold - 1 :].sum(axis=1).reshape(len(users), len(item_ids)).astype(np.float32)


def cached_hybrid_likes(
    inputs: EnsembleInputs, threshold: int, n_users: int = 200, seed: int = 0
) -> tuple[UserItemLikes, dict]:
    """The hybrid reward of an ensemble run's fold, from the cache file or computed (and cached)."""
    from doppel.tasks import fidelity
    from doppel.tasks.arena.config import cached, code_digest
    from doppel.tasks.fidelity import features, hybrid

    users = sample_users(inputs.train, n_users, seed)
    digest = hashlib.sha256(
        json.dumps({"users": users, "items": inputs.item_ids, "threshold": threshold, "seed": seed}).encode()
    )
    digest.update(
        pd.util.hash_pandas_object(inputs.train[["user_id", "item_id", "rating"]].astype(str), index=False)
        .to_numpy()
        .tobytes()
    )
    digest.update(code_digest(fidelity, features, hybrid, sys.modules[__name__]).encode())
    started = time.monotonic()

    def compute() -> np.ndarray:
        items = query(inputs.settings.run.db, "hybrid_items", dataset=inputs.dataset)
        return hybrid_p_like(inputs.train, items, users, inputs.item_ids, threshold, seed)

    folder = inputs.settings.run.work_dir() / "rl"
    p, hit = cached(folder, f"hybrid-{inputs.run_id}", digest.hexdigest()[:16], compute)
    seconds = 0.0 if hit else round(time.monotonic() - started, 2)
    return _likes(users, inputs.item_ids, p), {"cached": hit, "folder": str(folder), "seconds": seconds}


def _likes(users: list[str], item_ids: list[str], p: np.ndarray) -> UserItemLikes:
    """The hard view (P >= 0.5) for summaries; the env draws from `p_like`."""
    return UserItemLikes(list(users), list(item_ids), p >= 0.5, np.ones(p.shape, dtype=bool), "hybrid", p)
