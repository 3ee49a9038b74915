"""One fold of the arena, after the recommenders ran: judge the lists, compute every protocol.

ranked, top = assemble(lists, families, observed_judged, catalogue_judged)
tables = evaluate_fold(ranked, top, observed_judged, fold)   # metrics, agreement, calibration
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from doppel.tasks.arena.ensemble_judge import ENSEMBLE
from doppel.tasks.arena.judges import AUDIT, HYBRID_JUDGES, audit_column
from doppel.tasks.arena.llm_judge import LLM, P_LIKE_LLM, REAL_LLM, judged_pairs
from doppel.tasks.arena.protocols import (
    LIKE,
    calibration,
    catalogue_metrics,
    like_rate_gap,
    like_threshold,
    noise_ceiling,
    observed_metrics,
    rank_agreement,
    user_matrix,
)

JUDGES = (*HYBRID_JUDGES, AUDIT)


def judges_in(judged: pd.DataFrame) -> list[str]:
    """The simulated judges of a judged frame: the hybrid's, the audit, the ensemble vote and the LLM if present."""
    return [*JUDGES, *(j for j in (ENSEMBLE, LLM) if j in judged)]


def real_of(judge: str) -> str:
    """The real judge a simulated one is set against: the LLM judged some users only, so its own."""
    return REAL_LLM if judge == LLM else "real"


PROTOCOL_METRICS = {"observed": ("ndcg@10", "precision@5"), "catalogue": ("like_rate@10",)}


def _judged_lists(lists: dict[str, pd.DataFrame], families: dict[str, str], judged: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for name, frame in lists.items():
        j = frame.merge(judged, on=["user_id", "item_id"], how="left", validate="one_to_one")
        j[AUDIT] = j[audit_column(judged, families[name])]
        frames.append(j.assign(recommender=name))
    keep = ["recommender", "user_id", "item_id", "rank", "score", "real", "p_like", *judges_in(judged)]
    return pd.concat(frames, ignore_index=True)[keep]


def assemble(
    lists: dict[str, dict],
    families: dict[str, str],
    observed_judged: pd.DataFrame,
    catalogue_judged: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each recommender's held-out ranking and catalogue top-k, with every judge's rating per pair.

    observed_judged / catalogue_judged: judges.judge_pairs output plus `real` (the held-out rating;
    NaN in the catalogue where the pair is not in test)."""
    ranked = _judged_lists({k: v["observed"] for k, v in lists.items()}, families, observed_judged)
    top = _judged_lists({k: v["catalogue"] for k, v in lists.items()}, families, catalogue_judged)
    return ranked, top


def evaluate_fold(
    ranked: pd.DataFrame, top: pd.DataFrame, observed_judged: pd.DataFrame, fold: str, n_boot: int = 500, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """metrics (mean per recommender), agreement (tau/rho with intervals, noise ceiling),
    calibration (gap, ECE, Brier per judge) and reliability (bins) for one fold."""
    recs = sorted(ranked["recommender"].unique())
    judges = judges_in(ranked)
    everyone = [j for j in judges if j != LLM]
    per_user = {
        "observed": observed_metrics(ranked, ["real", *everyone]),
        "catalogue": catalogue_metrics(top, everyone),
    }
    if LLM in judges:  # its users and pairs only, beside the real ratings of the same (judge real@llm)
        rated = judged_pairs(ranked)
        as_real = {"real": REAL_LLM}
        per_user["observed"] = pd.concat(
            [per_user["observed"], observed_metrics(rated, ["real", LLM]).replace({"judge": as_real})]
        )
        covered = top[top["user_id"].isin(set(rated["user_id"]))]
        per_user["catalogue"] = pd.concat(
            [per_user["catalogue"], catalogue_metrics(covered, [LLM]).replace({"judge": as_real})]
        )
    metrics = pd.concat(
        [
            u.drop(columns="user_id")
            .groupby(["recommender", "judge"])
            .mean()
            .reset_index()
            .melt(id_vars=["recommender", "judge"], var_name="metric", value_name="value")
            .assign(protocol=protocol)
            for protocol, u in per_user.items()
        ],
        ignore_index=True,
    ).dropna(subset=["value"])
    rows = []
    for protocol, names in PROTOCOL_METRICS.items():
        for metric in names:
            for judge in judges:
                real = user_matrix(per_user[protocol], real_of(judge), metric, recs)
                sim = user_matrix(per_user[protocol], judge, metric, recs)
                row = {
                    "protocol": protocol,
                    "metric": metric,
                    "judge": judge,
                    **rank_agreement(real, sim, n_boot, seed),
                }
                if protocol == "observed":
                    ceiling = noise_ceiling(real, sim, seed=seed)
                    row.update(
                        {
                            "tau_judge_cross": ceiling["tau_judge_cross"],
                            "tau_real_cross": ceiling["tau_real_cross"],
                            "ceiling_ratio": ceiling["ratio"],
                        }
                    )
                rows.append(row)
    agreement = pd.DataFrame(rows)
    held = observed_judged.dropna(subset=["real"])
    # the three hybrid judges share one distribution, so one P(like), one ECE, Brier and reliability
    judged = [(judge, held, "p_like") for judge in HYBRID_JUDGES]
    if ENSEMBLE in held:  # a hard vote: P(like) is the vote itself
        judged.append((ENSEMBLE, held.dropna(subset=[ENSEMBLE]), ENSEMBLE))
    rated = judged_pairs(held)
    if len(rated):  # the LLM's own P(like): from its rating distribution, else its hard like
        judged.append((LLM, rated, P_LIKE_LLM))
    calib_rows: list[dict] = []
    reliability: dict[str, pd.DataFrame] = {}
    for judge, pairs, p_like in judged:
        row, judge_bins = calibration_row(judge, pairs, p_like)
        calib_rows.append(row)
        reliability.setdefault("hybrid" if judge in HYBRID_JUDGES else judge, judge_bins)
    calib = pd.DataFrame(calib_rows)
    bins = pd.concat([b.assign(judge=name) for name, b in reliability.items() if name != ENSEMBLE], ignore_index=True)
    for frame in (metrics, agreement, calib, bins):
        frame.insert(0, "fold", fold)
    return {"metrics": metrics, "agreement": agreement, "calibration": calib, "reliability": bins}


def calibration_row(judge: str, pairs: pd.DataFrame, p_like: str) -> tuple[dict, pd.DataFrame]:
    """One judge's like-rate gap, like rates, ECE and Brier of its P(like) (column `p_like`) on the
    held-out `pairs`, and its reliability bins."""
    threshold = like_threshold(judge)
    stats, bins = calibration(pairs[p_like].to_numpy(), (pairs["real"] >= LIKE).to_numpy())
    row = {
        "judge": judge,
        "like_rate_gap": like_rate_gap(pairs[judge].to_numpy(), pairs["real"].to_numpy(), threshold=threshold),
        "like_rate": float(np.mean(pairs[judge] >= threshold)),
        "real_like_rate": float(np.mean(pairs["real"] >= LIKE)),
        "ece": stats["ece"],
        "brier": stats["brier"],
        "n": len(pairs),
    }
    return row, bins
