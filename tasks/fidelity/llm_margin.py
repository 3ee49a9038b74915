"""What the LLM adds to the calibrated hybrid, measured on a run's rated pairs by cross-fitting over users.

The hybrid's calibrator learns from a slice of train ratings, and a doppel run's LLM rates test
pairs only, so the calibrator has no LLM answers to learn from. This measures the LLM's marginal
contribution anyway, honestly: a second-stage multinomial model over ratings 1..5 on the hybrid's
log P(rating) (arm "cf") or on log P plus the LLM's answer (arm "cf+llm": its distribution over 1..5
where the run stored one (logprobs or draws), else one-hot, + a missing flag),
fit on the other users' rows (their test ratings) and applied to each user's rows, users dealt into
`n_splits` seeded groups. The two arms differ only by the LLM input: the gap between their scores
is the LLM's contribution. This is a measurement, not the simulator: it learns from test ratings of
other users, which the hybrid never does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from doppel.tasks.fidelity.calibrate import fit_calibrator
from doppel.tasks.fidelity.decode import decode_accuracy
from doppel.tasks.fidelity.features import llm_answer_features


def cross_fit(
    P: np.ndarray,
    llm: np.ndarray,
    y: np.ndarray,
    users: np.ndarray,
    n_splits: int = 2,
    seed: int = 0,
    probs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ratings of arm "cf", ratings of arm "cf+llm") for every row, same order.

    P: (n, 5) the hybrid's rating distribution; llm: (n,) the LLM's rating (NaN = no answer);
    y: (n,) the real ratings; users: (n,) user ids (rows of one user stay in one group);
    probs: optional (n, 5) the LLM's own P(1..5) (NaN rows: none; see features.llm_answer_features).
    """
    P, llm, y, users = np.asarray(P, float), np.asarray(llm, float), np.asarray(y, int), np.asarray(users)
    if not (len(P) == len(llm) == len(y) == len(users)):
        raise ValueError("P, llm, y and users differ in length")
    ids = np.unique(users)
    if ids.size < n_splits:
        raise ValueError(f"cross-fitting needs at least {n_splits} users, got {ids.size}")
    group_of = dict(zip(np.random.default_rng(seed).permutation(ids), np.arange(ids.size) % n_splits))
    groups = np.array([group_of[u] for u in users])
    base = np.log(np.clip(P, 1e-6, 1.0))
    arms = {
        name: pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
        for name, X in (("cf", base), ("cf+llm", np.hstack([base, llm_answer_features(llm, probs).to_numpy()])))
    }
    out = {arm: np.zeros(len(y), dtype=np.int64) for arm in arms}
    for g in range(n_splits):
        fit, apply = groups != g, groups == g
        for arm, X in arms.items():
            calibrator = fit_calibrator(X[fit], y[fit], kind="logreg")  # the hybrid's own calibrator
            out[arm][apply] = decode_accuracy(calibrator.proba(X[apply]))
    return out["cf"], out["cf+llm"]


def paired_gap(
    truth: np.ndarray, a: np.ndarray, b: np.ndarray, users: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """b minus a in rmse, exact % and close %, with a 95% bootstrap interval over users:
    {metric: (gap, low, high)}."""
    truth, a, b, users = (np.asarray(x) for x in (truth, a, b, users))
    ids, inverse = np.unique(users, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(ids.size)]

    def gaps(rows: np.ndarray) -> np.ndarray:
        ea, eb = a[rows] - truth[rows], b[rows] - truth[rows]
        return np.array(
            [
                np.sqrt(np.mean(eb**2)) - np.sqrt(np.mean(ea**2)),
                100 * (np.mean(eb == 0) - np.mean(ea == 0)),
                100 * (np.mean(np.abs(eb) <= 1) - np.mean(np.abs(ea) <= 1)),
            ]
        )

    point = gaps(np.arange(truth.size))
    rng = np.random.default_rng(seed)
    boot = np.array(
        [gaps(np.concatenate([rows_of[k] for k in rng.integers(0, ids.size, ids.size)])) for _ in range(n_boot)]
    )
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    return {m: (float(point[i]), float(low[i]), float(high[i])) for i, m in enumerate(("rmse", "exact", "close"))}
