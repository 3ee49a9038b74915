"""Score the voters, the vote and (optionally) the spine's LLM on a fold's held-out likes.

Per voter: AUC of its score and accuracy of its vote over the pairs it voted on, plus `coverage`
(share of pairs it voted on) and `n`. The ensemble always decides (coverage 1): AUC of its score,
accuracy of its decision. Two reference rows cost nothing and say what the numbers mean:
`baseline:user_like_rate` (u's train like rate as the score) and `baseline:item_like_rate` (the
item's train like rate, else the global rate). With a spine run, `llm:like` scores its ratings
(score = rating, like = rating >= threshold) and every simulator is also scored on exactly those
pairs, with the suffix `@llm-rows`.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from doppel.tasks.ensemble.voters import (
    VOTERS,
    EnsembleOutput,
    Index,
    VoterOutput,
    ensemble_vote,
    f_mat,
    f_sim,
    f_sta,
    history_matrices,
    user_like_rate,
)
from doppel.tasks.metrics import binary_metrics
from doppel.tasks.store.schema import frame_columns

VOTE_COLUMNS = frame_columns("votes", ("run_id", "fold"))  # sql/ensemble.sql; the insert binds run and fold


def score_pairs(
    train: pd.DataFrame,
    pairs: pd.DataFrame,
    item_ids: list[str],
    threshold: int,
    keywords: pd.DataFrame,
    embeddings: np.ndarray,
    has_embedding: np.ndarray,
    sasrec,
    index: Index | None = None,
    sim_top_k: int | None = 10,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One row per pair (VOTE_COLUMNS) and the seconds each voter took.

    train: user_id, item_id, rating (u's own history); pairs: user_id, item_id, rating (held out);
    keywords: item_id, polarity, canonical; embeddings/has_embedding aligned with `index.items`.
    """
    index = index or Index.build(train, pairs, item_ids)
    liked, disliked = history_matrices(train, index, threshold)
    seconds: dict[str, float] = {}
    outputs: dict[str, VoterOutput] = {}
    t = time.monotonic()
    outputs["f_mat"] = f_mat(keywords, liked, disliked, index)
    seconds["f_mat"] = time.monotonic() - t
    t = time.monotonic()
    outputs["f_sim"] = f_sim(embeddings, has_embedding, liked, disliked, index, sim_top_k)
    seconds["f_sim"] = time.monotonic() - t
    t = time.monotonic()
    outputs["f_sta"] = f_sta(sasrec.like_probability(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy()))
    seconds["f_sta"] = time.monotonic() - t
    t = time.monotonic()
    prior, global_rate = user_like_rate(liked, disliked)
    vote = ensemble_vote([outputs[v] for v in VOTERS], prior[index.pair_u], global_rate)
    seconds["ensemble"] = time.monotonic() - t
    return votes_frame(pairs, threshold, outputs, vote), seconds


def votes_frame(
    pairs: pd.DataFrame, threshold: int, outputs: dict[str, VoterOutput], vote: EnsembleOutput
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": pairs["user_id"].to_numpy(),
            "item_id": pairs["item_id"].to_numpy(),
            "rating": pairs["rating"].to_numpy(np.int64),
        }
    )
    frame["truth_like"] = frame["rating"] >= threshold
    for name in VOTERS:
        frame[name] = outputs[name].score
        frame[f"{name}_vote"] = pd.array(
            np.where(np.isnan(outputs[name].vote), None, outputs[name].vote == 1.0), dtype="boolean"
        )
    frame["ensemble"] = vote.decision
    frame["ensemble_score"] = vote.score
    frame["decided_by"] = vote.decided_by.astype(str)
    return frame[VOTE_COLUMNS]


