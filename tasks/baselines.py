"""Collaborative-filtering baselines scored in the same harness and on the same rows as simulators.

Every baseline is trained on the train split only and predicts every requested test pair:
- global_mean: mean train rating.
- user_mean / item_mean: the user's / item's mean train rating, else the global mean.
- item_knn: surprise KNNBaseline(k=40, item-based, pearson_baseline similarity).
- svd: surprise SVD(random_state=seed).
Unknown users or items never drop a row: the means fall back to the global mean and surprise
falls back to its baseline / global mean. Each baseline gives `<name>_raw` (float) and `<name>`
(integer 1..5, `round_rating`: round half up, then clip to 1..5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from doppel.tasks.metrics import round_rating

BASELINES: tuple[str, ...] = ("global_mean", "user_mean", "item_mean", "item_knn", "svd")
KNN_K = 40


def _check(frame: pd.DataFrame, cols: Sequence[str], name: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise KeyError(f"{name}: missing columns {missing}")


def _mean_by(train: pd.DataFrame, test: pd.DataFrame, key: str, fallback: float) -> np.ndarray:
    """Per-`key` mean train rating looked up for each test row, else `fallback`."""
    means = train.groupby(key, sort=False)["rating"].mean()
    return test[key].map(means).astype(float).fillna(fallback).to_numpy()


def _surprise_algo(name: str, seed: int) -> Any:
    from surprise import SVD, KNNBaseline  # lazy: only needed for these two baselines

    if name == "item_knn":
        return KNNBaseline(k=KNN_K, sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False)
    if name == "svd":
        return SVD(random_state=seed)
    raise ValueError(f"not a surprise baseline: {name}")


def _surprise_predict(train: pd.DataFrame, test: pd.DataFrame, name: str, seed: int) -> np.ndarray:
    """Fit a surprise model on `train` and predict every (user_id, item_id) row of `test`."""
    from surprise import Dataset, Reader

    frame = train[["user_id", "item_id", "rating"]].astype({"rating": float})
    data = Dataset.load_from_df(frame, Reader(rating_scale=(1, 5)))
    algo = _surprise_algo(name, seed)
    algo.fit(data.build_full_trainset())
    # surprise.predict never raises for unknown ids: it returns its baseline / the global mean
    return np.fromiter(
        (algo.predict(u, i).est for u, i in zip(test["user_id"], test["item_id"])),
        dtype=float,
        count=len(test),
    )


def predict_baselines(
    train: pd.DataFrame,
    test: pd.DataFrame,
    names: Sequence[str] = BASELINES,
    seed: int = 0,
) -> pd.DataFrame:
    """Predict `test` pairs with each named baseline trained on `train` only.

    train: user_id, item_id, rating (1..5). test: user_id, item_id (extra columns ignored).
    Returns one row per test row, same order (index reset): user_id, item_id, then
    `<name>_raw` (float) and `<name>` (int64 1..5) for each name in `names`.
    """
    _check(train, ["user_id", "item_id", "rating"], "train")
    _check(test, ["user_id", "item_id"], "test")
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
    if train.empty:
        raise ValueError("train is empty: baselines need at least one rating")
    if train["rating"].isna().any():
        raise ValueError("train has missing ratings")
    # ids are strings everywhere (tasks/records.py); make lookups type-consistent
    train = train[["user_id", "item_id", "rating"]].astype({"user_id": str, "item_id": str, "rating": float})
    out = test[["user_id", "item_id"]].reset_index(drop=True)
    out = out.astype({"user_id": str, "item_id": str})
    mu = float(train["rating"].mean())

    predictors: dict[str, Callable[[], np.ndarray]] = {
        "global_mean": lambda: np.full(len(out), mu),
        "user_mean": lambda: _mean_by(train, out, "user_id", mu),
        "item_mean": lambda: _mean_by(train, out, "item_id", mu),
        "item_knn": lambda: _surprise_predict(train, out, "item_knn", seed),
        "svd": lambda: _surprise_predict(train, out, "svd", seed),
    }
    for name in names:
        raw = predictors[name]() if len(out) else np.empty(0, dtype=float)
        out[f"{name}_raw"] = raw.astype(float)
        out[name] = round_rating(raw)
    return out


def baseline_long(pred: pd.DataFrame, truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """Wide `predict_baselines` output -> long rows (user_id, item_id, simulator, raw, rating).

    `simulator` is the baseline name; if `truth` (user_id, item_id, rating) is given, a `truth`
    column is joined on (user_id, item_id), ready for `metrics.metrics_table`.
    """
    names = [c for c in pred.columns if c in BASELINES]
    parts = [
        pred[["user_id", "item_id"]].assign(simulator=n, raw=pred[f"{n}_raw"].to_numpy(), rating=pred[n].to_numpy())
        for n in names
    ]
    cols = ["user_id", "item_id", "simulator", "raw", "rating"]
    long = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    if truth is not None:
        t = truth[["user_id", "item_id", "rating"]].rename(columns={"rating": "truth"})
        t = t.astype({"user_id": str, "item_id": str})
        long = long.merge(t, on=["user_id", "item_id"], how="left", validate="many_to_one")
    return long
