"""An LLM `doppel run --target arena` as an arena judge: its ratings of exactly the listed items.

That run rates a seeded sample of the fold's test users, every item the arena's recommenders listed
for them (held-out and catalogue), through the same gateway, cache and resume as any run. The judge
covers those users only, so its metrics, rank agreement and calibration are set against the real
ratings of the same users and pairs (judge `real@llm`). P(like) = P(4) + P(5) of the run's rating
distribution (logprobs or draws) where it stored one, else the hard like (rating >= 4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LLM = "llm"
REAL_LLM = "real@llm"  # the real ratings of the pairs the LLM judged
P_LIKE_LLM = "p_like:llm"


def llm_ratings(db: str, arena_run: str, fold: str, llm_run: str | None = None) -> tuple[pd.DataFrame | None, str]:
    """(user_id, item_id, llm, p_like:llm) of the run that rated `arena_run`'s lists of `fold`
    (`llm_run`, default the latest finished one), and a note; (None, why) when there is none."""
    from doppel.tasks.store.db import query

    if llm_run is None:
        found = query(db, "arena_llm_run", arena_run=arena_run)
        if found.empty:
            return None, (
                f"no LLM judge: no finished `doppel run --target arena --arena-run {arena_run}` in {db} "
                "(run one, then this arena again with --run-id: its lists come from the cache)"
            )
        llm_run = str(found["run_id"].iloc[0])
    rows = query(db, "arena_llm_ratings", run_id=llm_run, fold=fold)
    ok = (rows["status"] == "ok") & rows["rating"].notna()
    failed, rows = int((~ok).sum()), rows[ok]
    if rows.empty:
        return None, f"no LLM judge: run {llm_run} has no rated pair of fold {fold}"
    probs = rows["rating_probs"].map(lambda p: float(p[3] + p[4]) if p is not None and len(p) == 5 else np.nan)
    hard = (rows["rating"] >= 4).astype(float)
    out = pd.DataFrame(
        {
            "user_id": rows["user_id"].astype(str),
            "item_id": rows["item_id"].astype(str),
            LLM: rows["rating"].astype(float),
            P_LIKE_LLM: probs.fillna(hard),
        }
    )
    source = "its rating distribution" if probs.notna().all() else "its ratings (no distribution stored for some)"
    return out, (
        f"LLM judge: run {llm_run}, {out['user_id'].nunique()} users, {len(out)} pairs "
        f"({failed} failed pairs left out); P(like) from {source}"
    )


def judged_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a judged frame the LLM rated."""
    return frame[frame[LLM].notna()] if LLM in frame else frame.iloc[0:0]
