"""Features of (user, item) pairs for the calibrator, computed from one set of "fit" ratings.

Stacking: the calibrator learns on a slice held out of each user's train ratings, with features
from models fit on train minus that slice; test pairs get features from models fit on the full train
split (or on the same train-minus-slice models: `refit=False` in hybrid.py). No function here sees a
test rating: `pair_features` takes the fit ratings and the pairs' ids only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

SCALE = np.arange(1, 6)
CF_MODELS: tuple[str, ...] = ("knn_item", "knn_user", "svd", "svd_wide", "svdpp")
SLICE_HOWS = ("random", "latest", "hash")
GENRE_SHRINK = 5.0  # pseudo-count pulling a user's genre residual towards 0


def calibration_slice(
    train: pd.DataFrame, frac: float = 0.2, how: str = "random", seed: int = 0, min_keep: int = 5
) -> np.ndarray:
    """Boolean mask over `train` rows: the calibration slice (True) held out of each user's ratings.

    how="random": a seeded random `frac` of each user's ratings; how="latest": each user's latest
    `frac` by ts (needs a ts column); how="hash": ordered by md5("<seed>:<user_id>:<item_id>"), the
    slice that `doppel run --target slice` rates (sql/schema.sql, fold_parts): the same for any row
    order or subset of users. A user keeps at least `min_keep` ratings outside the slice.
    """
    if how not in SLICE_HOWS:
        raise ValueError(f"slice must be one of {SLICE_HOWS}, got {how!r}")
    if how == "latest" and "ts" not in train.columns:
        raise KeyError("slice='latest' needs a ts column in train")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user_id": train["user_id"].to_numpy(), "pos": np.arange(len(train))})
    if how == "hash":
        frame["key"] = [
            hashlib.md5(f"{seed}:{u}:{i}".encode()).hexdigest()
            for u, i in zip(train["user_id"].astype(str), train["item_id"].astype(str))
        ]
    else:
        frame["key"] = train["ts"].to_numpy() if how == "latest" else rng.random(len(train))
    frame["tie"] = rng.random(len(train)) if how == "latest" else 0.0
    frame = frame.sort_values(["user_id", "key", "tie"], kind="stable")
    rank = frame.groupby("user_id", sort=False).cumcount().to_numpy()
    size = frame.groupby("user_id", sort=False)["pos"].transform("size").to_numpy()
    n_slice = np.minimum(np.floor(size * frac + 0.5), np.maximum(size - min_keep, 0))
    # the slice is the last n_slice rows of each user in this order (latest by time, or random)
    mask = np.zeros(len(train), dtype=bool)
    mask[frame["pos"].to_numpy()[rank >= size - n_slice]] = True
    return mask


def slice_parts(train: pd.DataFrame, n_parts: int, seed: int = 0) -> np.ndarray:
    """Part 0..n_parts-1 per `train` row: each user's ratings shuffled (seeded) and dealt round-robin.

    For stacking over all of train: part k is predicted by models fit on the other parts.
    """
    if n_parts < 2:
        raise ValueError("n_parts must be >= 2")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user_id": train["user_id"].to_numpy(), "key": rng.random(len(train))})
    order = frame.sort_values(["user_id", "key"], kind="stable").index.to_numpy()
    rank = frame.loc[order].groupby("user_id", sort=False).cumcount().to_numpy()
    parts = np.empty(len(train), dtype=np.int64)
    parts[order] = rank % n_parts
    return parts


def _surprise(name: str, seed: int) -> Any:
    from surprise import SVD, KNNBaseline, SVDpp

    if name == "knn_item":
        return KNNBaseline(k=40, sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False)
    if name == "knn_user":
        return KNNBaseline(k=40, sim_options={"name": "pearson_baseline", "user_based": True}, verbose=False)
    if name == "svd":
        return SVD(random_state=seed)
    if name == "svd_wide":  # more factors and epochs, stronger regularisation: errors unlike svd's
        return SVD(n_factors=100, n_epochs=40, lr_all=0.005, reg_all=0.08, random_state=seed)
    if name == "svdpp":
        return SVDpp(random_state=seed, cache_ratings=True)
    raise ValueError(f"unknown CF model {name!r}")


def cf_predictions(
    fit: pd.DataFrame, pairs: pd.DataFrame, models: Sequence[str] = CF_MODELS, seed: int = 0
) -> pd.DataFrame:
    """Each surprise model fit on `fit` predicts every pair; plus the baseline terms bu, bi, mu.

    Returns columns cf_<model> (float, clipped to 1..5 by surprise), bu, bi (the baseline
    estimates of KNNBaseline: 0 for an unknown user / item) and mu (the fit mean).
    """
    from surprise import Dataset, Reader

    data = Dataset.load_from_df(
        fit[["user_id", "item_id", "rating"]].astype({"rating": float}), Reader(rating_scale=(1, 5))
    )
    trainset = data.build_full_trainset()
    users, items = pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy()
    out = pd.DataFrame(index=pairs.index)
    for name in models:
        algo = _surprise(name, seed)
        algo.fit(trainset)
        out[f"cf_{name}"] = np.fromiter(
            (algo.predict(u, i).est for u, i in zip(users, items)), dtype=float, count=len(pairs)
        )
        if name == "knn_item":
            bu, bi = algo.compute_baselines()
            uid, iid = trainset._raw2inner_id_users, trainset._raw2inner_id_items
            out["bu"] = [bu[uid[u]] if u in uid else 0.0 for u in users]
            out["bi"] = [bi[iid[i]] if i in iid else 0.0 for i in items]
    out["mu"] = trainset.global_mean
    return out


def _side_stats(fit: pd.DataFrame, key: str, prefix: str) -> pd.DataFrame:
    """Per user / item: count, mean, std and the 5-bin rating histogram of the fit ratings."""
    g = fit.groupby(key)["rating"]
    stats = pd.DataFrame({f"{prefix}_n": g.size(), f"{prefix}_mean": g.mean(), f"{prefix}_std": g.std(ddof=0)})
    hist = pd.crosstab(fit[key], fit["rating"]).reindex(columns=SCALE, fill_value=0)
    hist = hist.div(hist.sum(axis=1), axis=0)
    hist.columns = [f"{prefix}_p{r}" for r in SCALE]
    return stats.join(hist)


def genre_affinity(fit: pd.DataFrame, pairs: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """User's shrunken mean residual (rating - user mean) over the pair item's genres, from `fit`."""
    genres = items[["item_id", "genres"]].assign(genre=items["genres"].fillna("").str.split("|"))
    genres = genres.explode("genre")
    genres = genres[genres["genre"].astype(str) != ""][["item_id", "genre"]]
    f = fit[["user_id", "item_id", "rating"]].copy()
    f["res"] = f["rating"] - f.groupby("user_id")["rating"].transform("mean")
    ug = f.merge(genres, on="item_id").groupby(["user_id", "genre"])["res"].agg(["sum", "size"]).reset_index()
    p = pairs[["user_id", "item_id"]].reset_index(drop=True).reset_index(names="row")
    pg = p.merge(genres, on="item_id").merge(ug, on=["user_id", "genre"], how="left").fillna({"sum": 0, "size": 0})
    agg = pg.groupby("row")[["sum", "size"]].sum()
    aff = (agg["sum"] / (agg["size"] + GENRE_SHRINK)).reindex(range(len(p)), fill_value=0.0)
    return aff.to_numpy(dtype=float)


def pair_features(
    fit: pd.DataFrame, pairs: pd.DataFrame, items: pd.DataFrame, models: Sequence[str] = CF_MODELS, seed: int = 0
) -> pd.DataFrame:
    """Feature table for `pairs` (user_id, item_id) from the `fit` ratings only; same row order.

    Columns: cf_* (models), bu, bi, mu, user_{n,mean,std,p1..p5}, item_{n,mean,std,p1..p5},
    genre_aff. Unknown users / items get count 0 and the fit's global values.
    """
    fit = fit[["user_id", "item_id", "rating"]].astype({"user_id": str, "item_id": str, "rating": float})
    pairs = pairs[["user_id", "item_id"]].astype(str).reset_index(drop=True)
    out = cf_predictions(fit, pairs, models, seed)
    mu = float(fit["rating"].mean())
    glob = np.bincount(fit["rating"].astype(int) - 1, minlength=5) / len(fit)
    for key, prefix in (("user_id", "user"), ("item_id", "item")):
        stats = _side_stats(fit, key, prefix).reindex(pairs[key].to_numpy())
        stats.index = out.index
        stats[f"{prefix}_n"] = stats[f"{prefix}_n"].fillna(0)
        stats[f"{prefix}_mean"] = stats[f"{prefix}_mean"].fillna(mu)
        stats[f"{prefix}_std"] = stats[f"{prefix}_std"].fillna(float(fit["rating"].std(ddof=0)))
        for r in SCALE:
            stats[f"{prefix}_p{r}"] = stats[f"{prefix}_p{r}"].fillna(glob[r - 1])
        out = out.join(stats)
    out["genre_aff"] = genre_affinity(fit, pairs, items)
    return out


LLM_COLUMNS: tuple[str, ...] = (*(f"llm_{r}" for r in SCALE), "llm_missing")

# feature groups for the ablations (a group is dropped as a whole)
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "knn": ("cf_knn_item", "cf_knn_user"),
    "svd": ("cf_svd", "cf_svd_wide", "cf_svdpp"),
    "svdpp": ("cf_svdpp",),
    "biases": ("bu", "bi", "mu"),
    "user_stats": ("user_n", "user_mean", "user_std", *(f"user_p{r}" for r in SCALE)),
    "item_stats": ("item_n", "item_mean", "item_std", *(f"item_p{r}" for r in SCALE)),
    "genre": ("genre_aff",),
    "llm": LLM_COLUMNS,
}


def llm_answer_features(llm: Any, probs: Any = None) -> pd.DataFrame:
    """The LLM's answer as calibrator inputs: its distribution over 1..5 and a 'no answer' flag.

    llm: (n,) its rating (NaN = the LLM did not rate the pair: it failed, or the run did not cover
    that user). probs: optional (n, 5) P(1..5) from the server's logprobs or from draws, a NaN row
    where there is none; without a distribution the rating counts as certain (one-hot).
    """
    llm = np.asarray(llm, dtype=float)
    out = np.zeros((llm.size, len(LLM_COLUMNS)))
    answered = ~np.isnan(llm)
    out[np.flatnonzero(answered), np.clip(np.rint(llm[answered]), 1, 5).astype(int) - 1] = 1.0
    if probs is not None:
        probs = np.asarray(probs, dtype=float).reshape(llm.size, 5)
        soft = answered & ~np.isnan(probs).any(axis=1)
        out[soft, :5] = probs[soft] / probs[soft].sum(axis=1, keepdims=True)
    out[~answered, -1] = 1.0
    return pd.DataFrame(out, columns=list(LLM_COLUMNS))


def probs_matrix(values: Any) -> np.ndarray:
    """(n, 5) from a column of 5-lists (simulated_ratings.rating_probs), a NaN row for each missing one."""
    out = np.full((len(values), 5), np.nan)
    for i, p in enumerate(values):
        if not (pd.api.types.is_scalar(p) and pd.isna(p)) and len(p) == 5:
            out[i] = np.asarray(p, dtype=float)
    return out
