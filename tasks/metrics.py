"""Fidelity metrics: simulated (or baseline) ratings against the real held-out ratings.

Plain functions over numpy arrays / pandas frames; no database, no Prefect.

Conventions
- Ratings live on the 1..5 scale. `round_rating` is the one rounding rule used everywhere:
  round half up (2.5 -> 3, 3.5 -> 4, never banker's rounding), then clip to 1..5.
- `rating_metrics` drops pairs whose prediction is missing (NaN/None) and reports how many it
  dropped (`n_missing`); a missing truth is a data error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

SCALE = (1, 2, 3, 4, 5)
RATING_METRICS = ("rmse", "mae", "exact", "off_by_one", "close", "tv", "n", "n_missing")
_TOL = 1e-9


def round_rating(x: Any) -> np.ndarray:
    """Round half up (floor(x + 0.5)) and clip to 1..5; returns int64. NaN is not allowed."""
    arr = np.asarray(x, dtype=float)
    if np.isnan(arr).any():
        raise ValueError("round_rating: NaN in input")
    return np.clip(np.floor(arr + 0.5), 1, 5).astype(np.int64)


def _as_float(values: Any, name: str) -> np.ndarray:
    """1-d float array; None / pd.NA become NaN."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "biuf":
        return arr.astype(float)
    ser = pd.to_numeric(pd.Series(arr, dtype=object))
    return ser.to_numpy(dtype=float, na_value=np.nan)


def histogram(ratings: Any) -> list[float]:
    """Proportions of ratings 1..5 (5 floats summing to 1; all NaN when empty).

    Values are binned with `round_rating`'s half-up rule (integers map to themselves, raw float
    predictions to their rounded bin); a value outside [0.5, 5.5) or NaN raises ValueError.
    """
    arr = _as_float(ratings, "ratings")
    if np.isnan(arr).any():
        raise ValueError("histogram: NaN in ratings")
    if arr.size == 0:
        return [float("nan")] * len(SCALE)
    bins = np.floor(arr + 0.5).astype(np.int64)
    if bins.min() < 1 or bins.max() > 5:
        raise ValueError(f"histogram: rating out of 1..5 (min {arr.min()}, max {arr.max()})")
    counts = np.bincount(bins - 1, minlength=len(SCALE))
    return (counts / arr.size).astype(float).tolist()


def total_variation(p: Sequence[float], q: Sequence[float]) -> float:
    """Total-variation distance 0.5 * sum |p - q| (0 = same distribution, 1 = disjoint)."""
    return float(0.5 * np.abs(np.asarray(p, dtype=float) - np.asarray(q, dtype=float)).sum())


def rating_metrics(truth: Any, pred: Any) -> dict[str, float]:
    """RMSE, MAE, exact / off-by-one / close (|err| <= 1) in %, histogram TV distance, n, n_missing.

    `truth` and `pred` are aligned 1-d arrays. Pairs with a missing prediction are excluded and
    counted in `n_missing`; `n` is the number of scored pairs. `pred` is normally integer 1..5;
    raw float predictions are accepted (rmse/mae use them as is, the percentages compare |err|
    with a 1e-9 tolerance, tv bins them half up). With n == 0 every metric but the counts is NaN.
    """
    t = _as_float(truth, "truth")
    p = _as_float(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"truth and pred differ in length: {t.size} vs {p.size}")
    if np.isnan(t).any():
        raise ValueError("rating_metrics: missing value in truth")
    keep = ~np.isnan(p)
    n, n_missing = int(keep.sum()), int((~keep).sum())
    nan = float("nan")
    if n == 0:
        out = dict.fromkeys(RATING_METRICS, nan)
        out.update(n=0.0, n_missing=float(n_missing))
        return out
    t, p = t[keep], p[keep]
    err = np.abs(p - t)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(err)),
        "exact": float(100.0 * np.mean(err <= _TOL)),
        "off_by_one": float(100.0 * np.mean(np.abs(err - 1.0) <= _TOL)),
        "close": float(100.0 * np.mean(err <= 1.0 + _TOL)),
        "tv": total_variation(histogram(p), histogram(t)),
        "n": float(n),
        "n_missing": float(n_missing),
    }


def binary_metrics(truth_like: Any, score: Any, threshold: float = 0.5) -> dict[str, float]:
    """ROC AUC and accuracy of a score for binary "likes".

    AUC is scikit-learn's `roc_auc_score` (a tied positive/negative pair counts 1/2); NaN when only
    one class is present. Accuracy predicts like when score >= threshold. NaN scores raise ValueError.
    """
    y = np.asarray(truth_like).astype(bool).ravel()
    s = _as_float(score, "score")
    if y.shape != s.shape:
        raise ValueError(f"truth_like and score differ in length: {y.size} vs {s.size}")
    if np.isnan(s).any():
        raise ValueError("binary_metrics: NaN in score")
    if y.size == 0:
        return {"auc": float("nan"), "accuracy": float("nan")}
    from sklearn.metrics import roc_auc_score  # lazy: scikit-learn's import costs ~1 s

    auc = float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")  # undefined with one class
    accuracy = float(np.mean((s >= threshold) == y))
    return {"auc": auc, "accuracy": accuracy}


def metrics_table(
    frame: pd.DataFrame,
    group_cols: Sequence[str],
    truth_col: str = "truth",
    pred_col: str = "pred",
) -> pd.DataFrame:
    """`rating_metrics` per group, long format: columns (*group_cols, metric, value).

    E.g. frame with fold, simulator, truth, pred -> one row per (fold, simulator, metric).
    Groups are sorted; NaN group keys are kept; with no group columns there is one overall group.
    """
    group_cols = list(group_cols)
    missing = [c for c in [*group_cols, truth_col, pred_col] if c not in frame.columns]
    if missing:
        raise KeyError(f"metrics_table: missing columns {missing}")
    rows: list[dict[str, Any]] = []
    if group_cols:
        groups = frame.groupby(group_cols, sort=True, dropna=False)
        items: Iterator[tuple[tuple, pd.DataFrame]] = ((k if isinstance(k, tuple) else (k,), g) for k, g in groups)
    else:
        items = iter([((), frame)])
    for key, g in items:
        stats = rating_metrics(g[truth_col], g[pred_col])
        base = dict(zip(group_cols, key, strict=True))
        rows.extend({**base, "metric": m, "value": v} for m, v in stats.items())
    out = pd.DataFrame(rows, columns=[*group_cols, "metric", "value"])
    out["value"] = out["value"].astype(float)
    return out
