"""The recommender arena on ML-100K folds: do the simulated judges rank recommenders as real users do?

    python benchmarks/arena.py --folds u1 u2 u3 u4 u5      # all test users, every entrant and judge
    python benchmarks/arena.py --folds u1 --cache-dir /tmp/x --llm-users 0 --no-sim2real   # hybrid judges only

1. Sim-to-real (unless --no-sim2real), with doppel's own commands on the --db: `doppel ensemble` on
   --llm-fold (its item embeddings and catalogue make the RL env's world; --ensemble-items items
   analysed by the embedded model), then `doppel rl --reward hybrid --algo ppo,dqn,popular` (the
   calibrated hybrid's P(like), fit on that fold's train split only, as the simulated user).
2. The `doppel-arena` flow on --folds (recommenders fitted in parallel on 2 local Dask workers, the
   hybrid fit on each fold's train split only; the trained agents enter on their fold).
3. The LLM judge (unless --llm-users 0): `doppel run --target arena` on a seeded sample of
   --llm-users test users of --llm-fold with the embedded default model, then the arena again on
   that fold under the same run id (lists and hybrid from the cache) so the LLM judges too.
Writes benchmarks/results/arena.md, arena.csv and arena_metrics.csv with date, command, commit and
machine. Last line:
RESULT recommenders=<n> tau_observed=<mean over folds, hybrid accuracy, ndcg@10> tau_ceiling_ratio=<...>
tau_observed_audit=<...> tau_catalogue=<...> like_rate_gap=<hybrid accuracy, points> ece=<hybrid>
ece_llm=<LLM judge, --llm-fold> sim2real_ppo_vs_pop=<real nDCG@10 of rl_ppo / most_popular, --llm-fold>
like_rate_gap_realism=<...> like_rate_gap_draw=<...> like_rate_gap_llm=<...>  (not measured -> NA)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import _provenance
import pandas as pd

from support.output import add_data_options, data_argv

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def doppel(*args: str) -> str:
    """One doppel command as a researcher runs it (its output goes to the terminal and is returned)."""
    cmd = [sys.executable, "-m", "doppel.flows.cli", *args]
    print("$ doppel " + " ".join(args), flush=True)
    done = subprocess.run(cmd, text=True, capture_output=True, env={**os.environ, "COLUMNS": "200"})
    print(done.stdout[-3000:], done.stderr[-3000:] if done.returncode else "", flush=True)
    if done.returncode:
        raise SystemExit(f"doppel {args[0]} failed ({done.returncode})")
    return done.stdout


def finished(db: str, run_id: str) -> bool:
    import duckdb

    if not Path(db).exists():
        return False
    with duckdb.connect(db, read_only=True) as con:
        return bool(
            con.execute("select count(*) from runs where run_id = ? and status = 'finished'", [run_id]).fetchone()[0]
        )


def sim2real(args) -> tuple[str, str]:
    """doppel ensemble (the env's world) then doppel rl --reward hybrid on --llm-fold: (RL run id, its table)."""
    data = ["--dataset", "ml-100k", *data_argv(args.data_dir, args.item_text), "--db", args.db]
    ensemble_id = f"bench-ens-{args.llm_fold}-{args.ensemble_items}"
    if not finished(args.db, ensemble_id):  # a rerun on the same --db reuses it
        doppel(
            "ensemble",
            *data,
            "--fold",
            args.llm_fold,
            "--items",
            str(args.ensemble_items),
            "--ensemble-id",
            ensemble_id,
        )
    rl_id = f"bench-rl-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    out = doppel(
        "rl", "--db", args.db, "--ensemble-id", ensemble_id, "--reward", "hybrid", "--algo", "ppo,dqn,popular",
        "--steps", str(args.rl_steps), "--rl-id", rl_id,
    )  # fmt: skip
    return rl_id, out


