"""Metrics against values computed by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from doppel.tasks.metrics import (
    RATING_METRICS,
    binary_metrics,
    histogram,
    metrics_table,
    rating_metrics,
    round_rating,
    total_variation,
)


def test_rating_metrics_by_hand() -> None:
    # err = |pred - truth| = [0, 1, 0, 1, 3]
    m = rating_metrics([1, 2, 3, 4, 5], [1, 3, 3, 5, 2])
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 0 + 1 + 9) / 5))
    assert m["mae"] == pytest.approx(5 / 5)
    assert m["exact"] == pytest.approx(40.0)
    assert m["off_by_one"] == pytest.approx(40.0)
    assert m["close"] == pytest.approx(80.0)
    # truth hist [.2,.2,.2,.2,.2], pred hist [.2,.2,.4,0,.2] -> 0.5 * (.2 + .2) = .2
    assert m["tv"] == pytest.approx(0.2)
    assert (m["n"], m["n_missing"]) == (5.0, 0.0)
    assert tuple(m) == RATING_METRICS
    assert all(isinstance(v, float) for v in m.values())


def test_rating_metrics_perfect() -> None:
    m = rating_metrics([3, 4, 5], np.array([3, 4, 5]))
    assert (m["rmse"], m["mae"], m["exact"], m["close"], m["tv"]) == (0.0, 0.0, 100.0, 100.0, 0.0)


@pytest.mark.parametrize(
    "pred",
    [[1, None, 5], [1.0, np.nan, 5.0], pd.Series([1, pd.NA, 5], dtype="Int64")],
)
def test_missing_predictions_are_excluded_and_counted(pred: object) -> None:
    # scored pairs: (1,1) err 0 and (3,5) err 2
    m = rating_metrics([1, 2, 3], pred)
    assert (m["n"], m["n_missing"]) == (2.0, 1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(2.0))
    assert m["mae"] == pytest.approx(1.0)
    assert (m["exact"], m["off_by_one"], m["close"]) == (50.0, 0.0, 50.0)
    # truth kept: [1, 3] -> [.5,0,.5,0,0]; pred [1, 5] -> [.5,0,0,0,.5]; tv = .5 * (.5 + .5)
    assert m["tv"] == pytest.approx(0.5)


def test_all_missing_gives_nan_metrics() -> None:
    m = rating_metrics([1, 2], [None, None])
    assert (m["n"], m["n_missing"]) == (0.0, 2.0)
    assert math.isnan(m["rmse"]) and math.isnan(m["tv"])


def test_raw_float_predictions() -> None:
    # err = [0.5, 1.0, 1.5]; tv bins pred half up: 1.5->2, 3->3, 4.5->5 vs truth 1,2,3
    m = rating_metrics([1, 2, 3], [1.5, 3.0, 4.5])
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 1 + 2.25) / 3))
    assert (m["exact"], m["off_by_one"]) == (0.0, pytest.approx(100 / 3))
    assert m["close"] == pytest.approx(200 / 3)
    assert m["tv"] == pytest.approx(0.5 * (1 / 3 + 0 + 0 + 0 + 1 / 3))


def test_rating_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        rating_metrics([1, 2], [1])
    with pytest.raises(ValueError, match="truth"):
        rating_metrics([1, None], [1, 2])


def test_histogram_and_tv() -> None:
    assert histogram([1, 1, 2, 5]) == [0.5, 0.25, 0.0, 0.0, 0.25]
    assert sum(histogram([3, 4, 4, 5, 2, 1, 1])) == pytest.approx(1.0)
    assert all(math.isnan(x) for x in histogram([]))
    with pytest.raises(ValueError, match="out of 1..5"):
        histogram([0, 3])
    with pytest.raises(ValueError, match="out of 1..5"):
        histogram([6])
    assert total_variation([1, 0, 0, 0, 0], [0, 0, 0, 0, 1]) == 1.0
    # |.1-.2|+|.2-.2|+|.3-.1|+|.4-.5|+0 = .1+0+.2+.1 = .4 -> .2
    assert total_variation([0.1, 0.2, 0.3, 0.4, 0], [0.2, 0.2, 0.1, 0.5, 0]) == pytest.approx(0.2)


def test_round_rating_is_half_up_and_clipped() -> None:
    got = round_rating([0.2, 1.5, 2.5, 3.49, 3.5, 4.5, 5.7, -1.0])
    assert got.tolist() == [1, 2, 3, 3, 4, 5, 5, 1]
    assert got.dtype == np.int64
    with pytest.raises(ValueError):
        round_rating([np.nan])


def test_auc_by_hand_with_ties() -> None:
    # positives score .9 and .5, negatives .9 and .1; pairs (pos, neg):
    # (.9,.9) tie -> 1/2, (.9,.1) -> 1, (.5,.9) -> 0, (.5,.1) -> 1 => 2.5 / 4
    m = binary_metrics([True, False, True, False], [0.9, 0.9, 0.5, 0.1])
    assert m["auc"] == pytest.approx(0.625)
    # predicted like = score >= .5 -> [T, T, T, F] vs [T, F, T, F] -> 3/4
    assert m["accuracy"] == pytest.approx(0.75)
    assert binary_metrics([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1], threshold=0.95)["accuracy"] == 0.5


def test_auc_edge_cases() -> None:
    assert binary_metrics([1, 1, 0], [3, 2, 1])["auc"] == 1.0
    assert binary_metrics([1, 1, 0], [1, 2, 3])["auc"] == 0.0
    assert binary_metrics([1, 0, 1, 0], [7, 7, 7, 7])["auc"] == 0.5
    assert math.isnan(binary_metrics([1, 1], [0.2, 0.4])["auc"])
    with pytest.raises(ValueError):
        binary_metrics([1, 0], [0.5, np.nan])


def test_auc_matches_pairwise_count_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = rng.integers(0, 6, 300).astype(float)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert binary_metrics(y, s)["auc"] == pytest.approx(pairwise)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert binary_metrics(y, s)["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, s))


def test_metrics_table_long_format() -> None:
    frame = pd.DataFrame(
        {
            "fold": ["u1"] * 5 + ["u2"] * 2,
            "simulator": ["llm"] * 5 + ["svd"] * 2,
            "truth": [1, 2, 3, 4, 5, 4, 4],
            "pred": [1, 3, 3, 5, 2, 4, None],
        }
    )
    table = metrics_table(frame, ["fold", "simulator"])
    assert list(table.columns) == ["fold", "simulator", "metric", "value"]
    assert len(table) == 2 * len(RATING_METRICS)
    wide = table.pivot_table(index=["fold", "simulator"], columns="metric", values="value")
    assert wide.loc[("u1", "llm"), "rmse"] == pytest.approx(math.sqrt(2.2))
    assert wide.loc[("u1", "llm"), "tv"] == pytest.approx(0.2)
    assert wide.loc[("u2", "svd"), "exact"] == 100.0
    assert wide.loc[("u2", "svd"), "n_missing"] == 1.0
    overall = metrics_table(frame.rename(columns={"pred": "p"}), [], pred_col="p")
    assert list(overall.columns) == ["metric", "value"]
    assert overall.set_index("metric")["value"]["n"] == 6.0
    with pytest.raises(KeyError):
        metrics_table(frame, ["run_id"])


# ----------------------------------------------------------------------------- scoring is pure


def _metrics(db: str, run_id: str) -> pd.DataFrame:
    import duckdb

    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(
            "select run_id, fold, simulator, metric, value from metrics where run_id = ? order by all", [run_id]
        ).df()
    finally:
        con.close()


def _as_an_older_file(db: str) -> None:
    """Drop what an older doppel's file lacks: the views (stg_simulated_pairs among them) and schema_migrations."""
    import duckdb

    from doppel.tasks.store.schema import views_in_order

    con = duckdb.connect(db)
    try:
        for name, _ in reversed(views_in_order()):
            con.execute(f"drop view if exists {name}")
        con.execute("drop table schema_migrations")
    finally:
        con.close()


