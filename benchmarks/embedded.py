"""Embedded models, measured: load time, tokens/s, seconds per rating call (prefix cache cold and
warm), JSON validity before repair, rating histogram, and fidelity against the CF baselines on
ML-100K users.

    python benchmarks/embedded.py --model qwen2.5-0.5b --users 20
    python benchmarks/embedded.py --users 0      # the model alone: load, calls, logprobs cost (minutes)

Last line: RESULT model=<name> s_per_call=<x> valid_pct=<x> rmse=<x> logprobs_ratio=<x>
(logprobs_ratio: seconds of a warm rating call with token logprobs over the same call without)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from doppel.tasks.llm.embedded import EmbeddedServer  # noqa: E402
from doppel.tasks.llm.gateway import TOP_LOGPROBS  # noqa: E402
from doppel.tasks.llm.schemas import ratings_json_schema  # noqa: E402
from doppel.tasks.llm.templates import render  # noqa: E402
from doppel.tasks.records import CandidateItem, HistoryItem  # noqa: E402

GENRES = ["Comedy|Romance", "Action|Thriller", "Drama", "Sci-Fi|Adventure", "Horror", "Animation|Children's"]


def probe_items(offset: int, n: int) -> list[CandidateItem]:
    return [
        CandidateItem(
            str(offset + i),
            f"Probe Movie {offset + i}",
            1980 + i,
            GENRES[i % len(GENRES)],
            "A film about people, places and a turning point in their lives.",
            3,
        )
        for i in range(n)
    ]


def micro(server: EmbeddedServer, repeats: int = 3) -> dict:
    """One user's rating prompt, then the same prefix with new candidates (prefix-cache hit), then the
    warm prompt again with and without token logprobs, alternating (what doppel's rating_probs costs)."""
    profile = (
        "Enjoys light romantic comedies and animated family films; dislikes horror and graphic "
        "violence; rates generously, mostly 4 stars, rarely below 3."
    ) * 2
    recent = [HistoryItem(str(900 + i), f"Recent {i}", 1995, GENRES[i % 6], "", 3 + i % 3, i) for i in range(10)]
    out = {}
    probes = [("cold", 0, False), ("warm", 100, False)]
    probes += [(f"{'logprobs' if lp else 'plain'}-{k}", 100, lp) for k in range(repeats) for lp in (False, True)]
    for label, offset, logprobs in probes:
        items = probe_items(offset, 10)
        ids = [c.item_id for c in items]
        messages = [
            {"role": "system", "content": render("system")},
            {
                "role": "user",
                "content": render(
                    "rating",
                    demographics="34 years old, female, writer",
                    max_words=100,
                    profile=profile,
                    recent=recent,
                    candidates=items,
                    item_ids_json=str(ids).replace("'", '"'),
                ),
            },
        ]
        body = {
            "model": server.model_name,
            "messages": messages,
            "temperature": 0,
            "max_tokens": 200,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "ratings", "strict": True, "schema": ratings_json_schema(ids)},
            },
        }
        if logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        started = time.monotonic()
        response = httpx.post(server.base_url + "/chat/completions", json=body, timeout=600).json()
        timings = response.get("timings", {})
        out[label] = {
            "s": time.monotonic() - started,
            "prompt_tps": timings.get("prompt_per_second"),
            "gen_tps": timings.get("predicted_per_second"),
            "cached": timings.get("cache_n"),
            "prompt_n": timings.get("prompt_n"),
            "content": (response.get("choices") or [{}])[0].get("message", {}).get("content"),
        }
    return out


