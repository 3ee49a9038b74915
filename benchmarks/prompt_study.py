"""Prompt variants side by side: tokens per rating and fidelity, same users, same model, same pairs.

    python benchmarks/prompt_study.py --data-dir path/to/ml-100k --item-text path/to/ml100k_movie_text.tsv
    python benchmarks/prompt_study.py --variants compact,seed,compact+batch5,compact+noupdate --users 50
    python benchmarks/prompt_study.py --db runs.duckdb --run-ids compact=RUN_A,seed=RUN_B   # score runs only

A variant is a prompt set (tasks/llm/templates.py) with optional changes: `+batchN` (N held-out items
per rating call) and `+noupdate` (no profile update after a rating batch). The sets: "compact" (the
default: item text cut to 160 characters, recent ratings and updates without overviews, system +
viewer + profile first so the server's prefix cache hits), "seed" (the seed's layout: verbose
markdown instructions, the whole item description everywhere, instructions after the data), or a
folder of templates. The answer contract (JSON schema) is the same for all. The default compares
the old (seed) and new (compact) shapes on 20 seeded users of u1, the first 20 held-out items each,
with the embedded qwen2.5-0.5b (--base-url for an endpoint; --max-test-items 0 for every item).

Each variant is one `doppel run` in --work-dir, its run id naming fold, users, items, model and
variant (study-u1-20u-20i-qwen2_5-0_5b-seed), so an interrupted study resumes where it stopped and a finished one re-scores in seconds (answers come from the cache).

Prints per variant: calls, and those the server answered (the variants share a response cache, so
identical prompts are answered once), prompt tokens per rating over all the variant's calls (the
server's counts), prefix-cache reuse and seconds per call (the server's figures for each of those
calls, from the run that first asked it), failed pairs, RMSE / MAE / exact / close / TV
on the pairs every variant rated, and RMSE on the first rating batch alone versus later batches:
with updates, a later batch is rated after the profile has seen the true ratings of the batches
before it (truth leakage), so compare later batches against a +noupdate variant. Then each variant
minus the first, with a 95% bootstrap interval over users. Writes benchmarks/results/
prompt_study.{md,csv}. Last line (new = compact, old = seed, when both are in the study):
RESULT tokens_per_rating_new=<x> tokens_per_rating_old=<x> token_ratio=<x> rmse_new=<x> rmse_old=<x>
rmse_gap=<x> exact_new=<x> exact_old=<x> users=<n> pairs=<n>
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from doppel.tasks.fidelity.llm_margin import paired_gap  # noqa: E402
from doppel.tasks.metrics import rating_metrics  # noqa: E402
from doppel.tasks.store.db import query  # noqa: E402
from support.output import RESULTS, add_data_options, data_argv, log, markdown_table, result_line  # noqa: E402
from support.runs import doppel_env, run_doppel  # noqa: E402

NEW, OLD = "compact", "seed"
VARIANT_RE = re.compile(r"^(?P<prompts>[^+]+)(?P<mods>(\+(batch\d+|noupdate))*)$")


def variant_args(variant: str) -> list[str]:
    """`doppel run` options of a variant such as `seed`, `compact+batch5+noupdate` or `my/folder+batch20`."""
    match = VARIANT_RE.match(variant)
    if match is None:
        raise SystemExit(f"variant {variant!r}: expected <prompt set>[+batchN][+noupdate]")
    args = ["--prompts", match["prompts"]]
    for mod in filter(None, match["mods"].split("+")):
        args += ["--no-update"] if mod == "noupdate" else ["--rate-batch", mod.removeprefix("batch")]
    return args


def run_variant(args: argparse.Namespace, variant: str, db: Path) -> str:
    """One `doppel run` of `variant`; resumes (or re-reads) its run id, which names the study's settings."""
    size = f"{args.fold}-{args.users}u-{args.max_test_items or 'all'}i-{args.model}"
    run_id = "study-" + re.sub(r"[^A-Za-z0-9+_-]", "_", f"{size}-{variant}")
    argv = [
        sys.executable,
        "-m",
        "doppel.flows.cli",
        "run",
        "--dataset",
        "ml-100k",
        "--fold",
        args.fold,
        "--users",
        str(args.users),
        "--db",
        str(db),
        "--run-id",
        run_id,
        "--no-progress",
        "--no-baselines",
        "--model",
        args.model,
        "--concurrency",
        str(args.concurrency),
        *variant_args(variant),
    ]
    argv += data_argv(args.data_dir, args.item_text)  # no --data-dir: doppel downloads ML-100K
    if args.max_test_items:
        argv += ["--max-test-items", str(args.max_test_items)]
    if args.base_url:
        argv += ["--base-url", args.base_url]
    log(f"{variant}: doppel run (run id {run_id}) ...")
    log_path = args.work_dir / f"{run_id}.log"
    done = run_doppel(argv, doppel_env(args.work_dir / "prefect-home"), log_path, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{variant}: doppel run failed (rc {done.returncode}); see {log_path}:\n{done.stdout[-2000:]}")
    log(f"{variant}: {done.wall_s:.0f} s")
    return run_id


def variant_rows(db: Path, run_id: str) -> pd.DataFrame:
    """The run's pairs with truth, prediction (None unless rated) and rating batch."""
    rows = query(db, "scoring_rows", read_only=True, run_id=run_id)
    return rows.assign(pred=rows["pred"].where(rows["status"] == "ok"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=f"{NEW},{OLD}", help="comma list; the first is the reference")
    add_data_options(ap)
    ap.add_argument("--no-item-text", dest="item_text", action="store_const", const=None, help="titles and genres only")
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--users", type=int, default=20, help="seeded sample of the fold's test users")
    ap.add_argument(
        "--max-test-items",
        type=int,
        default=20,
        help="held-out items per user (0: all); ~2-3 min per user per variant on the 0.5B model",
    )
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint instead of the embedded model")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per variant run")
    ap.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".cache" / "prompt_study")
    ap.add_argument("--db", type=Path, default=None, help="score finished runs in this DuckDB file (no LLM calls)")
    ap.add_argument("--run-ids", default=None, help="with --db: variant=RUN,... (the first is the reference)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    if args.db:
        if not args.run_ids:
            ap.error("--db needs --run-ids variant=RUN,...")
        db = args.db
        run_ids = dict(part.split("=", 1) for part in args.run_ids.split(","))
    else:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        db = args.work_dir / "doppel.duckdb"
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for v in variants:
            variant_args(v)  # a typo fails before any run starts
        run_ids = {v: run_variant(args, v, db) for v in variants}

    rows = {v: variant_rows(db, run_id) for v, run_id in run_ids.items()}
    keys = ["fold", "user_id", "item_id"]
    reference = next(iter(run_ids))
    both = rows[reference][keys + ["truth"]]
    for v, frame in rows.items():
        both = both.merge(frame[keys + ["pred", "batch"]].rename(columns={"pred": v, "batch": f"batch:{v}"}), on=keys)
    if both.empty:
        raise SystemExit(f"the runs {run_ids} share no pairs: were they run on the same users?")
    common = both.dropna(subset=list(run_ids))
    users = common["user_id"].to_numpy()
    n_users = common["user_id"].nunique()
    log(f"{n_users} users, {len(common)} pairs rated by every variant ({len(both) - len(common)} failed in some)")

    table = []
    for v, run_id in run_ids.items():
        cost = query(db, "run_prompt_cache", read_only=True, run_id=run_id).iloc[0]
        m = rating_metrics(common["truth"], common[v])
        first = common[f"batch:{v}"] == 0
        table.append(
            {
                "variant": v,
                "run_id": run_id,
                "calls": int(cost["calls"]),
                "server_calls": int(cost["server_calls"]),
                "prompt_tokens_per_rating": float(cost["prompt_tokens"]) / max(1, int(cost["rated"])),
                "prefix_cache_pct": 100
                * float(cost["prefix_cached_tokens"])
                / max(1.0, float(cost["server_prompt_tokens"])),
                "s_per_call": float(cost["s_per_call"]) if pd.notna(cost["s_per_call"]) else float("nan"),
                "failed_pairs": int(cost["failed"]),
                "repairs": int(cost["repairs"]),
                **{k: m[k] for k in ("rmse", "mae", "exact", "close", "tv")},
                "n": int(m["n"]),
                "rmse_first_batch": rating_metrics(common["truth"][first], common[v][first])["rmse"],
                "rmse_later_batches": rating_metrics(common["truth"][~first], common[v][~first])["rmse"],
            }
        )
    table = pd.DataFrame(table)
    gaps = {
        v: paired_gap(common["truth"].to_numpy(), common[reference].to_numpy(), common[v].to_numpy(), users)
        for v in run_ids
        if v != reference
    }

    cols = [
        "variant",
        "calls",
        "server_calls",
        "prompt_tokens_per_rating",
        "prefix_cache_pct",
        "s_per_call",
        "failed_pairs",
        "repairs",
        "rmse",
        "mae",
        "exact",
        "close",
        "tv",
        "rmse_first_batch",
        "rmse_later_batches",
        "n",
    ]
    text = markdown_table(table.to_dict("records"), cols)
    gap_lines = [
        f"- {v} minus {reference}, {metric}: {g:+.3f} (95% interval over users {lo:+.3f} .. {hi:+.3f})"
        for v, gap in gaps.items()
        for metric, (g, lo, hi) in gap.items()
    ]
    log(text)
    log("\n".join(gap_lines))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "prompt_study.csv", index=False)
    (args.out / "prompt_study.md").write_text(
        f"# Prompt study\n\n{n_users} users of {args.fold}, {len(common)} pairs rated by every variant; runs "
        f"{run_ids} in {db}.\n\n{text}\n\n" + "\n".join(gap_lines) + "\n"
    )

    by = table.set_index("variant")
    if {NEW, OLD} <= set(by.index):
        new, old = by.loc[NEW], by.loc[OLD]  # both scored on the same pairs: the gap is the paired one
        print(
            result_line(
                tokens_per_rating_new=float(new["prompt_tokens_per_rating"]),
                tokens_per_rating_old=float(old["prompt_tokens_per_rating"]),
                token_ratio=float(new["prompt_tokens_per_rating"] / old["prompt_tokens_per_rating"]),
                rmse_new=float(new["rmse"]),
                rmse_old=float(old["rmse"]),
                rmse_gap=float(new["rmse"] - old["rmse"]),
                exact_new=float(new["exact"]),
                exact_old=float(old["exact"]),
                users=n_users,
                pairs=len(common),
            )
        )
    else:
        best = by["rmse"].idxmin()
        print(result_line(best_variant=best, best_rmse=float(by.loc[best, "rmse"]), users=n_users, pairs=len(common)))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
