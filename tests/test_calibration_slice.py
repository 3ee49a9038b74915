"""The calibration slice as a run target: `doppel run --target slice` rates each user's slice of
train with a profile built without it, and the hybrid's calibrator learns from those answers."""

from __future__ import annotations

import pickle

import duckdb
import numpy as np
import pandas as pd
import pytest

from doppel.tasks.data.synthetic import make_synthetic
from doppel.tasks.fidelity import decode
from doppel.tasks.fidelity.features import LLM_COLUMNS, calibration_slice, llm_answer_features, probs_matrix
from doppel.tasks.fidelity.hybrid import fold_features, predict_proba, with_llm
from doppel.tasks.metrics import rating_metrics
from doppel.tasks.planning import build_work, requested_pairs
from doppel.tasks.settings import SimulationSettings
from doppel.tasks.store.db import init_db, query
from doppel.tasks.store.writes import save_dataset

FAST_MODELS = ("knn_item", "svd")


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory):
    ds = make_synthetic(n_users=40, n_items=80, seed=3)
    db = str(tmp_path_factory.mktemp("slice") / "doppel.duckdb")
    init_db(db)
    save_dataset(db, ds)
    return db, ds.name


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["user_id"].astype(str), frame["item_id"].astype(str)))


def test_sql_slice_is_the_python_hash_slice_for_any_row_order_and_subset_of_users(synthetic_db):
    db, name = synthetic_db
    split = {"slice_frac": 0.2, "slice_seed": 7}
    train = query(db, "fold_train", dataset=name, fold="u1", target="test", **split)
    fit = query(db, "fold_train", dataset=name, fold="u1", target="slice", **split)
    shuffled = train.sample(frac=1.0, random_state=1).reset_index(drop=True)
    mask = calibration_slice(shuffled, frac=0.2, how="hash", seed=7)
    assert _pairs(shuffled[~mask]) == _pairs(fit)
    assert 0.15 < mask.mean() < 0.25
    # a user's slice does not depend on who else is asked about
    users = sorted(train["user_id"].unique())[:3]
    some = query(
        db, "user_candidates", dataset=name, fold="u1", user_ids=users, target="slice", arena_run=None, **split
    )
    assert _pairs(some) == _pairs(shuffled[mask & shuffled["user_id"].isin(users)])
    # another seed, another slice
    other = calibration_slice(shuffled, frac=0.2, how="hash", seed=8)
    assert (other != mask).any()


def test_slice_work_rates_the_slice_from_a_history_without_it(synthetic_db):
    db, name = synthetic_db
    users = sorted(query(db, "fold_test_users", dataset=name, fold="u1")["user_id"])[:5]
    sim = SimulationSettings(target="slice", slice_seed=7, history_n=500)
    train = query(db, "fold_train", dataset=name, fold="u1", target="test", slice_frac=0.2, slice_seed=7)
    truth = {(r.user_id, r.item_id): r.rating for r in train.itertuples()}
    test_items = _pairs(
        query(
            db,
            "user_candidates",
            dataset=name,
            fold="u1",
            user_ids=users,
            target="test",
            slice_frac=0.2,
            slice_seed=7,
            arena_run=None,
        )
    )
    works = build_work(db, name, "u1", users, sim)
    assert [w.user_id for w in works] == users
    for w in works:
        rated = {(w.user_id, c.item_id) for c in w.candidates}
        seen = {(w.user_id, h.item_id) for h in w.history}
        assert rated and not rated & seen and not rated & test_items  # slice items only, never in the history
        assert rated | seen == {p for p in truth if p[0] == w.user_id}  # history = all of train but the slice
        assert all(c.truth == truth[(w.user_id, c.item_id)] for c in w.candidates)  # truth = the train rating
    pairs = requested_pairs(db, name, "u1", users, sim)
    assert _pairs(pairs) == {(w.user_id, c.item_id) for w in works for c in w.candidates}


def test_work_items_share_one_string_per_item_text(synthetic_db):
    # a chunk is pickled once: an item's text shared by its users is stored once, not once per user
    db, name = synthetic_db
    users = sorted(query(db, "fold_test_users", dataset=name, fold="u1")["user_id"])[:20]
    works = build_work(db, name, "u1", users, SimulationSettings(history_n=500))
    by_item: dict[str, list[str]] = {}
    for w in works:
        for it in [*w.history, *w.candidates]:
            by_item.setdefault(it.item_id, []).append(it.text)
    shared = [texts for texts in by_item.values() if len(texts) > 1]
    assert shared and all(all(t is texts[0] for t in texts) for texts in shared)
    packed, alone = pickle.dumps(works), sum(len(pickle.dumps(w)) for w in works)
    assert len(packed) < alone / 2


def synthetic_fold(seed: int):
    """A synthetic dataset's u1 train and test ratings, and the hash slice of train."""
    ds = make_synthetic(n_users=60, n_items=120, seed=seed)
    sp = ds.splits[ds.splits["fold"] == "u1"]
    train = sp[sp["split"] == "train"].merge(ds.ratings, on=["user_id", "item_id"])
    test = sp[sp["split"] == "test"].merge(ds.ratings, on=["user_id", "item_id"])
    return ds, train, test, train[calibration_slice(train, how="hash", seed=0)]


