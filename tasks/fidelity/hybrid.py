"""The calibrated hybrid simulator for one fold: fit on train only, rate the requested pairs.

    ff = fold_features(train, pairs, items)           # slice + test features (the slow part)
    P, P_slice = predict_proba(ff, with_slice=True)   # (n, 5) each, calibrator fit on the slice
    acc, beta = accuracy(P, P_slice, ff)              # accuracy mode (beta picked on the slice)
    real = realism(P, ff)                             # realism mode: per-activity-bucket quantile match

`pairs` carries user_id, item_id only: the test ratings are never an input. Optional LLM
features: the LLM's rating (its distribution over 1..5 where the run stored one, from logprobs or
draws, else one-hot; plus a missing flag; features.llm_answer_features) on the slice
pairs and on the test pairs; the calibrator can only learn from the LLM where it rated slice pairs
(`doppel run --target slice`, profile built without the slice; use slice_how="hash", the slice that
run rates), so `slice_llm` and `pair_llm` go together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from doppel.tasks.fidelity.calibrate import fit_calibrator
from doppel.tasks.fidelity.decode import choose_beta, decode_accuracy, tradeoff
from doppel.tasks.fidelity.features import (
    CF_MODELS,
    FEATURE_GROUPS,
    LLM_COLUMNS,
    calibration_slice,
    llm_answer_features,
    pair_features,
    probs_matrix,
    slice_parts,
)

BUCKET_EDGES = (50, 150)  # train ratings per user: <50, 50-150, >150
BUCKETS = ("<50", "50-150", ">150")


@dataclass
class FoldFeatures:
    X_slice: pd.DataFrame  # features of the calibration slice (models fit on train minus slice)
    y_slice: np.ndarray  # the slice's (train) ratings: the calibrator's labels
    X_pairs: pd.DataFrame  # features of the requested pairs
    pairs: pd.DataFrame  # user_id, item_id of the requested pairs, same order
    train: pd.DataFrame  # the train split (user_id, item_id, rating)
    slice_pairs: pd.DataFrame  # user_id, item_id of the calibration rows (all train rows)


def activity_bucket(train: pd.DataFrame, user_ids: Sequence[str]) -> np.ndarray:
    """'<50' / '50-150' / '>150' by the user's number of train ratings (unknown user: '<50')."""
    n = pd.Series(list(user_ids)).map(train.groupby("user_id").size()).fillna(0).to_numpy()
    lo, hi = BUCKET_EDGES
    return np.where(n < lo, BUCKETS[0], np.where(n <= hi, BUCKETS[1], BUCKETS[2]))


def histogram_of(ratings: Sequence[int]) -> np.ndarray:
    r = np.asarray(ratings, dtype=int)
    return np.bincount(r - 1, minlength=5) / max(r.size, 1)


