"""`doppel ensemble`: LLM item analysis -> vocabulary -> embeddings -> SASRec -> voters -> scores.

ingest -> register the run -> fan item-analysis chunks out (same gateway, limits and cache as
`doppel run`; each finished item written as it arrives) -> unify keywords -> embed items once ->
train SASRec on the fold's train split -> vote on every held-out pair -> write votes and metrics.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from doppel.flows.fanout import fan_out
from doppel.flows.lifecycle import lifecycle
from doppel.flows.runtime import engines
from doppel.flows.untrusted import refusal_fails_the_run
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
from doppel.tasks.llm.calls import CallOwner
from doppel.tasks.llm.endpoint import check_endpoint
from doppel.tasks.llm.templates import prompt_hash
from doppel.tasks.preflight import check_resumed_model
from doppel.tasks.settings import LLMSettings
from doppel.tasks.store.db import init_db
from doppel.tasks.store.writes import finish_run, start_run
from doppel.tasks.version import code_version

ingest_dataset = task(name="ingest-dataset", cache_policy=NO_CACHE, persist_result=False)(ingest)
analyse_chunk = task(
    name="analyse-items", cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=2
)(run_analysis_chunk)


def new_ensemble_id() -> str:
    return datetime.now(UTC).strftime("ens-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass
class EnsemblePlan:
    """Which run, on which dataset and items, with which model's keywords; how many analyses are left."""

    run_id: str
    dataset: str
    model: str
    catalogue: pd.DataFrame
    chosen: pd.DataFrame
    reviews: int
    analyses_left: int


@flow(name="doppel-ensemble")
@refusal_fails_the_run
def ensemble(settings: EnsembleSettings) -> dict:
    """Analyse items with the LLM, then score the three voters and their vote on the fold's held-out likes."""
    from doppel.flows.untrusted import refuse_untrusted

    refuse_untrusted(settings.run)  # a deployment's parameters are anyone's (docs/security.md)
    started = time.monotonic()
    plan = plan_ensemble(settings)
    summary = {**describe(settings, plan), "timings": {}}
    with lifecycle(partial(finish_run, settings.run.db, plan.run_id), start=partial(register, settings, plan)) as run:
        t = time.monotonic()
        summary["analysis"] = analyse_left(settings, plan)
        if plan.analyses_left:
            summary["timings"]["item_analysis_s"] = round(time.monotonic() - t, 2)
        scored = score_fold(settings, plan.run_id, plan.dataset, plan.model, plan.catalogue, plan.chosen)
        summary.update({**scored, "timings": {**summary["timings"], **scored["timings"]}})
        run.status = "finished" if not summary["analysis"].get("chunk_errors") else "incomplete"
    summary.update(status=run.status, wall_s=round(time.monotonic() - started, 2), db=str(settings.run.db))
    return summary


def plan_ensemble(settings: EnsembleSettings) -> EnsemblePlan:
    """Ingest the fold, store the dataset's reviews, choose the items; count the analyses still missing."""
    db, fold = settings.run.db, settings.fold
    init_db(db)
    ensure_tables(db)
    dataset, _ = ingest_dataset(settings.run.model_copy(update={"folds": [fold]}))
    run_id = settings.ensemble_id or new_ensemble_id()
    model = check_endpoint(settings.llm, model_key(settings.llm))  # the id the endpoint answers with
    check_resumed_model(db, run_id, model, settings.llm.base_url)  # a resume keeps its keywords' model
    n_reviews = load_dataset_reviews(settings, dataset)
    catalogue = read(db, "ensemble_catalogue", dataset=dataset, fold=fold)
    if catalogue.empty or catalogue["n_train"].sum() == 0:
        raise ValueError(f"dataset {dataset!r} has no train ratings in fold {fold!r}")
    chosen = catalogue.head(settings.items) if settings.items else catalogue
    left = len(plan_jobs(settings, dataset, model, chosen["item_id"].tolist()))
    return EnsemblePlan(run_id, dataset, model, catalogue, chosen, n_reviews, left)


def register(settings: EnsembleSettings, plan: EnsemblePlan) -> None:
    """The run's row in `runs`: its config (no secrets), code version and prompt hashes."""
    start_run(
        settings.run.db,
        plan.run_id,
        plan.dataset,
        [settings.fold],
        {"kind": "ensemble", **settings.model_dump(mode="json"), "ensemble_id": plan.run_id},
        code_version(),
        {p: prompt_hash(p) for p in SOURCES.values()},
        plan.model,
        settings.llm.base_url or "embedded",
    )


