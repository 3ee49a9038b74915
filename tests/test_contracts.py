"""Contracts where the ensemble, sandbox and RL tables are written: rows that break one are never stored."""

from __future__ import annotations

import pandas as pd
import pytest

from doppel.tasks import validate as v


def _stored(db, sql: str) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _votes(n: int = 4) -> pd.DataFrame:
    from doppel.tasks.ensemble.evaluate import VOTE_COLUMNS

    frame = pd.DataFrame(
        {
            "user_id": [str(u) for u in range(n)],
            "item_id": ["10"] * n,
            "rating": [5, 4, 2, 1][:n],
            "truth_like": [True, True, False, False][:n],
            "f_mat": [0.8, None, 0.3, 0.5][:n],
            "f_mat_vote": pd.array([True, None, False, None][:n], dtype="boolean"),
            "f_sim": [0.7, 0.6, 0.2, None][:n],
            "f_sim_vote": pd.array([True, True, False, None][:n], dtype="boolean"),
            "f_sta": [0.9, 0.6, 0.4, 0.3][:n],
            "f_sta_vote": pd.array([True, True, False, False][:n], dtype="boolean"),
            "ensemble": [True, True, False, False][:n],
            "ensemble_score": [0.9, 0.7, 0.1, 0.2][:n],
            "decided_by": ["vote", "vote", "vote", "mean"][:n],
        }
    )
    return frame[VOTE_COLUMNS]


VOTE_BREAKS = {
    "rating 7": (lambda d: d.assign(rating=[7, 4, 2, 1]), ("expect_column_values_to_be_in_set", "rating")),
    "a coin decided": (lambda d: d.assign(decided_by="coin"), ("expect_column_values_to_be_in_set", "decided_by")),
    "score above 1": (lambda d: d.assign(f_sim=[1.5, 0.6, 0.2, None]), ("expect_column_values_to_be_between", "f_sim")),
    "SASRec abstained": (lambda d: d.assign(f_sta=None), ("expect_column_values_to_not_be_null", "f_sta")),
}


@pytest.mark.parametrize("name", list(VOTE_BREAKS))
def test_votes_that_break_the_contract_are_not_stored(tmp_path, name) -> None:
    from doppel.tasks.ensemble.store import save_votes
    from doppel.tasks.store.db import init_db

    db = tmp_path / "db.duckdb"
    init_db(db)
    save_votes(db, "ens-1", "u1", _votes())
    assert _stored(db, "select count(*) from votes") == [(4,)]
    corrupt, expected = VOTE_BREAKS[name]
    with pytest.raises(v.ValidationFailed, match=expected[0]):
        save_votes(db, "ens-1", "u1", corrupt(_votes()))
    assert _stored(db, "select count(*), min(rating) from votes") == [(4, 1)]  # the earlier rows stand
    gate = _stored(db, "select suite, success, failures from validation_results order by checked_at")
    assert [(s, ok) for s, ok, _ in gate] == [("votes", True), ("votes", False)]
    assert expected[1].split("+")[0] in gate[-1][2]


def _sandbox_frames(action: str = "watch", status: str = "ok", rating: int = 4) -> dict[str, pd.DataFrame]:
    import numpy as np

    from doppel.tasks.sandbox.records import Outcome
    from doppel.tasks.sandbox.store import outcome_frames

    out = Outcome(agent_id="A01", round=1)
    out.act("recommender", "entered the recommender")
    out.act(action, "Heat [10]", status=status)
    out.ratings.append({"item_id": "10", "rating": rating, "feeling": "tense", "call_key": None})
    out.remember("A01", "watch", "Round 1: watched Heat", 5)
    return outcome_frames([out], {"A01": "196"}, lambda texts: np.zeros((len(texts), 3)))


def test_sandbox_outcomes_under_contract_are_stored(tmp_path) -> None:
    from doppel.tasks.sandbox.store import save_outcomes
    from doppel.tasks.store.db import init_db

    db = tmp_path / "db.duckdb"
    init_db(db)
    save_outcomes(db, "sb-1", 1, _sandbox_frames())
    assert _stored(db, "select count(*) from sandbox_actions") == [(2,)]
    assert _stored(db, "select suite, success from validation_results order by suite") == [
        ("sandbox_actions", True),
        ("sandbox_ratings", True),
    ]


SANDBOX_BREAKS = {
    "unknown action": (dict(action="dance"), "sandbox_actions", "a known action"),
    "a failed action without a reason": (dict(status="failed"), "sandbox_actions", "a failed action says why"),
    "rating 6": (dict(rating=6), "sandbox_ratings", "an integer 1..5"),
}


@pytest.mark.parametrize("name", list(SANDBOX_BREAKS))
def test_sandbox_outcomes_that_break_a_contract_are_not_stored(tmp_path, name) -> None:
    from doppel.tasks.sandbox.store import save_outcomes
    from doppel.tasks.store.db import init_db

    db = tmp_path / "db.duckdb"
    init_db(db)
    change, suite, description = SANDBOX_BREAKS[name]
    with pytest.raises(v.ValidationFailed, match=description):
        save_outcomes(db, "sb-1", 1, _sandbox_frames(**change))
    assert _stored(db, "select count(*) from sandbox_actions") == [(0,)]
    assert _stored(db, "select count(*) from sandbox_ratings") == [(0,)]
    assert (suite, False) in _stored(db, "select suite, success from validation_results")


def test_rl_results_that_break_the_contract_are_not_stored(tmp_path) -> None:
    from doppel.tasks.rl.store import save_results
    from doppel.tasks.store.db import init_db

    db = tmp_path / "db.duckdb"
    init_db(db)
    rows = pd.DataFrame(
        [("u1", f"rl:{a}", m, x) for a in ("ppo", "random") for m, x in (("liking", 0.4), ("episodes", 8.0))],
        columns=["fold", "simulator", "metric", "value"],
    )
    save_results(db, "rl-1", rows)
    assert _stored(db, "select count(*) from metrics where run_id = 'rl-1'") == [(4,)]
    bad = rows.assign(value=[1.4, 8.0, 0.4, 8.0])  # a liking share above 1
    with pytest.raises(v.ValidationFailed, match="liking is a share"):
        save_results(db, "rl-2", bad)
    assert _stored(db, "select count(*) from metrics where run_id = 'rl-2'") == [(0,)]
