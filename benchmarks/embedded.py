"""The embedded model against llama.cpp's own ceiling: seconds per user, old layout vs new, on ML-100K.

    python benchmarks/embedded.py --users 10            # ceiling, then old and new alternating per user
    python benchmarks/embedded.py --users 0             # the ceiling alone

1. Ceiling (benchmarks/_ceiling.py): llama.cpp's own prompt and generated tokens/s at 1, 2 and 4
   parallel sequences with the default model, no doppel in between.
2. The same seeded ML-100K users simulated twice on one embedded server, alternating which layout
   goes first: old (`--prompts seed`: the seed's verbose prompts, {item_id, rating} objects) and new
   (the default: compact prompts, ratings keyed by the movies' numbers; benchmarks/answer_shapes.py
   compares the layouts). Each user is doppel's real chain
   (`simulate_user`: profile create/refine, rating batches, profile updates) through the real gateway
   (cache in a fresh folder, so every call is made), timed from its first call to its last.
ceiling_ratio = the wall llama.cpp's best rates give for the tokens the new runs evaluated (prompt
tokens not reused from the server's cache) and generated / the new runs' wall. valid_pct = rating
calls whose first answer was valid. rmse_delta = RMSE(new) - RMSE(old) on the pairs both layouts rated; its upper
bound is the 97.5th percentile of a paired bootstrap over users.

Three more views of the same answers: the users' mean of their RMSE differences (each user weighing the
same; user_mean_delta_hi the upper bound of its bootstrap interval), and the RMSE of the expected
rating (the mean of each answer's distribution over 1..5 from logprobs) in place of the rating; and how
much the model copies instead of rating: rating answers that repeat an earlier answer of the same user star
for star (other movies, the same sequence), and answers that give every movie the same stars.

Last line: RESULT s_per_user=<median new> ceiling_ratio=<x> valid_pct=<x> rmse_delta=<x> rmse_delta_hi=<x>
user_mean_delta_hi=<x> expected_rmse_delta=<x> expected_rmse_delta_hi=<x> repeat_pct_old=<x> repeat_pct_new=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _ceiling  # noqa: E402

from doppel.tasks.llm.cache import ResponseCache  # noqa: E402
from doppel.tasks.llm.embedded import EmbeddedServer  # noqa: E402
from doppel.tasks.llm.gateway import LLMGateway  # noqa: E402
from doppel.tasks.llm.limits import CallLimiter  # noqa: E402
from doppel.tasks.planning import build_work, select_users  # noqa: E402
from doppel.tasks.settings import LLMSettings, SimulationSettings  # noqa: E402
from doppel.tasks.simulation import simulate_user  # noqa: E402
from support.output import add_data_options  # noqa: E402
from support.runs import ingest_argv  # noqa: E402

LAYOUTS = {"old": "seed", "new": "compact"}


def add_sample_args(ap: argparse.ArgumentParser) -> None:
    """--model, and which seeded ML-100K users: --users, --fold, --seed, --data-dir, --item-text."""
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--fold", default="u1")
    ap.add_argument("--seed", type=int, default=0, help="the user sample's seed")
    add_data_options(ap)


def sample_users(args: argparse.Namespace, folder: Path) -> tuple[Path, list[str]]:
    """ML-100K ingested into a database in `folder`, and the seeded users of `args`."""
    db = folder / "ml100k.duckdb"
    ingest(db, args.data_dir, args.item_text)
    return db, select_users(db, "ml-100k", args.fold, args.users, None, args.seed)


def ingest(db: Path, data_dir: Path | None, item_text: Path | None) -> None:
    """ML-100K into `db`: from `data_dir`, else doppel's verified download of the public zip."""
    env = {**os.environ, "PREFECT_HOME": str(db.parent / "prefect-home")}
    subprocess.run(ingest_argv(db, data_dir, item_text), check=True, env=env, stdout=subprocess.DEVNULL)


