"""`doppel ensemble`: LLM item analysis -> vocabulary -> embeddings -> SASRec -> voters -> scores.

ingest -> register the run -> fan item-analysis chunks out (same gateway, limits and cache as
`doppel run`; each finished item written as it arrives) -> unify keywords -> embed items once ->
train SASRec on the fold's train split -> vote on every held-out pair -> write votes and metrics.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from doppel.flows.runtime import dask_cluster, llm_endpoint, task_runner
from doppel.tasks.channel import ChannelReader, ResultChannel
from doppel.tasks.ensemble import embeddings as emb
from doppel.tasks.ensemble.config import EnsembleSettings, model_key
from doppel.tasks.ensemble.evaluate import f_mat_raw_rows, metrics_rows, score_pairs
from doppel.tasks.ensemble.keywords import SOURCES, ItemFacts, PackedItems, run_analysis_chunk
from doppel.tasks.ensemble.reviews import load_reviews, ratings_csv
from doppel.tasks.ensemble.sasrec import train_sasrec
from doppel.tasks.ensemble.store import (
    ensure_tables,
    read,
    save_embeddings,
    save_item_results,
    save_metrics,
    save_reviews,
    save_vocabulary,
    save_votes,
)
from doppel.tasks.ensemble.vocabulary import build_vocabulary, vocabulary_stats
from doppel.tasks.ensemble.voters import Index
from doppel.tasks.ingest import ingest
from doppel.tasks.llm.gateway import check_endpoint
from doppel.tasks.llm.templates import prompt_hash
from doppel.tasks.settings import LLMSettings
from doppel.tasks.simulation import LimitSpec
from doppel.tasks.store.db import init_db
from doppel.tasks.store.writes import finish_run, start_run
from doppel.tasks.version import code_version

ingest_dataset = task(ingest, name="ingest-dataset", cache_policy=NO_CACHE, persist_result=False)
analyse_chunk = task(
    run_analysis_chunk,
    name="analyse-items",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=2,
)


def new_ensemble_id() -> str:
    return datetime.now(UTC).strftime("ens-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@flow(name="doppel-ensemble")
def ensemble(settings: EnsembleSettings) -> dict:
    """Analyse items with the LLM, then score the three voters and their vote on the fold's held-out likes."""
    from doppel.flows.untrusted import refuse_untrusted

    refuse_untrusted(settings.run)  # a deployment's parameters are anyone's (docs/security.md)
    logger = get_run_logger()
    started = time.monotonic()
    db, fold = settings.run.db, settings.fold
    init_db(db)
    ensure_tables(db)
    dataset, _ = ingest_dataset(settings.run.model_copy(update={"folds": [fold]}))
    run_id = settings.ensemble_id or new_ensemble_id()
    model = model_key(settings.llm)
    n_reviews = load_dataset_reviews(settings, dataset)
    catalogue = read(db, "ensemble_catalogue", dataset=dataset, fold=fold)
    if catalogue.empty or catalogue["n_train"].sum() == 0:
        raise ValueError(f"dataset {dataset!r} has no train ratings in fold {fold!r}")
    chosen = catalogue.head(settings.items) if settings.items else catalogue
    config = {"kind": "ensemble", **settings.model_dump(mode="json"), "ensemble_id": run_id}
    start_run(
        db,
        run_id,
        dataset,
        [fold],
        config,
        code_version(),
        {p: prompt_hash(p) for p in SOURCES.values()},
        model,
        settings.llm.base_url or "embedded",
    )
    status, summary = (
        "failed",
        {
            "run_id": run_id,
            "dataset": dataset,
            "fold": fold,
            "model": model,
            "catalogue_items": len(catalogue),
            "selected_items": len(chosen),
            "reviews": n_reviews,
            "like_threshold": settings.like_threshold,
            "timings": {},
        },
    )
    try:
        jobs = plan_jobs(settings, dataset, model, chosen["item_id"].tolist())
        summary["analysis"] = {"jobs": len(jobs), "written": 0}
        if jobs:
            t = time.monotonic()
            with dask_cluster(settings.run) as dask_address, llm_endpoint(settings.llm) as (llm, model_id):
                if model_id != model:
                    logger.warning("the endpoint serves %r; keywords are stored under %r", model_id, model)
                check_endpoint(llm, model_id)
                runner = task_runner(settings.run, n_chunks_for(settings, llm), dask_address())
                summary["analysis"] = analyse_items.with_options(task_runner=runner)(
                    run_id=run_id,
                    dataset=dataset,
                    model=model,
                    item_ids=chosen["item_id"].tolist(),
                    settings=settings,
                    llm=llm,
                    model_id=model_id,
                )
            summary["timings"]["item_analysis_s"] = round(time.monotonic() - t, 2)
        scored = score_fold(settings, run_id, dataset, model, catalogue, chosen)
        summary.update({**scored, "timings": {**summary["timings"], **scored["timings"]}})
        status = "finished" if not summary["analysis"].get("chunk_errors") else "incomplete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        finish_run(db, run_id, status)
    summary.update(status=status, wall_s=round(time.monotonic() - started, 2), db=str(db))
    return summary


