"""Full-catalogue timing of the ensemble simulator on MovieLens-100K (no database, no Prefect).

Measures, on fold u1: item embeddings for every item, the keyword vocabulary, SASRec training, and
scoring every held-out pair with all three voters and the vote. Keywords for every item come from
the item's genres here (a stand-in with the LLM's output shape) so the voters see a full catalogue;
`--sample K` additionally times K real item-analysis calls on the embedded model (fresh cache) and
extrapolates the LLM time for the whole catalogue.

    python benchmarks/ensemble.py [--data-dir ../shared/data/ml-100k] [--sample 3]

The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from support.output import add_data_options  # noqa: E402


def log(message: str) -> None:
    print(message, flush=True)


def genre_keywords(items: pd.DataFrame) -> pd.DataFrame:
    rows = [
        (r.item_id, pol, g.lower() if pol == "pro" else f"too much {g.lower()}")
        for r in items.itertuples()
        for g in (r.genres.split("|") if r.genres else ["unknown"])
        for pol in ("pro", "con")
    ]
    frame = pd.DataFrame(rows, columns=["item_id", "polarity", "keyword"])
    return frame.assign(source="obj")


def time_llm(items: pd.DataFrame, k: int) -> float:
    """Seconds per item-analysis call on the embedded model (K most popular items, fresh cache)."""
    from doppel.tasks.ensemble.keywords import ItemFacts, analyse_item
    from doppel.tasks.llm.embedded import EmbeddedServer
    from doppel.tasks.llm.session import LimitSpec, gateway_session
    from doppel.tasks.settings import LLMSettings

    facts = [
        ItemFacts(r.item_id, r.title, None if pd.isna(r.year) else int(r.year), r.genres, r.text)
        for r in items.head(k).itertuples()
    ]
    with tempfile.TemporaryDirectory() as cache, EmbeddedServer.from_model("qwen2.5-0.5b") as server:
        llm = LLMSettings(base_url=server.base_url, model=server.model_name, timeout_s=600, concurrency=1)

        async def main() -> list[float]:
            out = []
            async with gateway_session(llm, server.model_name, cache, LimitSpec(local_slots=1)) as gateway:
                for item in facts:
                    started = time.monotonic()
                    result = await analyse_item(gateway, item, "obj")
                    out.append(time.monotonic() - started)
                    log(
                        f"  item {item.item_id}: {out[-1]:.1f} s, {result.status}, "
                        f"pros {result.pros}, cons {result.cons}"
                    )
            return out

        seconds = asyncio.run(main())
    return float(np.mean(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(parser)
    parser.add_argument("--fold", default="u1")
    parser.add_argument("--threshold", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None, help="SASRec epochs (default: the setting)")
    parser.add_argument("--sample", type=int, default=0, help="time K real LLM item analyses (embedded model)")
    args = parser.parse_args()

    from doppel.tasks.data import load_dataset
    from doppel.tasks.ensemble import embeddings as emb
    from doppel.tasks.ensemble.config import SASRecSettings
    from doppel.tasks.ensemble.evaluate import metrics_rows, score_pairs
    from doppel.tasks.ensemble.sasrec import train_sasrec
    from doppel.tasks.ensemble.vocabulary import build_vocabulary, canonicalise
    from doppel.tasks.ensemble.voters import Index

    ds = load_dataset("ml-100k", data_dir=args.data_dir, item_text=args.item_text)
    ratings = ds.ratings.merge(ds.splits[ds.splits["fold"] == args.fold], on=["user_id", "item_id"])
    train = ratings[ratings["split"] == "train"].reset_index(drop=True)
    pairs = ratings[ratings["split"] == "test"].reset_index(drop=True)
    popularity = train["item_id"].value_counts()
    items = ds.items.assign(n=ds.items["item_id"].map(popularity).fillna(0)).sort_values(
        ["n", "item_id"], ascending=[False, True]
    )
    item_ids = ds.items["item_id"].tolist()
    log(f"{ds.name} fold {args.fold}: {len(train):,} train, {len(pairs):,} held-out pairs, {len(item_ids):,} items")

    t = time.monotonic()
    emb.load_encoder()
    load_s = time.monotonic() - t
    t = time.monotonic()
    rows = emb.embed_items(ds.items, None)
    embed_s = time.monotonic() - t
    log(f"embeddings: encoder load {load_s:.1f} s, {len(rows):,} items in {embed_s:.1f} s")

    keywords = genre_keywords(ds.items)
    t = time.monotonic()
    vocabulary = build_vocabulary(keywords, emb.encode, threshold=0.8)
    vocab_s = time.monotonic() - t
    keywords = canonicalise(keywords, vocabulary)
    log(f"vocabulary: {len(vocabulary)} keywords -> {vocabulary['canonical'].nunique()} canonical in {vocab_s:.2f} s")

    t = time.monotonic()
    cfg = SASRecSettings(**({"epochs": args.epochs} if args.epochs else {}))
    sasrec = train_sasrec(train, item_ids, args.threshold, cfg)
    sasrec_s = time.monotonic() - t
    log(f"SASRec: {cfg.epochs} epochs in {sasrec_s:.1f} s (loss {sasrec.info['final_loss']})")

    t = time.monotonic()
    index = Index.build(train, pairs, item_ids)
    matrix, has = emb.embedding_matrix(rows, index.items)
    votes, seconds = score_pairs(train, pairs, item_ids, args.threshold, keywords, matrix, has, sasrec, index)
    score_s = time.monotonic() - t
    log("voters on every pair: " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items()) + f"; total {score_s:.2f} s")
    table = metrics_rows(votes, train, args.threshold).pivot_table(index="simulator", columns="metric", values="value")
    log(table.round(3).to_string())

    s_per_item = time_llm(items, args.sample) if args.sample else float("nan")
    full_h = s_per_item * len(item_ids) / 3600
    if args.sample:
        log(
            f"LLM item analysis: {s_per_item:.1f} s per item -> {len(item_ids):,} items ~ {full_h:.1f} h "
            "(objective keywords only)"
        )
    vote = table.loc["ensemble:vote"]
    log(
        f"RESULT pairs={len(pairs)} embed_s={embed_s:.1f} vocab_s={vocab_s:.2f} sasrec_s={sasrec_s:.1f} "
        f"score_s={score_s:.2f} vote_auc={vote['auc']:.3f} vote_acc={vote['accuracy']:.3f} "
        f"s_per_item={s_per_item:.1f} full_catalogue_h={full_h:.2f}"
    )


if __name__ == "__main__":
    main()
