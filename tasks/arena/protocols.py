"""Arena metrics: per-user ranking metrics under each judge, rank agreement, noise ceiling, calibration.

Units: ndcg@10 in 0..1 with linear gains (the judge's rating 1..5); precision@5 / like_rate@10 are
shares of liked items (rating >= 4); tau and rho are Kendall's tau-b and Spearman's rho between the
recommenders' mean metric under the real judge and under a simulated one; like-rate gaps in points.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, spearmanr

LIKE = 4  # like = rating >= 4
BINARY = ("ensemble:vote",)  # judges that say like (1) / no like (0) only: 0/1 gains, like = 1


def like_threshold(judge: str) -> float:
    return 1.0 if judge in BINARY else LIKE


def _dcg(frame: pd.DataFrame, gain: str, rank: str, k: int) -> pd.Series:
    top = frame[frame[rank] <= k]
    return (top[gain] / np.log2(top[rank] + 1)).groupby([top["recommender"], top["user_id"]]).sum()


def observed_metrics(ranked: pd.DataFrame, judges: list[str], k_ndcg: int = 10, k_p: int = 5) -> pd.DataFrame:
    """ranked: recommender, user_id, item_id, rank, <judge rating columns>, one row per held-out pair.

    Returns recommender, user_id, judge, ndcg@10, precision@5 (precision over min(5, n) items).
    """
    out = []
    n = ranked.groupby(["recommender", "user_id"]).size()
    for judge in judges:
        frame = ranked[["recommender", "user_id", "rank", judge]].dropna()
        ideal_rank = (
            frame.sort_values(judge, ascending=False, kind="stable").groupby(["recommender", "user_id"]).cumcount() + 1
        )
        dcg = _dcg(frame, judge, "rank", k_ndcg)
        idcg = _dcg(frame.assign(_ideal=ideal_rank), judge, "_ideal", k_ndcg)
        top = frame[frame["rank"] <= k_p]
        hits = (top[judge] >= like_threshold(judge)).groupby([top["recommender"], top["user_id"]]).sum()
        table = pd.DataFrame({"dcg": dcg, "idcg": idcg, "hits": hits}).reindex(n.index).fillna(0.0)
        out.append(
            pd.DataFrame(
                {
                    "judge": judge,
                    "ndcg@10": np.where(
                        table["idcg"] > 0, table["dcg"] / table["idcg"].where(table["idcg"] > 0, 1), 0.0
                    ),
                    "precision@5": table["hits"] / np.minimum(n, k_p),
                },
                index=n.index,
            ).reset_index()
        )
    return pd.concat(out, ignore_index=True)


def catalogue_metrics(top: pd.DataFrame, judges: list[str]) -> pd.DataFrame:
    """top: recommender, user_id, item_id, rank (<= k), real (held-out rating or NaN), <judge columns>.

    Returns recommender, user_id, judge, like_rate@10 (real: held-out likes among the k, the offline
    hit rate; a judge: its simulated likes among the k), mean_rating (NaN for real)."""
    out = []
    for judge in ["real", *judges]:
        liked = (top[judge] >= like_threshold(judge)).astype(float)
        if judge != "real":  # a judge without a verdict on a pair (no vote) leaves it out; real: unrated = no hit
            liked = liked.where(top[judge].notna())
        g = pd.DataFrame({"liked": liked, "r": top[judge]}).groupby([top["recommender"], top["user_id"]])
        table = pd.DataFrame({"like_rate@10": g["liked"].mean(), "mean_rating": g["r"].mean()})
        if judge == "real" or judge in BINARY:
            table["mean_rating"] = np.nan  # unrated pairs: a mean over the few rated ones would mislead
        out.append(table.reset_index().assign(judge=judge))
    return pd.concat(out, ignore_index=True)


def user_matrix(metrics: pd.DataFrame, judge: str, metric: str, recommenders: list[str]) -> np.ndarray:
    """(users, recommenders) of one judge's metric; users in sorted order, every user present in all."""
    m = metrics[metrics["judge"] == judge].pivot(index="user_id", columns="recommender", values=metric)
    return m.reindex(columns=recommenders).sort_index().to_numpy(dtype=float)


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    return float(kendalltau(a, b).statistic), float(spearmanr(a, b).statistic)


