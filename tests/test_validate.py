"""Tests for tasks/validate.py: the GX gate over doppel's JSON suites: good frames pass, each corruption
fails with the expectation that names it. validate_frame's contract is in test_validate_frame.py.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from doppel.tasks import validate as v
from tests._validate import GOOD, RUN, _set, check, failed, input_users, sim_ratings


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Import GX and build the context once (~4 s) for the whole module."""
    t = time.perf_counter()
    v.validate_frame(input_users(), "input_users")
    print(f"\nGX warm-up {time.perf_counter() - t:.2f} s")


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