def bucket_targets(train: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Population train histogram, and the train histogram of each activity bucket's users."""
    pop = histogram_of(train["rating"])
    b = activity_bucket(train, train["user_id"].tolist())
    per = {k: histogram_of(train["rating"].to_numpy()[b == k]) for k in BUCKETS if (b == k).any()}
    return pop, per


def fold_features(
    train: pd.DataFrame,
    pairs: pd.DataFrame,
    items: pd.DataFrame,
    slice_how: str = "random",
    frac: float = 0.2,
    refit: bool = True,
    stack: int = 1,
    models: Sequence[str] = CF_MODELS,
    seed: int = 0,
    slice_llm: pd.DataFrame | None = None,
    pair_llm: pd.DataFrame | None = None,
) -> FoldFeatures:
    """Hold the slice out of train, build slice features (labels = slice ratings) and pair features.

    stack=k > 1: k-fold stacking instead of one slice: each user's train ratings are dealt into k
    parts, each part gets features from models fit on the other parts, and the calibrator learns
    on all of train (slice_how must be "random"; `frac` is unused).
    refit=True: pair features from models fit on the full train split; False: from the same
    train-minus-slice models as the slice (no train/test shift in the features).
    slice_llm / pair_llm: optional frames user_id, item_id, llm (NaN = no answer) joined as features.
    """
    train = train.astype({"user_id": str, "item_id": str}).reset_index(drop=True)
    pairs = pairs[["user_id", "item_id"]].astype(str).reset_index(drop=True)
    if stack > 1:
        if slice_how != "random":
            raise ValueError("stacking deals random parts: use slice_how='random'")
        parts = slice_parts(train, stack, seed)
        held = pd.concat([train[parts == k] for k in range(stack)], ignore_index=True)
        X_slice = pd.concat(
            [pair_features(train[parts != k], train[parts == k], items, models, seed) for k in range(stack)],
            ignore_index=True,
        )
        fit = train[parts != 0]
    else:
        mask = calibration_slice(train, frac=frac, how=slice_how, seed=seed)
        fit, held = train[~mask], train[mask].reset_index(drop=True)
        X_slice = pair_features(fit, held, items, models, seed)
    X_pairs = pair_features(train if refit else fit, pairs, items, models, seed)
    if (slice_llm is None) != (pair_llm is None):
        raise ValueError("give both slice_llm and pair_llm (the calibrator learns the LLM from the slice) or neither")
    ff = FoldFeatures(X_slice, held["rating"].to_numpy(dtype=int), X_pairs, pairs, train, held[["user_id", "item_id"]])
    return ff if slice_llm is None else with_llm(ff, slice_llm, pair_llm)


def with_llm(ff: FoldFeatures, slice_llm: pd.DataFrame, pair_llm: pd.DataFrame) -> FoldFeatures:
    """`ff` with the LLM's answers as features (replacing any joined before): slice_llm / pair_llm
    as in `fold_features`. Cheap: the CF features are reused."""
    gone = [c for c in LLM_COLUMNS if c in ff.X_slice]
    return replace(
        ff,
        X_slice=_join_llm(ff.X_slice.drop(columns=gone), ff.slice_pairs, slice_llm),
        X_pairs=_join_llm(ff.X_pairs.drop(columns=gone), ff.pairs, pair_llm),
    )


def _join_llm(X: pd.DataFrame, keys: pd.DataFrame, llm: pd.DataFrame) -> pd.DataFrame:
    """X plus the LLM's answer for each of `keys`' pairs (llm: user_id, item_id, llm; NaN = none;
    optional llm_probs: its P(1..5) per pair, None where the server gave none)."""
    cols = ["user_id", "item_id", "llm", *(["llm_probs"] if "llm_probs" in llm else [])]
    j = keys[["user_id", "item_id"]].merge(
        llm[cols].astype({"user_id": str, "item_id": str}), on=["user_id", "item_id"], how="left", validate="one_to_one"
    )
    probs = probs_matrix(j["llm_probs"].tolist()) if "llm_probs" in j else None
    return pd.concat([X.reset_index(drop=True), llm_answer_features(j["llm"].to_numpy(), probs)], axis=1)


def feature_columns(X: pd.DataFrame, drop: Sequence[str] = ()) -> list[str]:
    """X's columns minus the named FEATURE_GROUPS (or single columns)."""
    gone: set[str] = set()
    for name in drop:
        gone.update(FEATURE_GROUPS.get(name, (name,)))
    return [c for c in X.columns if c not in gone]


def predict_proba(
    ff: FoldFeatures, kind: str = "logreg", drop: Sequence[str] = (), seed: int = 0, with_slice: bool = False
):
    """Fit the calibrator on the slice (minus dropped feature groups); P(rating) of every pair.

    with_slice=True: returns (P_pairs, P_slice), the second for choosing decoder settings on
    the slice.
    """
    cols = feature_columns(ff.X_slice, drop)
    cal = fit_calibrator(ff.X_slice, ff.y_slice, kind=kind, seed=seed, columns=cols)
    P = cal.proba(ff.X_pairs)
    return (P, cal.proba(ff.X_slice)) if with_slice else P


def accuracy(P: np.ndarray, P_slice: np.ndarray, ff: FoldFeatures) -> tuple[np.ndarray, float]:
    """Accuracy mode: argmin E[(k - r)^2] - beta P(k), beta chosen on the slice; (ratings, beta)."""
    beta = choose_beta(P_slice, ff.y_slice)
    return decode_accuracy(P, beta=beta), beta


def realism(P: np.ndarray, ff: FoldFeatures, lam: float = 1.0, per_bucket: bool = True) -> np.ndarray:
    """Quantile-match E[rating] to the train histograms (per activity bucket by default)."""
    pop, per = bucket_targets(ff.train)
    if not per_bucket:
        return tradeoff(P, pop, lam)
    groups = activity_bucket(ff.train, ff.pairs["user_id"].tolist())
    return tradeoff(P, pop, lam, groups=groups, targets=per)


def hybrid_ratings(
    train: pd.DataFrame,
    pairs: pd.DataFrame,
    items: pd.DataFrame,
    seed: int = 0,
    kind: str = "logreg",
    models: Sequence[str] = CF_MODELS,
) -> pd.DataFrame:
    """The default hybrid (one random 20% slice, logreg calibrator): user_id, item_id, accuracy, realism."""
    ff = fold_features(train, pairs, items, seed=seed, models=models)
    P, P_slice = predict_proba(ff, kind=kind, seed=seed, with_slice=True)
    return ff.pairs.assign(accuracy=accuracy(P, P_slice, ff)[0], realism=realism(P, ff))
