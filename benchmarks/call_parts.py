"""Where an embedded call's time goes: llama.cpp's prompt evaluation, its generation, and outside the server.

    python benchmarks/call_parts.py --users 10 --max-test-items 20

embedded.md's ceiling_ratio divides llama.cpp's best rates into the run's wall; this says what the rest
is. First llama.cpp's own rates at 1, 2 and 4 sequences (benchmarks/_ceiling.py). Then the seeded
ML-100K users (embedded.py's sample) are simulated in the default layout through the real gateway on
one embedded server with one slot, as embedded.py's new runs are. Each call's wall (`call wall s`),
from the gateway's request to its answer, is split by llama.cpp's own `timings` in that answer: prompt
evaluation, generation (sampling under the JSON grammar included, for the calls that have one) and
what is left (`outside`): HTTP, the openai client and the gateway. Per prompt kind: calls, tokens, the
server's rates against its one-sequence ceiling. Between calls: the users' walls (first call to last,
as embedded.py times them) minus their calls' walls.

ideal_p1_ratio: the ideal at llama.cpp's one-sequence rates (what a chain of calls, one after another,
can reach) / the users' walls; ideal_best_ratio: at its best rates over 1, 2 and 4 sequences, as
embedded.py's ceiling_ratio is.

Last line: RESULT outside_ms_per_call=<x> server_share=<x> prompt_share=<x> gen_vs_ceiling=<x>
between_calls_s=<x> ideal_p1_ratio=<x> ideal_best_ratio=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _ceiling  # noqa: E402
import embedded  # noqa: E402

from doppel.tasks.llm.cache import call_key  # noqa: E402
from doppel.tasks.llm.embedded import EmbeddedServer  # noqa: E402
from doppel.tasks.llm.gateway import LOGPROB_PARAMS, LLMGateway  # noqa: E402
from doppel.tasks.planning import build_work  # noqa: E402
from doppel.tasks.settings import SimulationSettings  # noqa: E402


class TimedGateway(LLMGateway):
    """The real gateway, keeping each HTTP call's wall and llama.cpp's own timings of it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.timed: list[dict] = []

    async def _create(self, messages: list[dict], request: dict[str, Any]):
        started = time.monotonic()
        raw = await super()._create(messages, request)
        wall = time.monotonic() - started
        timings = json.loads(raw.http_response.content).get("timings")
        if timings is None:
            raise SystemExit("the server sent no `timings`: this benchmark needs llama.cpp's server")
        # the call's key, as the gateway computes it, names its prompt in the user's call records
        params = {k: v for k, v in request.items() if k not in LOGPROB_PARAMS}
        key = call_key(self.model_id, messages, params, request["seed"] - self.settings.seed)
        self.timed.append({"key": key, "wall": wall, **timings})
        return raw


async def one_user(work, server: EmbeddedServer, sim: SimulationSettings, cache_dir: Path) -> tuple[float, list[dict]]:
    """One user's chain as embedded.py runs it (one slot): its wall and each call's timings."""
    run = await embedded.one_user(work, server, sim, cache_dir, slots=1, gateway_class=TimedGateway)
    timed = run["gateway"].timed
    names = {c.call_key: c.prompt_name for c in run["call_records"]}
    if len(run["call_records"]) != len(timed) or not all(t["key"] in names for t in timed):
        raise SystemExit(f"user {work.user_id}: {len(run['call_records'])} calls recorded, {len(timed)} timed")
    return run["wall"], [{**t, "prompt": names[t["key"]], "user": work.user_id} for t in timed]


