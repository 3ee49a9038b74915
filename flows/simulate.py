"""`doppel run`: ingest -> register the run -> fan users out -> write as they finish -> gate -> score."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import Future
from datetime import UTC, datetime

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from doppel.flows.progress import RunProgress
from doppel.flows.runtime import dask_cluster, llm_endpoint, task_runner
from doppel.flows.score import gate_and_score
from doppel.tasks.channel import ChannelReader, ResultChannel
from doppel.tasks.ingest import ingest
from doppel.tasks.llm.gateway import EndpointError, api_key_from_env, check_endpoint
from doppel.tasks.llm.limits import cap_to_server_slots
from doppel.tasks.llm.templates import all_prompt_hashes
from doppel.tasks.planning import build_work, check_resume_settings, partition, requested_pairs, select_users
from doppel.tasks.records import PackedWork
from doppel.tasks.scoring import baseline_predictions
from doppel.tasks.settings import LLMSettings, RunSettings
from doppel.tasks.simulation import LimitSpec, chain_shape, run_chunk
from doppel.tasks.store.db import init_db, query
from doppel.tasks.store.writes import add_run_users, finish_run, save_user_results, start_run
from doppel.tasks.version import code_version


def _worth_retrying(task, task_run, state) -> bool:
    """A chunk that crashed is retried once; one stopped by a rejected key is not."""
    return not isinstance(state.data, EndpointError)


simulate_chunk = task(
    run_chunk,
    name="simulate-chunk",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_worth_retrying,
)
ingest_dataset = task(ingest, name="ingest-dataset", cache_policy=NO_CACHE, persist_result=False)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def n_chunks_for(settings: RunSettings, llm: LLMSettings) -> int:
    """One chunk per worker (its users run as coroutines); one chunk when there is one slot."""
    if settings.runner == "threads" or llm.concurrency <= 1:
        return 1
    return max(1, min(settings.dask_workers, llm.concurrency))


@flow(name="doppel-run")
def simulate(settings: RunSettings) -> dict:
    """Simulate the selected users of each fold, then validate and score the run."""
    logger = get_run_logger()
    started = time.monotonic()
    init_db(settings.db)
    run_id = settings.run_id or new_run_id()
    known = not query(settings.db, "run_dataset", run_id=run_id).empty
    if known:
        check_resume_settings(settings.db, run_id, settings)
    needs_workers = not known or not query(settings.db, "resume_state", run_id=run_id).empty
    concurrency_note = None  # why the run's LLM concurrency is lower than asked
    with (
        dask_cluster(settings, start=needs_workers) as cluster,
        llm_endpoint(settings.llm, start=needs_workers) as (llm, model_id),
    ):
        dataset, loaded = ingest_dataset(settings)
        logger.info("dataset %s %s", dataset, "loaded" if loaded else "already in the database")
        if needs_workers:
            check_endpoint(llm, model_id)
            capped, why = cap_to_server_slots(llm.base_url, llm.concurrency, api_key_from_env())
            if why:
                logger.warning(why)
                llm = llm.model_copy(update={"concurrency": capped})
                concurrency_note = why
        requested = register_run(settings, run_id, dataset, llm, model_id)
        runner = task_runner(settings, n_chunks_for(settings, llm), cluster())
        status, this_time = "failed", {"users": 0, "new_calls": 0, "cached_calls": 0}
        baselines = None
        try:
            if not query(settings.db, "resume_state", run_id=run_id).empty:
                baselines = prefetch_baselines(settings, dataset, requested)
                this_time = fan_out.with_options(task_runner=runner)(
                    run_id=run_id, dataset=dataset, settings=settings, llm=llm, model_id=model_id
                )
            left = query(settings.db, "resume_state", run_id=run_id)
            status = "finished" if left.empty else "incomplete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            finish_run(settings.db, run_id, status)
        cluster.close_soon()  # the workers are done: their shutdown overlaps the scoring
        summary = query(settings.db, "run_summary", run_id=run_id).iloc[0].to_dict()
        summary.update(run_id=run_id, dataset=dataset, status=status, db=str(settings.db), this_invocation=this_time)
        summary["concurrency_note"] = concurrency_note
        summary["scores"] = gate_and_score(
            settings.db, run_id, settings.baselines, precomputed=_result_or_none(baselines)
        )
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
        users = select_users(settings.db, dataset, fold, settings.users, settings.user_ids, settings.sample_seed)
        pairs = requested_pairs(settings.db, dataset, fold, users, settings.sim)
        n_pairs = pairs.groupby("user_id", sort=False).size()
        add_run_users(
            settings.db, run_id, pd.DataFrame({"fold": fold, "user_id": n_pairs.index, "n_pairs": n_pairs.to_numpy()})
        )
        requested.append(pairs)
    return pd.concat(requested, ignore_index=True)


@flow(name="doppel-fan-out")
def fan_out(run_id: str, dataset: str, settings: RunSettings, llm: LLMSettings, model_id: str) -> dict:
    """Chunks of users on the task runner; each finished user is written the moment it arrives."""
    logger = get_run_logger()
    t0 = time.monotonic()
    works = pending_work(settings, run_id, dataset)
    logger.info("planned %d users in %.2f s", len(works), time.monotonic() - t0)
    if not works:
        return {"users": 0, "new_calls": 0, "cached_calls": 0}
    n_chunks = n_chunks_for(settings, llm)
    chunks = partition(works, n_chunks, cost=lambda w: sum(chain_shape(w, settings.sim)))
    runner = FlowRunContext.get().task_runner
    kind = "local" if settings.runner == "threads" else "dask"
    channel = ResultChannel(f"doppel-{run_id}-{uuid.uuid4().hex[:8]}", kind)
    reader = ChannelReader(channel, runner.client if kind == "dask" else None)
    retries = {(w.fold, w.user_id): w.retry_round for w in works}
    limits = [
        LimitSpec(
            local_slots=share,
            dask_semaphore_name=f"doppel-llm-{run_id}" if kind == "dask" else None,
            dask_max_leases=llm.concurrency,
            rpm=llm.rpm / len(chunks) if llm.rpm else None,
            prefect_limit_name=llm.concurrency_limit_name,
        )
        for share in _shares(llm.concurrency, len(chunks))
    ]
    cache_dir = str(settings.cache_dir())
    futures = [
        simulate_chunk.submit(PackedWork(chunk), llm, settings.sim, model_id, cache_dir, limit, channel)
        for chunk, limit in zip(chunks, limits)
    ]
    logger.info("submitted %d chunks in %.2f s", len(futures), time.monotonic() - t0)
    warm_scoring(settings.baselines, delay_s=5.0)  # once the chunks have started: the flow only waits now
    with RunProgress(len(works), enabled=settings.progress) as progress:
        written = write_as_they_arrive(settings.db, run_id, reader, futures, retries, progress)
    reader.close()
    logger.info("fan-out %.2f s: %d users written", time.monotonic() - t0, written)
    errors = [str(f.state.message) for f in futures if not f.state.is_completed()]
    if (fatal := endpoint_error(futures)) is not None:
        raise fatal  # finished users are written; the CLI prints this one line
    if errors:
        get_run_logger().error(
            "%d chunk(s) failed; their unfinished users stay pending for a rerun: %s",
            len(errors),
            "; ".join(errors)[:500],
        )
    return {"users": written, "new_calls": progress.calls, "cached_calls": progress.cached, "chunk_errors": errors}


def endpoint_error(futures: list) -> EndpointError | None:
    """The EndpointError that stopped a chunk (e.g. a key rejected mid-run), if any."""
    for future in futures:
        state = future.state
        if not state.is_failed():
            continue
        with contextlib.suppress(Exception):
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, EndpointError):
                return exc
        # a Dask worker's failed state may not carry the exception back: its message names it
        marker = f"{EndpointError.__name__}: "
        if marker in (state.message or ""):
            return EndpointError(state.message.split(marker, 1)[1])
    return None


WRITE_EVERY_S = 1.0  # finished users wait at most this long for their transaction


def write_as_they_arrive(
    db: str, run_id: str, reader: ChannelReader, futures: list, retries: dict, progress: RunProgress
) -> int:
    """Until every chunk is done: every WRITE_EVERY_S, write the users that arrived, in one transaction.

    Measured at u1 (459 users): a transaction per 0.25 s poll cost the flow process ~12 s of CPU
    (a DuckDB open, write and close each) beside the workers. A kill loses at most the last second's
    users from the tables, not their LLM answers (those are in the response cache already).
    """
    written, waiting, last_write = 0, [], time.monotonic()

    def write() -> None:
        nonlocal written, waiting, last_write
        batch, waiting, last_write = waiting, [], time.monotonic()  # taken first: never written twice
        if batch:
            save_user_results(db, run_id, batch, retries)
            written += len(batch)

    try:
        while True:
            all_done = all(f.wrapped_future.done() for f in futures)
            results = reader.drain(timeout=0.5 if all_done else 0.25)
            for result in results:
                progress.advance(result)
            waiting += results
            if all_done and not results:
                write()
                return written
            if time.monotonic() - last_write >= WRITE_EVERY_S:
                write()
    except BaseException:
        with contextlib.suppress(Exception):  # Ctrl-C or an error: keep the users that did finish
            write()
        raise


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


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
