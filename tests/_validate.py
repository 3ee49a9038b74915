"""Frames for the GX gate tests: a good frame for every suite, corruptions, and reading a validation outcome."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from doppel.tasks import validate as v

RUN = "run-1"


def sim_ratings(n_users: int = 3, n_items: int = 4, run_id: str = RUN) -> pd.DataFrame:
    """A valid simulated_ratings frame; the last pair of each user failed."""
    rows = []
    for u in range(n_users):
        for i in range(n_items):
            failed = i == n_items - 1
            rows.append(
                {
                    "run_id": run_id,
                    "fold": "u1",
                    "user_id": str(u),
                    "item_id": str(100 + i),
                    "rating": None if failed else 1 + (u + i) % 5,
                    "status": "failed" if failed else "ok",
                    "reason": "missing id" if failed else None,
                    "batch": i // 2,
                    "attempts": 1 + failed,
                    "call_key": f"k{u}-{i // 2}",
                    # as sql/queries/run_ratings.sql gives them; the first user's server sent no logprobs,
                    # the second's did, the third's distributions come from 8 draws each
                    "rating_probs": None if failed or u == 0 else [0.1, 0.1, 0.2, 0.3, 0.3],
                    "rating_probs_source": None if failed or u == 0 else "logprobs" if u == 1 else "samples",
                    "rating_probs_draws": 8 if not failed and u >= 2 else None,
                }
            )
    df = pd.DataFrame(rows)
    df["rating_probs_draws"] = df["rating_probs_draws"].astype("Int64")
    df["rating_probs_n"] = pd.array([None if p is None else len(p) for p in df["rating_probs"]], "Int64")
    df["rating_probs_sum"] = [np.nan if p is None else sum(p) for p in df["rating_probs"]]
    return df.astype({"rating": "Int64"})


def profiles() -> pd.DataFrame:
    stages = ["initial", "refine", "update"]
    rows = [
        {
            "run_id": RUN,
            "fold": "u1",
            "user_id": str(u),
            "version": k + 1,
            "stage": stages[k],
            "text": f"User {u} likes dramas and rates them generously.",
            "call_key": f"p{u}{k}",
        }
        for u in range(3)
        for k in range(3)
    ]
    return pd.DataFrame(rows)


def input_ratings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["1", "1", "2"],
            "item_id": ["10", "11", "10"],
            "rating": [5, 3, 1],
            "ts": [881250949, 881250950, 881250951],
        }
    )


def input_items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["10", "11"],
            "title": ["Toy Story", "Heat"],
            "year": pd.array([1995, None], "Int64"),
            "genres": ["Animation|Comedy", ""],
            "text": ["", "A heist."],
        }
    )


def input_users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["1", "2"],
            "age": [24, 53],
            "gender": ["M", "F"],
            "occupation": ["technician", "other"],
            "zip": ["85711", "94043"],
            "text": ["", ""],
        }
    )


GOOD: dict[str, Callable[[], pd.DataFrame]] = {
    "simulated_ratings": sim_ratings,
    "profiles": profiles,
    "input_ratings": input_ratings,
    "input_items": input_items,
    "input_users": input_users,
}


def failed(outcome: v.ValidationOutcome) -> set[tuple[str, str]]:
    """{(expectation, column)} of every failure, lists of columns joined with '+'."""
    return {
        (f["expectation"], "+".join(f["column"]) if isinstance(f["column"], list) else str(f["column"]))
        for f in outcome.failures
    }


def check(df: pd.DataFrame, suite: str, **kw) -> v.ValidationOutcome:
    if suite in ("simulated_ratings", "profiles"):
        kw.setdefault("expected_run_id", RUN)
    return v.validate_frame(df, suite, **kw)


def _set(col: str, value, row: int = 0) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def f(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        if value is None or value is pd.NA:
            df[col] = df[col].astype(object)
        elif isinstance(value, float):
            df[col] = df[col].astype(float)
        df.loc[row, col] = value
        return df

    return f