def summarize(calls: list[dict], one: dict) -> dict:
    """Calls, tokens, seconds and rates of these calls."""
    prompt_n = sum(c["prompt_n"] for c in calls)
    gen_n = sum(c["predicted_n"] for c in calls)
    prompt_s = sum(c["prompt_ms"] for c in calls) / 1000
    gen_s = sum(c["predicted_ms"] for c in calls) / 1000
    wall = sum(c["wall"] for c in calls)
    return {
        "calls": len(calls),
        "evaluated tok": prompt_n,
        "generated tok": gen_n,
        "call wall s": wall,
        "prompt s": prompt_s,
        "generation s": gen_s,
        "outside ms/call": 1000 * (wall - prompt_s - gen_s) / max(1, len(calls)),
        "prompt tok/s": prompt_n / prompt_s if prompt_s else float("nan"),
        "generated tok/s": gen_n / gen_s if gen_s else float("nan"),
        "generated vs ceiling": (gen_n / gen_s) / one["gen_tps"] if gen_s else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    embedded.add_sample_args(ap)  # embedded.py's: the same seeded users
    ap.add_argument("--max-test-items", type=int, default=20, help="cap held-out items per user (0: all)")
    ap.add_argument("--ceiling-rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "call_parts.md")
    args = ap.parse_args()
    head = _ceiling.header("Where an embedded call's time goes", args.model)
    print(head, flush=True)
    rates = _ceiling.ceiling(args.model, (1, 2, 4), rounds=args.ceiling_rounds)
    one = rates[1]
    sim = SimulationSettings(max_test_items=args.max_test_items or None)
    calls: list[dict] = []
    user_walls: list[float] = []
    with tempfile.TemporaryDirectory(prefix="doppel-call-parts-") as tmp:
        db, users = embedded.sample_users(args, Path(tmp))
        works = build_work(db, "ml-100k", args.fold, users, sim)
        with EmbeddedServer.from_model(args.model, slots=1) as server:
            for work in works:
                wall, mine = asyncio.run(one_user(work, server, sim, Path(tmp) / f"cache-{work.user_id}"))
                calls, user_walls = calls + mine, user_walls + [wall]
                print(f"  user {work.user_id}: {len(mine)} calls, {wall:.0f} s", flush=True)
    kinds = sorted({c["prompt"] for c in calls}, key=lambda k: (k != "rating", k))
    rows = {kind: summarize([c for c in calls if c["prompt"] == kind], one) for kind in kinds}
    rows["all"] = whole = summarize(calls, one)
    cols = list(whole)
    lines = [
        "## llama.cpp alone (aggregate tokens/s)",
        "",
        "| parallel sequences | prompt tok/s | generated tok/s |",
        "|---|---|---|",
        *(f"| {p} | {r['prompt_tps']:.0f} | {r['gen_tps']:.1f} |" for p, r in rates.items()),
        "",
        f"## {len(works)} seeded ML-100K {args.fold} users (seed {args.seed}), default layout, one slot, "
        + (f"at most {args.max_test_items} held-out items each" if args.max_test_items else "all held-out items"),
        "",
        "rating calls answer under a JSON-schema grammar; profile calls do not. `generated vs ceiling`: the "
        "server's generation rate inside these calls / its one-sequence rate above",
        "",
        "| prompt | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    lines += [
        f"| {kind} | " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |"
        for kind, row in rows.items()
    ]
    users_wall = sum(user_walls)
    between = users_wall - whole["call wall s"]  # the users' walls outside any call: the chain's own Python work
    server_share = (whole["prompt s"] + whole["generation s"]) / users_wall
    prompt_share = whole["prompt s"] / (whole["prompt s"] + whole["generation s"])
    ideal_p1 = whole["evaluated tok"] / one["prompt_tps"] + whole["generated tok"] / one["gen_tps"]
    ideal_best = _ceiling.ideal_seconds(whole["evaluated tok"], whole["generated tok"], rates)
    lines += [
        "",
        f"- the users' walls (first call to last): {users_wall:.1f} s, of which {between:.1f} s between calls",
        f"- the server's share of the users' walls: {server_share:.3f}; prompt evaluation's share of the server's "
        f"time: {prompt_share:.3f}",
        f"- ideal at one-sequence rates / the users' walls: {ideal_p1 / users_wall:.3f}; at the best rates "
        f"(embedded.py's ceiling_ratio): {ideal_best / users_wall:.3f}",
    ]
    _ceiling.write(args.out, head, lines)
    print(
        f"RESULT outside_ms_per_call={whole['outside ms/call']:.1f} server_share={server_share:.3f} "
        f"prompt_share={prompt_share:.3f} gen_vs_ceiling={whole['generated vs ceiling']:.3f} "
        f"between_calls_s={between:.1f} ideal_p1_ratio={ideal_p1 / users_wall:.3f} "
        f"ideal_best_ratio={ideal_best / users_wall:.3f}"
    )


if __name__ == "__main__":
    main()
