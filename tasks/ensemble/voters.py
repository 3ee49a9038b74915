"""The three voters and the 2-of-3 vote, vectorised over every (user, candidate item) pair.

Every voter reads only the pair's own user's train history (the seed's code read the history of the
item's first reviewer). Like = train rating >= threshold. Each voter returns a score in [0, 1]
(higher = more likely liked; NaN = abstained) and a vote (1 like, 0 dislike, NaN abstained):

- f_mat (keywords): m_pos = sum over the candidate's pro keywords k of the share of u's liked
  (analysed) train items that have k as a pro; m_neg likewise with the candidate's cons and u's
  disliked items' cons. Vote like if m_pos > m_neg, dislike if m_neg > m_pos, ABSTAIN if they are
  equal, which covers: the candidate has no keywords (partial catalogue, failed analysis), nothing
  matches, and u has no analysed liked and no analysed disliked item. With no liked history m_pos is
  0, so f_mat can only vote dislike or abstain (and vice versa). Score = sigmoid(4 (m_pos - m_neg)).
- f_sim (embeddings): s_L = mean cosine similarity of the candidate to its k most similar liked train
  items of u (k=10; all of them if u has fewer), s_D likewise with u's disliked items. Vote like if
  s_L > s_D, dislike if s_L < s_D; ABSTAIN when u has no liked or no disliked train item with an
  embedding (one side is undefined) or s_L == s_D. Score = sigmoid(20 (s_L - s_D)). (k=10 was chosen
  on fold u2: AUC 0.685 against 0.584 for the mean over all items; k=5: 0.676, k=20: 0.679.)
- f_sta (SASRec): score = like probability; vote like if >= 0.5. Never abstains (a user without
  history is scored from the empty sequence's state).
- Ensemble: like if >= 2 voters vote like, dislike if >= 2 vote dislike. Otherwise (one vote each
  way with an abstention, or a single vote) the mean score of the voters that voted decides
  (> 0.5 like, < 0.5 dislike); at exactly 0.5, or with no vote at all, u's train like rate decides
  (>= 0.5 like), and for a user with no train ratings the fold's global train like rate. No coin flips.
  Ensemble score (for AUC) = (likes + abstentions / 2) / 3 + 0.01 (mean voted score - 0.5): the vote
  share, ties broken by the voters' confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

VOTERS = ("f_mat", "f_sim", "f_sta")


@dataclass
class VoterOutput:
    score: np.ndarray  # float in [0, 1], NaN = abstained
    vote: np.ndarray  # 1.0 like, 0.0 dislike, NaN abstained


@dataclass
class Index:
    """Integer codes for users and items, and the pairs to score as code arrays."""

    users: dict[str, int]
    items: dict[str, int]
    pair_u: np.ndarray
    pair_i: np.ndarray

    @classmethod
    def build(cls, train: pd.DataFrame, pairs: pd.DataFrame, item_ids: list[str]) -> Index:
        users = {u: k for k, u in enumerate(sorted(set(train["user_id"]) | set(pairs["user_id"])))}
        items = {i: k for k, i in enumerate(item_ids)}
        extra = [i for i in pd.unique(pd.concat([train["item_id"], pairs["item_id"]])) if i not in items]
        for i in extra:
            items[i] = len(items)
        return cls(
            users, items, pairs["user_id"].map(users).to_numpy(np.int64), pairs["item_id"].map(items).to_numpy(np.int64)
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _vote(diff: np.ndarray, abstain: np.ndarray) -> np.ndarray:
    vote = np.where(diff > 0, 1.0, 0.0)
    vote[abstain | (diff == 0)] = np.nan
    return vote


def history_matrices(train: pd.DataFrame, index: Index, threshold: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """(liked, disliked): users x items 0/1 matrices of u's own train ratings."""
    u = train["user_id"].map(index.users).to_numpy(np.int64)
    i = train["item_id"].map(index.items).to_numpy(np.int64)
    liked = train["rating"].to_numpy() >= threshold
    shape = (len(index.users), len(index.items))
    make = lambda m: sparse.csr_matrix((np.ones(int(m.sum())), (u[m], i[m])), shape=shape)  # noqa: E731
    return make(liked), make(~liked)