def llm_judge(args, arena_id: str) -> str:
    """doppel run --target arena on the arena run's lists of --llm-fold; the LLM run's id."""
    run_id = f"llm-{arena_id}"
    cmd = ["run", "--dataset", "ml-100k", *data_argv(args.data_dir, args.item_text), "--db", args.db]
    cmd += ["--fold", args.llm_fold]
    cmd += ["--users", str(args.llm_users), "--target", "arena", "--arena-run", arena_id, "--run-id", run_id]
    doppel(*cmd, "--no-progress")
    return run_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    add_data_options(ap)
    ap.add_argument("--llm-users", type=int, default=10, help="LLM judge: seeded test users of --llm-fold (0: none)")
    ap.add_argument("--llm-fold", default="u1", help="the fold of the LLM judge and of the RL agents")
    ap.add_argument("--no-sim2real", action="store_true", help="no ensemble, RL training or RL entrants")
    ap.add_argument("--ensemble-items", type=int, default=20, help="items the ensemble run analyses with the LLM")
    ap.add_argument("--rl-steps", type=int, default=20_000, help="training steps per RL agent")
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

    started = time.monotonic()
    rl_id, rl_table = (None, "") if args.no_sim2real else sim2real(args)
    sim2real_s = time.monotonic() - started
    settings = ArenaSettings(
        dataset="ml-100k",
        data_dir=str(args.data_dir) if args.data_dir else None,
        folds=args.folds,
        db=args.db,
        cache_dir=args.cache_dir,
        n_boot=args.n_boot,
        rl_run=rl_id,
    )
    with prefect_api():
        summary = run_arena(settings)
    arena_s = time.monotonic() - started - sim2real_s
    if args.llm_users:
        llm_run = llm_judge(args, summary["run_id"])
        again = settings.model_copy(update={"run_id": summary["run_id"], "folds": [args.llm_fold], "llm_run": llm_run})
        with prefect_api():
            judged = run_arena(again)
        summary["folds"][args.llm_fold] = {
            **judged["folds"][args.llm_fold],
            "wall_s": summary["folds"][args.llm_fold]["wall_s"],
        }
    summary["rl_table"] = rl_table
    summary["phases_s"] = {
        "sim2real": round(sim2real_s),
        "arena": round(arena_s),
        "llm_judge": round(time.monotonic() - started - sim2real_s - arena_s),
    }
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

    def judge_stat(judge: str, col: str, fold: str | None = None) -> float:
        rows = calib[(calib.judge == judge) & ((calib.fold == fold) if fold else True)]
        return float(rows[col].mean()) if len(rows) else float("nan")

    def real_ndcg(recommender: str) -> float:
        m = metrics
        rows = m[(m.fold == args.llm_fold) & (m.protocol == "observed") & (m.metric == "ndcg@10")]
        rows = rows[(rows.judge == "real") & (rows.recommender == recommender)]
        return float(rows["value"].iloc[0]) if len(rows) else float("nan")

    result = {
        "recommenders": len(summary["entrants"]),
        "tau_observed": pick("observed", "ndcg@10", "hybrid:accuracy"),
        "tau_ceiling_ratio": pick("observed", "ndcg@10", "hybrid:accuracy", "ceiling_ratio"),
        "tau_observed_audit": pick("observed", "ndcg@10", "hybrid:audit"),
        "tau_catalogue": pick("catalogue", "like_rate@10", "hybrid:accuracy"),
        "like_rate_gap": float(calib[calib.judge == "hybrid:accuracy"]["like_rate_gap"].mean()),
        "ece": float(calib[calib.judge == "hybrid:accuracy"]["ece"].mean()),
        "ece_llm": judge_stat("llm", "ece"),
        "sim2real_ppo_vs_pop": real_ndcg("rl_ppo") / real_ndcg("most_popular"),
        "like_rate_gap_realism": judge_stat("hybrid:realism", "like_rate_gap"),
        "like_rate_gap_draw": judge_stat("hybrid:draw", "like_rate_gap"),
        "like_rate_gap_llm": judge_stat("llm", "like_rate_gap"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    agreement.to_csv(RESULTS / f"{args.out}.csv", index=False)
    metrics.to_csv(RESULTS / f"{args.out}_metrics.csv", index=False)
    write_markdown(args, summary, agreement, calib, metrics, recs, reliability, fold_wall, wall, result)
    plot_reliability(reliability, RESULTS / f"{args.out}_reliability.png")
    print(result_line(result), flush=True)


def result_line(result: dict) -> str:
    def value(v) -> str:
        return ("NA" if v != v else f"{v:.3f}") if isinstance(v, float) else str(v)

    return "RESULT " + " ".join(f"{k}={value(v)}" for k, v in result.items())


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
        _provenance.header(),
        f"- arena run: {summary['run_id']} in {args.db}; wall {wall:.0f} s in all; per fold (s): {fold_wall}; "
        f"phases (s): {summary.get('phases_s', {})}",
        *(
            f"- {fold}: {r[key]}"
            for fold, r in summary["folds"].items()
            for key in ("ensemble_note", "llm_note")
            if r.get(key)
        ),
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
            reliability[reliability.judge == "hybrid"]
            .groupby("bin")
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
        *(
            ["## Reliability of the LLM judge's P(like)", md(reliability[reliability.judge == "llm"].round(3)), ""]
            if (reliability.judge == "llm").any()
            else []
        ),
        "## Recommenders (fit and scoring seconds; 0 = from the cache)",
        md(recs.round(2)),
        "",
        *sim2real_section(summary, metrics, args.llm_fold),
        "Offline catalogue metrics (held-out likes among the top 10) favour popular items: the",
        "catalogue protocol shows where simulated and offline judgments disagree, not which is wrong.",
        "",
        result_line(result),
    ]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")


def sim2real_section(summary: dict, metrics: pd.DataFrame, fold: str) -> list[str]:
    """The RL agents trained on the hybrid reward beside most-popular and MF, on real held-out ratings."""
    if not summary.get("rl_table"):
        return []
    m = metrics[(metrics.fold == fold) & (metrics.judge == "real")]
    keep = ["rl_ppo", "rl_dqn", "most_popular", "biased_mf", "random"]
    table = m[m.recommender.isin(keep)].pivot_table(index="recommender", columns="metric", values="value")
    lines = [
        f"## Sim-to-real on {fold}: agents trained only on the hybrid's simulated users, real held-out metrics",
        "",
    ]
    lines += ["| recommender | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
    lines += [f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + " |" for name, row in table.iterrows()]
    return [
        *lines,
        "",
        "`doppel rl` on the hybrid reward (its own evaluation, simulated users):",
        "",
        "```",
        summary["rl_table"].strip(),
        "```",
        "",
    ]


def plot_reliability(reliability: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    shown = reliability[reliability.n > 0]
    for (judge, fold), part in shown.groupby(["judge", "fold"]):
        style = (
            {"marker": "o", "ms": 3, "lw": 1}
            if judge == "hybrid"
            else {"marker": "s", "ms": 5, "lw": 2, "color": "black"}
        )
        ax.plot(part.mean_p, part.like_rate, label=f"{judge} {fold}", **style)
    ax.set_xlabel("P(like) = P(rating >= 4), bin mean")
    ax.set_ylabel("real like rate in the bin")
    ax.set_title("arena: reliability of the judges' P(like)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
