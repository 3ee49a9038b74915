"""The recommender arena on ML-100K folds: does the calibrated hybrid rank recommenders as real users do?

    python benchmarks/arena.py --folds u1 u2 u3 u4 u5      # all test users, every built-in entrant
    python benchmarks/arena.py --folds u1 --cache-dir /tmp/x   # a cold cache times the whole fold

Runs the `doppel-arena` flow (recommenders fitted in parallel on 2 local Dask workers; the hybrid fit
on each fold's train split only) and writes benchmarks/results/arena.md and arena.csv (per fold:
the agreement table, calibration, wall time) with date, command, commit and machine. Last line:
RESULT recommenders=<n> tau_observed=<mean over folds, hybrid accuracy, ndcg@10> tau_ceiling_ratio=<...>
tau_observed_audit=<...> tau_catalogue=<...> like_rate_gap=<hybrid accuracy, points> ece=<hybrid>
ece_llm=<LLM judge> sim2real_ppo_vs_pop=<...>  (not measured -> NA)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# the checkout sits beside shared/ (a worktree under /work/wt/ uses /work/shared)
DEFAULT_DATA_DIR = next(
    (p for p in (REPO.parent / "shared" / "data" / "ml-100k", Path("/work/shared/data/ml-100k")) if p.is_dir()),
    REPO.parent / "shared" / "data" / "ml-100k",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    ap.add_argument("--db", default=str(REPO / ".doppel" / "arena-bench.duckdb"))
    ap.add_argument("--cache-dir", default=str(REPO / ".doppel" / "arena-cache"))
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--out", default="arena")
    ap.add_argument(
        "--from-db",
        metavar="RUN_ID",
        help="no fitting: summarise a stored arena run's folds from --db ('latest': the newest)",
    )
    args = ap.parse_args()
    if args.from_db:
        summary, wall = stored_run(args.db, args.from_db), float("nan")
        args.folds = list(summary["folds"])
        report(args, summary, wall)
        return

    from doppel.flows.arena import run_arena
    from doppel.flows.runtime import prefect_api
    from doppel.tasks.arena.config import ArenaSettings

    settings = ArenaSettings(
        dataset="ml-100k",
        data_dir=args.data_dir,
        folds=args.folds,
        db=args.db,
        cache_dir=args.cache_dir,
        n_boot=args.n_boot,
    )
    started = time.monotonic()
    with prefect_api():
        summary = run_arena(settings)
    report(args, summary, time.monotonic() - started)


def stored_run(db: str, run_id: str) -> dict:
    """An arena run's per-fold tables read back from DuckDB (the folds that finished)."""
    import duckdb

    with duckdb.connect(db, read_only=True) as con:
        if run_id == "latest":
            run_id = con.execute(
                "select run_id from runs where json_extract_string(config, '$.kind') = 'arena' order by started desc limit 1"
            ).fetchone()[0]
        tables = {
            name: con.execute(
                f"select * exclude (run_id) from arena_{name} where run_id = ? order by fold", [run_id]
            ).df()
            for name in ("metrics", "agreement", "calibration", "reliability", "recommenders")
        }
    folds = sorted(tables["agreement"]["fold"].unique())
    entrants = sorted(tables["recommenders"]["recommender"].unique())
    return {
        "run_id": run_id,
        "entrants": entrants,
        "folds": {
            f: {**{k: v[v["fold"] == f].reset_index(drop=True) for k, v in tables.items()}, "wall_s": float("nan")}
            for f in folds
        },
    }


