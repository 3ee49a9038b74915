"""Fidelity of the calibrated hybrid simulator on ML-100K folds u1..u5, against the CF baselines
(and an LLM run, when given), on the same rows.

    python benchmarks/fidelity.py                      # all 5 folds, all test users
    python benchmarks/fidelity.py --folds u1 --users 100
    python benchmarks/fidelity.py --db doppel.duckdb --llm-run-id RUN   # + the run's LLM-only row
    python benchmarks/fidelity.py --db doppel.duckdb --llm-run-id RUN --llm-slice-run-id SLICE_RUN
        # + the hybrid with the LLM as a calibrator input (SLICE_RUN: `doppel run --target slice`)

Per fold the hybrid is fit on the train split only: CF features from surprise models fit on
train minus a calibration slice (a seeded random 20% of each user's train ratings; or k-fold stacking
over train), a multinomial calibrator over 1..5 learned on the held-out train ratings, then decoding:
accuracy mode = argmin_k E[(k - r)^2] - beta * P(r = k) with beta picked on the slice
(decode.choose_beta; beta = 0 is round(E[rating]) half up), realism mode = quantile matching of E[rating] to each user-activity bucket's train histogram, and the
trade-off family in between (lam = 0 .. 1). Ablations drop one feature group (or change the slice,
calibrator or refit). Features and per-fold results are cached (--cache-dir), keyed on the arguments
and on every input hashed whole (`inputs_hash`: doppel's source, library versions, data files): a rerun or an
interrupted run resumes.

Units: rmse on the 1..5 scale; exact and close (|err| <= 1) in %; tv = total-variation distance
between rating histograms in 0..1 (tasks/metrics.py). tv_bucket = the largest TV over the
activity buckets (<50, 50-150, >150 train ratings).

With --llm-run-id the rows are the run's pairs, with the LLM-only row and the LLM's marginal
contribution (two cross-fitted arms, with and without the LLM's answer; tasks/fidelity/llm_margin.py).
With --llm-slice-run-id too (a `doppel run --target slice` of the same users: the LLM rated each
user's calibration slice with a profile built without it), the LLM is an input of the calibrator
itself: rows llm_input:with / llm_input:without are the hybrid on one slice (slice_how="hash", the
slice that run rated), with and without the LLM's answer among its features; their paired gap,
with a 95% bootstrap interval over users, is the LLM's contribution as a calibrator input.
Where the runs stored the LLM's distribution over 1..5 (simulated_ratings.rating_probs, from
logprobs or from draws, `doppel run --rating-samples`), that distribution is the LLM's feature;
llm_input:with(answer only) is the same calibrator given the answer alone (one-hot), and
llm:expected_value / llm:sampled decode the LLM alone from its own distribution.

Writes benchmarks/results/fidelity.csv (per fold), fidelity.md (mean and spread over folds) and
fidelity_tradeoff.png (fidelity_llm_<run id>.* with --llm-run-id). Last line:
RESULT rmse=<x> exact=<x> close=<x> tv=<x> realism_tv=<x> realism_rmse=<x>
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from doppel.tasks.baselines import BASELINES, predict_baselines  # noqa: E402
from doppel.tasks.fidelity import decode, llm_margin  # noqa: E402
from doppel.tasks.fidelity.features import probs_matrix  # noqa: E402
from doppel.tasks.fidelity.hybrid import (  # noqa: E402
    BUCKETS,
    accuracy,
    activity_bucket,
    fold_features,
    predict_proba,
    realism,
    with_llm,
)
from doppel.tasks.metrics import histogram, rating_metrics, total_variation  # noqa: E402

DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "ml-100k"
RESULTS = REPO / "benchmarks" / "results"
FOLDS = ("u1", "u2", "u3", "u4", "u5")
LAMS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ABLATE = ("knn", "svd", "svdpp", "biases", "user_stats", "item_stats", "genre")
BETAS = (0.1, 0.25, 0.5, 1.0)
SLICE_FRAC = 0.2  # the calibration slice: this share of each user's train ratings (fold_features' default)
MARGIN_CF, MARGIN_LLM = "llm_margin:cf(cross-fit)", "llm_margin:cf+llm(cross-fit)"
# the calibrator with the LLM's answer (its distribution over 1..5 where the run stored one), with its
# answer as a certain rating (one-hot; only where distributions exist), and without the LLM
WITH_LLM, WITH_ANSWER, WITHOUT_LLM = "llm_input:with", "llm_input:with(answer only)", "llm_input:without"
# the seed's GPT-3.5 simulator as reported in issue 10 (not measured here): ranges over u1..u5
SEED_REPORTED = {"rmse": (1.30, 1.34), "tv": (0.13, 0.16)}
GOALS = {
    "accuracy": "rmse <= 0.95, exact >= 44 %, close >= 90.5 %",
    "realism": "tv <= 0.05 (and per bucket), rmse <= 1.10, exact >= 38 %",
}


def log(message: str) -> None:
    print(message, flush=True)


def inputs_hash(data_dir: Path) -> str:
    """Everything a cached number depends on besides the arguments, hashed whole: doppel's source (every
    file of the installed doppel package: tasks/, sql/, expectations/, the root package) and this script,
    every installed distribution's version and the Python version, and every data file under data_dir.
    A change in any of them (e.g. tasks/metrics.py, tasks/baselines.py, a new scikit-surprise) misses."""
    import doppel
    import doppel.expectations
    import doppel.sql
    import doppel.tasks

    h = hashlib.sha256()
    for root in sorted({Path(m.__file__).parent for m in (doppel, doppel.tasks, doppel.sql, doppel.expectations)}):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(f"{root.name}/{path.relative_to(root)}\0".encode() + path.read_bytes())
    h.update(Path(__file__).read_bytes())
    versions = sorted(f"{d.metadata['Name']}=={d.version}".lower() for d in metadata.distributions())
    h.update("\n".join([sys.version, *versions]).encode())
    for path in sorted(p for p in Path(data_dir).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(data_dir)}\0".encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cached(cache_dir: Path, key: dict, compute):
    name = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:20]
    path = cache_dir / f"{key.get('kind', 'x')}-{key.get('fold', '')}-{name}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    value = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(value)}")
    with open(tmp, "wb") as f:
        pickle.dump(value, f)
    tmp.replace(path)
    return value


def load_folds(data_dir: Path, folds: list[str]) -> tuple[dict, pd.DataFrame]:
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


def _frame_hash(frame: pd.DataFrame) -> str:
    lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()]
    frame = frame.assign(**{c: frame[c].map(repr) for c in lists})  # lists are not hashable: hash their text
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values).hexdigest()


def fold_predictions(
    args,
    fold: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    items: pd.DataFrame,
    llm: pd.DataFrame | None,
    code: str,
    slice_llm: pd.DataFrame | None = None,
) -> dict[str, np.ndarray]:
    """Every simulator's integer ratings for the fold's rows (same order as `test`)."""
    pairs = test[["user_id", "item_id"]]
    base_key = {
        "fold": fold,
        "users": args.users,
        "seed": args.seed,
        "n": len(pairs),
        "code": code,
        "pairs": _frame_hash(pairs),
    }

    def features(**kw):
        key = {**base_key, "kind": "features", **kw}
        return cached(args.cache_dir, key, lambda: fold_features(train, pairs, items, seed=args.seed, **kw))

    out: dict[str, np.ndarray] = {}
    t0 = time.monotonic()
    main_ff = features(stack=args.stack, slice_how="random", refit=True)
    log(f"  {fold}: features {time.monotonic() - t0:.0f} s ({len(main_ff.y_slice)} calibration rows)")
    t0 = time.monotonic()
    P, P_slice = predict_proba(main_ff, kind=args.calibrator, seed=args.seed, with_slice=True)
    out["hybrid:accuracy"], beta = accuracy(P, P_slice, main_ff)
    log(f"  {fold}: calibrator {time.monotonic() - t0:.0f} s; accuracy-mode beta (chosen on the slice) {beta}")
    out["decoder:expected_value(beta=0)"] = decode.decode_accuracy(P)
    out["hybrid:realism"] = realism(P, main_ff)
    for beta in BETAS:
        out[f"decoder:beta={beta}"] = decode.decode_accuracy(P, beta=beta)
    out["decoder:mode"] = decode.decode_accuracy(P, "mode")
    out["decoder:realism_population_target"] = realism(P, main_ff, per_bucket=False)
    out["decoder:calibrated_sampling"] = decode.sample(P, seed=args.seed)
    for lam in LAMS:
        out[f"tradeoff:lam={lam:.1f}"] = realism(P, main_ff, lam=lam)
    if llm is not None:
        out["llm"] = llm["llm"].to_numpy(dtype=float)
        llm_probs = probs_matrix(llm["llm_probs"].tolist())
        out.update(llm_decodings(out["llm"], llm_probs, args.seed))
        # the LLM's marginal contribution: a second stage fit on the other users' test rows (see
        # tasks/fidelity/llm_margin.py); the two arms differ only by the LLM input
        cf, cf_llm = llm_margin.cross_fit(
            P, out["llm"], test["rating"].to_numpy(), test["user_id"].to_numpy(), seed=args.seed, probs=llm_probs
        )
        out[MARGIN_CF], out[MARGIN_LLM] = cf, cf_llm
    if slice_llm is not None:
        out.update(llm_input_predictions(args, fold, train, pairs, items, llm, slice_llm, base_key))
    if args.no_ablations:
        return out
    for group in ABLATE:
        Pa, Pa_slice = predict_proba(main_ff, kind=args.calibrator, drop=(group,), seed=args.seed, with_slice=True)
        out[f"ablate:-{group}:accuracy"] = accuracy(Pa, Pa_slice, main_ff)[0]
        out[f"ablate:-{group}:realism"] = realism(Pa, main_ff)
    if args.compare_calibrators:  # HistGradientBoosting: 1-4 min per fold on 2 busy cores
        other = "logreg" if args.calibrator == "hgb" else "hgb"
        t0 = time.monotonic()
        Pc, Pc_slice = predict_proba(main_ff, kind=other, seed=args.seed, with_slice=True)
        out[f"ablate:calibrator={other}:accuracy"] = accuracy(Pc, Pc_slice, main_ff)[0]
        out[f"ablate:calibrator={other}:realism"] = realism(Pc, main_ff)
        log(f"  {fold}: calibrator {other} {time.monotonic() - t0:.0f} s")
    variants = {
        "slice=random20%": dict(stack=1, slice_how="random", refit=True),
        "slice=latest20%": dict(stack=1, slice_how="latest", refit=True),
        "slice=random20%,no-refit": dict(stack=1, slice_how="random", refit=False),
    }
    if args.stack == 1:
        variants["stack=5"] = dict(stack=5, slice_how="random", refit=True)
        variants.pop("slice=random20%")
    for label, kw in variants.items():
        t0 = time.monotonic()
        ff = features(**kw)
        Pv, Pv_slice = predict_proba(ff, kind=args.calibrator, seed=args.seed, with_slice=True)
        out[f"ablate:{label}:accuracy"] = accuracy(Pv, Pv_slice, ff)[0]
        out[f"ablate:{label}:realism"] = realism(Pv, ff)
        log(f"  {fold}: variant {label} {time.monotonic() - t0:.0f} s")
    return out


def score_fold(preds: dict[str, np.ndarray], test: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    truth = test["rating"].to_numpy()
    buckets = activity_bucket(train, test["user_id"].tolist())
    rows = []
    for name, pred in preds.items():
        m = rating_metrics(truth, pred)
        keep = ~np.isnan(np.asarray(pred, dtype=float))
        per = {}
        for b in BUCKETS:
            sel = keep & (buckets == b)
            if sel.any():
                per[b] = total_variation(histogram(np.asarray(pred)[sel]), histogram(truth[sel]))
        rows.append(
            {
                "simulator": name,
                **{k: m[k] for k in ("rmse", "mae", "exact", "close", "tv", "n", "n_missing")},
                "tv_bucket": max(per.values()) if per else float("nan"),
                **{f"tv[{b}]": v for b, v in per.items()},
            }
        )
    return pd.DataFrame(rows)


def summarize(per_fold: pd.DataFrame) -> pd.DataFrame:
    cols = ["rmse", "exact", "close", "tv", "tv_bucket"]
    g = per_fold.groupby("simulator", sort=False)[cols]
    mean, lo, hi = g.mean(), g.min(), g.max()
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[c] = mean[c]
        out[f"{c}_min"], out[f"{c}_max"] = lo[c], hi[c]
    out["folds"] = g.size()
    out["n_mean"] = per_fold.groupby("simulator", sort=False)["n"].mean()
    return out.reset_index()


def markdown(summary: pd.DataFrame) -> str:
    def cell(r, c, nd):
        return f"{r[c]:.{nd}f} ({r[c + '_min']:.{nd}f}-{r[c + '_max']:.{nd}f})"

    lines = ["| simulator | RMSE | exact % | close % | TV | TV worst bucket | folds |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r['simulator']} | {cell(r, 'rmse', 3)} | {cell(r, 'exact', 1)} | {cell(r, 'close', 1)} "
            f"| {cell(r, 'tv', 3)} | {cell(r, 'tv_bucket', 3)} | {int(r['folds'])} |"
        )
    return "\n".join(lines)


def plot(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary.set_index("simulator")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    curve = s[s.index.str.startswith("tradeoff:")]
    ax.plot(curve["tv"], curve["rmse"], "o-", color="tab:blue", label="hybrid trade-off (lam 0..1)")
    for name, label, marker in (
        ("hybrid:accuracy", "hybrid accuracy mode", "s"),
        ("hybrid:realism", "hybrid realism mode", "D"),
    ):
        if name in s.index:
            ax.errorbar(
                s.loc[name, "tv"],
                s.loc[name, "rmse"],
                xerr=[[s.loc[name, "tv"] - s.loc[name, "tv_min"]], [s.loc[name, "tv_max"] - s.loc[name, "tv"]]],
                yerr=[[s.loc[name, "rmse"] - s.loc[name, "rmse_min"]], [s.loc[name, "rmse_max"] - s.loc[name, "rmse"]]],
                fmt=marker,
                color="tab:blue",
                ms=8,
                capsize=3,
                label=label,
            )
    for name in BASELINES:
        key = f"baseline:{name}"
        if key in s.index:
            ax.plot(s.loc[key, "tv"], s.loc[key, "rmse"], "x", color="tab:gray", ms=8)
            ax.annotate(
                name, (s.loc[key, "tv"], s.loc[key, "rmse"]), textcoords="offset points", xytext=(5, 3), fontsize=8
            )
    if "decoder:calibrated_sampling" in s.index:
        ax.plot(
            s.loc["decoder:calibrated_sampling", "tv"],
            s.loc["decoder:calibrated_sampling", "rmse"],
            "^",
            color="tab:green",
            label="hybrid calibrated sampling",
        )
    if "llm" in s.index:
        ax.plot(s.loc["llm", "tv"], s.loc["llm", "rmse"], "*", color="tab:red", ms=12, label="LLM-only (this run)")
    (r0, r1), (t0, t1) = SEED_REPORTED["rmse"], SEED_REPORTED["tv"]
    ax.add_patch(
        plt.Rectangle(
            (t0, r0),
            t1 - t0,
            r1 - r0,
            color="tab:orange",
            alpha=0.4,
            label="seed GPT-3.5 (reported in issue 10, not measured)",
        )
    )
    ax.axhline(0.95, color="tab:purple", ls=":", lw=1)
    ax.axvline(0.05, color="tab:purple", ls=":", lw=1)
    ax.set_xlabel("rating-histogram TV distance to the real ratings (lower = more realistic)")
    ax.set_ylabel("RMSE of integer ratings (lower = more accurate)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _gaps_text(gaps: dict[str, dict]) -> str:
    """'u1: rmse +0.010 [-0.020, +0.040], ...; u2: ...' for {fold: paired_gap(...)}."""
    return "; ".join(
        f"{fold}: " + ", ".join(f"{m} {v:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, (v, lo, hi) in g.items())
        for fold, g in gaps.items()
    )


def llm_summary(args, gaps: dict, input_gaps: dict, dist_gaps: dict) -> str:
    """The sentences on the LLM's part that head the table (95% bootstrap intervals over users)."""
    if not args.llm_run_id:
        return "LLM: absent (no --llm-run-id): every hybrid row uses CF and profile features only"
    text = f"LLM-only row: run {args.llm_run_id}. "
    if args.llm_slice_run_id:
        text += (
            f"The LLM as a calibrator input (slice run {args.llm_slice_run_id}: {WITH_LLM} vs {WITHOUT_LLM}, "
            f"the same hash slice, accuracy mode, with minus without): {_gaps_text(input_gaps)}. "
        )
        text += (
            f"Its distribution over 1..5 (logprobs or draws) against its answer alone ({WITH_LLM} minus {WITH_ANSWER}): "
            f"{_gaps_text(dist_gaps)}. "
            if dist_gaps
            else "The runs stored no rating distributions (no logprobs, no draws): the LLM input is its answer alone. "
        )
    else:
        text += "The hybrid rows' calibrator has no LLM input (give --llm-slice-run-id for that). "
    return text + (
        f"Cross-fitted over users ({MARGIN_CF} vs {MARGIN_LLM}, tasks/fidelity/llm_margin.py): "
        f"{_gaps_text(gaps)} (cf+llm minus cf, 95% bootstrap interval over users)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", default=",".join(FOLDS), help="comma-separated, default u1..u5")
    parser.add_argument("--users", type=int, default=None, help="test users sampled per fold (seeded); default all")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stack",
        type=int,
        default=1,
        help="1 = one random 20%% calibration slice per user (default); k > 1 = k-fold stacking over train",
    )
    parser.add_argument("--calibrator", choices=("hgb", "logreg"), default="logreg")
    parser.add_argument("--db", default=None, help="a doppel DuckDB file holding --llm-run-id")
    parser.add_argument("--llm-run-id", default=None, help="add the run's LLM-only row; rows restricted to its pairs")
    parser.add_argument(
        "--llm-slice-run-id",
        default=None,
        help="a `doppel run --target slice` run of the same users: the LLM becomes a calibrator input",
    )
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument(
        "--compare-calibrators",
        action="store_true",
        help="also fit the other calibrator (hgb is slow: minutes per fold on 2 cores)",
    )
    parser.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / ".cache" / "fidelity")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if (args.db is None) != (args.llm_run_id is None):
        parser.error("--db and --llm-run-id go together")
    if args.llm_slice_run_id and not args.llm_run_id:
        parser.error("--llm-slice-run-id needs --llm-run-id (the same users' test-pair run)")
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    started = time.monotonic()
    data, items = load_folds(args.data_dir, folds)
    llm_all = llm_rows(args.db, args.llm_run_id) if args.llm_run_id else None
    slice_all = slice_run_rows(args.db, args.llm_slice_run_id, args.seed) if args.llm_slice_run_id else None
    t0 = time.monotonic()
    code = inputs_hash(args.data_dir)
    log(
        f"cache key of the inputs (doppel's source, library versions, data files): {code} ({time.monotonic() - t0:.1f} s)"
    )
    parts, gaps, input_gaps, dist_gaps = [], {}, {}, {}
    for fold in folds:
        t_fold = time.monotonic()
        train, test = data[fold]
        test = sample_users(test, args.users, args.seed, fold)
        llm = None
        if llm_all is not None:
            llm = test.merge(llm_all[llm_all["fold"] == fold], on=["user_id", "item_id"], how="inner")
            if llm.empty:
                log(f"  {fold}: the LLM run has no pairs in this fold; skipped")
                continue
            test = llm[["user_id", "item_id", "rating"]]
        slice_llm = None
        if slice_all is not None:
            slice_llm = slice_all[slice_all["fold"] == fold][["user_id", "item_id", "llm", "llm_probs"]].reset_index(
                drop=True
            )
        key = {
            "kind": "result",
            "fold": fold,
            "users": args.users,
            "seed": args.seed,
            "code": code,
            "stack": args.stack,
            "calibrator": args.calibrator,
            "ablations": not args.no_ablations,
            "compare": args.compare_calibrators,
            "llm": args.llm_run_id,
            "n": len(test),
            "llm_rows": None if llm is None else _frame_hash(llm),
            "llm_slice": None if slice_llm is None else _frame_hash(slice_llm),
        }

        def compute(train=train, test=test, llm=llm, fold=fold, slice_llm=slice_llm):
            preds = fold_predictions(args, fold, train, test, items, llm, code, slice_llm)
            base = predict_baselines(train, test[["user_id", "item_id"]], BASELINES, seed=args.seed)
            for name in BASELINES:
                preds[f"baseline:{name}"] = base[name].to_numpy()
            truth, users = test["rating"].to_numpy(), test["user_id"].to_numpy()
            gap = (
                llm_margin.paired_gap(truth, preds[MARGIN_CF], preds[MARGIN_LLM], users, seed=args.seed)
                if llm is not None
                else None
            )
            input_gap = (
                llm_margin.paired_gap(
                    truth, preds[f"{WITHOUT_LLM}:accuracy"], preds[f"{WITH_LLM}:accuracy"], users, seed=args.seed
                )
                if slice_llm is not None
                else None
            )
            dist_gap = (
                llm_margin.paired_gap(
                    truth, preds[f"{WITH_ANSWER}:accuracy"], preds[f"{WITH_LLM}:accuracy"], users, seed=args.seed
                )
                if f"{WITH_ANSWER}:accuracy" in preds
                else None
            )
            return score_fold(preds, test, train).assign(fold=fold), gap, input_gap, dist_gap

        scores, gap, input_gap, dist_gap = cached(args.cache_dir, key, compute)
        parts.append(scores)
        if gap is not None:
            gaps[fold] = gap
            log(
                f"  {fold}: LLM marginal contribution (cf+llm minus cf, cross-fit over users; 95% bootstrap "
                f"over users): {_gaps_text({fold: gap})}"
            )
        if input_gap is not None:
            input_gaps[fold] = input_gap
            log(
                f"  {fold}: the LLM as a calibrator input (accuracy mode, with minus without; 95% bootstrap over "
                f"users): {_gaps_text({fold: input_gap})}"
            )
        if dist_gap is not None:
            dist_gaps[fold] = dist_gap
            log(
                f"  {fold}: the LLM's distribution against its answer alone (accuracy mode, {WITH_LLM} minus "
                f"{WITH_ANSWER}): {_gaps_text({fold: dist_gap})}"
            )
        log(f"{fold}: {len(test)} rows, {test['user_id'].nunique()} users, {time.monotonic() - t_fold:.0f} s")
    per_fold = pd.concat(parts, ignore_index=True)
    summary = summarize(per_fold)
    runtime = time.monotonic() - started
    users = "all test users" if args.users is None else f"{args.users} test users per fold (seed {args.seed})"
    llm_note = llm_summary(args, gaps, input_gaps, dist_gaps)
    head = (
        f"folds {','.join(sorted(per_fold['fold'].unique()))}; {users}; {int(summary['n_mean'].max())} rows per "
        f"fold on average; calibrator {args.calibrator}, stack {args.stack}; {runtime:.0f} s"
    )
    table = markdown(summary)
    log("\n" + head + "\n" + llm_note + "\nmean over folds (min-max); rmse 1..5 scale, exact/close in %, tv in 0..1\n")
    log(table)
    args.out.mkdir(parents=True, exist_ok=True)
    # an LLM run's rows never overwrite the 5-fold table, nor another run's
    runs = "_".join(r for r in (args.llm_run_id, args.llm_slice_run_id) if r)
    stem = f"fidelity_llm_{re.sub(r'[^A-Za-z0-9_.-]', '_', runs)}" if args.llm_run_id else "fidelity"
    per_fold.to_csv(args.out / f"{stem}.csv", index=False)
    (args.out / f"{stem}.md").write_text(
        "# fidelity on ML-100K (benchmarks/fidelity.py)\n\n"
        + head
        + "\n\n"
        + llm_note
        + "\n\n"
        + f"goals: accuracy mode {GOALS['accuracy']}; realism mode {GOALS['realism']}\n\n"
        + "mean over folds (min-max); rmse on the 1..5 scale, exact/close in %, TV in 0..1; "
        "TV worst bucket = max over activity buckets <50 / 50-150 / >150 train ratings\n\n" + table + "\n"
    )
    plot(summary, args.out / f"{stem}_tradeoff.png", "ML-100K " + head)
    s = summary.set_index("simulator")
    acc, real = s.loc["hybrid:accuracy"], s.loc["hybrid:realism"]

    def f(x, nd=3):
        return f"{x:.{nd}f}"

    print(
        f"RESULT rmse={f(acc['rmse'])} exact={f(acc['exact'], 2)} close={f(acc['close'], 2)} tv={f(acc['tv'])} "
        f"realism_tv={f(real['tv'])} realism_rmse={f(real['rmse'])}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
