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
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from doppel.tasks.baselines import BASELINES, predict_baselines
from doppel.tasks.fidelity import decode, llm_margin
from doppel.tasks.fidelity.features import probs_matrix
from doppel.tasks.fidelity.hybrid import (
    BUCKETS,
    accuracy,
    activity_bucket,
    fold_features,
    predict_proba,
    realism,
)
from doppel.tasks.metrics import histogram, rating_metrics, total_variation
from support.fidelity_cache import cached, frame_hash, inputs_hash
from support.fidelity_inputs import (
    llm_decodings,
    llm_input_predictions,
    llm_rows,
    load_folds,
    sample_users,
    slice_run_rows,
)
from support.fidelity_report import (
    MARGIN_CF,
    MARGIN_LLM,
    WITH_ANSWER,
    WITH_LLM,
    WITHOUT_LLM,
    gaps_text,
    llm_summary,
    markdown,
    plot,
    summarize,
)
from support.output import DEFAULT_DATA_DIR, REPO, RESULTS, log

FOLDS = ("u1", "u2", "u3", "u4", "u5")
LAMS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ABLATE = ("knn", "svd", "svdpp", "biases", "user_stats", "item_stats", "genre")
BETAS = (0.1, 0.25, 0.5, 1.0)
GOALS = {
    "accuracy": "rmse <= 0.95, exact >= 44 %, close >= 90.5 %",
    "realism": "tv <= 0.05 (and per bucket), rmse <= 1.10, exact >= 38 %",
}


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
        "pairs": frame_hash(pairs),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", default=",".join(FOLDS), help="comma-separated, default u1..u5")
    parser.add_argument("--users", type=int, default=None, help="test users sampled per fold (seeded); default all")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="ML-100K folder (default: the shared copy, else download)",
    )
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
            "llm_rows": None if llm is None else frame_hash(llm),
            "llm_slice": None if slice_llm is None else frame_hash(slice_llm),
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
                f"over users): {gaps_text({fold: gap})}"
            )
        if input_gap is not None:
            input_gaps[fold] = input_gap
            log(
                f"  {fold}: the LLM as a calibrator input (accuracy mode, with minus without; 95% bootstrap over "
                f"users): {gaps_text({fold: input_gap})}"
            )
        if dist_gap is not None:
            dist_gaps[fold] = dist_gap
            log(
                f"  {fold}: the LLM's distribution against its answer alone (accuracy mode, {WITH_LLM} minus "
                f"{WITH_ANSWER}): {gaps_text({fold: dist_gap})}"
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