def report(args, summary: dict, wall: float) -> None:
    agreement = pd.concat([r["agreement"] for r in summary["folds"].values()], ignore_index=True)
    calib = pd.concat([r["calibration"] for r in summary["folds"].values()], ignore_index=True)
    metrics = pd.concat([r["metrics"] for r in summary["folds"].values()], ignore_index=True)
    recs = pd.concat([r["recommenders"] for r in summary["folds"].values()], ignore_index=True)
    reliability = pd.concat([r["reliability"] for r in summary["folds"].values()], ignore_index=True)
    fold_wall = {f: r["wall_s"] for f, r in summary["folds"].items()}

    def pick(protocol: str, metric: str, judge: str, col: str = "tau") -> float:
        a = agreement
        return float(a[(a.protocol == protocol) & (a.metric == metric) & (a.judge == judge)][col].mean())

    result = {
        "recommenders": len(summary["entrants"]),
        "tau_observed": pick("observed", "ndcg@10", "hybrid:accuracy"),
        "tau_ceiling_ratio": pick("observed", "ndcg@10", "hybrid:accuracy", "ceiling_ratio"),
        "tau_observed_audit": pick("observed", "ndcg@10", "hybrid:audit"),
        "tau_catalogue": pick("catalogue", "like_rate@10", "hybrid:accuracy"),
        "like_rate_gap": float(calib[calib.judge == "hybrid:accuracy"]["like_rate_gap"].mean()),
        "ece": float(calib[calib.judge == "hybrid:accuracy"]["ece"].mean()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    agreement.to_csv(RESULTS / f"{args.out}.csv", index=False)
    metrics.to_csv(RESULTS / f"{args.out}_metrics.csv", index=False)
    write_markdown(args, summary, agreement, calib, metrics, recs, reliability, fold_wall, wall, result)
    plot_reliability(reliability, RESULTS / f"{args.out}_reliability.png")
    line = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    print(f"RESULT {line} ece_llm=NA sim2real_ppo_vs_pop=NA", flush=True)


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def write_markdown(args, summary, agreement, calib, metrics, recs, reliability, fold_wall, wall, result) -> None:
    def md(frame: pd.DataFrame) -> str:  # a Markdown table without the optional tabulate package
        cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
        head = [str(c) for c in frame.columns]
        return "\n".join(
            ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in cells]
        )

    mean_tau = (
        agreement.groupby(["protocol", "metric", "judge"])[["tau", "rho", "ceiling_ratio"]]
        .agg(["mean", "min", "max"])
        .round(3)
    )
    wide = metrics[metrics.metric.isin(["ndcg@10", "precision@5", "like_rate@10"])]
    wide = (
        wide.groupby(["protocol", "metric", "recommender", "judge"])["value"]
        .mean()
        .unstack("judge")
        .round(3)
        .reset_index()
    )
    lines = [
        f"# Recommender arena on ML-100K ({', '.join(args.folds)})",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- command: `python benchmarks/arena.py {' '.join(sys.argv[1:])}`",
        f"- commit: {commit()}",
        f"- machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f} at the end",
        f"- arena run: {summary['run_id']} in {args.db}; wall {wall:.0f} s in all; per fold (s): {fold_wall}",
        "",
        "## Rank agreement per fold (Kendall tau / Spearman rho, 95% bootstrap over users; noise-ceiling ratio)",
        md(agreement.round(3)),
        "",
        "## Mean, min and max over folds",
        md(
            mean_tau.reset_index().set_axis(
                ["protocol", "metric", "judge", *("_".join(c) for c in mean_tau.columns)], axis=1
            )
        ),
        "",
        "## Mean metric over folds: recommender x real x each judge",
        md(wide),
        "",
        "## Positivity calibration on held-out pairs (per fold)",
        md(calib.round(4)),
        "",
        "## Reliability of the hybrid's P(like) (all folds pooled by bin)",
        md(
            reliability.groupby("bin")
            .agg(
                lower=("lower", "first"),
                upper=("upper", "first"),
                n=("n", "sum"),
                mean_p=("mean_p", "mean"),
                like_rate=("like_rate", "mean"),
            )
            .reset_index()
            .round(3)
        ),
        "",
        "## Recommenders (fit and scoring seconds; 0 = from the cache)",
        md(recs.round(2)),
        "",
        "Offline catalogue metrics (held-out likes among the top 10) favour popular items: the",
        "catalogue protocol shows where simulated and offline judgments disagree, not which is wrong.",
        "",
        "RESULT "
        + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
        + " ece_llm=NA sim2real_ppo_vs_pop=NA",
    ]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")


def plot_reliability(reliability: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for fold, part in reliability[reliability.n > 0].groupby("fold"):
        ax.plot(part.mean_p, part.like_rate, marker="o", ms=3, lw=1, label=fold)
    ax.set_xlabel("hybrid P(like) = P(rating >= 4), bin mean")
    ax.set_ylabel("real like rate in the bin")
    ax.set_title("arena: reliability of the hybrid's P(like)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
