"""The embedded server's parallel slots, end to end: `doppel run` on the same users with 1, 2 and 4 slots.

    python benchmarks/embedded_slots.py --users 6

For each slot count, in its own folder (database, LLM cache, Prefect home), the command a user types
with the embedded default model:

    doppel run --dataset ml-100k --data-dir D --fold u1 --users N --embedded-slots S

With S slots the server decodes S sequences at once (continuous batching) and the run keeps S users in
flight, one per slot, so each user's calls reuse its slot's prompt cache. llama.cpp's own rates at 1, 2
and 4 sequences are in embedded.md; this measures what they give a whole run. The slot counts run one
after the other, in the order given, on the same machine.

Last line: RESULT wall_s_1=<..> wall_s_2=<..> ... speedup_2=<wall 1 slot / wall 2 slots> ... failed_pairs=<all>
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from doppel.tasks.store.db import query
from support import output, runs
from support.db import read_db

TOKENS_SQL = """
select count(*) as calls, sum(prompt_tokens) as prompt, sum(prompt_tokens - cached_prompt_tokens) as evaluated,
       sum(completion_tokens) as generated, count(*) filter (where status <> 'ok') as not_ok
from llm_calls where run_id = ? and not cached
"""


def one_count(slots: int, args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"doppel-slots-{slots}-"))
    db, run_id = folder / "doppel.duckdb", f"slots-{slots}"
    command = ["run", "--dataset", "ml-100k", "--fold", args.fold, "--users", str(args.users)]
    command += output.data_argv(args.data_dir, args.item_text)
    command += ["--embedded-slots", str(slots), "--db", str(db), "--run-id", run_id, "--no-progress"]
    output.log(f"\n[{slots} slot(s)] doppel {' '.join(command)}")
    argv = [sys.executable, "-m", "doppel.flows.cli", *command]
    done = runs.run_timed(argv, runs.doppel_env(folder / "prefect-home"), folder, folder / "run.log")
    text = "\n".join(line for _, line in done.lines)
    if done.returncode != 0:
        raise SystemExit(f"[{slots} slots] doppel run failed (exit {done.returncode}):\n{text[-3000:]}")
    output.log("\n".join(line for line in text.splitlines() if line.startswith(("run ", "this invocation"))))
    failed = re.search(r"\((\d+) failed\)", text)
    tokens = {k: int(v) for k, v in read_db(db, TOKENS_SQL, [run_id]).iloc[0].items()}
    scores = query(db, "run_metrics", read_only=True, run_id=run_id)
    llm_rmse = scores[(scores["simulator"] == "llm") & (scores["metric"] == "rmse") & (scores["fold"] == args.fold)]
    return {
        "slots": slots,
        "wall_s": round(done.wall_s, 1),
        "s_per_user": round(done.wall_s / args.users, 1),
        "failed_pairs": int(failed.group(1)) if failed else -1,
        **tokens,
        "peak_rss_mb": round(done.rss.peak_total_mb) if done.rss else None,
        "rmse": round(float(llm_rmse["value"].iloc[0]), 3) if not llm_rmse.empty else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--slots", default="1,2,4", help="slot counts, run in this order")
    output.add_data_options(ap)
    ap.add_argument("--out", type=Path, default=output.RESULTS / "embedded_slots.md")
    args = ap.parse_args()
    counts = [int(s) for s in args.slots.split(",")]
    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [one_count(slots, args) for slots in counts]
    base = rows[0]["wall_s"]
    for row in rows:
        row["speedup"] = round(base / row["wall_s"], 3)
    lines = [
        "# The embedded server's parallel slots: whole `doppel run` commands",
        "",
        output.provenance(),
        "",
        f"{args.users} ML-100K {args.fold} users (`--users {args.users}`, the seeded default sample), the embedded "
        f"default model, default options but `--embedded-slots`; slot counts run one after the other in the order "
        f"{args.slots}, each in a fresh folder and LLM cache. speedup: wall with {counts[0]} slot(s) / this wall. "
        "prompt, evaluated (prompt tokens not served from the cache) and generated: tokens of all the run's calls. "
        "peak_rss_mb: the whole process tree at once, the embedded server included. "
        f"rmse: the LLM's on the pairs it rated. Load average (1, 5, 15 min) at start: {load_start}.",
        "",
        output.markdown_table(
            rows,
            ["slots", "wall_s", "s_per_user", "speedup", "failed_pairs", "calls", "not_ok", "prompt", "evaluated"]
            + ["generated", "peak_rss_mb", "rmse"],
        ),
        "",
        f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    output.log("\n".join(lines))
    result = {f"wall_s_{r['slots']}": r["wall_s"] for r in rows}
    result |= {f"speedup_{r['slots']}": r["speedup"] for r in rows[1:]}
    output.log(output.result_line(**result, failed_pairs=sum(r["failed_pairs"] for r in rows)))


if __name__ == "__main__":
    main()
