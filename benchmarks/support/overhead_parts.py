"""benchmarks/overhead.py's parts: its options, the phase table, the rerun of the finished run and the
sequential (Lusifer-style) run; each adds its figures to the script's `out` dict and logs them."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from support import machine, output, runs, servers
from support.db import run_facts
from support.output import log


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    output.add_data_options(ap)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--users", type=int, default=None, help="seeded sample of N users (default: all test users)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.5, help="server seconds per call")
    ap.add_argument("--runner", default="dask", choices=["dask", "threads"])
    ap.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score CF baselines too, as a plain `doppel run` does (default on)",
    )
    ap.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seq-users", type=int, default=10, help="users of the sequential (concurrency 1) run")
    ap.add_argument("--rerun", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--external-prefect",
        action="store_true",
        help="give doppel a running Prefect API server (PREFECT_API_URL, started before the timed runs, "
        "as a lab's `prefect server start`) instead of letting it start its own",
    )
    ap.add_argument(
        "--warm-prefect-home",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create Prefect's database in the run's PREFECT_HOME before the timed runs (a one-time "
        "migration every user pays on their first doppel command only; timed and printed apart)",
    )
    ap.add_argument("--repo", type=Path, default=output.REPO, help="checkout of doppel to time (default: this one)")
    ap.add_argument("--max-load", type=float, default=2.5, help="wait for the 1-min load average to drop below this")
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for a quiet machine")
    ap.add_argument(
        "--template",
        type=Path,
        default=None,
        help="an already ingested DuckDB file to copy instead of ingesting (same code version)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="keep the run's files here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    return ap.parse_args(argv)


def phase_table(t) -> list[str]:
    p = t.phases
    marks = [("start", 0.0)] + [
        (k, p[k])
        for k in (
            "prefect_temp_server",
            "flow_begin",
            "dataset_ready",
            "fanout_begin",
            "planned",
            "submitted",
            "fanout_end",
            "score_begin",
            "validated",
            "scored",
            "summary",
        )
        if k in p
    ]
    marks.append(("exit", round(t.wall_s, 2)))
    out = []
    for (a, ta), (b, tb) in zip(marks, marks[1:]):
        out.append(f"  {a:>19s} -> {b:<19s} {tb - ta:7.2f} s   (at {tb:7.2f} s)")
    return out


def rerun(
    args,
    argv_full: list[str],
    env: dict,
    run_dir: Path,
    log_path: Path,
    base_url: str,
    db: Path,
    run_id: str,
    calls: int,
    full,
    out: dict,
) -> None:
    """Run the finished run again (same --run-id, db and cache): server requests must be 0."""
    load = machine.quiet_machine(args.max_load, args.max_wait)
    servers.server_reset(base_url)
    log(f"\nrerun of the finished run, same --run-id (load {load:.2f}) ...")
    again = runs.run_timed(argv_full, env, run_dir, log_path)
    again_requests = servers.server_stats(base_url)["requests"]
    facts2 = run_facts(db, run_id)
    new_rows = facts2["calls"] - calls
    out.update(
        rerun_wall_s=round(again.wall_s, 2),
        rerun_server_requests=again_requests,
        rerun_new_call_rows=new_rows,
        rerun_pct=round(100 * again.wall_s / full.wall_s, 1),
        rerun_rc=again.returncode,
        rerun_load_mean=round(again.load_mean, 2),
        rerun_peak_rss_mb=round(again.rss.peak_total_mb) if again.rss else None,
    )
    log(
        f"rerun: exit {again.returncode}, {again.wall_s:.2f} s = {100 * again.wall_s / full.wall_s:.1f}% of the "
        f"first run (goal <= 10%), server requests {again_requests}, new uncached llm_calls rows {new_rows}, "
        f"load mean {again.load_mean:.2f}"
    )
    for line in phase_table(again):
        log(line)
    if again.rss:
        log(again.rss.describe()[0])


def sequential(
    args, template: Path, wd: Path, env: dict, log_path: Path, base_url: str, calls: int, full, fan: float, out: dict
) -> float | None:
    """One call at a time on --seq-users users; returns the speedup of the full run over it (None: it failed)."""
    seq_dir = wd / "sequential"
    seq_dir.mkdir(exist_ok=True)
    seq_db = seq_dir / "doppel.duckdb"
    shutil.copy(template, seq_db)
    argv_seq = runs.doppel_argv(
        base_url=base_url,
        db=seq_db,
        run_id="sequential-bench",
        data_dir=args.data_dir,
        item_text=args.item_text,
        fold=args.fold,
        users=args.seq_users,
        concurrency=1,
        runner=args.runner,
        baselines=False,
        verbose=True,  # its phases (the fan-out's wall) are read from the flow's log lines
    )
    load = machine.quiet_machine(args.max_load, args.max_wait)
    servers.server_reset(base_url)
    from doppel.testing.llm_server import admin

    admin(base_url, "config", {"max_concurrency": 1})
    log(f"\nsequential run: {args.seq_users} users, one call at a time (load {load:.2f}) ...")
    seq = runs.run_timed(argv_seq, env, seq_dir, log_path, sample_rss=False)
    admin(base_url, "config", {"max_concurrency": args.concurrency})
    if seq.returncode != 0:
        log("\n".join(line for _, line in seq.lines[-40:]))
        return None
    sfacts = run_facts(seq_db, "sequential-bench")
    seq_fan = seq.phases.get("fanout_s", float("nan"))
    per_call = seq_fan / max(1, sfacts["calls"])
    seq_full = per_call * calls
    speedup = seq_full / full.wall_s
    out.update(
        seq_users=args.seq_users,
        seq_calls=sfacts["calls"],
        seq_fanout_s=seq_fan,
        seq_wall_s=round(seq.wall_s, 2),
        seq_s_per_call=round(per_call, 4),
        seq_full_est_s=round(seq_full, 1),
        speedup_vs_sequential=round(speedup, 2),
        speedup_vs_sequential_fanout=round(seq_full / fan, 2),
        seq_prompt_tokens_per_rating=round(sfacts["prompt_tokens"] / max(1, sfacts["rated"]), 1),
        seq_load_mean=round(seq.load_mean, 2),
    )
    log(
        f"sequential: {sfacts['calls']} calls in a {seq_fan:.2f} s fan-out = {per_call:.3f} s per call "
        f"(whole command {seq.wall_s:.1f} s); x {calls:,} calls = {seq_full:.0f} s ({seq_full / 60:.1f} min) for "
        f"the full run's work; speedup {seq_full:.0f} / {full.wall_s:.1f} (whole command) = {speedup:.1f}x "
        f"({seq_full / fan:.1f}x fan-out to fan-out); load mean {seq.load_mean:.2f}"
    )
    return speedup
