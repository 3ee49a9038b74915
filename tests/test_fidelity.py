"""The calibrated hybrid (tasks/fidelity): decoders, slices, calibrator, and no test-rating leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from doppel.tasks.data.synthetic import make_synthetic
from doppel.tasks.fidelity import decode
from doppel.tasks.fidelity.calibrate import fit_calibrator
from doppel.tasks.fidelity.features import calibration_slice, pair_features, slice_parts
from doppel.tasks.fidelity.hybrid import activity_bucket, bucket_targets, fold_features, hybrid_ratings, predict_proba
from doppel.tasks.metrics import rating_metrics

FAST_MODELS = ("knn_item", "svd")  # svdpp / user-knn add nothing to what the tests check


def _counts(r: np.ndarray) -> list[int]:
    return np.bincount(np.asarray(r) - 1, minlength=5).tolist()


# ----------------------------------------------------------------------------- decoders


def test_expected_value_and_accuracy_decoding_by_hand():
    P = np.array([[0, 0, 0.5, 0.5, 0], [0.1, 0.2, 0.3, 0.2, 0.2], [0, 0, 0, 0, 1], [0.6, 0, 0, 0, 0.4]])
    np.testing.assert_allclose(decode.expected_value(P), [3.5, 3.2, 5.0, 2.6])
    assert decode.decode_accuracy(P).tolist() == [4, 3, 5, 3]  # round half up: 3.5 -> 4
    assert decode.decode_accuracy(P, "mode").tolist() == [3, 3, 5, 1]  # argmax, first on ties
    # beta: E[(k-r)^2] - beta P(k). Row 4: k=3 -> 0.6*4 + 0.4*4 = 4.0; k=1 -> 6.4 - 0.6 beta
    assert decode.decode_accuracy(P, beta=1.0).tolist()[3] == 3
    assert decode.decode_accuracy(P, beta=5.0).tolist()[3] == 1  # 6.4 - 3.0 = 3.4 < 4.0
    assert decode.decode_accuracy(P, beta=1e6).tolist() == decode.decode_accuracy(P, "mode").tolist()


def test_choose_beta_trades_squared_error_for_exact_hits_only_within_tolerance():
    # one kind of row: P = (0.45, 0, 0, 0.55, 0): E = 2.65 -> 3 (never right); the mode 4 often is
    P = np.tile([0.45, 0, 0, 0.55, 0], (100, 1))
    y = np.array([4] * 55 + [1] * 45)
    assert decode.decode_accuracy(P).tolist() == [3] * 100
    # beta = 1 still picks 3 (loss 2.35 vs 4.05 - 0.55 = 3.50 for 4): same exact hits -> the smaller beta
    assert decode.choose_beta(P, y, grid=(0.0, 1.0), tol=0.0) == 0.0
    # beta = 10 picks 4 (4.05 - 5.5 < 2.35): rmse sqrt(0.45 * 9) = 2.01 vs 1.53 at beta 0 (+31 %)
    assert decode.decode_accuracy(P, beta=10.0).tolist() == [4] * 100
    assert decode.choose_beta(P, y, grid=(0.0, 10.0), tol=0.5) == 10.0
    assert decode.choose_beta(P, y, grid=(0.0, 10.0), tol=0.1) == 0.0


def test_bad_probabilities_are_refused():
    with pytest.raises(ValueError):
        decode.expected_value(np.ones((2, 5)))
    with pytest.raises(ValueError):
        decode.decode_accuracy(np.ones((2, 4)) / 4)


@pytest.mark.parametrize("n", [1, 4, 7, 13, 101])
def test_target_counts_sum_to_n_and_are_closest(n):
    target = [0.061, 0.114, 0.271, 0.342, 0.212]
    counts = decode.target_counts(target, n)
    assert counts.sum() == n
    assert np.all(np.abs(counts - np.asarray(target) / sum(target) * n) < 1.0)


@pytest.mark.parametrize("n", [5, 7, 20, 333])
def test_quantile_match_hits_the_target_exactly_even_with_all_scores_tied(n):
    target = [0.1, 0.2, 0.3, 0.25, 0.15]
    want = decode.target_counts(target, n).tolist()
    assert _counts(decode.quantile_match(np.zeros(n), target)) == want
    rng = np.random.default_rng(n)
    score = rng.integers(0, 3, n).astype(float)  # heavy ties
    out = decode.quantile_match(score, target)
    assert _counts(out) == want
    # monotone: a higher score never gets a lower rating
    order = np.argsort(score, kind="stable")
    assert np.all(np.diff(out[order]) >= 0)


def test_quantile_match_per_group_uses_each_groups_target():
    score = np.arange(10, dtype=float)
    groups = np.array(["a"] * 4 + ["b"] * 6)
    out = decode.quantile_match(score, [1, 1, 1, 1, 1], groups, {"a": [0, 0, 0, 0, 1], "b": [1, 0, 0, 0, 0]})
    assert out.tolist() == [5, 5, 5, 5, 1, 1, 1, 1, 1, 1]


def test_tradeoff_ends_are_accuracy_and_realism():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(5), size=200)
    target = np.array([0.06, 0.11, 0.27, 0.34, 0.22])
    assert decode.tradeoff(P, target, 0.0).tolist() == decode.decode_accuracy(P).tolist()
    assert _counts(decode.tradeoff(P, target, 1.0)) == decode.target_counts(target, 200).tolist()


def test_sampling_is_seeded_and_follows_p():
    P = np.tile([0.1, 0.2, 0.4, 0.2, 0.1], (20000, 1))
    a, b = decode.sample(P, seed=3), decode.sample(P, seed=3)
    assert a.tolist() == b.tolist()
    np.testing.assert_allclose(np.bincount(a - 1, minlength=5) / len(a), P[0], atol=0.015)


# ----------------------------------------------------------------------------- slices and buckets


def _train(n_users=6, per_user=10):
    rows = [(str(u), str(i), 1 + (u + i) % 5, 1000 * u + i) for u in range(n_users) for i in range(per_user)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])


@pytest.mark.parametrize("how", ["random", "latest"])
def test_calibration_slice_takes_a_fraction_of_each_user(how):
    train = _train()
    mask = calibration_slice(train, frac=0.2, how=how, seed=1)
    assert train[mask].groupby("user_id").size().tolist() == [2] * 6
    if how == "latest":  # the two latest ratings of every user
        assert set(train[mask]["item_id"]) == {"8", "9"}
    # a user keeps min_keep ratings outside the slice
    small = _train(per_user=6)
    assert calibration_slice(small, frac=0.5, min_keep=5).sum() == 6


def test_slice_parts_deal_each_user_evenly():
    parts = slice_parts(_train(per_user=10), 5, seed=2)
    table = pd.crosstab(_train(per_user=10)["user_id"], parts)
    assert (table.to_numpy() == 2).all()


def test_activity_buckets_and_targets():
    train = pd.DataFrame(
        {
            "user_id": ["a"] * 49 + ["b"] * 50 + ["c"] * 151,
            "item_id": [str(i) for i in range(250)],
            "rating": [1] * 49 + [3] * 50 + [5] * 151,
        }
    )
    assert activity_bucket(train, ["a", "b", "c", "new"]).tolist() == ["<50", "50-150", ">150", "<50"]
    pop, per = bucket_targets(train)
    np.testing.assert_allclose(per["<50"], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(per[">150"], [0, 0, 0, 0, 1])
    np.testing.assert_allclose(pop, [49 / 250, 0, 50 / 250, 0, 151 / 250])


# ----------------------------------------------------------------------------- calibrator on synthetic data


@pytest.fixture(scope="module")
def synthetic_fold():
    ds = make_synthetic(n_users=60, n_items=120, seed=0)
    sp = ds.splits[ds.splits["fold"] == "u1"]
    train = sp[sp["split"] == "train"].merge(ds.ratings, on=["user_id", "item_id"])
    test = sp[sp["split"] == "test"].merge(ds.ratings, on=["user_id", "item_id"])
    return train, test, ds.items


def test_calibrator_beats_the_global_mean_on_synthetic_data(synthetic_fold):
    train, test, items = synthetic_fold
    ff = fold_features(train, test[["user_id", "item_id"]], items, stack=3, models=FAST_MODELS)
    assert len(ff.y_slice) == len(train)  # stacking: every train rating is a calibration label
    for kind in ("logreg",):  # hgb: see the next test (it is slow on busy cores)
        P = predict_proba(ff, kind=kind)
        assert P.shape == (len(test), 5)
        np.testing.assert_allclose(P.sum(axis=1), 1.0)
        hybrid = rating_metrics(test["rating"], decode.decode_accuracy(P))
        mean = rating_metrics(test["rating"], np.full(len(test), round(train["rating"].mean())))
        assert hybrid["rmse"] < mean["rmse"] - 0.05, (kind, hybrid, mean)


def test_hgb_calibrator_orders_ratings_by_a_signal_feature():
    rng = np.random.default_rng(0)
    x = rng.normal(size=600)
    y = np.clip(np.round(3 + x + rng.normal(scale=0.5, size=600)), 1, 5).astype(int)
    X = pd.DataFrame({"x": x, "noise": rng.normal(size=600)})
    E = fit_calibrator(X, y, kind="hgb").proba(X) @ np.arange(1, 6)
    assert E[x > 1].mean() > 4.0 and E[x < -1].mean() < 2.0


def test_calibrator_keeps_all_five_columns_when_a_rating_is_missing():
    X = pd.DataFrame({"x": np.arange(40, dtype=float)})
    y = np.where(np.arange(40) < 20, 2, 4)
    P = fit_calibrator(X, y, kind="logreg").proba(X)
    assert P.shape == (40, 5)
    assert P[:, [0, 2, 4]].max() == 0.0 and P[:5, 1].min() > 0.5


def test_features_come_from_the_fit_ratings_only(synthetic_fold):
    train, test, items = synthetic_fold
    pairs = test[["user_id", "item_id"]].head(50)
    a = pair_features(train, pairs, items, models=FAST_MODELS)
    b = pair_features(train, pairs.assign(rating=5), items, models=FAST_MODELS)
    pd.testing.assert_frame_equal(a, b)


def test_no_test_rating_reaches_calibration(synthetic_fold):
    """Leakage would show: users whose train ratings are all 5 get test ratings of all 1."""
    train, test, items = synthetic_fold
    train, test = train.copy(), test.copy()
    users = sorted(train["user_id"].unique())[:10]
    train.loc[train["user_id"].isin(users), "rating"] = 5
    test.loc[test["user_id"].isin(users), "rating"] = 1
    out = hybrid_ratings(train, test, items, kind="logreg", models=FAST_MODELS)  # test carries its ratings
    mine = out[out["user_id"].isin(users)]
    assert (mine["accuracy"] >= 4).all()
    # the same answer without the ratings column at all
    again = hybrid_ratings(train, test[["user_id", "item_id"]], items, kind="logreg", models=FAST_MODELS)
    pd.testing.assert_frame_equal(out, again)
    # and the calibration rows are train rows, never test pairs
    key = ["user_id", "item_id"]
    for stack in (1, 3):
        ff = fold_features(train, test[key], items, stack=stack, models=FAST_MODELS)
        rows = ff.slice_pairs.assign(rating=ff.y_slice)
        assert rows.merge(test[key], on=key).empty
        joined = rows.merge(
            train[[*key, "rating"]].astype({"user_id": str, "item_id": str}), on=key, suffixes=("", "_train")
        )
        assert len(joined) == len(rows) and (joined["rating"] == joined["rating_train"]).all()


def test_scoring_adds_both_hybrid_modes_on_the_same_rows(synthetic_fold):
    from doppel.tasks.scoring import score_ratings

    train, test, items = synthetic_fold
    rows = test.assign(fold="u1", pred=3, truth=test["rating"])[["fold", "user_id", "item_id", "pred", "truth"]]
    table = score_ratings(
        rows,
        {"u1": train[["user_id", "item_id", "rating"]]},
        baselines=False,
        hybrid_items=items[["item_id", "genres"]],
    )
    wide = table.pivot_table(index="simulator", columns="metric", values="value")
    assert set(wide.index) == {"llm", "hybrid:accuracy", "hybrid:realism"}
    assert (wide["n"] == len(test)).all()
    assert wide.loc["hybrid:accuracy", "rmse"] < wide.loc["llm", "rmse"]
    assert wide.loc["hybrid:realism", "tv"] < wide.loc["hybrid:accuracy", "tv"]


# ----------------------------------------------------------------------------- the LLM's marginal contribution


def _margin_case(llm_noise: float, seed: int = 0):
    """60 users x 20 rows: a vague hybrid P (the user's mean only) and an LLM that knows the rating
    up to `llm_noise` (or, with noise None, answers at random)."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(60).astype(str), 20)
    y = rng.integers(1, 6, users.size)
    P = np.full((users.size, 5), 0.2)
    llm = np.clip(np.rint(y + rng.normal(0, llm_noise, y.size)), 1, 5) if llm_noise else rng.integers(1, 6, y.size)
    return P, llm.astype(float), y, users


def test_llm_marginal_contribution_is_large_for_an_informed_llm_and_near_zero_for_a_random_one():
    from doppel.tasks.fidelity.llm_margin import cross_fit, paired_gap

    P, llm, y, users = _margin_case(0.3)
    llm[::7] = np.nan  # unanswered pairs are a flag, never a dropped row
    cf, cf_llm = cross_fit(P, llm, y, users)
    assert cf.shape == cf_llm.shape == y.shape
    gap = paired_gap(y, cf, cf_llm, users, n_boot=300)
    assert gap["rmse"][0] < -0.5 and gap["rmse"][2] < 0  # the whole interval: better with the LLM
    assert gap["exact"][0] > 30

    P, llm, y, users = _margin_case(None)
    cf, cf_llm = cross_fit(P, llm, y, users)
    gap = paired_gap(y, cf, cf_llm, users, n_boot=300)
    assert abs(gap["rmse"][0]) < 0.1 and gap["rmse"][1] < 0.02  # no real gain: the interval reaches 0


def test_cross_fit_keeps_each_user_out_of_the_model_that_predicts_them():
    from doppel.tasks.fidelity.llm_margin import cross_fit

    P, llm, y, users = _margin_case(0.3)
    with pytest.raises(ValueError, match="at least 2 users"):
        cross_fit(P[:20], llm[:20], y[:20], users[:20])
    # a user whose every rating is flipped cannot drag the model fit for him: his LLM answers still
    # predict him as the others taught (5 - answer would be right, the model says answer)
    flipped = users == "0"
    llm2 = llm.copy()
    llm2[flipped] = 6 - y[flipped]
    _, cf_llm = cross_fit(P, llm2, y, users)
    assert np.mean(cf_llm[flipped] == y[flipped]) < 0.3