def n_chunks_for(settings: EnsembleSettings, llm: LLMSettings) -> int:
    if settings.run.runner == "threads" or llm.concurrency <= 1:
        return 1
    return max(1, min(settings.run.dask_workers, llm.concurrency))


def load_dataset_reviews(settings: EnsembleSettings, dataset: str) -> int:
    """Store the review column of a generic ratings CSV (once per run); returns the number of reviews."""
    path = ratings_csv(settings.run.dataset)
    if path is None:
        return 0
    reviews = load_reviews(path)
    if not reviews.empty:
        save_reviews(settings.run.db, dataset, reviews)
    return len(reviews)


def plan_jobs(settings: EnsembleSettings, dataset: str, model: str, item_ids: list[str]) -> list[tuple[ItemFacts, str]]:
    """(item, source) pairs still without a successful analysis: obj for every item, sub where reviews exist."""
    db = settings.run.db
    done = read(db, "ensemble_analysed", dataset=dataset, model=model)
    ok = (
        set(zip(done.loc[done["status"] == "ok", "item_id"], done.loc[done["status"] == "ok", "source"]))
        if not done.empty
        else set()
    )
    catalogue = read(db, "ensemble_catalogue", dataset=dataset, fold=settings.fold).set_index("item_id")
    reviews = read(db, "ensemble_item_reviews", dataset=dataset, per_item=settings.reviews_per_item)
    by_item = reviews.groupby("item_id")["review"].apply(tuple).to_dict() if not reviews.empty else {}
    jobs = []
    for item_id in item_ids:
        row = catalogue.loc[item_id]
        year = None if pd.isna(row["year"]) else int(row["year"])
        facts = ItemFacts(item_id, row["title"], year, row["genres"], row["text"], by_item.get(item_id, ()))
        for source in ("obj", "sub"):
            if (item_id, source) in ok or (source == "sub" and not facts.reviews):
                continue
            jobs.append((facts, source))
    return jobs


