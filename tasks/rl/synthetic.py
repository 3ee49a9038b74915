"""A world for `doppel/Synthetic-v0` that needs no database and no LLM: built in memory in ~1 s.

The built-in synthetic dataset (tasks/data/synthetic.py) with, as the simulated user, the item-KNN
baseline (tasks/baselines.py: surprise KNNBaseline) trained on the fold's train split: like = its
rounded prediction >= the threshold, for every (train user, item) pair. Item features are the
principal components of each item's genre indicators. A quick, reproducible env for trying agents;
the LLM simulators' rewards come from a `doppel ensemble` or `doppel run` (`db=`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from doppel.tasks.baselines import predict_baselines
from doppel.tasks.data.synthetic import make_synthetic
from doppel.tasks.rl.rewards import UserItemLikes, World, build_world


def synthetic_world(
    users: int = 60,
    items: int = 120,
    seed: int = 0,
    fold: str = "u1",
    like_threshold: int = 4,
    feature_dim: int = 16,
) -> World:
    """The synthetic dataset's train users x its catalogue, judged by item-KNN trained on `fold`'s train split."""
    data = make_synthetic(n_users=users, n_items=items, seed=seed)
    if fold not in data.folds:
        raise ValueError(f"fold {fold!r} is not a fold of the synthetic dataset: choose from {data.folds}")
    keys = data.splits[(data.splits["fold"] == fold) & (data.splits["split"] == "train")][["user_id", "item_id"]]
    train = data.ratings.merge(keys, on=["user_id", "item_id"])
    user_ids = sorted(train["user_id"].unique(), key=int)
    item_ids = data.items["item_id"].tolist()
    grid = pd.DataFrame({"user_id": np.repeat(user_ids, len(item_ids)), "item_id": np.tile(item_ids, len(user_ids))})
    rated = predict_baselines(train, grid, names=["item_knn"], seed=seed)["item_knn"].to_numpy()
    like = (rated >= like_threshold).reshape(len(user_ids), len(item_ids))
    likes = UserItemLikes(user_ids, item_ids, like, np.ones_like(like), f"synthetic:item_knn:{fold}")
    genres = data.items["genres"].str.get_dummies(sep="|").to_numpy(np.float64)
    return build_world(train, likes, genres, np.ones(len(item_ids), bool), like_threshold, feature_dim)