def fidelity(args: argparse.Namespace, workdir: Path) -> dict:
    """A real `doppel run` on ML-100K users with the embedded model; numbers from its tables."""
    db = workdir / "doppel.duckdb"
    cmd = [
        sys.executable,
        "-m",
        "doppel.flows.cli",
        "run",
        "--dataset",
        "ml-100k",
        "--data-dir",
        args.data_dir,
        "--fold",
        args.fold,
        "--users",
        str(args.users),
        "--model",
        args.model,
        "--db",
        str(db),
        "--run-id",
        "embedded-bench",
        "--runner",
        "threads",
        "--no-progress",
    ]
    if args.item_text:
        cmd += ["--item-text", args.item_text]
    started = time.monotonic()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.monotonic() - started
    con = duckdb.connect(str(db), read_only=True)
    try:
        calls = con.execute("""
            select prompt_name, count(*) n, avg(latency_s) s, avg(prompt_tokens) p, avg(cached_prompt_tokens) c,
                   avg(completion_tokens) g, count(*) filter (where status = 'ok') ok
            from llm_calls where run_id = 'embedded-bench' and not cached group by 1 order by 1""").df()
        # validity before repair: first answers to rating prompts (repairs are prompt 'repair')
        hist = con.execute("""select rating, count(*) n from simulated_ratings
                              where run_id = 'embedded-bench' and status = 'ok' group by 1 order by 1""").df()
        metrics = con.execute(
            """select simulator, metric, value from metrics
                                 where run_id = 'embedded-bench' and fold = ? and metric in ('rmse', 'exact', 'close', 'tv')""",
            [args.fold],
        ).df()
    finally:
        con.close()
    return {"wall": wall, "calls": calls, "hist": hist, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--users", type=int, default=20, help="ML-100K users of the doppel run (0: no run)")
    parser.add_argument("--fold", default="u1")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument(
        "--item-text", default=str(REPO.parent / "shared" / "data" / "ml-100k-text" / "ml100k_movie_text.tsv")
    )
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; timings are only meaningful near <= 2)")

    started = time.monotonic()
    with EmbeddedServer.from_model(args.model) as server:
        load_s = time.monotonic() - started
        probe = micro(server)
    print(f"model {args.model}: assemble+load {load_s:.1f} s (server load {server.load_seconds:.1f} s)")
    for label, m in probe.items():
        print(
            f"  rating call, prefix cache {label}: {m['s']:.1f} s, prompt {m['prompt_n']} tokens "
            f"({m['cached']} reused) at {m['prompt_tps']:.0f} tok/s, generation {m['gen_tps']:.1f} tok/s"
        )
    side = {
        kind: [m["s"] for label, m in probe.items() if label.startswith(kind + "-")] for kind in ("plain", "logprobs")
    }
    logprobs_ratio = sum(side["logprobs"]) / sum(side["plain"])
    print(
        f"  the same warm rating call, alternating: plain {', '.join(f'{x:.2f}' for x in side['plain'])} s; "
        f"with logprobs (top {TOP_LOGPROBS}) {', '.join(f'{x:.2f}' for x in side['logprobs'])} s; "
        f"ratio {logprobs_ratio:.3f}"
    )
    answers = {m["content"] for label, m in probe.items() if label.split("-")[0] in ("plain", "logprobs")}
    print(
        f"  answers of those {len(side['plain']) + len(side['logprobs'])} calls: "
        + ("all the same" if len(answers) == 1 else f"{len(answers)} different ones")
    )

    if args.users == 0:
        print(
            f"RESULT model={args.model} s_per_call={probe['warm']['s']:.2f} valid_pct=nan rmse=nan "
            f"logprobs_ratio={logprobs_ratio:.3f}"
        )
        return
    with tempfile.TemporaryDirectory(prefix="doppel-embedded-") as tmp:
        result = fidelity(args, Path(tmp))
    calls = result["calls"].set_index("prompt_name")
    print(f"\n{args.users} users of ML-100K {args.fold}: wall {result['wall'] / 60:.1f} min")
    print(calls.round(2).to_string())
    rating = calls.loc["rating"] if "rating" in calls.index else None
    repairs = int(calls.loc["repair", "n"]) if "repair" in calls.index else 0
    valid_pct = 100.0 * float(rating["ok"]) / float(rating["n"]) if rating is not None else float("nan")
    s_per_call = float(rating["s"]) if rating is not None else float("nan")
    hist = result["hist"]
    shares = (hist.set_index("rating")["n"] / hist["n"].sum() * 100).round(1).to_dict()
    print(f"valid JSON before repair: {valid_pct:.1f}% of rating calls ({repairs} repair calls)")
    print(f"simulated rating histogram (%): {shares}")
    table = result["metrics"].pivot_table(index="simulator", columns="metric", values="value")
    print(table.round(3).to_string())
    rmse = float(table.loc["llm", "rmse"]) if "llm" in table.index else float("nan")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"RESULT model={args.model} s_per_call={s_per_call:.2f} valid_pct={valid_pct:.1f} rmse={rmse:.3f} "
        f"logprobs_ratio={logprobs_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
