"""Nothing lost under LLM faults: a MovieLens-100K fold through the fault-injecting test server.

    python benchmarks/faults.py                      # u1, all 459 test users, 20% malformed JSON, ...
    python benchmarks/faults.py --users 40           # a quick look

Starts `doppel.testing.llm_server` as a subprocess with seeded faults (malformed JSON, HTTP 500, 429 with
Retry-After, hangs past doppel's --timeout), runs `doppel run` on it as a subprocess, and reads the
DuckDB file: requested pairs, rated pairs, failed pairs by reason, duplicated and lost pairs, LLM
calls, transport retries, repair re-asks, wall time. Then it switches the faults off and reruns with
the same run id, which must retry exactly the failed pairs.

Writes benchmarks/results/faults.md (`--out NAME`: NAME.md there) with the provenance header.
Last line: RESULT lost=<n> duplicated=<n> failed_after_rerun=<n> calls=<n>
(calls = LLM calls that reached the server's endpoint as doppel counts them, both invocations, cache
hits excluded; client-side retries of one call are in `retries`.)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from _provenance import write_result

from support.db import read_db
from support.output import DEFAULT_DATA_DIR, log, markdown_table, result_line
from support.runs import doppel_argv, doppel_env, run_doppel, workdir
from support.servers import admin, llm_server

PAIRS_SQL = """
with requested as (   -- every test pair of every user the run registered (no --max-test-items here)
    select u.fold, u.user_id, s.item_id
    from run_users u
    join runs r using (run_id)
    join splits s on s.dataset = r.dataset and s.fold = u.fold and s.user_id = u.user_id and s.split = 'test'
    where u.run_id = $run_id
),
rows as (
    select fold, user_id, item_id, count(*) as n, any_value(status) as status, any_value(rating) as rating
    from simulated_ratings where run_id = $run_id group by all
)
select
    (select sum(n_pairs) from run_users where run_id = $run_id) as requested_n_pairs,
    (select count(*) from requested) as requested,
    (select count(*) from simulated_ratings where run_id = $run_id) as rows,
    (select coalesce(sum(n - 1), 0) from rows) as duplicated,
    (select count(*) from requested q anti join rows x using (fold, user_id, item_id)) as lost,
    (select count(*) from rows x anti join requested q using (fold, user_id, item_id)) as not_requested,
    (select count(*) from rows where status = 'ok' and rating between 1 and 5) as rated,
    (select count(*) from rows where status = 'ok' and (rating is null or rating not between 1 and 5)) as bad_ok,
    (select count(*) from rows where status = 'failed') as failed,
    (select count(*) from rows where status = 'failed' and rating is not null) as failed_with_rating,
    (select count(*) from simulated_ratings where run_id = $run_id and status = 'failed'
        and (reason is null or reason = '')) as failed_without_reason
"""
CALLS_SQL = """
select
    count(*) filter (where not cached) as calls,
    count(*) filter (where cached) as cached,
    coalesce(sum(greatest(attempts - 1, 0)) filter (where not cached), 0) as transport_retries,
    count(*) filter (where not cached and prompt_name = 'repair') as repair_calls,
    count(*) filter (where not cached and status = 'invalid') as invalid_answers,
    count(*) filter (where not cached and status = 'error') as failed_calls
