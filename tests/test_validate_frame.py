"""Tests for tasks/validate.py: validate_frame's contract: requested pairs, run ids, errors, empty and
big frames, threads, and nothing kept of a validated frame.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from doppel.tasks import validate as v
from tests._validate import RUN, _set, check, failed, input_users, profiles, sim_ratings


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Import GX and build the context once (~4 s) for the whole module."""
    t = time.perf_counter()
    v.validate_frame(input_users(), "input_users")
    print(f"\nGX warm-up {time.perf_counter() - t:.2f} s")


def _pairs(df: pd.DataFrame) -> pd.DataFrame:
    return df[["fold", "user_id", "item_id"]].copy()


def test_requested_pairs_all_present_pass() -> None:
    df = sim_ratings()
    out = check(df, "simulated_ratings", expected_pairs=_pairs(df))
    assert out.success and out.n_checks == len(v.load_suite("simulated_ratings")[0].expectations) + 1


def test_missing_requested_pair_fails() -> None:
    df = sim_ratings()
    out = check(df.drop(index=[2]).reset_index(drop=True), "simulated_ratings", expected_pairs=_pairs(df))
    assert failed(out) == {(v.PAIR_CHECK, "fold+user_id+item_id")}
    d = out.failures[0]["details"]
    assert d["missing_count"] == 1 and d["unexpected_count"] == 0
    assert d["partial_missing_list"] == [{"fold": "u1", "user_id": "0", "item_id": "102"}]
    assert "1 missing, e.g. (u1, 0, 102)" in v.format_failures(out)


def test_extra_pair_fails() -> None:
    df = sim_ratings()
    extra = df.iloc[[0]].assign(item_id="999")
    out = check(pd.concat([df, extra], ignore_index=True), "simulated_ratings", expected_pairs=_pairs(df))
    assert failed(out) == {(v.PAIR_CHECK, "fold+user_id+item_id")}
    assert out.failures[0]["details"]["unexpected_count"] == 1 and out.failures[0]["details"]["missing_count"] == 0


def test_pair_ids_compare_as_strings() -> None:
    df = sim_ratings()
    pairs = _pairs(df).astype({"user_id": int, "item_id": int})
    assert check(df, "simulated_ratings", expected_pairs=pairs).success


def test_run_id_is_required_for_output_suites() -> None:
    with pytest.raises(ValueError, match="expected_run_id"):
        v.validate_frame(sim_ratings(), "simulated_ratings")
    assert not check(sim_ratings(run_id="other"), "simulated_ratings").success


def test_unknown_suite_is_an_error() -> None:
    with pytest.raises(ValueError, match="no suite 'nope'"):
        v.validate_frame(sim_ratings(), "nope")


def test_empty_output_frame_passes() -> None:
    assert check(sim_ratings().iloc[0:0], "simulated_ratings").success


def test_raise_for_failure() -> None:
    out = check(_set("rating", 7)(sim_ratings()), "simulated_ratings")
    with pytest.raises(v.ValidationFailed, match="expect_column_values_to_be_in_set"):
        out.raise_for_failure()
    assert check(sim_ratings(), "simulated_ratings").raise_for_failure().success


def test_20k_rows_validate_quickly() -> None:
    n_users, n_items = 1000, 20
    df = sim_ratings(n_users=1, n_items=1)  # dtypes template
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(n_users), n_items), np.tile(np.arange(n_items), n_users)
    big = pd.DataFrame(
        {
            "run_id": RUN,
            "fold": "u1",
            "user_id": users.astype(str),
            "item_id": items.astype(str),
            "rating": pd.array(rng.integers(1, 6, len(users)), dtype="Int64"),
            "status": "ok",
            "reason": pd.Series([None] * len(users), dtype=object),
            "batch": items // 10,
            "attempts": 1,
            "call_key": "k",
            "rating_probs": [[0.1, 0.1, 0.2, 0.3, 0.3]] * len(users),
            "rating_probs_source": "logprobs",
            "rating_probs_draws": pd.array([None] * len(users), dtype="Int64"),
            "rating_probs_n": 5,
            "rating_probs_sum": 1.0,
        }
    )[list(df.columns)]
    pairs = _pairs(big)
    timings = []
    for _ in range(3):
        t = time.perf_counter()
        out = check(big, "simulated_ratings", expected_pairs=pairs)
        timings.append(time.perf_counter() - t)
    assert out.success and out.n_rows == 20_000, v.format_failures(out)
    print(f"\n20k rows, {out.n_checks} checks: " + ", ".join(f"{t:.3f}" for t in timings) + " s")


def test_threads_share_the_context_safely() -> None:
    from concurrent.futures import ThreadPoolExecutor

    frames = [sim_ratings(run_id=RUN if k % 2 else "other") for k in range(8)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda df: check(df, "simulated_ratings"), frames))
    assert [o.success for o in outs] == [bool(k % 2) for k in range(8)]


def test_validated_frame_is_not_retained() -> None:
    import gc
    import weakref

    df = sim_ratings()
    ref = weakref.ref(df)
    check(df, "simulated_ratings")
    del df
    gc.collect()
    assert ref() is None


def test_missing_column_is_reported_not_raised() -> None:
    out = check(profiles().drop(columns="stage"), "profiles")
    stage = [f for f in out.failures if f["column"] == "stage"]
    assert stage and all("exception" in f["details"] for f in stage)
    assert "error:" in v.format_failures(out)
