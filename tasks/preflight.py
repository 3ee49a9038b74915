"""Fail fast: a run's inputs are checked before any engine starts (Prefect API server, Dask, embedded LLM).

The path and fold checks look at file names only (well under a second); the model check is one
`GET /models` on an endpoint, or the embedded model's registry entry and assembled file.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from doppel.tasks.data.registry import DataSource, builtin, locate
from doppel.tasks.records import DataError
from doppel.tasks.settings import LLMSettings, RunSettings


def check_paths(settings: RunSettings) -> DataSource:
    """The dataset, its folds and the item text exist (the synthetic dataset: no files); the database's folder is made."""
    db = Path(settings.db).expanduser()
    if db.is_dir():
        raise DataError(str(db), None, "is a directory; --db wants a DuckDB file")
    try:  # an output: its folder is made, as doppel always did; only one that cannot be made is an error
        db.resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            str(db), None, f"its folder {db.resolve().parent} cannot be made: {exc.strerror} (--db)"
        ) from None
    if builtin(settings.dataset) == "synthetic":
        source = locate("synthetic")
    else:
        source = locate(settings.dataset, settings.data_dir)
        if settings.item_text and not Path(settings.item_text).expanduser().is_file():
            raise DataError(settings.item_text, None, "no such file (--item-text)")
    source.check_folds(settings.folds)
    return source


def check_arena_run(settings: RunSettings) -> None:
    """--target arena: --db holds the arena run's lists for every fold asked."""
    if settings.sim.target != "arena":
        return
    import duckdb

    from doppel.tasks.store.db import query

    where = f"--arena-run {settings.sim.arena_run!r} in {settings.db}"
    if not Path(settings.db).expanduser().is_file():
        raise DataError(settings.db, None, f"no such file: {where} needs the database `doppel arena` wrote")
    try:
        listed = query(settings.db, "arena_run_folds", read_only=True, arena_run=settings.sim.arena_run)
    except duckdb.Error as exc:
        raise DataError(settings.db, None, f"{where}: no arena lists to read ({exc})") from None
    other = sorted(set(listed["dataset"]) - {settings.dataset})
    if other:
        raise DataError(settings.db, None, f"{where} is of dataset {other[0]!r}, not --dataset {settings.dataset!r}")
    missing = sorted(set(settings.folds) - set(listed["fold"]))
    if missing:
        have = ", ".join(listed["fold"]) or "none"
        raise DataError(
            settings.db,
            None,
            f"{where} has no lists for fold(s) {', '.join(missing)} (its folds: {have}); "
            f"run `doppel arena --fold {missing[0]} --db {settings.db}` first, or pass its run id",
        )


def check_model(llm: LLMSettings) -> str | None:
    """The endpoint answers, accepts the key and serves the model; or the embedded model is there.

    Returns the id an endpoint answers with (a llama.cpp server's file path); None for the embedded model."""
    if llm.base_url:
        from doppel.tasks.llm.gateway import check_endpoint

        return check_endpoint(llm, llm.model)
    from doppel.tasks.llm.embedded_models import ensure_model

    ensure_model(llm.gguf or llm.model)  # a registry model (assembled once, then a marker check) or a GGUF file
    return None


def check_resumed_model(db: str | Path, run_id: str | None, served: str, endpoint: str | None) -> None:
    """A resumed run keeps the model that answered it. A server that answers under any name (llama.cpp)
    may serve another file under the same --model: its answers would join the first model's in one run."""
    if not run_id or not Path(db).expanduser().is_file():
        return
    import duckdb

    from doppel.tasks.store.db import query

    try:
        stored = query(db, "run_config", read_only=True, run_id=run_id)
    except duckdb.Error:  # not a file doppel set up, or locked: the run reports it
        return
    if not stored.empty:
        from doppel.tasks.llm.endpoint import refuse_another_model

        refuse_another_model(
            f"run {run_id} was answered", stored["model"].iloc[0], served, endpoint, "start a new run (another id)"
        )


def check_user_ids(settings: RunSettings) -> None:
    """--user-ids are test users of every fold asked, when --db already holds the dataset from the same
    source (else the flow checks them after loading it, before the run is recorded)."""
    if not settings.user_ids or not Path(settings.db).expanduser().is_file():
        return
    import duckdb

    from doppel.tasks.ingest import dataset_name, source_of
    from doppel.tasks.planning import select_users
    from doppel.tasks.store.db import query

    name = dataset_name(settings)
    try:
        stored = query(settings.db, "dataset_source", read_only=True, dataset=name)
    except duckdb.Error:  # not a file doppel set up, or locked by a run: the flow checks them
        return
    if stored.empty or stored["source"].iloc[0] != source_of(settings):
        return
    for fold in settings.folds:
        select_users(settings.db, name, fold, settings.users, settings.user_ids, settings.sample_seed)


def check_dask_address(address: str | None, timeout_s: float = 5.0) -> None:
    """An external Dask scheduler accepts a connection (Dask's own connect waits 30 s, then a traceback).
    Schemes other than tcp, tls, ws and wss are left to Dask."""
    if not address:
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls", "ws", "wss"):
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is no number
        host = port = None
    if not host or port is None:
        raise DataError(address, None, "is not a scheduler address; --dask-address wants tcp://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(address, None, f"no Dask scheduler answers there ({reason}; --dask-address)") from None


def preflight(settings: RunSettings, model: bool = True) -> None:
    """Every check, cheapest first: a wrong path is reported before the endpoint is asked anything."""
    check_paths(settings)
    check_arena_run(settings)
    check_user_ids(settings)
    check_dask_address(settings.dask_address)
    if model:
        served = check_model(settings.llm)
        if served is not None:
            check_resumed_model(settings.db, settings.run_id, served, settings.llm.base_url)