def _row_normalise(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    inv = np.divide(1.0, sums, out=np.zeros_like(sums, dtype=float), where=sums > 0)
    return sparse.diags(inv) @ matrix


def _pair_dot(left: sparse.csr_matrix, rows_l: np.ndarray, right: sparse.csr_matrix, rows_r: np.ndarray) -> np.ndarray:
    """Row-wise dot products <left[rows_l[k]], right[rows_r[k]]> for every pair k."""
    return np.asarray(left[rows_l].multiply(right[rows_r]).sum(axis=1)).ravel()


def f_mat(
    keywords: pd.DataFrame,
    liked: sparse.csr_matrix,
    disliked: sparse.csr_matrix,
    index: Index,
    column: str = "canonical",
) -> VoterOutput:
    """keywords: item_id, polarity (pro|con), `column` (the keyword to match on)."""
    n_items = len(index.items)
    kw = keywords[keywords["item_id"].isin(index.items.keys())]
    vocab = {k: j for j, k in enumerate(sorted(set(kw[column])))}
    shape = (n_items, max(1, len(vocab)))

    def item_matrix(polarity: str) -> sparse.csr_matrix:
        part = kw[kw["polarity"] == polarity].drop_duplicates(["item_id", column])
        rows = part["item_id"].map(index.items).to_numpy(np.int64)
        cols = part[column].map(vocab).to_numpy(np.int64)
        return sparse.csr_matrix((np.ones(len(part)), (rows, cols)), shape=shape)

    pros, cons = item_matrix("pro"), item_matrix("con")
    analysed = np.zeros(n_items, dtype=bool)
    analysed[kw["item_id"].map(index.items).to_numpy(np.int64)] = True
    keep = sparse.diags(analysed.astype(float))
    liked_pros = _row_normalise(liked @ keep) @ pros  # users x vocab: share of liked items with each pro
    disliked_cons = _row_normalise(disliked @ keep) @ cons
    m_pos = _pair_dot(pros, index.pair_i, liked_pros.tocsr(), index.pair_u)
    m_neg = _pair_dot(cons, index.pair_i, disliked_cons.tocsr(), index.pair_u)
    diff = m_pos - m_neg
    abstain = ~analysed[index.pair_i]
    vote = _vote(diff, abstain)
    return VoterOutput(np.where(np.isnan(vote), np.nan, _sigmoid(4.0 * diff)), vote)


def f_sim(
    embeddings: np.ndarray,
    has_embedding: np.ndarray,
    liked: sparse.csr_matrix,
    disliked: sparse.csr_matrix,
    index: Index,
    top_k: int | None = 10,
) -> VoterOutput:
    """embeddings: unit rows per item code (items x dim); has_embedding: bool per item code.

    s_L / s_D = mean cosine similarity of the candidate to its `top_k` most similar liked / disliked
    train items of u (all of them when u has fewer, or with top_k=None). One matrix product per user.
    """
    keep = sparse.diags(has_embedding.astype(float))
    liked_k, disliked_k = (liked @ keep).tocsr(), (disliked @ keep).tocsr()
    liked_k.eliminate_zeros(), disliked_k.eliminate_zeros()  # items without an embedding drop out
    n = len(index.pair_u)
    s_like, s_dislike = np.full(n, np.nan), np.full(n, np.nan)
    order = np.argsort(index.pair_u, kind="stable")
    users, starts = np.unique(index.pair_u[order], return_index=True)
    with _one_blas_thread():  # ~900 small products: BLAS threads only add overhead (2.6 s -> 0.4 s on u1)
        for user, positions in zip(users, np.split(order, starts[1:])):
            _user_similarities(user, positions, embeddings, index, liked_k, disliked_k, top_k, s_like, s_dislike)
    diff = s_like - s_dislike
    abstain = np.isnan(diff) | ~has_embedding[index.pair_i]
    diff = np.nan_to_num(diff)
    vote = _vote(diff, abstain)
    return VoterOutput(np.where(np.isnan(vote), np.nan, _sigmoid(20.0 * diff)), vote)


def _user_similarities(user, positions, embeddings, index, liked_k, disliked_k, top_k, s_like, s_dislike) -> None:
    mine_l = liked_k.indices[liked_k.indptr[user] : liked_k.indptr[user + 1]]
    mine_d = disliked_k.indices[disliked_k.indptr[user] : disliked_k.indptr[user + 1]]
    if not len(mine_l) or not len(mine_d):
        return
    cand = embeddings[index.pair_i[positions]]
    s_like[positions] = _top_mean(cand @ embeddings[mine_l].T, top_k)
    s_dislike[positions] = _top_mean(cand @ embeddings[mine_d].T, top_k)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _top_mean(similarity: np.ndarray, k: int | None) -> np.ndarray:
    if k is None or similarity.shape[1] <= k:
        return similarity.mean(axis=1)
    return np.partition(similarity, -k, axis=1)[:, -k:].mean(axis=1)


def f_sta(probability: np.ndarray) -> VoterOutput:
    p = np.asarray(probability, dtype=float)
    return VoterOutput(p, np.where(p >= 0.5, 1.0, 0.0))


def user_like_rate(liked: sparse.csr_matrix, disliked: sparse.csr_matrix) -> tuple[np.ndarray, float]:
    """(like rate per user code, NaN without train ratings; the global train like rate)."""
    n_l = np.asarray(liked.sum(axis=1)).ravel()
    n_d = np.asarray(disliked.sum(axis=1)).ravel()
    total = n_l + n_d
    rate = np.divide(n_l, total, out=np.full(len(total), np.nan), where=total > 0)
    overall = float(n_l.sum() / total.sum()) if total.sum() else 0.5
    return rate, overall


@dataclass
class EnsembleOutput:
    decision: np.ndarray  # bool: liked
    score: np.ndarray  # float in [0, 1]
    decided_by: np.ndarray  # "vote" | "mean" | "prior"


def ensemble_vote(outputs: list[VoterOutput], prior: np.ndarray, global_rate: float) -> EnsembleOutput:
    """The 2-of-3 vote with the deterministic fallbacks described in the module docstring."""
    votes = np.stack([o.vote for o in outputs], axis=1)
    scores = np.stack([o.score for o in outputs], axis=1)
    n_like = np.sum(votes == 1.0, axis=1)
    n_dislike = np.sum(votes == 0.0, axis=1)
    n_abstain = votes.shape[1] - n_like - n_dislike
    voted = ~np.isnan(scores)
    mean = np.divide(
        np.where(voted, scores, 0.0).sum(axis=1),
        voted.sum(axis=1),
        out=np.full(len(votes), 0.5),
        where=voted.sum(axis=1) > 0,
    )
    user_prior = np.where(np.isnan(prior), global_rate, prior) >= 0.5
    decision = np.where(mean > 0.5, True, np.where(mean < 0.5, False, user_prior))
    decided_by = np.where(mean != 0.5, "mean", "prior").astype(object)
    by_vote = (n_like >= 2) | (n_dislike >= 2)
    decision = np.where(n_like >= 2, True, np.where(n_dislike >= 2, False, decision))
    decided_by[by_vote] = "vote"
    score = (n_like + 0.5 * n_abstain) / votes.shape[1] + 0.01 * (mean - 0.5)
    return EnsembleOutput(decision.astype(bool), np.clip(score, 0.0, 1.0), decided_by)
