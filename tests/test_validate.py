"""Tests for tasks/validate.py: the GX gate over doppel's JSON suites."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

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


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Import GX and build the context once (~4 s) for the whole module."""
    t = time.perf_counter()
    v.validate_frame(input_users(), "input_users")
    print(f"\nGX warm-up {time.perf_counter() - t:.2f} s")


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


@pytest.mark.parametrize("suite", sorted(GOOD))
def test_good_frames_pass(suite: str) -> None:
    out = check(GOOD[suite](), suite)
    assert out.success, v.format_failures(out)
    assert out.failures == [] and out.n_rows == len(GOOD[suite]()) and out.n_checks > 3
    assert "ok" in v.format_failures(out)


def test_all_suites_load_with_every_expectation() -> None:
    for path in sorted(v.SUITES_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        suite, _ = v.load_suite(path.stem)
        assert raw["name"] == path.stem and len(suite.expectations) == len(raw["expectations"])
        assert all(e["meta"]["description"] for e in raw["expectations"])


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


def _dup(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[[0]]], ignore_index=True)


IN_SET, NOT_NULL = "expect_column_values_to_be_in_set", "expect_column_values_to_not_be_null"
CORRUPTIONS = {
    "rating 7": ("simulated_ratings", _set("rating", 7), {(IN_SET, "rating")}),
    "null rating with status ok": ("simulated_ratings", _set("rating", pd.NA), {(NOT_NULL, "rating")}),
    "rating on a failed pair": (
        "simulated_ratings",
        _set("rating", 4, row=3),
        {("expect_column_values_to_be_null", "rating")},
    ),
    "duplicate pair": (
        "simulated_ratings",
        _dup,
        {("expect_compound_columns_to_be_unique", "run_id+fold+user_id+item_id")},
    ),
    "wrong run_id": ("simulated_ratings", _set("run_id", "run-0"), {(IN_SET, "run_id")}),
    "unknown status": ("simulated_ratings", _set("status", "maybe"), {(IN_SET, "status")}),
    "negative batch": ("simulated_ratings", _set("batch", -1), {("expect_column_values_to_be_between", "batch")}),
    "zero attempts": ("simulated_ratings", _set("attempts", 0), {("expect_column_values_to_be_between", "attempts")}),
    "extra column": (
        "simulated_ratings",
        lambda d: d.assign(x=1),
        {
            (
                "expect_table_columns_to_match_ordered_list",
                "run_id+fold+user_id+item_id+rating+status+reason+batch+attempts+call_key+rating_probs+rating_probs_source+rating_probs_draws+rating_probs_n+rating_probs_sum",
            )
        },
    ),
    "4 rating probabilities": ("simulated_ratings", _set("rating_probs_n", 4, row=4), {(IN_SET, "rating_probs_n")}),
    "probabilities summing to 0.9": (
        "simulated_ratings",
        _set("rating_probs_sum", 0.9, row=4),
        {("expect_column_values_to_be_between", "rating_probs_sum")},
    ),
    "probabilities on a failed pair": (
        "simulated_ratings",
        _set("rating_probs_n", 5, row=7),
        {("expect_column_values_to_be_null", "rating_probs_n"), (NOT_NULL, "rating_probs_source")},
    ),
    "unknown distribution source": (
        "simulated_ratings",
        _set("rating_probs_source", "guess", row=4),
        {(IN_SET, "rating_probs_source")},
    ),
    "distribution without a source": (
        "simulated_ratings",
        _set("rating_probs_source", None, row=4),
        {(NOT_NULL, "rating_probs_source")},
    ),
    "source on a failed pair": (
        "simulated_ratings",
        _set("rating_probs_source", "logprobs", row=7),
        {("expect_column_values_to_be_null", "rating_probs_source")},
    ),
    "draws behind logprobs": (
        "simulated_ratings",
        _set("rating_probs_draws", 3, row=4),
        {("expect_column_values_to_be_null", "rating_probs_draws")},
    ),
    "samples without a draw count": (
        "simulated_ratings",
        _set("rating_probs_draws", pd.NA, row=8),
        {(NOT_NULL, "rating_probs_draws")},
    ),
    "zero draws": (
        "simulated_ratings",
        _set("rating_probs_draws", 0, row=8),
        {("expect_column_values_to_be_between", "rating_probs_draws")},
    ),
    "bad profile stage": ("profiles", _set("stage", "final"), {(IN_SET, "stage")}),
    "empty text": (
        "profiles",
        _set("text", ""),
        {
            ("expect_column_value_lengths_to_be_between", "text"),
            ("expect_column_values_to_match_regex", "text"),
            ("expect_column_values_to_be_null", "text_problems"),
        },
    ),
    "blank text": (
        "profiles",
        _set("text", "  \n"),
        {("expect_column_values_to_match_regex", "text"), ("expect_column_values_to_be_null", "text_problems")},
    ),
    "duplicate profile version": (
        "profiles",
        _dup,
        {("expect_compound_columns_to_be_unique", "run_id+fold+user_id+version")},
    ),
    "input rating 3.5": (
        "input_ratings",
        _set("rating", 3.5),
        {(IN_SET, "rating"), ("expect_column_values_to_be_in_type_list", "rating")},
    ),
    "input duplicate rating": ("input_ratings", _dup, {("expect_compound_columns_to_be_unique", "user_id+item_id")}),
    "input null ts": (
        "input_ratings",
        _set("ts", None),
        {(NOT_NULL, "ts"), ("expect_column_values_to_be_in_type_list", "ts")},
    ),
    "duplicate item": ("input_items", _dup, {("expect_column_values_to_be_unique", "item_id")}),
    "null title": ("input_items", _set("title", None), {(NOT_NULL, "title")}),
    "null user id": ("input_users", _set("user_id", None), {(NOT_NULL, "user_id")}),
    "missing column": (
        "input_users",
        lambda d: d.drop(columns="text"),
        {("expect_table_columns_to_match_set", "user_id+text"), (NOT_NULL, "text")},
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_fails_with_named_expectation(name: str) -> None:
    suite, corrupt, expected = CORRUPTIONS[name]
    out = check(corrupt(GOOD[suite]()), suite)
    assert not out.success
    assert failed(out) == expected, v.format_failures(out)
    assert all(f["description"] for f in out.failures)
    json.dumps(out.to_record(RUN))  # JSON-ready for validation_results


def test_failure_details_name_the_bad_values() -> None:
    df = sim_ratings()
    df.loc[[0, 1], "rating"] = [7, 9]
    (f,) = check(df, "simulated_ratings").failures
    assert f["details"]["unexpected_count"] == 2 and sorted(f["details"]["partial_unexpected_list"]) == [7, 9]
    text = v.format_failures(check(df, "simulated_ratings"))
    assert "FAILED 1 of" in text and "[rating]" in text and "7, 9" in text


def test_partial_unexpected_list_is_capped_at_5() -> None:
    df = sim_ratings(n_users=5)
    df["status"] = "weird"
    (f,) = [f for f in check(df, "simulated_ratings").failures if f["column"] == "status"]
    assert f["details"]["unexpected_count"] == len(df) and len(f["details"]["partial_unexpected_list"]) == 5


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