def _voter_metrics(truth: np.ndarray, score: np.ndarray, vote: np.ndarray) -> dict[str, float]:
    covered = ~np.isnan(score)
    n = len(truth)
    out = {"coverage": float(covered.mean()) if n else float("nan"), "n": float(covered.sum())}
    if covered.any():
        out["auc"] = binary_metrics(truth[covered], score[covered])["auc"]
        out["accuracy"] = binary_metrics(truth[covered], vote[covered].astype(float))["accuracy"]
    else:
        out["auc"] = out["accuracy"] = float("nan")
    return out


def f_mat_raw_rows(
    votes: pd.DataFrame,
    train: pd.DataFrame,
    pairs: pd.DataFrame,
    item_ids: list[str],
    threshold: int,
    keywords: pd.DataFrame,
    index: Index | None = None,
) -> pd.DataFrame:
    """f_mat on the raw keywords (no vocabulary), as `ensemble:f_mat:raw`: what unifying synonyms buys."""
    index = index or Index.build(train, pairs, item_ids)
    liked, disliked = history_matrices(train, index, threshold)
    out = f_mat(keywords, liked, disliked, index, column="keyword")
    stats = _voter_metrics(votes["truth_like"].to_numpy(bool), out.score, out.vote)
    return pd.DataFrame(
        [("ensemble:f_mat:raw", m, v) for m, v in stats.items()], columns=["simulator", "metric", "value"]
    ).astype({"value": float})


def _like_rates(train: pd.DataFrame, pairs: pd.DataFrame, threshold: int, key: str) -> np.ndarray:
    liked = (train["rating"] >= threshold).groupby(train[key]).mean()
    global_rate = float((train["rating"] >= threshold).mean()) if len(train) else 0.5
    return pairs[key].map(liked).fillna(global_rate).to_numpy(float)


def metrics_rows(
    votes: pd.DataFrame, train: pd.DataFrame, threshold: int, llm: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Long rows (simulator, metric, value) for every voter, the ensemble and the references."""
    rows = _scope(votes, train, threshold, "")
    if llm is not None and not llm.empty:
        both = votes.merge(
            llm.rename(columns={"rating": "llm_rating"})[["user_id", "item_id", "llm_rating"]],
            on=["user_id", "item_id"],
            how="inner",
        )
        rows += _scope(both, train, threshold, "@llm-rows")
        truth = both["truth_like"].to_numpy(bool)
        llm_rating = both["llm_rating"].to_numpy(float)
        stats = binary_metrics(truth, llm_rating, threshold=threshold)
        rows += [
            ("llm:like@llm-rows", m, v)
            for m, v in {**stats, "coverage": len(both) / max(1, len(llm)), "n": float(len(both))}.items()
        ]
    return pd.DataFrame(rows, columns=["simulator", "metric", "value"]).astype({"value": float})


def _scope(votes: pd.DataFrame, train: pd.DataFrame, threshold: int, suffix: str) -> list[tuple]:
    truth = votes["truth_like"].to_numpy(bool)
    rows: list[tuple] = []
    for name in VOTERS:
        vote = votes[f"{name}_vote"].astype("float").to_numpy()
        stats = _voter_metrics(truth, votes[name].to_numpy(float), vote)
        rows += [(f"ensemble:{name}{suffix}", m, v) for m, v in stats.items()]
    decision = votes["ensemble"].to_numpy(float)
    stats = {
        "auc": binary_metrics(truth, votes["ensemble_score"].to_numpy(float))["auc"],
        "accuracy": binary_metrics(truth, decision)["accuracy"],
        "coverage": 1.0,
        "n": float(len(votes)),
    }
    rows += [(f"ensemble:vote{suffix}", m, v) for m, v in stats.items()]
    for key, name in (("user_id", "user_like_rate"), ("item_id", "item_like_rate")):
        score = _like_rates(train, votes, threshold, key)
        stats = {**binary_metrics(truth, score), "coverage": 1.0, "n": float(len(votes))}
        rows += [(f"baseline:{name}{suffix}", m, v) for m, v in stats.items()]
    return rows
