"""The arena's rows: table frames from one fold's results, the gate (GX contracts) and the write."""

from __future__ import annotations

import pandas as pd

from doppel.tasks.arena.ensemble_judge import ENSEMBLE
from doppel.tasks.arena.llm_judge import LLM, P_LIKE_LLM
from doppel.tasks.arena.zoo import Entrant
from doppel.tasks.store.db import transaction
from doppel.tasks.store.schema import table_columns
from doppel.tasks.validate import ValidationOutcome, validate_frame

LIST_COLUMNS = table_columns("arena_lists")  # sql/arena.sql
JUDGMENT_COLUMNS = table_columns("arena_judgments")
RATING_JUDGES = ("real", "hybrid:accuracy", "hybrid:realism", "hybrid:draw")


def list_rows(run_id: str, fold: str, lists: dict[str, dict]) -> pd.DataFrame:
    frames = [
        out[protocol].assign(run_id=run_id, fold=fold, protocol=protocol, recommender=name)
        for name, out in lists.items()
        for protocol in ("observed", "catalogue")
    ]
    return pd.concat(frames, ignore_index=True)[LIST_COLUMNS]


def judgment_rows(run_id: str, fold: str, judged: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """judged: protocol -> judges.judge_pairs output + real; long rows, one per pair and judge."""
    frames = []
    for protocol, frame in judged.items():
        judges = [c for c in frame.columns if c in RATING_JUDGES or c.startswith("acc_no_")]
        long = frame.melt(
            id_vars=["user_id", "item_id", "p_like"], value_vars=judges, var_name="judge", value_name="rating"
        )
        long = long.dropna(subset=["rating"])
        long = long.assign(liked=long["rating"] >= 4)
        long.loc[long["judge"] == "real", "p_like"] = None
        if ENSEMBLE in frame:  # a vote, no rating: P(like) is the vote
            vote = frame[["user_id", "item_id", ENSEMBLE]].dropna().rename(columns={ENSEMBLE: "p_like"})
            vote = vote.assign(judge=ENSEMBLE, rating=pd.NA, liked=vote["p_like"] >= 1)
            long = pd.concat([long.astype({"rating": "Int64"}), vote.astype({"rating": "Int64"})], ignore_index=True)
        if LLM in frame:  # the LLM's rating, with P(like) from its distribution
            rated = frame[["user_id", "item_id", LLM, P_LIKE_LLM]].dropna(subset=[LLM])
            rated = rated.rename(columns={LLM: "rating", P_LIKE_LLM: "p_like"}).assign(judge=LLM)
            rated = rated.assign(liked=rated["rating"] >= 4)
            long = pd.concat([long.astype({"rating": "Int64"}), rated.astype({"rating": "Int64"})], ignore_index=True)
        frames.append(long.assign(run_id=run_id, fold=fold, protocol=protocol))
    out = pd.concat(frames, ignore_index=True)
    return out.astype({"rating": "Int64", "liked": bool})[JUDGMENT_COLUMNS]


def recommender_rows(run_id: str, fold: str, entrants: list[Entrant], lists: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run_id": run_id,
                "fold": fold,
                "recommender": e.name,
                "family": e.family,
                "factory": e.factory,
                "fit_s": float(lists[e.name]["fit_s"]),
                "score_s": float(lists[e.name]["score_s"]),
                "cached": bool(lists[e.name].get("cached", False)),
            }
            for e in entrants
        ]
    )


def gate(run_id: str, frames: dict[str, pd.DataFrame]) -> list[ValidationOutcome]:
    """The contracts checked before any metric: arena_lists and arena_judgments."""
    return [validate_frame(frames[name], name, expected_run_id=run_id) for name in ("arena_lists", "arena_judgments")]


def save_fold(db: str, run_id: str, fold: str, frames: dict[str, pd.DataFrame]) -> None:
    """Write one fold's rows in one transaction (a rerun of the fold replaces them)."""
    names = ("recommenders", "lists", "judgments", "metrics", "agreement", "calibration", "reliability")
    transaction(
        db,
        "arena_save_fold",
        {f"new_{n}": frames[f"arena_{n}"].assign(run_id=run_id) for n in names},
        run_id=run_id,
        fold=fold,
    )
