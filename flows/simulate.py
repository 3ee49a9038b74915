"""`doppel run`: plan -> register -> fan users out -> write as they finish -> gate -> score."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future
from functools import partial

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from doppel.flows.fanout import fan_out
from doppel.flows.lifecycle import RunRecord, lifecycle
from doppel.flows.plan import NOTHING_DONE, RunPlan, new_run_id, plan_run
from doppel.flows.runtime import Engines, engines
from doppel.flows.score import gate_and_score
from doppel.tasks.ingest import ingest
from doppel.tasks.llm.calls import CallOwner
from doppel.tasks.llm.gateway import EndpointError
from doppel.tasks.llm.templates import all_prompt_hashes
from doppel.tasks.planning import build_work, requested_pairs, select_users
from doppel.tasks.records import PackedWork
from doppel.tasks.scoring import baseline_predictions
from doppel.tasks.settings import LLMSettings, RunSettings
from doppel.tasks.simulation import chain_shape, simulate_users
from doppel.tasks.store.db import init_db, query
from doppel.tasks.store.writes import add_run_users, finish_run, save_user_results, start_run
from doppel.tasks.version import code_version

__all__ = ["new_run_id", "simulate"]


def _worth_retrying(task, task_run, state) -> bool:
    """A chunk that crashed is retried once; one stopped by a rejected key is not."""
    return not isinstance(state.data, EndpointError)


simulate_chunk = task(
    name="simulate-chunk",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_worth_retrying,
)(simulate_users)
ingest_dataset = task(name="ingest-dataset", cache_policy=NO_CACHE, persist_result=False)(ingest)
WRITE_EVERY_S = 1.0  # finished users wait at most this long for their transaction (see fan_out_users)


@flow(name="doppel-run")
def simulate(settings: RunSettings, plan: RunPlan | None = None) -> dict:
    """Simulate the selected users of each fold, then validate and score the run."""
    started = time.monotonic()
    plan = plan or plan_run(settings, started)
    if plan.finished is not None:
        return plan.finished
    init_db(settings.db)
    with engines(settings, start=plan.work_left, preload=[__name__]) as run_on:
        with lifecycle(partial(finish_run, settings.db, plan.run_id)) as run:
            dataset, requested = register(settings, plan.run_id, run_on)
            baselines = prefetch_baselines(settings, dataset, requested) if plan.work_left else None
            run.outcome = simulate_left(settings, plan, dataset, run_on)
            run.status = "finished" if query(settings.db, "resume_state", run_id=plan.run_id).empty else "incomplete"
        run_on.release_workers()  # their shutdown overlaps the scoring
        scores = gate_and_score(settings.db, plan.run_id, settings.baselines, precomputed=_result_or_none(baselines))
    return summarize(settings, plan.run_id, dataset, run, scores, run_on.concurrency_note, started)


def simulate_left(settings: RunSettings, plan: RunPlan, dataset: str, run_on: Engines) -> dict:
    """The fan-out over the users left, on the run's task runner (nothing to start when none are left)."""
    if not plan.work_left:
        return dict(NOTHING_DONE)
    runner = run_on.task_runner()
    return fan_out_users.with_options(task_runner=runner)(settings, plan.run_id, dataset, run_on.llm, run_on.model_id)


def register(settings: RunSettings, run_id: str, run_on: Engines) -> tuple[str, pd.DataFrame]:
    """Ingest the dataset (once per source) and record the run and its users: (dataset, requested pairs)."""
    dataset, loaded = ingest_dataset(settings)
    get_run_logger().info("dataset %s %s", dataset, "loaded" if loaded else "already in the database")
    return dataset, register_run(settings, run_id, dataset, run_on.llm, run_on.model_id)


def summarize(
    settings: RunSettings, run_id: str, dataset: str, run: RunRecord, scores: list, note: str | None, started: float
) -> dict:
    """What the CLI prints: the run's totals, what this invocation did, the scores, a concurrency cap."""
    summary = query(settings.db, "run_summary", run_id=run_id).iloc[0].to_dict()
    summary.update(run_id=run_id, dataset=dataset, status=run.status, db=str(settings.db), this_invocation=run.outcome)
    summary.update(scores=scores, concurrency_note=note)
    summary["wall_s"] = round(time.monotonic() - started, 2)
    return summary


def prefetch_baselines(
    settings: RunSettings, dataset: str, requested: pd.DataFrame, delay_s: float = 5.0
) -> Future | None:
    """On the Dask runner the flow process only waits during the fan-out: fit the CF baselines there
    and then, in a thread, instead of after the fan-out (3.6 s at u1). Started `delay_s` late, once
    the chunks are submitted (the fits hold the GIL). Not on the thread runner, where they would
    hold it against the users' coroutines."""
    if not settings.baselines or settings.runner != "dask" or requested.empty:
        return None
    train = {
        fold: query(settings.db, "fold_train", dataset=dataset, fold=fold, **settings.sim.split_params())
        for fold in requested["fold"].unique()
    }

    future: Future = Future()

    def fit_later() -> None:
        time.sleep(delay_s)
        try:
            future.set_result(baseline_predictions(train, requested))
        except BaseException as exc:
            future.set_exception(exc)

    # a daemon thread: an interrupted run exits without waiting for the fits
    threading.Thread(target=fit_later, name="baselines", daemon=True).start()
    return future


