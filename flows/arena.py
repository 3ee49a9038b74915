"""`doppel arena`: do simulated users rank recommenders the way real users do?

Per fold: load the split -> fit every recommender on train and list its rankings (in parallel on
Dask, cached) -> the calibrated hybrid judges the listed pairs (cached) -> gate the lists and
judgments (GX) -> protocols (observed items, catalogue, circularity audit, noise ceiling,
calibration) -> write the fold's tables.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from doppel.flows.untrusted import refusal_fails_the_run
from doppel.tasks.arena import evaluate, judges, lists, tables, zoo
from doppel.tasks.arena.config import ArenaSettings, cached, code_digest, frame_digest, new_arena_id
from doppel.tasks.arena.rl_entrant import FAMILY, rl_entrants
from doppel.tasks.data import load_dataset
from doppel.tasks.store.db import init_db
from doppel.tasks.store.writes import finish_run, save_validation, start_run
from doppel.tasks.version import code_version

PLUGINS_ENV = "DOPPEL_ARENA_PLUGINS"  # the module:factory plug-ins the operator allows
OPTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


class GateFailed(RuntimeError):
    """The arena's lists or judgments broke a contract: no metric was computed."""


@task(name="arena-load-fold", **OPTS)
def load_fold(settings: ArenaSettings, fold: str) -> dict:
    """train (user_id, item_id, rating, ts), test (user_id, item_id, rating), items of one fold."""
    from pathlib import Path

    ds = load_dataset(settings.dataset, Path(settings.data_dir) if settings.data_dir else None)
    if fold not in set(ds.splits["fold"]):
        raise ValueError(f"--fold {fold!r}: dataset {ds.name!r} has folds {sorted(set(ds.splits['fold']))}")
    sp = ds.splits[ds.splits["fold"] == fold]
    ratings = ds.ratings.astype({"user_id": str, "item_id": str})
    part = {
        s: sp[sp["split"] == s][["user_id", "item_id"]].astype(str).merge(ratings, on=["user_id", "item_id"])
        for s in ("train", "test")
    }
    return {
        "dataset": ds.name,
        "fold": fold,
        "train": part["train"],
        "test": part["test"][["user_id", "item_id", "rating"]],
        "items": ds.items,
    }


@task(name="arena-fit-recommender", **OPTS)
def fit_recommender(entrant: zoo.Entrant, train: pd.DataFrame, test: pd.DataFrame, settings: ArenaSettings) -> dict:
    """One entrant fit on train only; its held-out ranking and catalogue top-k (cached by spec + data)."""
    users = sorted(test["user_id"].unique())
    key = f"{zoo.entrant_key(entrant, train, settings.seed)}-{frame_digest(test[['user_id', 'item_id']])}-{settings.k}-{code_digest(lists)}"
    out, hit = cached(
        settings.cache_dir,
        f"lists-{entrant.name}",
        key,
        lambda: lists.recommend(entrant, train, test, users, settings.k, settings.seed),
    )
    return {**out, "cached": hit}


@task(name="arena-hybrid-judge", **OPTS)
def hybrid_judge(fold_data: dict, listed: dict[str, dict], settings: ArenaSettings) -> dict[str, pd.DataFrame]:
    """The calibrated hybrid over every listed pair (fit on train only): protocol -> judged pairs + real."""
    from doppel.tasks import fidelity
    from doppel.tasks.fidelity import features, hybrid

    train, test = fold_data["train"], fold_data["test"]
    catalogue = pd.concat([v["catalogue"][["user_id", "item_id"]] for v in listed.values()]).drop_duplicates()
    pairs = pd.concat([test[["user_id", "item_id"]], catalogue]).drop_duplicates().sort_values(["user_id", "item_id"])
    key = f"{frame_digest(train, pairs)}-{settings.seed}-{code_digest(judges, fidelity, features, hybrid)}"
    (ff, dists), _ = cached(
        settings.cache_dir,
        "hybrid",
        key,
        lambda: judges.hybrid_distributions(train, fold_data["items"], pairs, settings.seed),
    )
    real = test.rename(columns={"rating": "real"})
    return {
        "observed": judges.judge_pairs(ff, dists, test, settings.seed).merge(real, on=["user_id", "item_id"]),
        "catalogue": judges.judge_pairs(ff, dists, catalogue, settings.seed).merge(
            real, on=["user_id", "item_id"], how="left"
        ),
    }