def describe(settings: EnsembleSettings, plan: EnsemblePlan) -> dict:
    return {
        "run_id": plan.run_id,
        "dataset": plan.dataset,
        "fold": settings.fold,
        "model": plan.model,
        "catalogue_items": len(plan.catalogue),
        "selected_items": len(plan.chosen),
        "reviews": plan.reviews,
        "like_threshold": settings.like_threshold,
        "analysis": {"jobs": plan.analyses_left, "written": 0},
    }


def analyse_left(settings: EnsembleSettings, plan: EnsemblePlan) -> dict:
    """The item analyses still missing, fanned out on the run's engines (none started when nothing is left)."""
    if not plan.analyses_left:
        return {"jobs": 0, "written": 0}
    with engines(settings.run, settings.llm, preload=[__name__]) as run_on:
        if run_on.model_id != plan.model:
            get_run_logger().warning(
                "the endpoint serves %r; keywords are stored under %r", run_on.model_id, plan.model
            )
        return analyse_items.with_options(task_runner=run_on.task_runner())(
            run_id=plan.run_id,
            dataset=plan.dataset,
            model=plan.model,
            item_ids=plan.chosen["item_id"].tolist(),
            settings=settings,
            llm=run_on.llm,
            model_id=run_on.model_id,
            owner=CallOwner(plan.run_id),
        )


def load_dataset_reviews(settings: EnsembleSettings, dataset: str) -> int:
    """Store the review column of a generic ratings CSV (once per run); returns the number of reviews."""
    path = ratings_csv(settings.run.dataset)
    if path is None:
        return 0
    reviews = load_reviews(path)
    if not reviews.empty:
        save_reviews(settings.run.db, dataset, reviews)
    return len(reviews)


def plan_jobs(
    settings: EnsembleSettings, dataset: str, model: str, item_ids: list[str]
) -> list[tuple[ItemFacts, str, int]]:
    """(item, source, retries) still without a successful analysis: obj for every item, sub where reviews
    exist; one that failed before is asked again as a new sample (retries: one more than last time)."""
    db = settings.run.db
    done = read(db, "ensemble_analysed", dataset=dataset, model=model)
    ok = set(zip(done.loc[done["status"] == "ok", "item_id"], done.loc[done["status"] == "ok", "source"]))
    failed = done[done["status"] != "ok"]
    retries = {(i, s): int(r) + 1 for i, s, r in zip(failed["item_id"], failed["source"], failed["retries"])}
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
            jobs.append((facts, source, retries.get((item_id, source), 0)))
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
    owner: CallOwner | None = None,
) -> dict:
    """Item-analysis chunks on the task runner; every finished item is written as it arrives (`owner`: this
    invocation of the ensemble, so a resume records, once, the calls an interrupted one made but never wrote)."""
    jobs = plan_jobs(settings, dataset, model, item_ids)
    if not jobs:
        return {"jobs": 0, "written": 0}
    errors: list[str] = []

    def write(results: list) -> None:
        save_item_results(settings.run.db, run_id, dataset, model, results)
        errors.extend(f"item {r.item_id} ({r.source}): {r.error}" for r in results if r.status != "ok")

    gathered = fan_out(
        analyse_chunk,
        jobs,
        name=run_id,
        llm=llm,
        runner=settings.run.runner,
        workers=settings.run.dask_workers if settings.run.runner == "dask" else 1,
        write=write,
        key=lambda result: (result.item_id, result.source),
        label="analysing items",
        progress=settings.run.progress,
        pack=PackedItems,
        model_id=model_id,
        cache_dir=str(settings.run.cache_dir()),
        owner=owner,
        options={
            "max_keywords": settings.max_keywords,
            "max_tokens": settings.max_tokens,
            "overview_chars": settings.overview_chars,
            "review_chars": settings.review_chars,
        },
    )
    tally = gathered.tally
    stats = {
        "jobs": len(jobs),
        "written": gathered.written,
        "ok": tally.results - tally.with_failures,
        "failed": tally.failed,
        "calls": tally.calls + tally.cached,
        "new_calls": tally.calls,
        "cached_calls": tally.cached,
        "llm_s": round(tally.llm_s, 2),
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "new_jobs": tally.with_new_calls,
        **({"first_error": errors[0]} if errors else {}),
        "wall_s": gathered.wall_s,
        "s_per_new_job": round(gathered.wall_s / tally.with_new_calls, 2) if tally.with_new_calls else None,
        "chunk_errors": gathered.chunk_errors,
    }
    if gathered.chunk_errors:
        get_run_logger().error(
            "%d item chunk(s) failed; their items stay pending for a rerun: %s",
            len(gathered.chunk_errors),
            "; ".join(gathered.chunk_errors)[:500],
        )
    get_run_logger().info("item analysis: %s", stats)
    return stats


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


train_statistical = task(name="train-sasrec", cache_policy=NO_CACHE, persist_result=False)(train_sasrec)


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
