"""The fidelity benchmark's inputs: MovieLens folds, the sampled test users, an LLM run's ratings (test
pairs and calibration-slice pairs) and what the hybrid's calibrator makes of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from doppel.tasks.fidelity import decode
from doppel.tasks.fidelity.hybrid import accuracy, fold_features, predict_proba, realism, with_llm

from .fidelity_cache import cached
from .fidelity_report import WITH_ANSWER, WITH_LLM, WITHOUT_LLM
from .output import log

SLICE_FRAC = 0.2  # the calibration slice: this share of each user's train ratings (fold_features' default)


def load_folds(data_dir: Path | None, folds: list[str]) -> tuple[dict, pd.DataFrame]:
    from doppel.tasks.data.movielens import load_movielens

    ds = load_movielens(data_dir)
    out = {}
    for fold in folds:
        sp = ds.splits[ds.splits["fold"] == fold]
        train = sp[sp["split"] == "train"].merge(ds.ratings, on=["user_id", "item_id"])
        test = sp[sp["split"] == "test"].merge(ds.ratings, on=["user_id", "item_id"])
        out[fold] = (
            train[["user_id", "item_id", "rating", "ts"]].reset_index(drop=True),
            test[["user_id", "item_id", "rating"]].reset_index(drop=True),
        )
    return out, ds.items


def sample_users(test: pd.DataFrame, n: int | None, seed: int, fold: str) -> pd.DataFrame:
    if n is None:
        return test
    users = np.sort(test["user_id"].unique())
    rng = np.random.default_rng([seed, int(fold.lstrip("u") or 0)])
    keep = rng.choice(users, size=min(n, users.size), replace=False)
    return test[test["user_id"].isin(keep)].reset_index(drop=True)


def llm_rows(db: str, run_id: str) -> pd.DataFrame:
    """fold, user_id, item_id, llm (the run's rating; NaN where it failed), llm_probs (its P(1..5);
    from logprobs or draws; None where the run stored none) of a doppel run."""
    from doppel.tasks.store.db import query

    rows = query(db, "scoring_rows", read_only=True, run_id=run_id)
    rows = rows.rename(columns={"pred": "llm", "rating_probs": "llm_probs"})
    rows["llm_probs"] = [
        None if pd.api.types.is_scalar(p) and pd.isna(p) else [float(x) for x in p] for p in rows["llm_probs"]
    ]
    return rows[["fold", "user_id", "item_id", "llm", "llm_probs"]].astype({"user_id": str, "item_id": str})


def slice_run_rows(db: str, run_id: str, seed: int) -> pd.DataFrame:
    """The LLM's ratings of calibration-slice pairs from a `doppel run --target slice` run; the run
    must have rated the slice the hybrid holds out (frac 0.2, this --seed)."""
    from doppel.tasks.store.db import query

    run = query(db, "run_dataset", read_only=True, run_id=run_id)
    if run.empty:
        raise SystemExit(f"--llm-slice-run-id: no run {run_id!r} in {db}")
    r = run.iloc[0]
    if r["target"] != "slice" or abs(float(r["slice_frac"]) - SLICE_FRAC) > 1e-9 or int(r["slice_seed"]) != seed:
        raise SystemExit(
            f"--llm-slice-run-id: run {run_id!r} rated target={r['target']} (slice_frac "
            f"{r['slice_frac']}, slice_seed {r['slice_seed']}); the hybrid's slice needs "
            f"`doppel run --target slice --slice-frac {SLICE_FRAC} --slice-seed {seed}`"
        )
    return llm_rows(db, run_id)


def llm_input_predictions(
    args,
    fold: str,
    train: pd.DataFrame,
    pairs: pd.DataFrame,
    items: pd.DataFrame,
    llm: pd.DataFrame,
    slice_llm: pd.DataFrame,
    base_key: dict,
) -> dict[str, np.ndarray]:
    """The hybrid on the hash slice, its calibrator with and without the LLM's answer as an input
    (and, where the runs stored distributions, with the answer alone)."""
    key = {**base_key, "kind": "features-hash-slice"}
    cf = cached(
        args.cache_dir,
        key,
        lambda: fold_features(train, pairs, items, slice_how="hash", frac=SLICE_FRAC, seed=args.seed),
    )
    ff = with_llm(cf, slice_llm, llm)
    covered = ff.X_slice["llm_missing"].to_numpy() == 0
    n_probs = [int(frame["llm_probs"].notna().sum()) for frame in (slice_llm, llm)]
    slice_users = set(slice_llm["user_id"])
    in_users = ff.slice_pairs["user_id"].isin(slice_users).to_numpy()
    stray = len(slice_llm) - int((ff.slice_pairs[in_users].merge(slice_llm, on=["user_id", "item_id"])).shape[0])
    if stray:
        raise SystemExit(f"  {fold}: the slice run rated {stray} pairs outside the hybrid's calibration slice")
    log(
        f"  {fold}: LLM answers on {covered.sum()} of {len(covered)} calibration rows "
        f"({in_users.sum()} slice rows of the slice run's {len(slice_users)} users); with a distribution over "
        f"1..5: {n_probs[0]} of the slice run's {len(slice_llm)} rows, {n_probs[1]} of the test run's {len(llm)}"
    )
    arms = [(WITH_LLM, ff, ()), (WITHOUT_LLM, ff, ("llm",))]
    if any(n_probs):
        plain = [frame.drop(columns="llm_probs") for frame in (slice_llm, llm)]
        arms.insert(1, (WITH_ANSWER, with_llm(cf, *plain), ()))
    out = {}
    for label, features, drop in arms:
        P, P_slice = predict_proba(features, kind=args.calibrator, drop=drop, seed=args.seed, with_slice=True)
        out[f"{label}:accuracy"] = accuracy(P, P_slice, features)[0]
        out[f"{label}:realism"] = realism(P, features)
    return out


def llm_decodings(answer: np.ndarray, probs: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The LLM alone, decoded from its own distribution over 1..5 (only where the run stored
    distributions): expected-value rounding and one seeded draw. A pair without a distribution keeps
    its answer; a pair the LLM did not rate stays NaN."""
    has = ~np.isnan(probs).any(axis=1) & ~np.isnan(answer)
    if not has.any():
        return {}
    P = probs[has] / probs[has].sum(axis=1, keepdims=True)
    out = {}
    for name, ratings in (("llm:expected_value", decode.decode_accuracy(P)), ("llm:sampled", decode.sample(P, seed))):
        pred = answer.copy()
        pred[has] = ratings
        out[name] = pred
    return out