@task(name="arena-ensemble-judge", **OPTS)
def ensemble_judge(settings: ArenaSettings, fold_data: dict, judged: dict[str, pd.DataFrame]) -> tuple[dict, str]:
    """The ensemble vote beside the hybrid, when the db holds a finished ensemble run of this fold."""
    from doppel.tasks.arena.ensemble_judge import ensemble_votes

    pairs = pd.concat([j[["user_id", "item_id"]] for j in judged.values()])
    votes, note = ensemble_votes(
        settings.db, fold_data["dataset"], fold_data["fold"], fold_data["train"], pairs, settings.ensemble_id
    )
    if votes is None:
        return judged, note
    return {k: j.merge(votes, on=["user_id", "item_id"], how="left") for k, j in judged.items()}, note


@task(name="arena-llm-judge", **OPTS)
def llm_judge(settings: ArenaSettings, run_id: str, fold: str, judged: dict[str, pd.DataFrame]) -> tuple[dict, str]:
    """The LLM's ratings of the listed pairs, when the db holds a `doppel run --target arena` of this run."""
    from doppel.tasks.arena.llm_judge import llm_ratings

    rated, note = llm_ratings(settings.db, run_id, fold, settings.llm_run)
    if rated is None:
        return judged, note
    return {k: j.merge(rated, on=["user_id", "item_id"], how="left") for k, j in judged.items()}, note


@task(name="arena-gate", **OPTS)
def gate(db: str, run_id: str, frames: dict[str, pd.DataFrame]) -> list[dict]:
    """The fold's lists and judgments against their contracts, recorded in `validation_results`."""
    from doppel.tasks.validate import format_failures

    outcomes = tables.gate(run_id, frames)
    for o in outcomes:
        save_validation(db, run_id, o.suite, o.success, o.n_rows, o.failures)
    failed = [o for o in outcomes if not o.success]
    if failed:
        raise GateFailed(
            "arena contracts failed; no metrics computed:\n" + "\n".join(format_failures(o) for o in failed)
        )
    return [{"suite": o.suite, "n_rows": o.n_rows} for o in outcomes]


score_fold = task(name="arena-protocols", **OPTS)(evaluate.evaluate_fold)
save_fold = task(name="arena-save-fold", **OPTS)(tables.save_fold)


def dask_runner(settings: ArenaSettings | None = None):
    """Dask: the given scheduler, or a local cluster of `workers` single-threaded processes."""
    from prefect_dask import DaskTaskRunner

    if settings is not None and settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers = settings.workers if settings is not None else 2
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": "127.0.0.1:0",
        }
    )


@flow(name="doppel-arena", task_runner=dask_runner())  # a deployment fits on a local 2-worker cluster
@refusal_fails_the_run
def arena(settings: ArenaSettings) -> dict:
    """Fit the zoo (+ plug-ins) per fold, judge the lists, score every protocol, write the tables."""
    from doppel.flows.untrusted import refuse_untrusted
    from doppel.tasks.trust import dataset_path

    refuse_untrusted(  # a deployment's parameters are anyone's: the cache holds pickles (docs/security.md)
        endpoints={"dask_address": settings.dask_address},
        db=settings.db,
        cache_dir=settings.cache_dir,
        data_dir=settings.data_dir,
        dataset=dataset_path(settings.dataset),
    )
    run_id = settings.run_id or new_arena_id()
    entrants = entrants_of(settings)
    rl_fold, agents = rl_entrants(settings.db, settings.rl_run) if settings.rl_run else (None, [])
    entrants += agents
    require_two(entrants)
    init_db(settings.db)
    status = "failed"
    summary: dict[str, Any] = {"run_id": run_id, "folds": {}, "entrants": [e.name for e in entrants]}
    start_run(
        settings.db,
        run_id,
        settings.dataset,
        settings.folds,
        {"kind": "arena", **settings.model_dump(mode="json")},
        code_version(),
        {},
        "none",
        "none",
    )
    try:
        for fold in settings.folds:
            summary["folds"][fold] = run_fold(settings, run_id, fold, entrants, rl_fold)
        status = "finished"
    finally:
        finish_run(settings.db, run_id, status)
    return summary