def test_the_calibrator_learns_from_an_informed_llm_on_the_slice():
    ds, train, test, held = synthetic_fold(0)
    rng = np.random.default_rng(0)
    # an LLM that knows the rating up to a little noise, and answers for half the users only
    answered = set(sorted(train["user_id"].unique())[::2])

    def llm_of(frame: pd.DataFrame) -> pd.DataFrame:
        noisy = np.clip(np.rint(frame["rating"] + rng.normal(0, 0.3, len(frame))), 1, 5)
        out = frame[["user_id", "item_id"]].assign(llm=noisy)
        return out[out["user_id"].isin(answered)]

    ff = fold_features(
        train,
        test[["user_id", "item_id"]],
        ds.items,
        slice_how="hash",
        models=FAST_MODELS,
        slice_llm=llm_of(held),
        pair_llm=llm_of(test),
    )
    assert ff.X_slice["llm_missing"].sum() == (~ff.slice_pairs["user_id"].isin(answered)).sum()
    with_llm = decode.decode_accuracy(predict_proba(ff))
    without = decode.decode_accuracy(predict_proba(ff, drop=("llm",)))
    rows = test["user_id"].isin(answered).to_numpy()
    good, base = (rating_metrics(test["rating"][rows], r[rows]) for r in (with_llm, without))
    assert good["rmse"] < base["rmse"] - 0.3 and good["exact"] > base["exact"] + 20
    # users the LLM did not answer for get the CF-only calibrator's ratings, near enough
    off = rating_metrics(test["rating"][~rows], with_llm[~rows])["rmse"]
    assert abs(off - rating_metrics(test["rating"][~rows], without[~rows])["rmse"]) < 0.1
    with pytest.raises(ValueError, match="slice_llm and pair_llm"):
        fold_features(train, test[["user_id", "item_id"]], ds.items, models=FAST_MODELS, slice_llm=llm_of(held))


def test_llm_features_take_its_distribution_where_there_is_one():
    probs = probs_matrix([[0.1, 0.2, 0.4, 0.2, 0.1], None, pd.NA])  # DuckDB's nulls come as None or pd.NA
    X = llm_answer_features(np.array([3.0, 5.0, np.nan]), probs)
    assert np.allclose(X.iloc[0, :5], [0.1, 0.2, 0.4, 0.2, 0.1]) and X.iloc[0, 5] == 0  # its distribution
    assert X.iloc[1].tolist() == [0, 0, 0, 0, 1, 0]  # no distribution: the answer, as certain
    assert X.iloc[2].tolist() == [0, 0, 0, 0, 0, 1]  # no answer


def test_the_calibrator_uses_the_llms_distribution_beyond_its_answer():
    ds, train, test, held = synthetic_fold(1)
    rng = np.random.default_rng(1)

    # an LLM whose answers are mostly noise but whose distribution leans towards the real rating
    def llm_of(frame: pd.DataFrame) -> pd.DataFrame:
        truth = frame["rating"].to_numpy()
        answer = rng.integers(1, 6, len(frame)).astype(float)
        scores = -np.abs(np.arange(1, 6)[None, :] - truth[:, None]) + 2.0 * (
            np.arange(1, 6)[None, :] == answer[:, None]
        )
        p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
        return frame[["user_id", "item_id"]].assign(llm=answer, llm_probs=[list(r) for r in p])

    slice_llm, pair_llm = llm_of(held), llm_of(test)
    cf = fold_features(train, test[["user_id", "item_id"]], ds.items, slice_how="hash", models=FAST_MODELS)
    soft = with_llm(cf, slice_llm, pair_llm)
    hard = with_llm(cf, slice_llm.drop(columns="llm_probs"), pair_llm.drop(columns="llm_probs"))
    assert soft.X_slice.drop(columns=list(LLM_COLUMNS)).equals(cf.X_slice) and soft.X_pairs["llm_missing"].sum() == 0
    rmse = {
        name: rating_metrics(test["rating"], decode.decode_accuracy(predict_proba(ff)))["rmse"]
        for name, ff in (("soft", soft), ("hard", hard))
    }
    assert rmse["soft"] < rmse["hard"] - 0.1, rmse


