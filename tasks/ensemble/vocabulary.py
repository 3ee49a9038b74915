"""Keyword filtering: unify synonyms into a shared vocabulary so f_mat matches meanings, not spellings.

Method ("leader" clustering on sentence embeddings, deterministic): distinct keywords are taken in
order of how many items use them (then shorter first, then alphabetically); a keyword joins the
most similar canonical keyword already chosen when their cosine similarity is >= `threshold`, else
it becomes a canonical keyword itself. The canonical name of a group is therefore its most used
member, which is the "naming" step (no LLM call; see the report for the LLM-naming alternative).
`threshold=1.0` keeps every distinct keyword (the raw, unfiltered vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

VOCAB_COLUMNS = ["keyword", "canonical", "n_items", "similarity"]


def keyword_counts(keywords: pd.DataFrame) -> pd.DataFrame:
    """Distinct keywords with the number of items using them, in leader order."""
    counts = keywords.groupby("keyword")["item_id"].nunique().rename("n_items").reset_index()
    counts["length"] = counts["keyword"].str.len()
    counts = counts.sort_values(["n_items", "length", "keyword"], ascending=[False, True, True])
    return counts.drop(columns="length").reset_index(drop=True)


def build_vocabulary(
    keywords: pd.DataFrame, encode: Callable[[list[str]], np.ndarray], threshold: float = 0.8
) -> pd.DataFrame:
    """keywords: item_id, keyword (any source/polarity). Returns keyword, canonical, n_items, similarity."""
    if keywords.empty:
        return pd.DataFrame(columns=VOCAB_COLUMNS)
    counts = keyword_counts(keywords)
    words = counts["keyword"].tolist()
    if threshold >= 1.0:
        return counts.assign(canonical=counts["keyword"], similarity=1.0)[VOCAB_COLUMNS]
    vectors = np.asarray(encode(words), dtype=np.float32)
    leaders = np.zeros((len(words), vectors.shape[1]), dtype=np.float32)
    leader_names: list[str] = []
    canonical, similarity = [], []
    for word, vector in zip(words, vectors):
        if leader_names:
            sims = leaders[: len(leader_names)] @ vector
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                canonical.append(leader_names[best])
                similarity.append(float(sims[best]))
                continue
        leaders[len(leader_names)] = vector
        leader_names.append(word)
        canonical.append(word)
        similarity.append(1.0)
    return counts.assign(canonical=canonical, similarity=similarity)[VOCAB_COLUMNS]


def canonicalise(keywords: pd.DataFrame, vocabulary: pd.DataFrame) -> pd.DataFrame:
    """keywords with a `canonical` column (a keyword missing from the vocabulary stays itself)."""
    mapping = dict(zip(vocabulary["keyword"], vocabulary["canonical"]))
    out = keywords.copy()
    out["canonical"] = [mapping.get(k, k) for k in out["keyword"]]
    return out


def vocabulary_stats(vocabulary: pd.DataFrame) -> dict:
    if vocabulary.empty:
        return {"keywords": 0, "canonical": 0, "merged": 0}
    n, c = len(vocabulary), vocabulary["canonical"].nunique()
    return {"keywords": n, "canonical": c, "merged": n - c}