async def one_user(
    work,
    server: EmbeddedServer,
    sim: SimulationSettings,
    cache_dir: Path,
    slots: int,
    gateway_class: type[LLMGateway] = LLMGateway,
) -> dict:
    """One user's chain through a fresh gateway (`gateway_class`, e.g. call_parts.py's timed one): its
    wall, (prediction, truth) pairs, tokens, and the call records and gateway for a caller to read."""
    llm = LLMSettings(base_url=server.base_url, concurrency=slots, timeout_s=3600.0, max_retries=0)
    cache, limiter = ResponseCache(cache_dir), CallLimiter(slots)
    gateway = gateway_class(llm, cache, limiter, server.model_name)
    started = time.monotonic()
    try:
        result = await simulate_user(work, gateway, sim)
    finally:
        await gateway.aclose()
        cache.close()
    wall = time.monotonic() - started
    truth = {c.item_id: c.truth for c in work.candidates}
    pairs = {r["item_id"]: (r["rating"], truth[r["item_id"]]) for r in result.ratings if r.get("status") == "ok"}
    expected = {  # the mean of the rating's distribution (logprobs), where the answer came with one
        r["item_id"]: (float(np.dot(r["rating_probs"], range(1, 6)) / sum(r["rating_probs"])), truth[r["item_id"]])
        for r in result.ratings
        if r.get("status") == "ok" and r.get("rating_probs") and sum(r["rating_probs"]) > 0
    }
    ratings = [c for c in result.calls if c.prompt_name == "rating"]
    return {
        "user": work.user_id,
        "wall": wall,
        "pairs": pairs,
        "expected": expected,
        "asked": len(work.candidates),
        "rating_calls": len(ratings),
        "rating_valid": sum(c.status == "ok" for c in ratings),
        "answers": answered_stars(result.ratings),
        "calls": len(result.calls),
        "evaluated": sum(c.prompt_tokens - c.cached_prompt_tokens for c in result.calls),
        "prompt": sum(c.prompt_tokens for c in result.calls),
        "generated": sum(c.completion_tokens for c in result.calls),
        "rating_prompt": sum(c.prompt_tokens for c in ratings),
        "rating_generated": sum(c.completion_tokens for c in ratings),
        "call_records": result.calls,
        "gateway": gateway,
    }


