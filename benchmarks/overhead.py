"""How close `doppel run` gets to the LLM-bound limit, and what a rerun of a finished run costs.

    python benchmarks/overhead.py                      # u1 of MovieLens-100K, 459 users, 0.5 s/call, concurrency 32
    python benchmarks/overhead.py --users 100 --latency 0.2 --no-sequential

Against the OpenAI-compatible test server (a subprocess: fixed latency per call, a server-side cap of
--concurrency requests at once, usage tokens = characters / 4), it runs the real CLI
(`python -m doppel.flows.cli run ... --verbose`) as a subprocess in a temp dir and measures:

- wall of the whole command (what a user waits for) and of its phases (every output line is
  timestamped; `--verbose` prints planned / submitted / fan-out / scoring lines);
- calls (llm_calls rows that were not cached) and the longest user chain (critical path: a user's
  profile calls + one rating call), both from DuckDB, checked against the code's own planner;
- ideal = max(calls x latency / concurrency, longest chain x latency), and wall / ideal for the
  fan-out, for the `doppel-run` flow (as the flow reports it) and for the whole command;
- what the scheduler alone would give at that latency (a discrete-event model with zero CPU cost),
  which separates the scheduling policy's tail from process/CPU overhead;
- peak RSS of doppel's processes (flow process + Dask workers + Prefect API server; the LLM server
  is not in that tree), sampled every 0.2 s: total at once and per process;
- prompt tokens per simulated rating (all prompt tokens of the run, profile calls included, over the
  rated pairs), per prompt kind;
- the Lusifer-style sequential design on the same server: one call at a time (`--concurrency 1`,
  server cap 1) on --seq-users users; its seconds per call (fan-out wall / calls) times the full
  run's calls is the sequential wall of the same work; speedup = that / the full run's whole wall;
- a rerun of the finished run (same --run-id, same db and cache): server requests must be 0 and the
  wall <= 10% of the first run's.

The dataset is ingested once before the timed runs (a one-time cost per DuckDB file, printed apart).
Other jobs may share the machine: each timed run waits (bounded) for a low load average and prints
the load it ran under.

Last line: RESULT overhead_ratio=<whole command wall / ideal> speedup_vs_sequential=<x> calls=<n>
prompt_tokens_per_rating=<x> peak_rss_mb=<x> flow_ratio=<the doppel-run flow's wall / ideal>
fanout_ratio=<the fan-out's wall / ideal>
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support import machine, output, overhead_parts, runs, schedule, servers
from support.db import run_facts
from support.output import log


def main(argv: list[str] | None = None) -> int:
    args = overhead_parts.parse_args(argv, __doc__.split("\n")[0])

    repo = runs.use_repo(args.repo)
    machine.exit_cleanly_on_sigterm()
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="doppel-overhead-"))
    wd.mkdir(parents=True, exist_ok=True)
    env = runs.doppel_env(wd / "prefect-home", repo=repo, timed=True)
    log_path = wd / "doppel.log"
    log(f"repo {repo}; workdir {wd}; log {log_path}")
    log(
        f"u={args.users or 'all'} fold={args.fold} latency={args.latency} s concurrency={args.concurrency} "
        f"runner={args.runner} baselines={args.baselines} item_text={args.item_text}"
    )

    # one-time ingest into a template db, copied for every run
    template = wd / "template.duckdb"
    if args.template:
        shutil.copy(args.template, template)
    else:
        t0 = time.monotonic()
        ingest = runs.ingest_argv(template, args.data_dir, args.item_text)
        ing = runs.run_timed(ingest, env, wd, log_path, sample_rss=False)
        if ing.returncode != 0:
            log(ing.text[-3000:])
            return 1
        log(f"ingest (one-time, not in the timed runs): {time.monotonic() - t0:.1f} s")

    plan = schedule.planned_work(template, args.fold, args.users)
    plan_calls, plan_chain = plan.calls, plan.longest_chain
    chunks = 1 if args.runner == "threads" or args.concurrency <= 1 else min(2, args.concurrency)
    sched = schedule.simulate_schedule(plan, args.latency, args.concurrency, chunks=chunks)
    plan_ideal = schedule.ideal_wall(plan_calls, plan_chain, args.latency, args.concurrency)
    log(
        f"plan: {len(plan.works)} users, {plan_calls:,} calls, longest chain {plan_chain} calls; ideal {plan_ideal:.1f} s; "
        f"doppel's scheduler alone (zero CPU, {chunks} chunk(s), exact latency): {sched:.1f} s = {sched / plan_ideal:.3f}x"
    )

    if args.warm_prefect_home and not args.external_prefect:
        t0 = time.monotonic()
        warm = subprocess.run(
            [sys.executable, "-c", "from doppel.flows.runtime import prefect_api\nwith prefect_api(): pass"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if warm.returncode != 0:
            log(warm.stderr[-3000:])
            return 1
        log(
            f"Prefect database created in PREFECT_HOME (one-time, first doppel command ever; not in the timed runs): "
            f"{time.monotonic() - t0:.1f} s"
        )
    stack = contextlib.ExitStack()
    if args.external_prefect:
        api_url = stack.enter_context(servers.prefect_server(wd / "prefect-server-home"))
        env["PREFECT_API_URL"] = api_url
        log(f"external Prefect API server at {api_url} (started before the timed runs)")
    out: dict = {
        "external_prefect": args.external_prefect,
        "users": len(plan.works),
        "latency": args.latency,
        "concurrency": args.concurrency,
        "runner": args.runner,
        "baselines": args.baselines,
        "repo": str(repo),
    }
    with stack, servers.llm_server(latency=args.latency, max_concurrency=args.concurrency) as (server, base_url):
        # ---------------------------------------------------------------- the full run
        run_dir = wd / "full"
        run_dir.mkdir(exist_ok=True)
        db = run_dir / "doppel.duckdb"
        shutil.copy(template, db)
        run_id = "overhead-bench"
        argv_full = runs.doppel_argv(
            base_url=base_url,
            db=db,
            run_id=run_id,
            data_dir=args.data_dir,
            item_text=args.item_text,
            fold=args.fold,
            users=args.users,
            concurrency=args.concurrency,
            runner=args.runner,
            baselines=args.baselines,
            verbose=True,  # the phase lines (planned, submitted, fan-out) are Prefect INFO logs
        )
        load = machine.quiet_machine(args.max_load, args.max_wait)
        servers.server_reset(base_url)
        log(f"\nfull run (load {load:.2f} at start) ...")
        server_cpu = machine.cpu_seconds(server.pid)
        full = runs.run_timed(argv_full, env, run_dir, log_path)
        server_cpu = machine.cpu_seconds(server.pid) - server_cpu
        stats = servers.server_stats(base_url)
        if full.returncode != 0:
            log("\n".join(line for _, line in full.lines[-60:]))
            log(f"doppel run failed with exit {full.returncode}")
            return 1
        facts = run_facts(db, run_id)
        calls, chain = facts["calls"], facts["longest_chain_calls"]
        ideal = schedule.ideal_wall(calls, chain, args.latency, args.concurrency)
        p = full.phases
        fan = p.get("fanout_s", float("nan"))
        flow = p.get("flow_wall_s", float("nan"))
        out.update(
            calls=calls,
            server_requests=stats["requests"],
            max_active=stats.get("max_active"),
            longest_chain=chain,
            ideal_s=round(ideal, 2),
            wall_s=round(full.wall_s, 2),
            flow_wall_s=flow,
            fanout_s=fan,
            ratio_command=full.wall_s / ideal,
            ratio_flow=flow / ideal,
            ratio_fanout=fan / ideal,
            scheduler_model_s=round(sched, 2),
            load_start=load,
            load_mean=round(full.load_mean, 2),
            load_max=round(full.load_max, 2),
            phases=p,
        )
        log(
            f"calls {calls:,} (server saw {stats['requests']:,}, at most {stats.get('max_active')} at once; "
            f"plan {plan_calls:,}), cached {facts['cached_calls']}, not ok {facts['bad_calls']}; "
            f"longest chain {chain} calls (plan {plan_chain})"
        )
        log(f"ideal = max({calls} x {args.latency} / {args.concurrency}, {chain} x {args.latency}) = {ideal:.1f} s")
        lat = facts["latency"]
        occupancy = lat["total"] / (args.concurrency * fan) if fan == fan and fan > 0 else float("nan")
        log(
            f"in-slot seconds per call (client-measured, server latency {args.latency} s): mean {lat['mean']:.3f}, "
            f"p50 {lat['p50']:.3f}, p95 {lat['p95']:.3f}, max {lat['max']:.3f}; slots busy {100 * occupancy:.1f}% "
            f"of concurrency x fan-out"
        )
        out.update(
            latency_mean_s=round(lat["mean"], 4), latency_p95_s=round(lat["p95"], 4), slot_occupancy=round(occupancy, 3)
        )
        log(
            f"fan-out   {fan:7.2f} s  ratio {fan / ideal:.3f}  (first user written at {p.get('first_user_s')} s, "
            f"{p.get('write_s')} s of DuckDB writes, planned in {p.get('planned_s')} s, submitted at {p.get('submitted_s')} s)"
        )
        log(
            f"flow      {flow:7.2f} s  ratio {flow / ideal:.3f}  (the `doppel-run` flow: ingest check, cluster, fan-out, gate, score)"
        )
        log(
            f"command   {full.wall_s:7.2f} s  ratio {full.wall_s / ideal:.3f}  (whole `doppel run` process, what a user waits for)"
        )
        log(f"load average during the run: mean {full.load_mean:.2f}, max {full.load_max:.2f}")
        log("phases (from timestamped output lines):")
        for line in overhead_parts.phase_table(full):
            log(line)
        rss = full.rss
        assert rss is not None
        for line in rss.describe():
            log(line)
        # a real API server uses seconds of CPU; a uvicorn process seen for an instant at start-up does not
        n_api = sum(1 for q in rss.procs.values() if q["role"] == "prefect-api" and q.get("cpu_s", 0) > 1.0)
        if n_api > 1:
            log(f"NOTE: {n_api} Prefect API server processes in the tree (expected 1)")
        cpu = rss.cpu_by_role()
        log(f"LLM test server CPU during the run: {server_cpu:.1f} s (not doppel's)")
        out.update(
            peak_rss_mb=round(rss.peak_total_mb),
            rss_by_role_mb={k: round(v / 2**20) for k, v in rss.peak_by_role.items()},
            prefect_api_processes=n_api,
            cpu_s=round(sum(cpu.values()), 1),
            cpu_by_role_s={k: round(v, 1) for k, v in cpu.items()},
            server_cpu_s=round(server_cpu, 1),
        )

        tokens_per_rating = facts["prompt_tokens"] / max(1, facts["rated"])
        out.update(
            prompt_tokens=facts["prompt_tokens"],
            rated=facts["rated"],
            failed=facts["failed"],
            prompt_tokens_per_rating=round(tokens_per_rating, 1),
        )
        log(
            f"\nprompt tokens: {facts['prompt_tokens']:,} over {facts['rated']:,} rated pairs ({facts['failed']} failed) "
            f"= {tokens_per_rating:.1f} per rating (server counts characters / 4; profile calls included)"
        )
        log(facts["by_prompt"].to_string(index=False))

        # ---------------------------------------------------------------- rerun of the finished run
        if args.rerun:
            overhead_parts.rerun(args, argv_full, env, run_dir, log_path, base_url, db, run_id, calls, full, out)

        # ---------------------------------------------------------------- sequential (Lusifer-style)
        if args.sequential:
            seq_speedup = overhead_parts.sequential(args, template, wd, env, log_path, base_url, calls, full, fan, out)
            if seq_speedup is None:
                return 1
            speedup = seq_speedup
        else:
            speedup = float("nan")

    out["overhead_ratio"] = round(full.wall_s / ideal, 3)
    log(
        f"\noverhead_ratio = whole command / ideal = {full.wall_s:.1f} / {ideal:.1f} = {full.wall_s / ideal:.3f} "
        f"(flow {flow / ideal:.3f}, fan-out {fan / ideal:.3f}; goal <= 1.10)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
        log(f"figures in {args.json}")
    results = output.RESULTS / f"overhead_{args.fold.replace(',', '-')}.md"
    results.write_text(
        f"# doppel run against the LLM-bound ideal (fold {args.fold}, test server)\n\n{output.provenance()}\n\n"
        + "```\n"
        + json.dumps(out, indent=2, default=str)
        + "\n```\n"
    )
    log(f"results in {results}")
    print(
        output.result_line(
            overhead_ratio=round(full.wall_s / ideal, 3),
            speedup_vs_sequential=round(speedup, 2),
            calls=calls,
            prompt_tokens_per_rating=round(tokens_per_rating, 1),
            peak_rss_mb=round(rss.peak_total_mb),
            flow_ratio=round(flow / ideal, 3),
            fanout_ratio=round(fan / ideal, 3),
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
