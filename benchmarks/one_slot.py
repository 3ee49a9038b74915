"""A llama.cpp server with one slot, and a degenerate profile kept trimmed or re-asked, side by side.

    python benchmarks/one_slot.py --users 3

One embedded server, started with ONE slot and its model id the GGUF file's path (what llama.cpp's own
server reports), stands in for a user's local llama.cpp. For each profile policy, in its own folder
(database, LLM cache, Prefect home), the command a user types, default options:

    doppel run --dataset ml-100k --data-dir D --fold u1 --users N --base-url <it> --model <its path>

then the same command again (same run id: it must make 0 LLM calls), then `doppel score` (the stored
metrics must stay the same, row for row). Policies: `keep` (the default: a looping / cut-off / tagged
profile whose trimmed text keeps >= 20 words is kept after one call) and `reask` (--profile-keep-words 0:
every degenerate profile is re-asked, up to 2 times, as before). The calls by prompt come from llm_calls.

Last line: RESULT wall_s=<keep> wall_s_reask=<reask> failed_pairs=<both> rerun_calls=<both>
metrics_unchanged=<both> settled_concurrency=<keep> profile_calls=<keep> profile_calls_reask=<reask>
rmse=<keep> rmse_reask=<reask>
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import duckdb

from doppel.tasks.llm.embedded import EmbeddedServer
from doppel.tasks.llm.embedded_models import ensure_model
from doppel.tasks.store.db import query
from support import output, runs

POLICIES = {"keep": [], "reask": ["--profile-keep-words", "0"]}
CAPPED = re.compile(r"concurrency capped at (\d+) \(asked (\d+)\)")


def doppel(*args: str) -> list[str]:
    return [sys.executable, "-m", "doppel.flows.cli", *args]


def calls_by_prompt(db: Path, run_id: str) -> list[dict]:
    with duckdb.connect(str(db), read_only=True) as con:
        frame = con.execute(
            """
            select prompt_name as prompt, count(*) as calls,
                   count(*) filter (where status = 'invalid') as invalid,
                   count(*) filter (where error like 'trimmed:%') as trimmed,
                   round(avg(prompt_tokens)) as prompt_tok, round(avg(completion_tokens)) as gen_tok,
                   round(avg(latency_s), 2) as mean_s, round(sum(latency_s), 1) as total_s
            from llm_calls where run_id = ? and not cached group by 1 order by total_s desc
            """,
            [run_id],
        ).df()
    return frame.to_dict("records")


def metrics(db: Path, run_id: str) -> list[tuple]:
    """The run's stored scores, as `doppel` reads them (sql/queries/run_metrics.sql)."""
    return [tuple(row) for row in query(db, "run_metrics", read_only=True, run_id=run_id).itertuples(index=False)]


def one_policy(name: str, extra: list[str], base_url: str, model: str, args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"doppel-one-slot-{name}-"))
    db, run_id = folder / "doppel.duckdb", f"one-slot-{name}"
    env = runs.doppel_env(folder / "prefect-home")
    command = ["run", "--dataset", "ml-100k", "--fold", args.fold, *output.data_argv(args.data_dir, None)]
    command += ["--users", str(args.users), "--base-url", base_url, "--model", model, "--db", str(db)]
    command += ["--run-id", run_id, *extra]
    output.log(f"\n[{name}] doppel {' '.join(command)}")
    first = runs.run_timed(doppel(*command), env, folder, folder / "run.log")
    text = "\n".join(line for _, line in first.lines)
    if first.returncode != 0:
        raise SystemExit(f"[{name}] doppel run failed (exit {first.returncode}):\n{text[-3000:]}")
    summary = [line for line in text.splitlines() if line.startswith(("run ", "this invocation", "the LLM server"))]
    output.log("\n".join(summary))
    failed = re.search(r"\((\d+) failed\)", text)
    capped = CAPPED.search(text)
    again = runs.run_timed(doppel(*command), env, folder, folder / "run.log")
    made = re.search(
        r"this invocation: [\d,]+ users? simulated, ([\d,]+) LLM calls? made",
        "\n".join(line for _, line in again.lines),
    )
    before = metrics(db, run_id)
    scored = runs.run_timed(doppel("score", "--db", str(db), "--run-id", run_id), env, folder, folder / "run.log")
    after = metrics(db, run_id)
    rmse = next((v for f, s, m, v in before if s == "llm" and m == "rmse" and f == args.fold), float("nan"))
    by_prompt = calls_by_prompt(db, run_id)
    return {
        "policy": name,
        "wall_s": round(first.wall_s, 1),
        "s_per_user": round(first.wall_s / args.users, 1),
        "failed_pairs": int(failed.group(1)) if failed else -1,
        "calls": sum(r["calls"] for r in by_prompt),
        "profile_calls": sum(r["calls"] for r in by_prompt if str(r["prompt"]).startswith("profile")),
        "settled_concurrency": int(capped.group(1)) if capped else None,
        "rerun_calls": int(made.group(1).replace(",", "")) if made and again.returncode == 0 else -1,
        "metrics_unchanged": scored.returncode == 0 and before == after and len(before) > 0,
        "metric_rows": len(before),
        "rmse": rmse,
        "by_prompt": by_prompt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b", help="a registry model or a .gguf path")
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--data-dir", type=Path, default=output.DEFAULT_DATA_DIR)
    ap.add_argument("--out", type=Path, default=output.RESULTS / "one_slot.md")
    args = ap.parse_args()
    path = ensure_model(args.model)
    results = []
    with EmbeddedServer(path, model_name=str(path), slots=1) as server:  # llama.cpp's own id: the file path
        output.log(f"one-slot server at {server.base_url}, model id {path}")
        for name, extra in POLICIES.items():
            results.append(one_policy(name, extra, server.base_url, str(path), args))
    keep, reask = results
    lines = [
        "# One-slot llama.cpp server: the new user's run, a rerun, a rescore; profiles kept trimmed vs re-asked",
        "",
        output.provenance(),
        "",
        f"{args.users} ML-100K {args.fold} users (`--users {args.users}`, the seeded default sample), default options "
        f"(`--concurrency 8`), one embedded server with one slot whose model id is {path.name}'s full path; "
        "policies run one after the other (keep first) on the same server, each in a fresh folder and LLM cache.",
        "",
        output.markdown_table(
            results,
            ["policy", "wall_s", "s_per_user", "failed_pairs", "calls", "profile_calls", "settled_concurrency"]
            + ["rerun_calls", "metrics_unchanged", "metric_rows", "rmse"],
        ),
    ]
    for r in results:
        lines += [
            "",
            f"## Calls by prompt, policy {r['policy']}",
            "",
            output.markdown_table(r["by_prompt"], list(r["by_prompt"][0])),
        ]
    lines += ["", f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    args.out.write_text("\n".join(lines) + "\n")
    output.log("\n".join(lines))
    output.log(
        output.result_line(
            wall_s=keep["wall_s"],
            wall_s_reask=reask["wall_s"],
            failed_pairs=keep["failed_pairs"] + reask["failed_pairs"],
            rerun_calls=keep["rerun_calls"] + reask["rerun_calls"],
            metrics_unchanged=keep["metrics_unchanged"] and reask["metrics_unchanged"],
            settled_concurrency=keep["settled_concurrency"],
            profile_calls=keep["profile_calls"],
            profile_calls_reask=reask["profile_calls"],
            rmse=keep["rmse"],
            rmse_reask=reask["rmse"],
        )
    )


if __name__ == "__main__":
    main()