def answered_stars(rows: list[dict]) -> list[list[int]]:
    """The stars each rating call answered, in its movies' order: the rows rated ok, grouped by the call
    that answered them (the rating records already hold the parsed answers)."""
    by_call: dict[str, list[int]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("call_key"):
            by_call.setdefault(row["call_key"], []).append(int(row["rating"]))
    return list(by_call.values())


def copying(runs: list[dict]) -> tuple[int, float, float]:
    """Of the rating answers with 2+ movies: how many, the % that repeat an earlier answer of the same user star
    for star (other movies, the same sequence), and the % that give every movie the same stars."""
    answers = [(r["user"], tuple(a)) for r in runs for a in r["answers"] if len(a) > 1]
    seen: set[tuple] = set()
    repeats = 0
    for key in answers:
        repeats += key in seen
        seen.add(key)
    constant = sum(len(set(a)) == 1 for _, a in answers)
    n = max(1, len(answers))
    return len(answers), 100 * repeats / n, 100 * constant / n


def common_pairs(old: list[dict], new: list[dict]) -> tuple[list[list], list[list]]:
    """Per user, the (prediction, truth) pairs both layouts rated: their RMSEs compare like with like."""
    both = [sorted(o.keys() & n.keys()) for o, n in zip(old, new)]
    return [[o[i] for i in b] for o, b in zip(old, both)], [[n[i] for i in b] for n, b in zip(new, both)]


def rmse(pairs: list[tuple[int, int]]) -> float:
    return float(np.sqrt(np.mean([(p - t) ** 2 for p, t in pairs]))) if pairs else float("nan")


def paired_bootstrap(old: list[list], new: list[list], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(2.5th, 97.5th) percentiles of RMSE(new) - RMSE(old) over users resampled with replacement."""
    rng = np.random.default_rng(seed)
    sq_old = [np.array([(p - t) ** 2 for p, t in u], dtype=float) for u in old]
    sq_new = [np.array([(p - t) ** 2 for p, t in u], dtype=float) for u in new]
    deltas = []
    for _ in range(rounds):
        pick = rng.integers(0, len(old), len(old))
        o, n = np.concatenate([sq_old[i] for i in pick]), np.concatenate([sq_new[i] for i in pick])
        deltas.append(np.sqrt(n.mean()) - np.sqrt(o.mean()))
    return float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))


def user_mean_bootstrap(old: list[list], new: list[list], rounds: int = 2000, seed: int = 0) -> tuple[float, ...]:
    """The users' mean of RMSE(new) - RMSE(old), each user weighing the same, and its (2.5th, 97.5th)
    percentiles over users resampled with replacement."""
    rng = np.random.default_rng(seed)
    deltas = np.array([rmse(n) - rmse(o) for o, n in zip(old, new) if o])
    means = [deltas[rng.integers(0, len(deltas), len(deltas))].mean() for _ in range(rounds)]
    return float(deltas.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_args(ap)
    ap.add_argument("--slots", type=int, default=1, help="the embedded server's parallel slots (= concurrency)")
    ap.add_argument("--max-test-items", type=int, default=None, help="cap held-out items per user")
    ap.add_argument("--ceiling-rounds", type=int, default=2)
    ap.add_argument("--parallels", default="1,2,4", help="parallel sequences of the ceiling measure")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "embedded.md")
    args = ap.parse_args()
    head = _ceiling.header("Embedded model: seconds per user against llama.cpp's own ceiling", args.model)
    print(head, flush=True)
    lines = ["## Ceiling: llama.cpp alone (aggregate tokens/s)", ""]
    parallels = tuple(int(p) for p in args.parallels.split(","))
    rates = _ceiling.ceiling(args.model, parallels, rounds=args.ceiling_rounds)
    lines += [
        "| parallel sequences | prompt tok/s | generated tok/s | generated tok/s with logprobs |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {p} | {r['prompt_tps']:.0f} | {r['gen_tps']:.1f} | "
        + (f"{r['gen_logprobs_tps']:.1f} |" if "gen_logprobs_tps" in r else "- |")
        for p, r in rates.items()
    ]
    best = max(rates, key=lambda p: rates[p]["gen_tps"])
    if args.users == 0:
        _ceiling.write(args.out, head, lines)
        one = rates[min(rates)]
        print(
            f"RESULT prompt_tps={one['prompt_tps']:.0f} gen_tps={one['gen_tps']:.1f} "
            f"gen_logprobs_tps={one.get('gen_logprobs_tps', float('nan')):.1f} best_parallel={best}"
        )
        return
    with tempfile.TemporaryDirectory(prefix="doppel-embedded-") as tmp:
        db, users = sample_users(args, Path(tmp))
        sims = {k: SimulationSettings(prompts=v, max_test_items=args.max_test_items) for k, v in LAYOUTS.items()}
        works = {k: {w.user_id: w for w in build_work(db, "ml-100k", args.fold, users, s)} for k, s in sims.items()}
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        with EmbeddedServer.from_model(args.model, slots=args.slots) as server:
            for k, user in enumerate(users):
                for layout in ("old", "new") if k % 2 == 0 else ("new", "old"):
                    cache = Path(tmp) / f"cache-{layout}-{user}"
                    res = asyncio.run(one_user(works[layout][user], server, sims[layout], cache, args.slots))
                    runs[layout].append(res)
                    print(
                        f"  user {user} {layout}: {res['wall']:.0f} s, {res['calls']} calls, "
                        f"{len(res['pairs'])}/{res['asked']} rated, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    common = dict(
        zip(("old", "new"), common_pairs([r["pairs"] for r in runs["old"]], [r["pairs"] for r in runs["new"]]))
    )
    rows = []
    for layout, res in runs.items():
        pairs = [p for user_pairs in common[layout] for p in user_pairs]
        rated = sum(len(r["pairs"]) for r in res)
        rows.append(
            {
                "layout": f"{layout} ({LAYOUTS[layout]})",
                "median s/user": statistics.median(r["wall"] for r in res),
                "valid %": 100 * sum(r["rating_valid"] for r in res) / max(1, sum(r["rating_calls"] for r in res)),
                "rating prompt tok/rating": sum(r["rating_prompt"] for r in res) / max(1, rated),
                "generated tok/rating call": sum(r["rating_generated"] for r in res)
                / max(1, sum(r["rating_calls"] for r in res)),
                "evaluated/prompt tokens": sum(r["evaluated"] for r in res) / max(1, sum(r["prompt"] for r in res)),
                "ideal/wall": sum(_ceiling.ideal_seconds(r["evaluated"], r["generated"], rates) for r in res)
                / sum(r["wall"] for r in res),
                "rmse": rmse(pairs),
                "exact %": 100 * float(np.mean([p == t for p, t in pairs])) if pairs else float("nan"),
            }
        )
    lo, hi = paired_bootstrap(common["old"], common["new"])
    new = rows[1]
    cols = list(new)
    lines += [
        "",
        f"## {args.users} seeded ML-100K {args.fold} users, old and new alternating, {args.slots} slot(s)",
        "",
    ]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |" for r in rows
    ]
    delta = new["rmse"] - rows[0]["rmse"]
    n_common = sum(map(len, common["new"]))
    lines += [
        "",
        f"rmse and exact % on the {n_common} pairs both layouts rated (of {sum(r['asked'] for r in runs['new'])} asked)",
    ]
    lines += ["", f"RMSE new - old: {delta:+.3f}, paired bootstrap over users 95% interval [{lo:+.3f}, {hi:+.3f}]"]
    # two more views, added after embedded.md's first run (one user held half its pairs); the goal's
    # measure stays the pooled RMSE of the ratings above
    expected = dict(
        zip(("old", "new"), common_pairs([r["expected"] for r in runs["old"]], [r["expected"] for r in runs["new"]]))
    )
    e_old, e_new = ([p for u in expected[k] for p in u] for k in ("old", "new"))
    e_lo, e_hi = paired_bootstrap(expected["old"], expected["new"])
    u_mean, u_lo, u_hi = user_mean_bootstrap(common["old"], common["new"])
    lines += [
        "",
        "Three more views of the same answers (the first two added to this benchmark after embedded.md's first run, "
        "where one of its 10 users held half the pairs; the third after a later run's answers to one user were "
        "seen to repeat one sequence of stars; the goal's measure is the line above):",
        "",
        f"- the users' mean of their RMSE new - old, each user weighing the same: {u_mean:+.3f}, bootstrap over "
        f"users 95% interval [{u_lo:+.3f}, {u_hi:+.3f}]",
        f"- the expected rating (the mean of each answer's distribution from logprobs) instead of the rating, on the "
        f"{len(e_new)} pairs both layouts rated with one: RMSE old {rmse(e_old):.3f}, new {rmse(e_new):.3f}, "
        f"new - old {rmse(e_new) - rmse(e_old):+.3f}, paired bootstrap over users 95% interval [{e_lo:+.3f}, "
        f"{e_hi:+.3f}]",
    ]
    copy = {layout: copying(res) for layout, res in runs.items()}
    lines += [
        "- how much the model copies instead of rating: of the rating answers with 2+ movies, "
        + "; ".join(
            f"{layout} {n} answers, {rep:.1f}% repeat an earlier answer of the same user star for star "
            f"(other movies), {const:.1f}% give every movie the same stars"
            for layout, (n, rep, const) in copy.items()
        ),
    ]
    lines += ["", "Per user (the bootstrap draws users, so a user with many pairs weighs on the interval):", ""]
    lines += [
        "| user | pairs | rmse old | rmse new | expected rmse old | expected rmse new | s old | s new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_user = zip(
        runs["old"], runs["new"], common["old"], common["new"], expected["old"], expected["new"], strict=True
    )
    for o, n, po, pn, eo, en in per_user:
        lines.append(
            f"| {o['user']} | {len(po)} | {rmse(po):.2f} | {rmse(pn):.2f} | {rmse(eo):.2f} | {rmse(en):.2f} "
            f"| {o['wall']:.0f} | {n['wall']:.0f} |"
        )
    _ceiling.write(args.out, head, lines)
    print(
        f"RESULT s_per_user={new['median s/user']:.1f} ceiling_ratio={new['ideal/wall']:.3f} "
        f"valid_pct={new['valid %']:.1f} rmse_delta={delta:+.3f} rmse_delta_hi={hi:+.3f} "
        f"user_mean_delta_hi={u_hi:+.3f} expected_rmse_delta={rmse(e_new) - rmse(e_old):+.3f} "
        f"expected_rmse_delta_hi={e_hi:+.3f} repeat_pct_old={copy['old'][1]:.1f} repeat_pct_new={copy['new'][1]:.1f}"
    )


if __name__ == "__main__":
    main()