@pytest.mark.slow
def test_scoring_depends_only_on_the_rows_and_the_seed(prefect_server, llm_server, run_settings, tmp_path) -> None:
    """One run scored three times, and the same run interrupted (pairs failed) then resumed in another
    file: identical `metrics` rows, baselines (SVD's SGD follows its training rows' order) included."""
    from doppel.flows.score import score_run
    from doppel.flows.simulate import simulate

    clean = run_settings(run_id="pure", users=8, llm={"repair_attempts": 0})
    simulate(clean)
    scored = [_metrics(clean.db, "pure")]
    _as_an_older_file(clean.db)  # `doppel score` migrates it and recreates the views it reads
    for _ in range(2):
        score_run(db=clean.db, run_id="pure")
        scored.append(_metrics(clean.db, "pure"))
    assert len(scored[0]) > 20 and {"llm", "baseline:svd", "baseline:item_knn"} <= set(scored[0]["simulator"])
    pd.testing.assert_frame_equal(scored[0], scored[1])
    pd.testing.assert_frame_equal(scored[0], scored[2])

    resumed = clean.model_copy(update={"db": str(tmp_path / "resumed" / "doppel.duckdb")})
    llm_server.configure(faults={"missing_ids": 1.0})  # every rating answer drops one id: the run is incomplete
    first = simulate(resumed)
    assert first["failed_pairs"] > 0 and first["status"] != "finished"
    llm_server.configure(faults={})
    again = simulate(resumed)  # the same run id: resume retries the failed pairs
    assert again["failed_pairs"] == 0 and again["status"] == "finished"
    pd.testing.assert_frame_equal(_metrics(resumed.db, "pure"), scored[0])


def test_the_fidelity_benchmarks_cache_key_covers_data_files_and_library_versions(tmp_path, monkeypatch) -> None:
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.delitem(sys.modules, "support", raising=False)
    from support import fidelity_cache

    data = tmp_path / "ml"
    data.mkdir()
    (data / "u.data").write_text("1\t2\t5\t881250949\n")
    key = fidelity_cache.inputs_hash(data)
    assert fidelity_cache.inputs_hash(data) == key  # stable
    (data / "u.data").write_text("1\t2\t4\t881250949\n")
    changed = fidelity_cache.inputs_hash(data)
    assert changed != key  # a data file changed
    real = fidelity_cache.metadata.distributions

    class Bumped:
        metadata = {"Name": "scikit-surprise"}
        version = "99.0"

    monkeypatch.setattr(fidelity_cache.metadata, "distributions", lambda: [*real(), Bumped()])
    assert fidelity_cache.inputs_hash(data) != changed  # a library version changed