@contextlib.contextmanager
def _nan_is_the_answer() -> Iterator[None]:
    """Without numpy's all-NaN warnings: a judge that scores every recommender alike has no rank
    correlation (NaN), which the tables show as such; dozens of warnings per fold said nothing more."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        yield


def rank_agreement(real: np.ndarray, sim: np.ndarray, n_boot: int = 500, seed: int = 0) -> dict[str, float]:
    """Kendall tau and Spearman rho between the recommenders' mean metric, real vs simulated, with
    95% percentile intervals from resampling users (rows of both matrices together)."""
    if real.shape != sim.shape:
        raise ValueError(f"real and simulated matrices differ: {real.shape} vs {sim.shape}")
    with _nan_is_the_answer():
        tau, rho = _corr(np.nanmean(real, axis=0), np.nanmean(sim, axis=0))
        rng = np.random.default_rng(seed)
        boot = np.array(
            [
                _corr(np.nanmean(real[rows], axis=0), np.nanmean(sim[rows], axis=0))
                for rows in _resamples(rng, len(real), n_boot)
            ]
        )
        lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0) if len(boot) else (np.full(2, np.nan),) * 2
    return {"tau": tau, "tau_lo": lo[0], "tau_hi": hi[0], "rho": rho, "rho_lo": lo[1], "rho_hi": hi[1]}


def _resamples(rng: np.random.Generator, n: int, times: int):
    for _ in range(times):
        yield rng.integers(0, n, n)


def noise_ceiling(real: np.ndarray, sim: np.ndarray, n_splits: int = 50, seed: int = 0) -> dict[str, float]:
    """Over random halves A/B of the users: tau(judge on A, real on B) next to tau(real on A, real on B).

    ratio = mean judge cross-half tau / mean real cross-half tau (1 = the judge orders the
    recommenders as well as a second, independent half of real users does)."""
    rng = np.random.default_rng(seed)
    judge, own = [], []
    with _nan_is_the_answer():
        for _ in range(n_splits):
            perm = rng.permutation(len(real))
            a, b = perm[: len(real) // 2], perm[len(real) // 2 :]
            rb = np.nanmean(real[b], axis=0)
            judge.append(_corr(np.nanmean(sim[a], axis=0), rb)[0])
            own.append(_corr(np.nanmean(real[a], axis=0), rb)[0])
        tj, tr = float(np.nanmean(judge)), float(np.nanmean(own))
    return {"tau_judge_cross": tj, "tau_real_cross": tr, "ratio": tj / tr if tr else float("nan")}


def calibration(p_like: np.ndarray, liked: np.ndarray, bins: int = 10) -> tuple[dict[str, float], pd.DataFrame]:
    """ECE (equal-width bins, weighted by count) and Brier score of P(like) against real likes, and
    the reliability table: bin, lower, upper, n, mean_p, like_rate."""
    p, y = np.asarray(p_like, dtype=float), np.asarray(liked, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table = (
        pd.DataFrame({"bin": idx, "p": p, "y": y})
        .groupby("bin")
        .agg(n=("p", "size"), mean_p=("p", "mean"), like_rate=("y", "mean"))
    )
    table = table.reindex(range(bins)).assign(lower=edges[:-1], upper=edges[1:]).fillna({"n": 0}).reset_index()
    filled = table[table["n"] > 0]
    ece = float((filled["n"] * (filled["mean_p"] - filled["like_rate"]).abs()).sum() / max(len(p), 1))
    return {
        "ece": ece,
        "brier": float(np.mean((p - y) ** 2)),
        "p_like_mean": float(p.mean()),
        "like_rate": float(y.mean()),
    }, table


def like_rate_gap(simulated: np.ndarray, real: np.ndarray, threshold: float = LIKE) -> float:
    """Simulated like rate minus real like rate on the same pairs, in points."""
    return float(100 * (np.mean(np.asarray(simulated) >= threshold) - np.mean(np.asarray(real) >= LIKE)))