@flow(name="doppel-ensemble-items")
def analyse_items(
    run_id: str,
    dataset: str,
    model: str,
    item_ids: list[str],
    settings: EnsembleSettings,
    llm: LLMSettings,
    model_id: str,
) -> dict:
    """Item-analysis chunks on the task runner; every finished item is written as it arrives."""
    logger = get_run_logger()
    t0 = time.monotonic()
    jobs = plan_jobs(settings, dataset, model, item_ids)
    if not jobs:
        return {"jobs": 0, "written": 0}
    n_chunks = n_chunks_for(settings, llm)
    chunks = [jobs[k::n_chunks] for k in range(n_chunks) if jobs[k::n_chunks]]
    kind = "local" if settings.run.runner == "threads" else "dask"
    runner = FlowRunContext.get().task_runner
    channel = ResultChannel(f"doppel-{run_id}-items-{uuid.uuid4().hex[:8]}", kind)
    reader = ChannelReader(channel, runner.client if kind == "dask" else None)
    shares = [
        llm.concurrency // len(chunks) + (1 if k < llm.concurrency % len(chunks) else 0) for k in range(len(chunks))
    ]
    limits = [
        LimitSpec(
            local_slots=max(1, share),
            dask_semaphore_name=f"doppel-llm-{run_id}" if kind == "dask" else None,
            dask_max_leases=llm.concurrency,
            rpm=llm.rpm / len(chunks) if llm.rpm else None,
            prefect_limit_name=llm.concurrency_limit_name,
        )
        for share in shares
    ]
    options = {
        "max_keywords": settings.max_keywords,
        "max_tokens": settings.max_tokens,
        "overview_chars": settings.overview_chars,
        "review_chars": settings.review_chars,
    }
    futures = [
        analyse_chunk.submit(PackedItems(chunk), llm, model_id, str(settings.run.cache_dir()), limit, options, channel)
        for chunk, limit in zip(chunks, limits)
    ]
    stats = {
        "jobs": len(jobs),
        "written": 0,
        "ok": 0,
        "failed": 0,
        "new_calls": 0,
        "cached_calls": 0,
        "llm_s": 0.0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "new_jobs": 0,
    }
    first = None
    with _progress(settings.run.progress) as progress:
        bar = progress.add_task("analysing items", total=len(jobs), stats="")
        while True:
            all_done = all(f.wrapped_future.done() for f in futures)
            results = reader.drain(timeout=0.5 if all_done else 0.25)
            if results:
                first = first or time.monotonic() - t0
                save_item_results(settings.run.db, run_id, dataset, model, results)
                for r in results:
                    new = [c for c in r.calls if not c.cached]
                    stats["written"] += 1
                    stats["ok" if r.status == "ok" else "failed"] += 1
                    if r.status != "ok" and not stats.get("first_error"):
                        stats["first_error"] = f"item {r.item_id} ({r.source}): {r.error}"
                    stats["new_calls"] += len(new)
                    stats["cached_calls"] += len(r.calls) - len(new)
                    stats["new_jobs"] += bool(new)
                    stats["llm_s"] += sum(c.latency_s for c in new)
                    stats["prompt_tokens"] += sum(c.prompt_tokens for c in new)
                    stats["completion_tokens"] += sum(c.completion_tokens for c in new)
                progress.update(
                    bar,
                    advance=len(results),
                    stats=f"{stats['failed']} failed · {stats['new_calls']} calls ({stats['cached_calls']} cached)",
                )
            elif all_done:
                break
    reader.close()
    stats["wall_s"] = round(time.monotonic() - t0, 2)
    stats["llm_s"] = round(stats["llm_s"], 2)
    stats["s_per_new_job"] = round(stats["wall_s"] / stats["new_jobs"], 2) if stats["new_jobs"] else None
    errors = [str(f.state.message) for f in futures if not f.state.is_completed()]
    if errors:
        logger.error(
            "%d item chunk(s) failed; their items stay pending for a rerun: %s", len(errors), "; ".join(errors)[:500]
        )
    stats["chunk_errors"] = errors
    logger.info("item analysis: %s", stats)
    return stats


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


@task(name="keyword-vocabulary", cache_policy=NO_CACHE, persist_result=False)
def unify_keywords(settings: EnsembleSettings, run_id: str, dataset: str, model: str) -> dict:
    """Rebuild the vocabulary when the analysed keywords (or the method) changed since it was stored."""
    db = settings.run.db
    keywords = read(db, "ensemble_keywords", dataset=dataset, model=model)
    method = f"leader:{emb.EMBED_MODEL}:{settings.vocab_threshold:.2f}"
    stored = read(db, "ensemble_vocabulary", dataset=dataset, model=model)
    if keywords.empty:
        return {"keywords": 0, "canonical": 0, "merged": 0, "rebuilt": False}
    if not stored.empty and set(stored["keyword"]) == set(keywords["keyword"]) and set(stored["method"]) == {method}:
        return {**vocabulary_stats(stored), "rebuilt": False}
    vocabulary = build_vocabulary(
        keywords, lambda words: emb.encode(words, settings.embed_batch), settings.vocab_threshold
    )
    save_vocabulary(db, run_id, dataset, model, vocabulary, method)
    return {**vocabulary_stats(vocabulary), "rebuilt": True}


