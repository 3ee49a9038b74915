"""Wall time of `doppel run` vs users and vs concurrency, per task runner (dask, threads).

    python benchmarks/scaling.py                       # the full sweep, ~25 min on 2 cores
    python benchmarks/scaling.py --runners dask --users-list 50,100 --concurrency-list 8,32

Every point is a fresh `doppel run` (own DuckDB copy, own response cache, --no-baselines) of the u1
fold of MovieLens-100K against the test server with a fixed latency per call and a server-side cap
equal to the point's concurrency. Two sweeps per runner:
- users 50/100/200/459 (seeded samples) at concurrency 32;
- concurrency 1/8/32/64 at --users-for-concurrency users (default 200).
The latency defaults to 0.1 s (not the 0.5 s of overhead.py) so that concurrency 1 stays a few minutes:
at 0.1 s a call, client, server and flow share the 2 cores at up to hundreds of calls per second, so
the high-concurrency points also show where CPU, not the endpoint, becomes the limit.

Per point: calls, longest chain, ideal = max(calls x latency / concurrency, chain x latency), the
fan-out wall (from the flow's own log line), the whole command's wall, both ratios, peak RSS and the
load average during the point. Writes benchmarks/results/scaling.csv, scaling.md and scaling.png
(rows are appended to the CSV as they finish, so a cut-short sweep keeps what it measured).

Last line: RESULT points=<n> fanout_ratio_median=<x> command_ratio_median=<x> png=<path>
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from support import machine, output, runs, schedule, servers
from support.output import log

COLUMNS = [
    "runner",
    "sweep",
    "users",
    "concurrency",
    "latency_s",
    "calls",
    "longest_chain",
    "ideal_s",
    "fanout_s",
    "flow_s",
    "command_s",
    "ratio_fanout",
    "ratio_command",
    "scheduler_model_s",
    "peak_rss_mb",
    "cpu_s",
    "load_mean",
    "exit",
]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def plot(rows: list[dict], path: Path, latency: float, users_for_conc: int, conc_for_users: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"dask": "tab:blue", "threads": "tab:orange"}
    for ax, sweep, xkey in ((axes[0], "users", "users"), (axes[1], "concurrency", "concurrency")):
        ideal_pts = {}
        for runner in sorted({r["runner"] for r in rows}):
            pts = sorted(
                (r for r in rows if r["sweep"] == sweep and r["runner"] == runner and r["exit"] == 0),
                key=lambda r: r[xkey],
            )
            if not pts:
                continue
            xs = [r[xkey] for r in pts]
            ax.plot(xs, [r["command_s"] for r in pts], "o-", color=colors.get(runner), label=f"{runner}: whole command")
            ax.plot(xs, [r["fanout_s"] for r in pts], "s--", color=colors.get(runner), label=f"{runner}: fan-out")
            for r in pts:
                ideal_pts[r[xkey]] = r["ideal_s"]
        if ideal_pts:
            xs = sorted(ideal_pts)
            ax.plot(xs, [ideal_pts[x] for x in xs], "k:", label="LLM-bound ideal")
        ax.set_xlabel(xkey)
        ax.set_ylabel("wall (s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"u1, concurrency {conc_for_users}, {latency:g} s/call")
    axes[1].set_title(f"u1, {users_for_conc} users, {latency:g} s/call")
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    fig.suptitle("doppel run: wall vs users and vs concurrency (test server, fixed latency)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    output.add_data_options(ap)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--users-list", default="50,100,200,459")
    ap.add_argument("--concurrency-list", default="1,8,32,64")
    ap.add_argument("--users-for-concurrency", type=int, default=200)
    ap.add_argument("--concurrency-for-users", type=int, default=32)
    ap.add_argument("--runners", default="dask,threads")
    ap.add_argument("--repo", type=Path, default=output.REPO)
    ap.add_argument("--out", type=Path, default=output.RESULTS, help="directory for scaling.csv/.md/.png")
    ap.add_argument("--max-load", type=float, default=2.5)
    ap.add_argument("--max-wait", type=float, default=600)
    ap.add_argument(
        "--template",
        type=Path,
        default=None,
        help="an already ingested DuckDB file to copy instead of ingesting (same code version)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)

    repo = runs.use_repo(args.repo)
    machine.exit_cleanly_on_sigterm()
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="doppel-scaling-"))
    wd.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = runs.doppel_env(wd / "prefect-home", repo=repo, timed=True)
    log_path = wd / "doppel.log"
    csv_path, md_path, png_path = args.out / "scaling.csv", args.out / "scaling.md", args.out / "scaling.png"
    log(f"repo {repo}; workdir {wd}; log {log_path}; latency {args.latency} s")

    template = wd / "template.duckdb"
    if args.template:
        shutil.copy(args.template, template)
    else:
        ingest = runs.ingest_argv(template, args.data_dir, args.item_text)
        if runs.run_timed(ingest, env, wd, log_path, sample_rss=False).returncode != 0:
            log(f"ingest failed: see {log_path}")
            return 1

    points: list[tuple[str, str, int, int]] = []
    for runner in [r.strip() for r in args.runners.split(",") if r.strip()]:
        for users in ints(args.users_list):
            points.append((runner, "users", users, args.concurrency_for_users))
        for conc in ints(args.concurrency_list):
            points.append((runner, "concurrency", args.users_for_concurrency, conc))
    n_all = len(schedule.planned_work(template, args.fold, None).works)

    rows: list[dict] = []
    with csv_path.open("w", newline="") as f:
        csv.DictWriter(f, COLUMNS).writeheader()
    started = time.monotonic()
    with servers.llm_server(latency=args.latency, max_concurrency=args.concurrency_for_users) as (_, base_url):
        from doppel.testing.llm_server import admin

        for i, (runner, sweep, users, conc) in enumerate(points, 1):
            same = next(
                (r for r in rows if r["runner"] == runner and r["users"] == users and r["concurrency"] == conc), None
            )
            if same is not None:  # e.g. 200 users at concurrency 32 is on both sweeps
                rows.append({**same, "sweep": sweep})
                continue
            plan = schedule.planned_work(template, args.fold, None if users >= n_all else users)
            chunks = 1 if runner == "threads" or conc <= 1 else min(2, conc)
            sched = schedule.simulate_schedule(plan, args.latency, conc, chunks=chunks)
            point_dir = wd / f"{runner}-u{users}-c{conc}"
            point_dir.mkdir(exist_ok=True)
            db = point_dir / "doppel.duckdb"
            shutil.copy(template, db)
            argv_run = runs.doppel_argv(
                base_url=base_url,
                db=db,
                run_id="scaling",
                data_dir=args.data_dir,
                item_text=args.item_text,
                fold=args.fold,
                users=None if users >= n_all else users,
                concurrency=conc,
                runner=runner,
                baselines=False,
            )
            load = machine.quiet_machine(args.max_load, args.max_wait)
            admin(base_url, "config", {"max_concurrency": conc})
            servers.server_reset(base_url)
            t = runs.run_timed(argv_run, env, point_dir, log_path)
            row = {
                "runner": runner,
                "sweep": sweep,
                "users": len(plan.works),
                "concurrency": conc,
                "latency_s": args.latency,
                "exit": t.returncode,
                "load_mean": round(t.load_mean, 2),
                "peak_rss_mb": round(t.rss.peak_total_mb) if t.rss else None,
                "command_s": round(t.wall_s, 2),
                "cpu_s": round(sum(t.rss.cpu_by_role().values()), 1) if t.rss else None,
                "scheduler_model_s": round(sched, 2),
            }
            if t.returncode == 0:
                facts = db.run_facts(db, "scaling")
                ideal = schedule.ideal_wall(facts["calls"], facts["longest_chain_calls"], args.latency, conc)
                fan = t.phases.get("fanout_s", float("nan"))
                row.update(
                    calls=facts["calls"],
                    longest_chain=facts["longest_chain_calls"],
                    ideal_s=round(ideal, 2),
                    fanout_s=fan,
                    flow_s=t.phases.get("flow_wall_s", float("nan")),
                    ratio_fanout=round(fan / ideal, 3),
                    ratio_command=round(t.wall_s / ideal, 3),
                )
            rows.append(row)
            with csv_path.open("a", newline="") as f:
                csv.DictWriter(f, COLUMNS).writerow(row)
            log(
                f"[{i}/{len(points)} {time.monotonic() - started:6.0f} s] {runner:7s} users {row['users']:3d} "
                f"conc {conc:2d}: exit {t.returncode}, calls {row.get('calls')}, ideal {row.get('ideal_s')} s, "
                f"fan-out {row.get('fanout_s')} s ({row.get('ratio_fanout')}x), command {row['command_s']} s "
                f"({row.get('ratio_command')}x), model {sched:.1f} s, rss {row['peak_rss_mb']} MB, "
                f"load {load:.2f} -> mean {t.load_mean:.2f}"
            )

    # rewrite the CSV with the duplicated shared point included, then the table and the plot
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        f"# doppel run scaling ({stamp})",
        "",
        f"u1 of MovieLens-100K, test server at {args.latency:g} s per call with a server-side cap = concurrency, "
        f"`--no-baselines`, fresh db and cache per point; repo {repo}; machine: {output.machine()}.",
        "",
        "fan-out = the flow's simulate phase (first planning to last write); command = the whole `doppel run` "
        "process (imports, Prefect API start, ingest check, cluster, fan-out, gate, score, shutdown). "
        "ideal = max(calls x latency / concurrency, longest chain x latency); model = doppel's scheduler "
        "alone at exact latency and zero CPU cost.",
        "",
    ]
    for sweep in ("users", "concurrency"):
        md += [
            f"## wall vs {sweep}",
            "",
            output.markdown_table([r for r in rows if r["sweep"] == sweep], COLUMNS[:1] + COLUMNS[2:]),
            "",
        ]
    md_path.write_text("\n".join(md))
    plot(rows, png_path, args.latency, args.users_for_concurrency, args.concurrency_for_users)
    log("\n".join(md))
    ok = [r for r in rows if r["exit"] == 0]
    log(f"\ncsv {csv_path}\nmarkdown {md_path}\nplot {png_path}\nsweep took {time.monotonic() - started:.0f} s")
    print(
        output.result_line(
            points=len(ok),
            fanout_ratio_median=round(statistics.median(r["ratio_fanout"] for r in ok), 3) if ok else float("nan"),
            command_ratio_median=round(statistics.median(r["ratio_command"] for r in ok), 3) if ok else float("nan"),
            png=str(png_path),
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
