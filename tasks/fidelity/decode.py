"""Decoding a rating distribution P (n, 5) over 1..5 into one integer rating per pair.

- accuracy: `expected_value` rounded half up (`doppel.tasks.metrics.round_rating`) = the integer
  minimising expected squared error; `mode` maximises the chance of an exact hit; `beta` in
  between (expected squared error minus beta * P(exact)), `choose_beta` picks it on the
  calibration slice.
- realism: `quantile_match(score, target)` gives the top-scored pairs the top ratings so the
  counts follow `target` exactly (largest-remainder rounding of target * n; ties in score are
  broken by position, so the counts are exact whatever the ties). Among decodings with those
  counts it minimises the expected squared error of a score that is E[rating]. Per group (e.g.
  user-activity bucket) with a target per group.
- `tradeoff(P, target, lam)`: quantile matching to (1 - lam) * hist(accuracy decoding) + lam *
  target: lam = 0 is accuracy mode, lam = 1 realism mode.
- `sample`: calibrated sampling (one seeded draw from P per pair).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from doppel.tasks.metrics import round_rating

SCALE = np.arange(1, 6)


def _check_proba(P: Any) -> np.ndarray:
    P = np.asarray(P, dtype=float)
    if P.ndim != 2 or P.shape[1] != 5:
        raise ValueError(f"P must have shape (n, 5), got {P.shape}")
    if (P < -1e-12).any() or not np.allclose(P.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("P rows must be probabilities summing to 1")
    return P


def expected_value(P: Any) -> np.ndarray:
    return _check_proba(P) @ SCALE


def decode_accuracy(P: Any, rule: str = "expected", beta: float = 0.0) -> np.ndarray:
    """rule="expected": round(E[r]) half up (argmin expected squared error); "mode": argmax P.

    beta > 0 (rule "expected"): argmin_k E[(k - r)^2] - beta * P(r = k), trading a little
    squared error for exact hits (beta -> infinity is the mode).
    """
    P = _check_proba(P)
    if rule == "expected" and beta > 0:
        loss = np.stack([(P * (k - SCALE) ** 2).sum(axis=1) - beta * P[:, k - 1] for k in SCALE], axis=1)
        return (np.argmin(loss, axis=1) + 1).astype(np.int64)
    if rule == "expected":
        return round_rating(P @ SCALE)
    if rule == "mode":
        return (np.argmax(P, axis=1) + 1).astype(np.int64)
    raise ValueError(f"rule must be 'expected' or 'mode', got {rule!r}")


BETA_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 1.0)
# relative. Measured on u1..u5 (benchmarks/fidelity.py): the slice's RMSE rises less with beta than
# the test's (its features come from models fit on less data), so 0.25% picked beta = 0.5 in 4 of
# 5 folds and missed RMSE 0.95 on test; 0.1% keeps the test RMSE within ~0.2% of beta = 0's.
BETA_RMSE_TOL = 0.001


def choose_beta(P: Any, y: Any, grid: tuple[float, ...] = BETA_GRID, tol: float = BETA_RMSE_TOL) -> float:
    """The accuracy decoder's beta, picked on labelled calibration rows (never the test split).

    Among `grid`, the beta with the most exact hits whose RMSE is within `tol` (relative) of
    beta = 0's (pure expected squared error); ties -> the smaller beta.
    """
    y = np.asarray(y, dtype=float)
    base = None
    best, best_exact = 0.0, -1.0
    for beta in sorted(grid):
        pred = decode_accuracy(P, beta=beta)
        rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
        base = rmse if base is None else base
        exact = float(np.mean(pred == y))
        if rmse <= base * (1 + tol) and exact > best_exact:
            best, best_exact = beta, exact
    return best


def target_counts(target: Any, n: int) -> np.ndarray:
    """Integer counts of ratings 1..5 summing to n, closest to target * n (largest remainder)."""
    t = np.asarray(target, dtype=float)
    if t.shape != (5,) or (t < 0).any() or t.sum() <= 0:
        raise ValueError(f"target must be 5 non-negative weights, got {target}")
    want = t / t.sum() * n
    counts = np.floor(want).astype(np.int64)
    left = n - int(counts.sum())
    order = np.argsort(-(want - counts), kind="stable")  # ties -> lower rating first
    counts[order[:left]] += 1
    return counts


def quantile_match(score: Any, target: Any, groups: Any = None, targets: Mapping[Any, Any] | None = None) -> np.ndarray:
    """Integer ratings whose histogram is exactly `target_counts(target, n)` (per group).

    score: (n,) higher = higher rating. groups: optional (n,) labels; `targets` maps a label to
    its target (labels without one use `target`).
    """
    s = np.asarray(score, dtype=float)
    if s.ndim != 1 or np.isnan(s).any():
        raise ValueError("score must be 1-d without NaN")
    out = np.empty(s.size, dtype=np.int64)
    if groups is None:
        labels, index = np.zeros(s.size, dtype=int), {0: np.arange(s.size)}
    else:
        labels = np.asarray(groups)
        index = {g: np.flatnonzero(labels == g) for g in np.unique(labels)}
    for g, rows in index.items():
        t = (targets or {}).get(g, target)
        if t is None:
            raise ValueError(f"no target histogram for group {g!r}")
        counts = target_counts(t, rows.size)
        order = rows[np.argsort(s[rows], kind="stable")]  # ascending score, ties by position
        out[order] = np.repeat(SCALE, counts)
    return out


def _hist(r: np.ndarray) -> np.ndarray:
    return np.bincount(r - 1, minlength=5) / max(r.size, 1)


def tradeoff(
    P: Any, target: Any, lam: float, groups: Any = None, targets: Mapping[Any, Any] | None = None
) -> np.ndarray:
    """Quantile-match E[r] to (1 - lam) * hist(accuracy decoding) + lam * target, per group."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    P = _check_proba(P)
    score = P @ SCALE
    acc = round_rating(score)
    if groups is None:
        return quantile_match(score, (1 - lam) * _hist(acc) + lam * np.asarray(target, float))
    labels = np.asarray(groups)
    mixed = {}
    for g in np.unique(labels):
        t = (targets or {}).get(g, target)
        mixed[g] = (1 - lam) * _hist(acc[labels == g]) + lam * np.asarray(t, float)
    return quantile_match(score, target, labels, mixed)


def sample(P: Any, seed: int = 0) -> np.ndarray:
    """One draw per row from P (calibrated sampling), seeded."""
    P = _check_proba(P)
    u = np.random.default_rng(seed).random(len(P))[:, None]
    return (np.minimum((u > np.cumsum(P, axis=1)).sum(axis=1), 4) + 1).astype(np.int64)
