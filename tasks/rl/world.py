"""What the RL env is made of: the simulated user's answers and what the env observes (tasks/rl/rewards.py builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from doppel.tasks.ensemble.config import EnsembleSettings


@dataclass
class UserItemLikes:
    """like[u, i]: does user u like item i; defined[u, i]: does the source say anything about the pair."""

    user_ids: list[str]
    item_ids: list[str]
    like: np.ndarray  # (n_users, n_items) bool
    defined: np.ndarray  # (n_users, n_items) bool
    source: str
    p_like: np.ndarray | None = None  # (n_users, n_items) float: a like is drawn per step (hybrid reward)


@dataclass
class World:
    """Everything an env needs, as arrays indexed by user code and item code."""

    likes: UserItemLikes
    item_features: np.ndarray  # (n_items, d) float32 in [-1, 1]
    history_items: list[np.ndarray]  # per user: train item codes in time order
    history_likes: list[np.ndarray]  # per user: bool, train rating >= threshold
    popularity: np.ndarray  # (n_items,) train ratings per item
    threshold: int


@dataclass
class EnsembleInputs:
    """What a finished `doppel ensemble` run stored, read back for one fold."""

    run_id: str
    dataset: str
    fold: str
    settings: EnsembleSettings  # its `run.db` pointed at the db read
    train: pd.DataFrame
    item_ids: list[str]
    keywords: pd.DataFrame
    embeddings: np.ndarray
    has_embedding: np.ndarray
