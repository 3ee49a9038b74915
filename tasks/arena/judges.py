"""Judges: who says how much a user likes a recommended item.

- real: the held-out rating (observed-items protocol; in the catalogue only where the pair is in test).
- hybrid:accuracy / hybrid:realism / hybrid:draw: the calibrated hybrid (tasks/fidelity/) fit on the
  fold's train split only, decoded three ways from one distribution P(rating | user, item).
- audit: the hybrid calibrated without one recommender family's features (knn: cf_knn_*; mf:
  cf_svd*): each recommender is judged by the variant blind to its own family (accuracy decoding).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from doppel.tasks.fidelity.decode import sample
from doppel.tasks.fidelity.hybrid import FoldFeatures, accuracy, fold_features, predict_proba, realism

HYBRID_JUDGES = ("hybrid:accuracy", "hybrid:realism", "hybrid:draw")
# a recommender family -> the hybrid's feature groups (tasks/fidelity/features.FEATURE_GROUPS) of that family
AUDIT_DROP: dict[str, tuple[str, ...]] = {"knn": ("knn",), "mf": ("svd",)}
AUDIT = "hybrid:audit"


def hybrid_distributions(
    train: pd.DataFrame, items: pd.DataFrame, pairs: pd.DataFrame, seed: int = 0
) -> tuple[FoldFeatures, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Features of the unique `pairs` (from train only) and P over 1..5 for each variant.

    Returns (ff, {variant: (P_pairs, P_slice)}) with variants "full" and "no_<family>".
    """
    pairs = pairs[["user_id", "item_id"]].astype(str).drop_duplicates().reset_index(drop=True)
    ff = fold_features(train[["user_id", "item_id", "rating"]], pairs, items, seed=seed)
    out = {"full": predict_proba(ff, seed=seed, with_slice=True)}
    for family, drop in AUDIT_DROP.items():
        out[f"no_{family}"] = predict_proba(ff, drop=drop, seed=seed, with_slice=True)
    return ff, out


def judge_pairs(
    ff: FoldFeatures,
    dists: dict[str, tuple[np.ndarray, np.ndarray]],
    pairs: pd.DataFrame,
    seed: int = 0,
) -> pd.DataFrame:
    """One protocol's pairs judged: user_id, item_id, p_like (full hybrid), hybrid:accuracy,
    hybrid:realism, hybrid:draw and acc_no_<family> (the audit variants' accuracy decodings).

    Realism is quantile-matched within this pair set (per activity bucket), as a run would be.
    """
    keys = pairs[["user_id", "item_id"]].astype(str).drop_duplicates().reset_index(drop=True)
    pos = ff.pairs.reset_index().merge(keys, on=["user_id", "item_id"], how="right")["index"]
    if pos.isna().any():
        raise KeyError(f"{int(pos.isna().sum())} pairs have no hybrid features")
    rows = pos.to_numpy(dtype=int)
    P, P_slice = dists["full"]
    sub = replace(ff, pairs=keys)
    out = keys.assign(
        p_like=P[rows, 3] + P[rows, 4],
        **{
            "hybrid:accuracy": accuracy(P[rows], P_slice, ff)[0],
            "hybrid:realism": realism(P[rows], sub),
            "hybrid:draw": sample(P[rows], seed=seed),
        },
    )
    for name, (Pv, Pv_slice) in dists.items():
        if name != "full":
            out[f"acc_{name}"] = accuracy(Pv[rows], Pv_slice, ff)[0]
    return out


def audit_column(judged: pd.DataFrame, family: str) -> str:
    """The column that judges a recommender of `family` in the audit (its own family left out)."""
    return f"acc_no_{family}" if f"acc_no_{family}" in judged else "hybrid:accuracy"