def _result_or_none(future: Future | None):
    """The prefetch's result; None (scoring computes it itself) if it failed or is absent."""
    if future is None:
        return None
    try:
        return future.result()
    except Exception:  # the scoring step predicts again and reports a real error there
        return None


def warm_scoring(baselines: bool, delay_s: float = 0.0) -> None:
    """Import the gate and the baselines (GX ~4 s, surprise ~1 s) in the background while users simulate.

    Measured at u1/0.5 s/concurrency 32: the gate's step went from 4.3 s to 0.7 s after the fan-out.
    Started before the chunks, the imports slowed the cluster start by as much, hence the delay.
    """

    def imports() -> None:
        with contextlib.suppress(Exception):  # the gate imports them again and reports any failure
            from doppel.tasks.validate import warm_up

            warm_up()
            if baselines:
                import surprise  # noqa: F401

    timer = threading.Timer(delay_s, imports)
    timer.name, timer.daemon = "warm-scoring", True
    timer.start()


def register_run(settings: RunSettings, run_id: str, dataset: str, llm: LLMSettings, model_id: str) -> pd.DataFrame:
    """Record the run (config without secrets) and its users; a rerun keeps what is done.

    Returns the pairs the run requests (fold, user_id, item_id).
    """
    config = settings.model_dump(mode="json")
    config["run_id"] = run_id
    # chosen first: unknown --user-ids stop the run before it is recorded
    users = {
        fold: select_users(settings.db, dataset, fold, settings.users, settings.user_ids, settings.sample_seed)
        for fold in settings.folds
    }
    start_run(
        settings.db,
        run_id,
        dataset,
        settings.folds,
        config,
        code_version(),
        all_prompt_hashes(settings.sim.prompts),
        model_id,
        llm.base_url or "",
    )
    requested = []
    for fold in settings.folds:
        pairs = requested_pairs(settings.db, dataset, fold, users[fold], settings.sim)
        n_pairs = pairs.groupby("user_id", sort=False).size()
        add_run_users(
            settings.db, run_id, pd.DataFrame({"fold": fold, "user_id": n_pairs.index, "n_pairs": n_pairs.to_numpy()})
        )
        requested.append(pairs)
    return pd.concat(requested, ignore_index=True)


@flow(name="doppel-fan-out")
def fan_out_users(settings: RunSettings, run_id: str, dataset: str, llm: LLMSettings, model_id: str) -> dict:
    """Chunks of users on the task runner; finished users are written as they arrive, every WRITE_EVERY_S.

    Measured at u1 (459 users): a transaction per 0.25 s poll cost the flow process ~12 s of CPU
    (a DuckDB open, write and close each) beside the workers. A kill loses at most the last second's
    users from the tables, not their LLM answers (those are in the response cache already).
    """
    logger = get_run_logger()
    t0 = time.monotonic()
    works = pending_work(settings, run_id, dataset)
    logger.info("planned %d users in %.2f s", len(works), time.monotonic() - t0)
    if not works:
        return dict(NOTHING_DONE)
    retries = {(w.fold, w.user_id): w.retry_round for w in works}
    warm_scoring(settings.baselines, delay_s=5.0)  # once the chunks have started: the flow only waits now
    gathered = fan_out(
        simulate_chunk,
        works,
        name=run_id,
        llm=llm,
        runner=settings.runner,
        workers=settings.dask_workers if settings.runner == "dask" else 1,
        write=lambda batch: save_user_results(settings.db, run_id, batch, retries),
        key=lambda result: (result.fold, result.user_id),
        label="simulating users",
        progress=settings.progress,
        cost=lambda w: sum(chain_shape(w, settings.sim)),
        pack=PackedWork,
        write_every_s=WRITE_EVERY_S,
        sim=settings.sim,
        model_id=model_id,
        cache_dir=str(settings.cache_dir()),
        owner=CallOwner(run_id),
    )
    logger.info(
        "fan-out %.2f s: %d users written (%.2f s of writes)", gathered.wall_s, gathered.written, gathered.write_s
    )
    if gathered.endpoint_error is not None:
        raise gathered.endpoint_error  # finished users are written; the CLI prints this one line
    if gathered.chunk_errors:
        logger.error(
            "%d chunk(s) failed; their unfinished users stay pending for a rerun: %s",
            len(gathered.chunk_errors),
            "; ".join(gathered.chunk_errors)[:500],
        )
    tally = gathered.tally
    return {
        "users": gathered.written,
        "calls": tally.calls + tally.cached,
        "new_calls": tally.calls,
        "cached_calls": tally.cached,
        "chunk_errors": gathered.chunk_errors,
    }


def pending_work(settings: RunSettings, run_id: str, dataset: str):
    """Users of the run that are not done: never finished (all pairs) or partial (failed pairs only)."""
    left = query(settings.db, "resume_state", run_id=run_id)
    works = []
    for fold, group in left.groupby("fold", sort=True):
        pending = {
            r.user_id: (list(r.failed_items) if r.status == "partial" and r.failed_items is not None else None)
            for r in group.itertuples()
        }
        retries = {r.user_id: int(r.retries) + (1 if r.status == "partial" else 0) for r in group.itertuples()}
        works += build_work(settings.db, dataset, fold, list(pending), settings.sim, pending, retries)
    return works