@pytest.mark.slow
def test_a_slice_run_rates_gates_and_scores_the_slice(prefect_server, llm_server, run_settings):
    from doppel.flows.simulate import simulate

    settings = run_settings(sim=SimulationSettings(target="slice"), run_id="slice-run")
    summary = simulate(settings)
    assert summary["status"] == "finished"
    con = duckdb.connect(settings.db, read_only=True)
    try:
        rated = con.execute("select user_id, item_id, status from simulated_ratings where run_id = 'slice-run'").df()
        gate = con.execute("select success from validation_results where run_id = 'slice-run'").df()
        metrics = con.execute("select simulator, metric, value from metrics where run_id = 'slice-run'").df()
        dataset = con.execute("select dataset from runs where run_id = 'slice-run'").fetchone()[0]
    finally:
        con.close()
    users = sorted(rated["user_id"].unique())
    slice_pairs = query(
        settings.db, "user_candidates", dataset=dataset, fold="u1", user_ids=users, **settings.sim.split_params()
    )
    assert len(users) == settings.users and _pairs(rated) == _pairs(slice_pairs) and set(rated["status"]) == {"ok"}
    assert gate["success"].all()
    n = metrics.query("metric == 'n'").set_index("simulator")["value"]
    assert n["llm"] == len(rated) and n["baseline:item_knn"] == len(rated)
    # scoring reads what the run rated from its config: its baselines learn from train minus the slice
    run = query(settings.db, "run_dataset", run_id="slice-run").iloc[0]
    assert (run["target"], run["slice_frac"], run["slice_seed"]) == ("slice", 0.2, 0)
    fit = query(settings.db, "fold_train", dataset=dataset, fold="u1", target="slice", slice_frac=0.2, slice_seed=0)
    assert not _pairs(fit) & _pairs(rated)


def write_synthetic_ml100k(root, n_users: int = 30, n_items: int = 60, seed: int = 5):
    """The synthetic dataset written as an ML-100K folder (fold u1 only), for the scripts that read one."""
    ds = make_synthetic(n_users=n_users, n_items=n_items, seed=seed)
    d = root / "ml-100k"
    d.mkdir(parents=True)
    genres = sorted({g for row in ds.items["genres"] for g in row.split("|") if g})
    occupations = sorted(set(ds.users["occupation"]))
    flags = lambda row: "|".join("1" if g in row.split("|") else "0" for g in genres)  # noqa: E731
    line = lambda r: f"{r.user_id}\t{r.item_id}\t{r.rating}\t{r.ts}"  # noqa: E731
    sp = ds.splits[ds.splits["fold"] == "u1"].merge(ds.ratings, on=["user_id", "item_id"])
    files = {
        "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(genres)),
        "u.occupation": "".join(f"{o}\n" for o in occupations),
        "u.user": "".join(f"{u.user_id}|{u.age}|{u.gender}|{u.occupation}|{u.zip}\n" for u in ds.users.itertuples()),
        "u.item": "".join(
            f"{i.item_id}|{i.title} ({i.year})|01-Jan-{i.year}||http://x|{flags(i.genres)}\n"
            for i in ds.items.itertuples()
        ),
        "u.data": "".join(line(r) + "\n" for r in ds.ratings.itertuples()),
        "u1.base": "".join(line(r) + "\n" for r in sp[sp["split"] == "train"].itertuples()),
        "u1.test": "".join(line(r) + "\n" for r in sp[sp["split"] == "test"].itertuples()),
    }
    for name, text in files.items():
        (d / name).write_text(text, encoding="latin-1")
    return d


@pytest.mark.slow
def test_fidelity_benchmark_takes_the_llm_as_a_calibrator_input(tmp_path, llm_server):
    import subprocess
    import sys

    from tests._bad_input import REPO, cli, run_args, user_env

    data_dir = write_synthetic_ml100k(tmp_path)
    db = tmp_path / "d.duckdb"
    common = ("--dataset", "ml-100k", "--data-dir", str(data_dir), "--fold", "u1", "--users", "8")
    # the slice run stores no distributions (as with a server without logprobs); the test run does
    for run_id, target, probs in (("test-run", "test", "--rating-probs"), ("slice-run", "slice", "--no-rating-probs")):
        done = cli(
            *run_args(tmp_path, llm_server.base_url, *common, "--target", target, "--run-id", run_id, probs, db=db)
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    argv = [
        sys.executable,
        "benchmarks/fidelity.py",
        "--folds",
        "u1",
        "--data-dir",
        str(data_dir),
        "--db",
        str(db),
        "--llm-run-id",
        "test-run",
        "--llm-slice-run-id",
        "slice-run",
        "--no-ablations",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(argv, cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("RESULT rmse=")
    assert "the LLM as a calibrator input" in done.stderr + done.stdout
    table = pd.read_csv(tmp_path / "out" / "fidelity_llm_test-run_slice-run.csv")
    n = table.set_index("simulator")["n"]
    assert (
        n["llm_input:with:accuracy"]
        == n["llm_input:with(answer only):accuracy"]
        == n["llm_input:without:accuracy"]
        == n["llm"]
        > 0
    )
    assert (
        "its distribution over 1..5 (logprobs or draws) against its answer alone" in (done.stderr + done.stdout).lower()
    )
    assert n["llm:expected_value"] == n["llm:sampled"] == n["llm"]  # the LLM alone, decoded from its distribution
    # a slice run of another seed is not the hybrid's slice: refused, with the command that fixes it
    again = subprocess.run(
        [*argv, "--seed", "1"], cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode != 0 and "--slice-seed 1" in again.stderr + again.stdout
