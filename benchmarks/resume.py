"""Kill -9 and resume: a killed run, rerun with the same run id, equals an uninterrupted run.

    python benchmarks/resume.py                  # u1 of MovieLens-100K, all 459 test users
    python benchmarks/resume.py --users 40       # a quick look

1. reference: an uninterrupted run (own db + response cache) against the deterministic test server;
   its server request count is the cost of the run.
2. trial `half`: SIGKILL the `doppel` process group when the server has seen ~50% of the reference's
   requests, then rerun with the same run id until finished.
3. trial `writes`: SIGKILL while the flow holds the DuckDB file read-write, i.e. mid-transaction.
   The flow holds the file only for short write transactions, so the benchmark polls with read-only
   opens (a few ms each; they fail with a lock error exactly while a writer holds the file) and kills
   the instant a poll fails, once the run is past --write-from of its calls and the current invocation
   has made a call (so not during start-up). It does this --write-kills times (each kill followed by a
   rerun that is killed in turn, at a later point), then lets the last rerun finish. The write-ahead log
   left by each kill (its size is printed) must be replayed or discarded cleanly.
4. trial `main`: SIGKILL only the main `doppel` process (as the OOM killer or `kill -9 <pid>` would):
   its children (Prefect API server, Dask workers) must not outlive it.

Each trial compares simulated_ratings (fold, user, item, rating, status) and profiles (fold, user,
version, stage, text) with the reference, counts repeated calls = server requests of all the trial's
invocations - the reference's, and lists processes of the killed run still alive 10 s after the kill
(they are then killed by pid).

Writes benchmarks/results/resume.md (`--out NAME`: NAME.md there) with the provenance header.
Last line: RESULT repeated_calls_pct=<trial half, % of the reference's calls> identical=<all trials>
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from _provenance import write_result

from support.db import db_is_locked, read_db
from support.output import DEFAULT_DATA_DIR, log, markdown_table, result_line
from support.processes import ProcessTree, describe, kill_pids
from support.runs import doppel_argv, doppel_env, kill_group, run_doppel, start_doppel, workdir
from support.servers import admin, llm_server, server_requests

RUN_ID = "resume-bench"
RATINGS_SQL = "select fold, user_id, item_id, rating, status from simulated_ratings where run_id = ? order by all"
PROFILES_SQL = "select fold, user_id, version, stage, text from profiles where run_id = ? order by all"
STATE_SQL = """
select (select count(*) from run_users where run_id = $1 and status = 'done') as users_done,
       (select count(*) from run_users where run_id = $1) as users,
       (select count(*) from simulated_ratings where run_id = $1) as rows