from llm_calls where run_id = $run_id
"""
USERS_SQL = "select status, count(*) as n from run_users where run_id = $run_id group by all order by all"
REASONS_SQL = (
    "select reason, count(*) as n from simulated_ratings where run_id = $run_id and status = 'failed' group by all"
)


def reason_kind(reason: str) -> str:
    """A short class of a failure reason: 'invalid answer after 3 attempts: not valid JSON', ..."""
    reason = reason or ""
    if reason.startswith("call failed: "):
        return "call failed: " + re.split(r"[:(]", reason[len("call failed: ") :], maxsplit=1)[0].strip()
    if reason.startswith("invalid answer"):
        head, _, problem = reason.partition(": ")
        problem = re.sub(r"\s*\(.*", "", problem.split(";")[0])
        problem = re.sub(r"'[^']*'|\[[^\]]*\]", "…", problem)
        return f"{head}: {problem}"[:90]
    head, _, rest = reason.partition(": ")
    return (head + (": " + re.split(r"[:(]", rest, maxsplit=1)[0].strip() if rest else ""))[:90]


def measure(db: Path, run_id: str) -> dict:
    params = {"run_id": run_id}
    pairs = read_db(db, PAIRS_SQL, params).iloc[0]
    calls = read_db(db, CALLS_SQL, params).iloc[0]
    users = read_db(db, USERS_SQL, params)
    reasons = read_db(db, REASONS_SQL, params)
    by_kind: dict[str, int] = {}
    for row in reasons.itertuples():
        by_kind[reason_kind(row.reason)] = by_kind.get(reason_kind(row.reason), 0) + int(row.n)
    out = {k: int(v) for k, v in {**pairs.to_dict(), **calls.to_dict()}.items()}
    out["users"] = {r.status: int(r.n) for r in users.itertuples()}
    out["reasons"] = dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))
    return out


def show(title: str, m: dict, wall: float, server: dict, rc: int) -> list[str]:
    """Print one invocation's figures; return them as Markdown lines for the results file."""
    lines = [
        f"### {title} (exit {rc}, wall {wall:.1f} s)",
        "",
        f"requested pairs {m['requested']:,} (sum of run_users.n_pairs {m['requested_n_pairs']:,}); "
        f"rows {m['rows']:,}; rated {m['rated']:,}; failed {m['failed']:,}; lost {m['lost']}; "
        f"duplicated {m['duplicated']}; not requested {m['not_requested']}; ok rows with a bad rating "
        f"{m['bad_ok']}; failed rows without a reason {m['failed_without_reason']}",
        "",
        f"users by status: {m['users']}",
        "",
        f"LLM calls {m['calls']:,} (+{m['cached']:,} from the cache): transport retries {m['transport_retries']:,}, "
        f"repair re-asks {m['repair_calls']:,}, invalid answers {m['invalid_answers']:,}, "
        f"calls failed after retries {m['failed_calls']:,}",
        "",
        f"server: {server['requests']:,} chat requests; faults {server['by_fault']}; statuses {server['by_status']}",
    ]
    if m["reasons"]:
        reasons = [{"failed pairs": n, "reason": kind} for kind, n in m["reasons"].items()]
        lines += ["", "Failed pairs by reason:", "", markdown_table(reasons, ["failed pairs", "reason"])]
    log("\n" + "\n".join(line for line in lines if line).replace("### ", "== "))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--item-text", type=Path, default=None)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--users", type=int, default=None, help="seeded sample of N test users (default: all)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.05, help="server seconds per call")
    ap.add_argument("--malformed-json", type=float, default=0.20)
    ap.add_argument("--http-500", type=float, default=0.05)
    ap.add_argument("--http-429", type=float, default=0.05)
    ap.add_argument("--hang", type=float, default=0.02)
    ap.add_argument("--hang-seconds", type=float, default=3.0, help="a hang answers after this (past --timeout)")
    ap.add_argument("--timeout", type=float, default=2.0, help="doppel's seconds per call")
    ap.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of the 429s")
    ap.add_argument("--seed", type=int, default=0, help="fault seed")
    ap.add_argument("--workdir", default=None, help="keep the db, cache and logs here (default: a temp dir)")
    ap.add_argument("--out", default="faults", help="results file: benchmarks/results/<OUT>.md")
    args = ap.parse_args(argv)

    wd = workdir("doppel-faults-", args.workdir)
    db, run_id, out = wd / "faults.duckdb", "faults-bench", wd / "doppel.log"
    env = doppel_env(wd / "prefect-home")
    faults = {
        "malformed_json": args.malformed_json,
        "http_500": args.http_500,
        "http_429": args.http_429,
        "hang": args.hang,
    }
    log(f"workdir {wd}; faults {faults}; hang {args.hang_seconds} s vs --timeout {args.timeout} s")
    with llm_server(
        latency=args.latency, seed=args.seed, hang_seconds=args.hang_seconds, retry_after=args.retry_after, **faults
    ) as (_, base_url):
        argv_run = doppel_argv(
            base_url=base_url,
            db=db,
            run_id=run_id,
            data_dir=args.data_dir,
            item_text=args.item_text,
            fold=args.fold,
            users=args.users,
            concurrency=args.concurrency,
            timeout=args.timeout,
        )
        first = run_doppel(argv_run, env, out)
        server1 = admin(base_url, "stats")
        m1 = measure(db, run_id)
        md1 = show("run with faults", m1, first.wall_s, server1, first.returncode)
        if first.returncode != 0:
            log(first.stdout[-3000:])

        admin(base_url, "config", {"faults": {}})  # every fault rate back to 0
        admin(base_url, "reset")
        second = run_doppel(argv_run, env, out)
        server2 = admin(base_url, "stats")
        m2 = measure(db, run_id)
        md2 = show("rerun, same run id, no faults", m2, second.wall_s, server2, second.returncode)
        if second.returncode != 0:
            log(second.stdout[-3000:])

    rerun_line = (
        f"rerun retried {m1['failed']:,} failed pairs with {m2['calls'] - m1['calls']:,} new calls; "
        f"failed after the rerun: {m2['failed']:,}"
    )
    log("\n" + rerun_line)
    log(f"doppel output: {out}")
    ok = m2["lost"] == 0 and m2["duplicated"] == 0 and m2["failed"] == 0 and first.returncode == second.returncode == 0
    goal = "goal (lost=0, duplicated=0, failed_after_rerun=0, both runs exit 0): " + ("met" if ok else "NOT met")
    log(goal)
    result = result_line(
        lost=max(m1["lost"], m2["lost"]),
        duplicated=max(m1["duplicated"], m2["duplicated"]),
        failed_after_rerun=m2["failed"],
        calls=m2["calls"],
    )
    users = "all test users" if args.users is None else f"a seeded sample of {args.users} test users"
    setup = (
        f"`doppel run` on ML-100K {args.fold}, {users}, concurrency {args.concurrency}, `--timeout {args.timeout}`, "
        f"against `doppel.testing.llm_server` ({args.latency} s per call, fault seed {args.seed}) with faults "
        f"{faults}: hangs answer after {args.hang_seconds} s, 429s carry Retry-After {args.retry_after} s. Then "
        "the faults are switched off and the same command runs again with the same run id. Pair figures are "
        "the run's whole table after each invocation; LLM calls are doppel's `llm_calls` rows (cache hits "
        "apart), cumulative over both invocations; server figures are per invocation."
    )
    body = "\n".join(["## Setup", "", setup, "", "## Figures", "", *md1, "", *md2, "", rerun_line, "", goal])
    path = write_result(args.out, "# Nothing lost under injected LLM faults (benchmarks/faults.py)", body, result)
    log(f"wrote {path}")
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