@task(name="item-embeddings", cache_policy=NO_CACHE, persist_result=False)
def embed_catalogue(settings: EnsembleSettings, dataset: str, catalogue: pd.DataFrame) -> dict:
    """Embed every item whose text is new or changed, in batches, and store the vectors."""
    db = settings.run.db
    stored = read(db, "ensemble_embedding_hashes", dataset=dataset, model=emb.EMBED_MODEL)
    rows = emb.embed_items(catalogue, stored, settings.embed_batch)
    save_embeddings(db, dataset, emb.EMBED_MODEL, rows)
    return {"embedded": len(rows), "stored": len(stored)}


train_statistical = task(train_sasrec, name="train-sasrec", cache_policy=NO_CACHE, persist_result=False)


def score_fold(
    settings: EnsembleSettings, run_id: str, dataset: str, model: str, catalogue: pd.DataFrame, chosen: pd.DataFrame
) -> dict:
    """Vocabulary, embeddings, SASRec, then the voters on every held-out pair of the fold; writes votes and metrics."""
    db, fold, threshold = settings.run.db, settings.fold, settings.like_threshold
    timings: dict[str, float] = {}
    t = time.monotonic()
    vocabulary = unify_keywords(settings, run_id, dataset, model)
    timings["vocabulary_s"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    embedded = embed_catalogue(settings, dataset, catalogue)
    timings["embeddings_s"] = round(time.monotonic() - t, 2)
    ratings = read(db, "ensemble_fold_ratings", dataset=dataset, fold=fold)
    train = ratings[ratings["split"] == "train"].reset_index(drop=True)
    pairs = ratings[ratings["split"] == "test"].reset_index(drop=True)
    item_ids = catalogue["item_id"].tolist()
    t = time.monotonic()
    sasrec = train_statistical(
        train, item_ids, threshold, settings.sasrec, settings.work_dir() / "sasrec", f"{dataset}-{fold}-"
    )
    timings["sasrec_s"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    keywords = read(db, "ensemble_keywords", dataset=dataset, model=model)
    keywords = keywords[keywords["item_id"].isin(set(chosen["item_id"]))]  # the catalogue this run asked for
    index = Index.build(train, pairs, item_ids)
    stored = read(db, "ensemble_embeddings", dataset=dataset, model=emb.EMBED_MODEL)
    matrix, has_embedding = emb.embedding_matrix(stored, index.items)
    timings["load_s"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    votes, voter_s = score_pairs(
        train, pairs, item_ids, threshold, keywords, matrix, has_embedding, sasrec, index, settings.sim_top_k
    )
    timings["voters_s"] = round(time.monotonic() - t, 3)
    timings.update({f"{k}_s": round(v, 3) for k, v in voter_s.items()})
    llm = (
        read(db, "ensemble_llm_ratings", run_id=settings.compare_run_id, fold=fold) if settings.compare_run_id else None
    )
    if settings.compare_run_id and (llm is None or llm.empty):
        raise ValueError(f"run {settings.compare_run_id!r} has no LLM ratings on fold {fold!r}")
    metrics = pd.concat(
        [
            metrics_rows(votes, train, threshold, llm),
            f_mat_raw_rows(votes, train, pairs, item_ids, threshold, keywords, index),
        ],
        ignore_index=True,
    )
    metrics.insert(0, "fold", fold)
    t = time.monotonic()
    save_votes(db, run_id, fold, votes)
    save_metrics(db, run_id, metrics)
    timings["write_s"] = round(time.monotonic() - t, 2)
    keyword_items = keywords["item_id"].nunique() if not keywords.empty else 0
    return {
        "vocabulary": vocabulary,
        "embeddings": embedded,
        "sasrec": sasrec.info,
        "pairs": len(votes),
        "train_ratings": len(train),
        "keyword_items": int(keyword_items),
        "like_rate_test": float(np.mean(votes["truth_like"])) if len(votes) else None,
        "metrics": metrics.to_dict(orient="records"),
        "timings": timings,
    }