"""


def tables(db: Path) -> tuple:
    return read_db(db, RATINGS_SQL, [RUN_ID]), read_db(db, PROFILES_SQL, [RUN_ID])


def state(db: Path) -> dict:
    if not db.exists():
        return {"users_done": 0, "users": 0, "rows": 0}
    try:
        return {k: int(v) for k, v in read_db(db, STATE_SQL, [RUN_ID]).iloc[0].items()}
    except Exception as exc:  # no tables yet (killed before init)
        return {"error": str(exc).splitlines()[0]}


def wal_bytes(db: Path) -> int:
    wal = Path(str(db) + ".wal")
    return wal.stat().st_size if wal.exists() else 0


def kill(proc, target: str) -> None:
    if target == "main":
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    else:
        kill_group(proc)


def killed_run(
    argv,
    env,
    out: Path,
    base_url: str,
    db: Path,
    *,
    at_requests: int,
    when: str,
    target: str = "group",
    deadline_s: float = 1800,
) -> dict:
    """Start doppel, kill it at the chosen moment; return what happened (requests, orphans, db state)."""
    before = server_requests(base_url)
    proc = start_doppel(argv, env, out)
    tree = ProcessTree(proc.pid)
    started = time.monotonic()
    held = False
    while proc.poll() is None and time.monotonic() - started < deadline_s:
        tree.sample()
        seen = server_requests(base_url)
        if seen >= at_requests and seen > before:  # past the threshold, and this invocation is simulating
            if when == "calls":
                break
            if db_is_locked(db):  # the flow holds the file read-write right now: kill mid-write
                held = True
                break
            continue  # tight loop: each read-only open takes a few ms
        time.sleep(0.05)
    finished_first = proc.poll() is not None
    if not finished_first:
        kill(proc, target)
    killed_at = time.monotonic() - started
    time.sleep(0.3)  # dropped connections settle on the server
    orphans = tree.survivors(grace_s=10.0)
    kill_pids(orphans)
    return {
        "requests": server_requests(base_url),
        "killed_at_s": round(killed_at, 1),
        "held_lock": held,
        "finished_before_kill": finished_first,
        "orphans": orphans,
        "wal_bytes": wal_bytes(db),
        "state": state(db),
        "processes_seen": len(tree.seen),
    }


def compare(ref: tuple, got: tuple) -> dict:
    (r_ratings, r_profiles), (g_ratings, g_profiles) = ref, got
    same_r = r_ratings.reset_index(drop=True).equals(g_ratings.reset_index(drop=True))
    same_p = r_profiles.reset_index(drop=True).equals(g_profiles.reset_index(drop=True))
    out = {"identical": same_r and same_p, "ratings_rows": len(g_ratings), "profile_rows": len(g_profiles)}
    if not same_r:
        m = r_ratings.merge(
            g_ratings, on=["fold", "user_id", "item_id"], how="outer", indicator=True, suffixes=("_ref", "_got")
        )
        out["ratings_only_ref"] = int((m["_merge"] == "left_only").sum())
        out["ratings_only_resumed"] = int((m["_merge"] == "right_only").sum())
        both = m[m["_merge"] == "both"]
        out["ratings_differ"] = int(
            ((both["rating_ref"] != both["rating_got"]) | (both["status_ref"] != both["status_got"])).sum()
        )
    if not same_p:
        m = r_profiles.merge(
            g_profiles, on=["fold", "user_id", "version"], how="outer", indicator=True, suffixes=("_ref", "_got")
        )
        out["profiles_only_ref"] = int((m["_merge"] == "left_only").sum())
        out["profiles_only_resumed"] = int((m["_merge"] == "right_only").sum())
        both = m[m["_merge"] == "both"]
        out["profiles_differ"] = int((both["text_ref"] != both["text_got"]).sum())
    return out


def write(args: argparse.Namespace, notes: list[str], rows: list[dict], result: str) -> None:
    users = "all test users" if args.users is None else f"a seeded sample of {args.users} test users"
    setup = (
        f"`doppel run` on ML-100K {args.fold}, {users}, concurrency {args.concurrency}, against "
        f"`doppel.testing.llm_server` ({args.latency} s per call, deterministic answers); trials {args.trials}. "
        f"half: SIGKILL of the process group at {args.kill_at:.0%} of the reference's server requests; writes: "
        f"{args.write_kills} SIGKILLs of the process group while the flow holds the DuckDB file, from "
        f"{args.write_from:.0%} of the requests; main: SIGKILL of the main process only, at {args.kill_at:.0%}. "
        "Each trial then reruns with the same run id to the end and compares simulated_ratings (fold, user, "
        "item, rating, status) and profiles (fold, user, version, stage, text) with the uninterrupted "
        "reference. Repeated calls: server requests of all the trial's invocations minus the reference's."
    )
    body = ["## Setup", "", setup, ""]
    if rows:
        cols = ["trial", "kills", "repeated calls", "repeated %", "identical", "orphans", "rerun exit"]
        body += ["## Summary", "", markdown_table(rows, cols), ""]
    body += ["## Log", "", *(f"- {line}" for line in notes)]
    path = write_result(args.out, "# Kill -9 and resume (benchmarks/resume.py)", "\n".join(body), result)
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--item-text", type=Path, default=None)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.1, help="server seconds per call")
    ap.add_argument("--kill-at", type=float, default=0.5, help="trial half: fraction of the reference's calls")
    ap.add_argument("--write-kills", type=int, default=3, help="trial writes: kills during DuckDB writes")
    ap.add_argument(
        "--write-from",
        type=float,
        default=0.5,
        help="trial writes: first kill at the first write after this fraction of the calls (users "
        "start longest chain first, so the first user is written at ~half the calls); later "
        "kills spread to 0.8, each after the previous rerun made new calls",
    )
    ap.add_argument("--trials", default="half,writes,main", help="comma list of half, writes, main")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="resume", help="results file: benchmarks/results/<OUT>.md")
    args = ap.parse_args(argv)
    trials = [t.strip() for t in args.trials.split(",") if t.strip()]

    wd = workdir("doppel-resume-", args.workdir)
    log(f"workdir {wd}; trials {trials}")
    results: dict[str, dict] = {}
    notes: list[str] = []  # the printed lines, for the results file

    def note(line: str) -> None:
        log(line)
        notes.append(line)

    with llm_server(latency=args.latency) as (_, base_url):

        def argv_for(name: str) -> list[str]:
            (wd / name).mkdir(exist_ok=True)
            return doppel_argv(
                base_url=base_url,
                db=wd / name / "doppel.duckdb",
                run_id=RUN_ID,
                data_dir=args.data_dir,
                item_text=args.item_text,
                fold=args.fold,
                users=args.users,
                concurrency=args.concurrency,
            )

        env = doppel_env(wd / "prefect-home")
        admin(base_url, "reset")
        ref_run = run_doppel(argv_for("reference"), env, wd / "reference" / "doppel.log")
        ref_requests = server_requests(base_url)
        ref_db = wd / "reference" / "doppel.duckdb"
        ref = tables(ref_db)
        note(
            f"reference: exit {ref_run.returncode}, {ref_run.wall_s:.1f} s, {ref_requests:,} server requests, "
            f"{len(ref[0]):,} rating rows, {len(ref[1]):,} profile rows"
        )
        if ref_run.returncode != 0:
            log(ref_run.stdout[-3000:])
            result = result_line(repeated_calls_pct=float("nan"), identical=False)
            write(args, notes, [], result)
            print(result)
            return 1

        for trial in trials:
            admin(base_url, "reset")
            argv_run, db = argv_for(trial), wd / trial / "doppel.duckdb"
            out = wd / trial / "doppel.log"
            kills = []
            if trial == "half":
                kills.append(
                    killed_run(
                        argv_run, env, out, base_url, db, when="calls", at_requests=int(args.kill_at * ref_requests)
                    )
                )
            elif trial == "main":
                kills.append(
                    killed_run(
                        argv_run,
                        env,
                        out,
                        base_url,
                        db,
                        when="calls",
                        target="main",
                        at_requests=int(args.kill_at * ref_requests),
                    )
                )
            elif trial == "writes":
                for k in range(args.write_kills):
                    frac = args.write_from + (0.8 - args.write_from) * k / max(1, args.write_kills - 1)
                    last = kills[-1]["requests"] if kills else 0
                    kills.append(
                        killed_run(
                            argv_run,
                            env,
                            out,
                            base_url,
                            db,
                            when="write",
                            at_requests=max(int(frac * ref_requests), last + 1),
                        )
                    )
            else:
                raise SystemExit(f"unknown trial {trial!r}")
            for i, k in enumerate(kills, 1):
                note(
                    f"{trial} kill {i}: at {k['killed_at_s']} s, server requests so far {k['requests']:,} "
                    f"({100 * k['requests'] / ref_requests:.0f}% of the reference), held the db lock: "
                    f"{k['held_lock']}, WAL left {k['wal_bytes']:,} bytes, db after the kill {k['state']}, "
                    f"finished before the kill: {k['finished_before_kill']}, processes seen "
                    f"{k['processes_seen']}, alive 10 s after the kill: {describe(k['orphans'])}"
                )
            rerun = run_doppel(argv_run, env, out)
            total = server_requests(base_url)
            got = tables(db)
            cmp = compare(ref, got)
            repeated = total - ref_requests
            results[trial] = {
                "repeated": repeated,
                "pct": 100 * repeated / ref_requests,
                "rerun_rc": rerun.returncode,
                "orphans": sum(len(k["orphans"]) for k in kills),
                "kills": len(kills),
                **cmp,
            }
            note(
                f"{trial}: rerun exit {rerun.returncode} in {rerun.wall_s:.1f} s; requests of all invocations "
                f"{total:,}; repeated {repeated:,} = {100 * repeated / ref_requests:.2f}% of {ref_requests:,} "
                f"({100 * repeated / ref_requests / max(1, len(kills)):.2f}% per kill); tables vs reference: {cmp}"
            )
            if rerun.returncode != 0:
                log(rerun.stdout[-3000:])

    rows = [
        {
            "trial": trial,
            "kills": r["kills"],
            "repeated calls": r["repeated"],
            "repeated %": round(r["pct"], 2),
            "identical": r["identical"],
            "orphans": r["orphans"],
            "rerun exit": r["rerun_rc"],
        }
        for trial, r in results.items()
    ]
    log("\nsummary:")
    for row in rows:
        log(
            f"  {row['trial']:6s} kills {row['kills']}, repeated calls {row['repeated calls']:,} "
            f"({row['repeated %']:.2f}%), identical {row['identical']}, orphans {row['orphans']}, "
            f"rerun exit {row['rerun exit']}"
        )
    identical = bool(results) and all(r["identical"] and r["rerun_rc"] == 0 for r in results.values())
    headline = results.get("half") or next(iter(results.values()), {"pct": float("nan")})
    result = result_line(repeated_calls_pct=round(headline["pct"], 2), identical=identical)
    write(args, notes, rows, result)
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