def run_fold(
    settings: ArenaSettings, run_id: str, fold: str, entrants: list[zoo.Entrant], rl_fold: str | None
) -> dict[str, Any]:
    """One fold: fit and list, judge, gate, score, save; its summary. A progress line shows each step."""
    from prefect.futures import as_completed

    from doppel.flows.progress import Steps

    logger = get_run_logger()
    t = time.monotonic()
    here = [e for e in entrants if e.family != FAMILY or fold == rl_fold]  # an agent knows its own fold only
    with Steps(f"arena {fold}", total=len(here) + 6, enabled=settings.progress) as steps:
        steps.doing("loading the fold")
        data = load_fold(settings, fold)
        steps.done(f"fitting {len(here)} recommenders")
        futures = fit_recommender.map(here, unmapped(data["train"]), unmapped(data["test"]), unmapped(settings))
        name_of = {id(f): e.name for e, f in zip(here, futures)}
        fitted: dict[str, dict] = {}
        for future in as_completed(list(futures)):
            fitted[name_of[id(future)]] = future.result()
            left = [e.name for e in here if e.name not in fitted]
            steps.done(f"fitted {name_of[id(future)]}" + (f"; left: {', '.join(left)}" if left else ""))
        listed = {e.name: fitted[e.name] for e in here}  # the zoo's order, whatever order the fits ended in
        steps.doing("the hybrid judges the listed pairs")
        judged = hybrid_judge(data, listed, settings)
        steps.done("the ensemble's vote")
        judged, note = ensemble_judge(settings, data, judged)
        logger.info("arena %s: %s", fold, note)
        steps.done("the LLM's ratings")
        judged, llm_note = llm_judge(settings, run_id, fold, judged)
        logger.info("arena %s: %s", fold, llm_note)
        steps.done("output contracts (GX gate)")
        ranked, top = evaluate.assemble(
            listed, {e.name: e.family for e in here}, judged["observed"], judged["catalogue"]
        )
        frames: dict[str, pd.DataFrame] = {
            "arena_lists": tables.list_rows(run_id, fold, listed),
            "arena_judgments": tables.judgment_rows(run_id, fold, judged),
        }
        checked = gate(settings.db, run_id, frames)
        steps.done("protocols and bootstrap intervals")
        scored = score_fold(ranked, top, judged["observed"], fold, settings.n_boot, settings.seed)
        frames.update({f"arena_{k}": v for k, v in scored.items()})
        frames["arena_recommenders"] = tables.recommender_rows(run_id, fold, here, listed)
        save_fold(settings.db, run_id, fold, frames)
        steps.done("saved")
    logger.info("arena %s: %d recommenders judged in %.1f s", fold, len(here), time.monotonic() - t)
    return {
        **scored,
        "ensemble_note": note,
        "llm_note": llm_note,
        "gate": checked,
        "recommenders": frames["arena_recommenders"],
        "wall_s": round(time.monotonic() - t, 1),
    }


def entrants_of(settings: ArenaSettings) -> list[zoo.Entrant]:
    """The built-in zoo (or the --only subset) plus each --recommender plug-in."""
    unknown = set(settings.only) - {e.name for e in zoo.DEFAULT_ZOO}
    if unknown:
        raise ValueError(f"--only: unknown entrants {sorted(unknown)} (known: {[e.name for e in zoo.DEFAULT_ZOO]})")
    chosen = [e for e in zoo.DEFAULT_ZOO if not settings.only or e.name in settings.only]
    allowed = {x.strip() for x in os.environ.get(PLUGINS_ENV, "").split(",") if x.strip()}
    refused = [spec for spec in settings.recommenders if spec not in allowed]
    if refused:  # flow-run parameters are untrusted (anyone who reaches the Prefect API): no code by name
        raise ValueError(
            f"plug-in recommenders {refused} are not allowed here: the operator lists them in {PLUGINS_ENV} "
            "(comma-separated module:factory; `doppel arena --recommender` does this for its own)"
        )
    plugins = [zoo.plugin(spec) for spec in settings.recommenders]
    names = [e.name for e in chosen + plugins]
    if len(set(names)) != len(names):
        raise ValueError(f"two entrants share a name: {names}")
    return chosen + plugins


def require_two(entrants: list[zoo.Entrant]) -> None:
    """The arena ranks recommenders against each other: with one, every rank agreement is undefined."""
    if len(entrants) < 2:
        raise ValueError(
            f"the arena ranks recommenders against each other: it needs two or more, got {[e.name for e in entrants]} "
            "(widen --only or add a --recommender)"
        )


def allow_operator_plugins(settings: ArenaSettings) -> None:
    """The caller is the operator (CLI, benchmark, Python): the settings' plug-ins are allowed."""
    allowed = [x for x in os.environ.get(PLUGINS_ENV, "").split(",") if x]
    os.environ[PLUGINS_ENV] = ",".join(dict.fromkeys(allowed + settings.recommenders))


def check_entrants(settings: ArenaSettings) -> None:
    """Before any engine starts: known --only names, importable plug-ins, two entrants or more (an --rl-run's
    agents, read from the database in the flow, may make up the second)."""
    allow_operator_plugins(settings)
    entrants = entrants_of(settings)
    if not settings.rl_run:
        require_two(entrants)


def run_arena(settings: ArenaSettings) -> dict:
    """The flow on the settings' task runner: Dask (local cluster or --dask-address) or threads.

    The caller is the operator (CLI, benchmark, Python): the settings' plug-ins are allowed."""
    allow_operator_plugins(settings)
    if settings.runner == "threads":
        from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

        threads: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=settings.workers)
        return arena.with_options(task_runner=threads)(settings)
    return arena.with_options(task_runner=dask_runner(settings))(settings)
