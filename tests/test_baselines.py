"""Baselines on a tiny hand-made split (known means) and, if present, MovieLens-100k u1."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from doppel.tasks.baselines import BASELINES, baseline_long, predict_baselines
from doppel.tasks.metrics import metrics_table, rating_metrics
from tests.conftest import ML100K

# global mean 12/4 = 3; user means u1 4.5, u2 2, u3 1; item means a 3.5, b 4, c 1
TRAIN = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u2", "u3"],
        "item_id": ["a", "b", "a", "c"],
        "rating": [5, 4, 2, 1],
    }
)
# unknown user u9, unknown item z; a non-default index that must not leak into the output
TEST = pd.DataFrame(
    {
        "user_id": ["u1", "u2", "u9", "u3", "u1", "u9"],
        "item_id": ["c", "b", "a", "z", "a", "z"],
    },
    index=[10, 3, 7, 0, 1, 2],
)


def test_mean_baselines_by_hand() -> None:
    out = predict_baselines(TRAIN, TEST, names=["global_mean", "user_mean", "item_mean"])
    assert list(out.columns) == [
        "user_id", "item_id",
        "global_mean_raw", "global_mean", "user_mean_raw", "user_mean", "item_mean_raw", "item_mean",
    ]  # fmt: skip
    assert out["global_mean_raw"].tolist() == [3.0] * 6
    assert out["user_mean_raw"].tolist() == [4.5, 2.0, 3.0, 1.0, 4.5, 3.0]
    assert out["item_mean_raw"].tolist() == [1.0, 4.0, 3.5, 3.0, 3.5, 3.0]
    # half up: 4.5 -> 5 and 3.5 -> 4 (banker's rounding would give 4 and 4)
    assert out["user_mean"].tolist() == [5, 2, 3, 1, 5, 3]
    assert out["item_mean"].tolist() == [1, 4, 4, 3, 4, 3]
    assert out["user_mean"].dtype == np.int64 and out["user_mean_raw"].dtype == np.float64


def test_rows_kept_in_test_order() -> None:
    out = predict_baselines(TRAIN, TEST)
    assert len(out) == len(TEST)
    assert list(out.index) == list(range(len(TEST)))
    assert out["user_id"].tolist() == TEST["user_id"].tolist()
    assert out["item_id"].tolist() == TEST["item_id"].tolist()
    for name in BASELINES:
        assert out[f"{name}_raw"].notna().all()
        assert out[name].between(1, 5).all()
        assert (out[name] == np.clip(np.floor(out[f"{name}_raw"] + 0.5), 1, 5)).all()


def test_surprise_baselines_fall_back_for_unknown_ids() -> None:
    out = predict_baselines(TRAIN, TEST, names=["item_knn", "svd"])
    unknown_both = out[(out["user_id"] == "u9") & (out["item_id"] == "z")]
    assert unknown_both["item_knn_raw"].tolist() == pytest.approx([3.0])
    assert unknown_both["svd_raw"].tolist() == pytest.approx([3.0])


def test_integer_ids_and_duplicates_are_fine() -> None:
    train = TRAIN.assign(user_id=[1, 1, 2, 3])
    test = pd.DataFrame({"user_id": [1, 1, 42], "item_id": ["a", "a", "b"]})
    out = predict_baselines(train, test, names=["user_mean", "svd"])
    assert out["user_mean_raw"].tolist() == [4.5, 4.5, 3.0]
    assert out["user_id"].tolist() == ["1", "1", "42"]  # ids are strings (tasks/records.py)
    assert out["svd_raw"].iloc[0] == out["svd_raw"].iloc[1]


def test_svd_seed_is_reproducible() -> None:
    a = predict_baselines(TRAIN, TEST, names=["svd"], seed=3)
    b = predict_baselines(TRAIN, TEST, names=["svd"], seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_empty_test_and_bad_input() -> None:
    out = predict_baselines(TRAIN, TEST.iloc[:0])
    assert len(out) == 0 and "svd" in out.columns
    with pytest.raises(ValueError, match="unknown baselines"):
        predict_baselines(TRAIN, TEST, names=["popularity"])
    with pytest.raises(KeyError, match="rating"):
        predict_baselines(TRAIN.drop(columns="rating"), TEST)
    with pytest.raises(ValueError, match="empty"):
        predict_baselines(TRAIN.iloc[:0], TEST)


def test_baseline_long_feeds_metrics_table() -> None:
    truth = TEST.assign(rating=[1, 2, 3, 4, 5, 3]).reset_index(drop=True)
    pred = predict_baselines(TRAIN, truth, names=["global_mean", "user_mean"])
    long = baseline_long(pred, truth)
    assert len(long) == 2 * len(truth)
    assert list(long.columns) == ["user_id", "item_id", "simulator", "raw", "rating", "truth"]
    table = metrics_table(long, ["simulator"], pred_col="rating")
    got = table.set_index(["simulator", "metric"])["value"]
    # global mean predicts 3 everywhere: errors [2, 1, 0, 1, 2, 0]
    assert got["global_mean", "mae"] == pytest.approx(1.0)
    assert got["global_mean", "exact"] == pytest.approx(100 * 2 / 6)
    assert got["user_mean", "n"] == 6.0


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(
        path, sep="\t", names=["user_id", "item_id", "rating", "ts"],
        dtype={"user_id": str, "item_id": str},
    )  # fmt: skip


@pytest.mark.skipif(not (ML100K / "u1.base").exists(), reason=f"{ML100K} not present")
def test_movielens_u1_reproduces_design_numbers() -> None:
    """The baselines on ML-100K u1 as measured when they were chosen (docs/design-notes.md, "Baselines"):
    item KNNBaseline rounded RMSE 0.980, exact 42.4%, close 89.4%; SVD 0.992."""
    train, test = _read(ML100K / "u1.base"), _read(ML100K / "u1.test")
    expected = {"item_knn": (0.980, 42.4, 89.4), "svd": (0.992, None, None)}
    for name, (rmse, exact, close) in expected.items():
        t0 = time.perf_counter()
        out = predict_baselines(train, test, names=[name], seed=0)
        seconds = time.perf_counter() - t0
        m = rating_metrics(test["rating"], out[name])
        raw = rating_metrics(test["rating"], out[f"{name}_raw"])
        print(
            f"\nu1 {name}: fit+predict {seconds:.2f} s; rounded RMSE {m['rmse']:.4f} "
            f"MAE {m['mae']:.4f} exact {m['exact']:.1f}% close {m['close']:.1f}% TV {m['tv']:.3f}; "
            f"raw RMSE {raw['rmse']:.4f}"
        )
        assert len(out) == len(test) == m["n"]
        assert m["rmse"] == pytest.approx(rmse, abs=0.005 if name == "item_knn" else 0.01)
        if exact is not None:
            assert m["exact"] == pytest.approx(exact, abs=0.3)
            assert m["close"] == pytest.approx(close, abs=0.3)
        assert 0.2 < m["tv"] < 0.35  # 0.26-0.28 when measured: far from the real histogram


def test_scoring_with_baselines_fitted_earlier_equals_fitting_them_then() -> None:
    """A run fits the baselines during its fan-out (tasks.scoring.baseline_predictions); the metrics
    must be those of fitting them at scoring time, and pairs the early fit lacks are predicted then."""
    from doppel.tasks.scoring import baseline_predictions, score_ratings

    rng = np.random.default_rng(3)
    train = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, 600).astype(str),
            "item_id": rng.integers(0, 40, 600).astype(str),
            "rating": rng.integers(1, 6, 600),
        }
    ).drop_duplicates(["user_id", "item_id"])
    pairs = pd.DataFrame(
        {"fold": "u1", "user_id": rng.integers(0, 30, 80).astype(str), "item_id": rng.integers(40, 50, 80).astype(str)}
    ).drop_duplicates(["user_id", "item_id"])
    rows = pairs.assign(pred=3, truth=rng.integers(1, 6, len(pairs))).reset_index(drop=True)
    by_fold = {"u1": train}
    plain = score_ratings(rows, by_fold)
    early = score_ratings(
        rows.sample(frac=1, random_state=1), by_fold, precomputed=baseline_predictions(by_fold, pairs)
    )
    key = ["fold", "simulator", "metric"]
    pd.testing.assert_frame_equal(
        plain.sort_values(key).reset_index(drop=True), early.sort_values(key).reset_index(drop=True)
    )
    partial = baseline_predictions(by_fold, pairs.iloc[: len(pairs) // 2])  # half the pairs: fitted again
    late = score_ratings(rows, by_fold, precomputed=partial)
    pd.testing.assert_frame_equal(
        plain.sort_values(key).reset_index(drop=True), late.sort_values(key).reset_index(drop=True)
    )
