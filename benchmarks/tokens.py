"""Prompt tokens per simulated rating, with the model's real tokenizer: the default layout against the
seed layout (`--prompts seed`) on the same users and items, a run's measured split, other batch shapes.

    python benchmarks/tokens.py                                   # estimates only (no LLM calls)
    python benchmarks/tokens.py --db run/doppel.duckdb --run-id X # plus the measured split of a run

The goal: the default layout's prompt tokens per rating <= 50% of the seed layout's.

- measured (with --db/--run-id): prompt tokens of the run's uncached calls over its rated pairs,
  split by prompt kind (profile create/refine/update, rating): how much each kind costs per rating;
- estimated: `doppel.tasks.estimate` (the code behind `doppel run --dry-run`) renders the real prompts for
  the fold's users with a placeholder profile of the target length, for rate batches 5..30 with and
  without the per-batch profile update: calls, prompt tokens per rating, and the LLM-bound wall at
  0.5 s/call and concurrency 32. Tokens are counted with the embedded model's tokenizer (its GGUF
  vocabulary, tasks/llm/tokens.py), as llama.cpp counts them.

Estimates for another prompt set: --prompts seed (the seed's layout) or a folder. Fidelity of the old
vs new shapes, measured with real calls on the same users and pairs: benchmarks/prompt_study.py.

Last line: RESULT tokenizer=real ratio=<default/seed> default_per_rating=<x> seed_per_rating=<x>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from support import db, output, runs
from support.output import log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    output.add_data_options(ap)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--batches", default="5,10,15,20,30")
    ap.add_argument("--prompts", default="compact", help="prompt set: compact | seed | a folder")
    ap.add_argument("--db", type=Path, default=None, help="a run's DuckDB file for the measured split")
    ap.add_argument("--run-id", default=None)
    ap.add_argument(
        "--template", type=Path, default=None, help="an ingested DuckDB file (default: ingest into a temp dir)"
    )
    ap.add_argument("--repo", type=Path, default=output.REPO)
    ap.add_argument("--out", type=Path, default=output.RESULTS)
    args = ap.parse_args(argv)
    repo = runs.use_repo(args.repo)

    measured = None
    if args.db and args.run_id:
        facts = db.run_facts(args.db, args.run_id)
        per = facts["prompt_tokens"] / max(1, facts["rated"])
        by = facts["by_prompt"].copy()
        by["per_rating"] = by["prompt_tokens"] / max(1, facts["rated"])
        log(
            f"measured on {args.run_id}: {facts['prompt_tokens']:,} prompt tokens / {facts['rated']:,} ratings = {per:.1f}"
        )
        log(by.to_string(index=False))
        measured = per

    template = args.template
    if template is None:
        wd = Path(tempfile.mkdtemp(prefix="doppel-tokens-"))
        template = wd / "template.duckdb"
        ingest = runs.ingest_argv(template, args.data_dir, args.item_text)
        t = runs.run_timed(
            ingest, runs.doppel_env(wd / "prefect-home", repo=repo, timed=True), wd, wd / "ingest.log", sample_rss=False
        )
        if t.returncode != 0:
            log(t.text[-2000:])
            return 1

    from doppel.tasks.estimate import estimate
    from doppel.tasks.settings import RunSettings, SimulationSettings

    def per_rating(prompts: str, batch: int = 10, update: bool = True):
        settings = RunSettings(
            dataset="ml-100k",
            db=str(template),
            folds=[args.fold],
            users=args.users,
            sim=SimulationSettings(rate_batch=batch, update_profile=update, prompts=prompts),
        )
        est = estimate(settings, "ml-100k")
        return est, est.prompt_tokens / max(1, est.pairs)

    # the goal's ratio: both layouts on the same users and items, at the default shape
    _, seed = per_rating("seed")
    _, default = per_rating("compact")
    log(f"prompt tokens per rating (real tokenizer): default {default:.1f}, seed {seed:.1f}: {default / seed:.3f}")
    rows = []
    for update in (True, False):
        for batch in [int(b) for b in args.batches.split(",")]:
            est, per = per_rating(args.prompts, batch, update)
            rows.append(
                {
                    "rate_batch": batch,
                    "update": update,
                    "users": est.users,
                    "calls": est.calls,
                    "calls_per_user": round(est.calls / max(1, est.users), 1),
                    "longest_chain": est.longest_chain,
                    "prompt_tokens_per_rating": round(per, 1),
                    "pct_of_seed": round(100 * per / seed),
                    "wall_s_at_0.5s_c32": round(est.wall_s(0.5, 32), 1),
                }
            )
    columns = list(rows[0])
    table = output.markdown_table(rows, columns)
    log("\nestimated with the real prompts (placeholder profile of the target length):\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "tokens.md" if args.prompts == "compact" else f"tokens_{Path(args.prompts).name}.md"
    (args.out / name).write_text(
        f"# Prompt tokens per rating (real tokenizer: the embedded model's, {args.fold})\n\n"
        + output.provenance()
        + f"; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n\n"
        + f"Default layout {default:.1f} vs seed layout (--prompts seed) {seed:.1f} prompt tokens per rating "
        f"(rate batch 10, profile updates on, same users and items, profile calls included): "
        f"ratio {default / seed:.3f}\n\n"
        + f"Batch shapes, prompt set {args.prompts} (pct_of_seed: of the seed layout at batch 10):\n\n"
        + table
        + "\n\n"
        + (f"measured on a run: {measured:.1f} prompt tokens per rating\n" if measured else "")
    )
    print(
        output.result_line(
            tokenizer="real",
            ratio=round(default / seed, 3),
            default_per_rating=round(default, 1),
            seed_per_rating=round(seed, 1),
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
