"""What the embedded model writes under each answer shape: rating layouts and profile caps, same prompts.

    python benchmarks/answer_shapes.py --users 8            # both parts
    python benchmarks/answer_shapes.py --users 8 --part ratings

Two questions behind the defaults, asked of the default embedded model (qwen2.5-0.5b) on seeded ML-100K
u1 users, straight to its llama.cpp server (temperature 0, the JSON schema constraining the answer):

1. ratings: each user's first --max-test-items held-out items in batches of 10, rated from the viewer
   line and the last 10 train ratings (no profile: the layout alone differs) in four layouts:
   `item_ids` ({item_id, rating} objects: `--prompts item_ids`), `positions` (an array of digits
   by the movies' numbers: `--prompts positions`), `numbered` ({"1": r, ...}: the default prompts'
   answer) and `id_keyed` ({"<item_id>": r, ...}); the last exists only here. Per layout: RMSE and exact % against the
   real ratings, the histogram of the predictions against the real one, generated tokens per call.
2. profiles: `profile_create` on each user's first 20 train ratings under caps of words and tokens
   and a loop penalty. Per variant: generated tokens per call, the share of answers with a problem
   (tasks/llm/profile_text.profile_problems: a loop, a cut-off, tags), and the words the gateway keeps
   of them (salvaged_profile).

Seconds are not compared: the variants of one prompt share its prefix in the server's cache, so the
first asked pays the prompt. Last line:
RESULT collapse_positions=<share of the commonest prediction> collapse_item_ids=<..> rmse_positions=<..>
rmse_item_ids=<..> profile_tokens_old=<..> profile_tokens_new=<..> degenerate_old_pct=<..> degenerate_new_pct=<..>
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _ceiling  # noqa: E402
from embedded import ingest  # noqa: E402

from doppel.tasks.llm.embedded import EmbeddedServer  # noqa: E402
from doppel.tasks.llm.profile_text import profile_problems, salvaged_profile  # noqa: E402
from doppel.tasks.llm.schemas import parse_ratings, ratings_json_schema  # noqa: E402
from doppel.tasks.llm.templates import rating_variables, render  # noqa: E402
from doppel.tasks.planning import build_work, select_users  # noqa: E402
from doppel.tasks.settings import SimulationSettings  # noqa: E402
from support.output import add_data_options  # noqa: E402

BATCH = 10
# layout -> (prompt set, answer layout of the prompt, replacement of the prompt's answer line or None)
LAYOUTS = {
    "item_ids": ("item_ids", "item_ids", None),
    "positions": ("positions", "positions", None),
    "numbered": ("compact", "numbered", None),
    "id_keyed": (
        "item_ids",
        "item_ids",
        'Answer with JSON only: {"ratings": {"<item_id>": <stars 1-5>, ...}}, every item_id above once, in that order.',
    ),
}
# variant -> (words asked, max_tokens, extra sampling parameters); "old" and "new" are doppel's before and now
PROFILES = {
    "old: 110 words, 220 tokens": (110, 220, {}),
    "60 words, 120 tokens": (60, 120, {}),
    "new: 60 words, 120 tokens, frequency_penalty 0.5": (60, 120, {"frequency_penalty": 0.5}),
    "60 words, 120 tokens, repeat_penalty 1.15": (60, 120, {"repeat_penalty": 1.15}),
    "60 words, 120 tokens, dry_multiplier 0.8": (60, 120, {"dry_multiplier": 0.8}),
}


def keyed_schema(keys: list[str]) -> dict:
    """{"ratings": {k1: 1..5, k2: 1..5, ...}}, every key required, in this order."""
    entry = {"type": "integer", "minimum": 1, "maximum": 5}
    ratings = {
        "type": "object",
        "properties": {k: entry for k in keys},
        "required": keys,
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"ratings": ratings},
        "required": ["ratings"],
        "additionalProperties": False,
    }


def chat(server: EmbeddedServer, text: str, **params) -> dict:
    body = {"model": server.model_name, "temperature": 0, **params}
    body["messages"] = [{"role": "system", "content": render("system")}, {"role": "user", "content": text}]
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=900).json()


def rate(server: EmbeddedServer, layout: str, work, batch) -> tuple[dict[str, int], int]:
    """({item_id: rating}, generated tokens) of one batch in `layout`."""
    prompts, answer, answer_line = LAYOUTS[layout]
    ids = [c.item_id for c in batch]
    text = render(
        "rating",
        prompts=prompts,
        demographics=work.demographics,
        profile=None,
        recent=work.history[-10:],
        candidates=batch,
        **rating_variables(ids, answer, constrained=True),
    )
    if answer_line:
        text = text.rsplit("\n", 1)[0] + "\n" + answer_line
    schema = keyed_schema(ids) if answer_line else ratings_json_schema(ids, answer)
    fmt = {"type": "json_schema", "json_schema": {"name": "ratings", "strict": True, "schema": schema}}
    reply = chat(server, text, max_tokens=24 + 16 * len(ids), response_format=fmt)
    content = reply["choices"][0]["message"]["content"]
    if answer_line:
        given = json.loads(content)["ratings"]
        ratings = {i: int(given[i]) for i in ids if i in given}
    else:
        ratings = parse_ratings(content, ids).ratings
    return ratings, int(reply["usage"]["completion_tokens"])


def ratings_part(server: EmbeddedServer, works: list) -> tuple[list[str], dict]:
    rows: dict[str, dict] = {k: {"pairs": [], "tokens": []} for k in LAYOUTS}
    for work in works:
        for start in range(0, len(work.candidates), BATCH):
            batch = work.candidates[start : start + BATCH]
            for layout in LAYOUTS:
                ratings, tokens = rate(server, layout, work, batch)
                rows[layout]["pairs"] += [(ratings[c.item_id], c.truth) for c in batch if c.item_id in ratings]
                rows[layout]["tokens"].append(tokens)
        print(f"  ratings: user {work.user_id} done", flush=True)
    truth = np.array([t for _, t in rows["item_ids"]["pairs"]])
    lines = ["## Rating answer layouts (no profile; the same prompts otherwise)", ""]
    lines += [
        "| layout | pairs | rmse | exact % | commonest prediction's share | predictions 1..5 | generated tok/call |",
        "|---|---|---|---|---|---|---|",
    ]
    facts = {}
    for layout, row in rows.items():
        pred, real = np.array([p for p, _ in row["pairs"]]), np.array([t for _, t in row["pairs"]])
        hist = np.bincount(pred, minlength=6)[1:]
        facts[layout] = {
            "rmse": float(np.sqrt(np.mean((pred - real) ** 2))),
            "collapse": float(hist.max() / hist.sum()),
        }
        lines.append(
            f"| {layout} | {len(pred)} | {facts[layout]['rmse']:.3f} | {100 * np.mean(pred == real):.1f} | "
            f"{facts[layout]['collapse']:.2f} | {hist.tolist()} | {np.mean(row['tokens']):.1f} |"
        )
    lines += ["", f"real ratings 1..5 of these pairs: {np.bincount(truth, minlength=6)[1:].tolist()}", ""]
    return lines, facts


def profiles_part(server: EmbeddedServer, works: list) -> tuple[list[str], dict]:
    rows: dict[str, list] = {k: [] for k in PROFILES}
    for work in works:
        items = work.history[:20]
        mean = f"{sum(h.rating for h in items) / len(items):.1f}"
        for name, (words, max_tokens, extra) in PROFILES.items():
            text = render(
                "profile_create",
                demographics=work.demographics,
                profile=None,
                items=items,
                max_words=words,
                mean_rating=mean,
            )
            reply = chat(server, text, max_tokens=max_tokens, **extra)
            content = reply["choices"][0]["message"]["content"].strip()
            problems = profile_problems(content)
            kept = content if not problems else salvaged_profile(content) or ""
            rows[name].append((int(reply["usage"]["completion_tokens"]), bool(problems), len(kept.split())))
        print(f"  profiles: user {work.user_id} done", flush=True)
    lines = ["## Profile caps (profile_create on the first 20 train ratings)", ""]
    lines += ["| variant | generated tok/call | with a problem % | words kept (median) |", "|---|---|---|---|"]
    facts = {}
    for name, got in rows.items():
        tokens, bad, kept = (np.array(col, dtype=float) for col in zip(*got, strict=True))
        facts[name] = {"tokens": float(tokens.mean()), "degenerate_pct": float(100 * bad.mean())}
        lines.append(f"| {name} | {tokens.mean():.0f} | {100 * bad.mean():.0f} | {np.median(kept):.0f} |")
    return lines + [""], facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="the user sample's seed")
    ap.add_argument("--max-test-items", type=int, default=20)
    ap.add_argument("--part", choices=["both", "ratings", "profiles"], default="both")
    add_data_options(ap)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "answer_shapes.md")
    args = ap.parse_args()
    head = _ceiling.header("Answer shapes of the embedded model: rating layouts and profile caps", args.model)
    print(head, flush=True)
    lines: list[str] = []
    ratings: dict = {}
    profiles: dict = {}
    with tempfile.TemporaryDirectory(prefix="doppel-shapes-") as tmp:
        db = Path(tmp) / "ml100k.duckdb"
        ingest(db, args.data_dir, args.item_text)
        users = select_users(db, "ml-100k", "u1", args.users, None, args.seed)
        works = build_work(db, "ml-100k", "u1", users, SimulationSettings(max_test_items=args.max_test_items))
        with EmbeddedServer.from_model(args.model, slots=1) as server:
            if args.part in ("both", "ratings"):
                part, ratings = ratings_part(server, works)
                lines += part
            if args.part in ("both", "profiles"):
                part, profiles = profiles_part(server, works)
                lines += part
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + f"\n{len(works)} seeded ML-100K u1 users (seed {args.seed})\n\n" + "\n".join(lines))
    print("\n".join(lines))
    old, new = (profiles.get(k, {}) for k in (next(iter(PROFILES)), list(PROFILES)[2]))
    nan = float("nan")
    print(
        f"RESULT collapse_positions={ratings.get('positions', {}).get('collapse', nan):.2f} "
        f"collapse_item_ids={ratings.get('item_ids', {}).get('collapse', nan):.2f} "
        f"rmse_positions={ratings.get('positions', {}).get('rmse', nan):.3f} "
        f"rmse_item_ids={ratings.get('item_ids', {}).get('rmse', nan):.3f} "
        f"profile_tokens_old={old.get('tokens', nan):.0f} profile_tokens_new={new.get('tokens', nan):.0f} "
        f"degenerate_old_pct={old.get('degenerate_pct', nan):.0f} degenerate_new_pct={new.get('degenerate_pct', nan):.0f}"
    )


if __name__ == "__main__":
    main()
