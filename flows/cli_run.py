"""`doppel run`, `doppel ingest`, `doppel score` and `doppel models`: parse options, call flows, print results."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show
from doppel.flows.display import metrics_table, print_summary
from doppel.tasks.llm.templates import PROMPT_SETS, prompt_dir
from doppel.tasks.preflight import preflight
from doppel.tasks.settings import RATING_SAMPLES_LIMIT, LLMSettings, RunSettings, SimulationSettings

app = typer.Typer()

FOLDS_ALL = ["u1", "u2", "u3", "u4", "u5"]


def _folds(fold: str, dataset: str) -> list[str]:
    if fold == "all":
        return FOLDS_ALL
    return [f.strip() for f in fold.split(",") if f.strip()]


@app.command()
def run(
    dataset: str = typer.Option("synthetic", help="synthetic | ml-100k | a ratings CSV / directory / zip"),
    data_dir: Path | None = typer.Option(None, help="local copy of the dataset (ml-100k: the unzipped folder)"),
    item_text: Path | None = typer.Option(None, help="item overview TSV (item id + overview)"),
    fold: str = typer.Option("u1", help="u1..u5, a comma list, or all"),
    users: int | None = typer.Option(None, help="seeded sample of N test users per fold (default: all)"),
    user_ids: str | None = typer.Option(None, help="comma-separated user ids to simulate"),
    synthetic_users: int = typer.Option(60, help="synthetic dataset: number of users"),
    synthetic_items: int = typer.Option(120, help="synthetic dataset: number of items"),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint; default: the embedded model"),
    model: str = typer.Option("qwen2.5-0.5b", help="endpoint model id, or an embedded model name"),
    gguf: Path | None = typer.Option(None, help="run the embedded server on this GGUF file"),
    concurrency: int = typer.Option(8, min=1, help="LLM calls in flight across all workers"),
    rpm: float | None = typer.Option(None, help="requests per minute cap"),
    concurrency_limit: str | None = typer.Option(None, help="also hold this Prefect global concurrency limit"),
    temperature: float = typer.Option(0.0),
    seed: int = typer.Option(0, help="LLM seed and user sample seed"),
    timeout: float = typer.Option(120.0, help="seconds per LLM call"),
    history_n: int = typer.Option(60, help="N: last train ratings used for the profile"),
    profile_batch: int = typer.Option(20, help="B: ratings per profile call"),
    recent_k: int = typer.Option(10, help="K: recent ratings shown when rating"),
    rate_batch: int = typer.Option(10, help="held-out items per rating call"),
    max_test_items: int | None = typer.Option(None, help="cap held-out items per user"),
    target: str = typer.Option(
        "test",
        help="what to rate: test (the held-out items) | slice (each user's "
        "calibration slice of train, profile built without it: the hybrid's LLM input)",
    ),
    slice_frac: float = typer.Option(0.2, help="--target slice: share of each user's train ratings in the slice"),
    slice_seed: int = typer.Option(0, help="--target slice: the slice's seed (benchmarks/fidelity.py --seed)"),
    overview_chars: int = typer.Option(160, min=0, help="item overview characters per item in prompts (0: none)"),
    prompts: str = typer.Option("compact", help="prompt set: compact | seed (the seed's layout) | a folder of .md"),
    update: bool = typer.Option(True, "--update/--no-update", help="update the profile after each rating batch"),
    rating_probs: bool = typer.Option(
        True,
        "--rating-probs/--no-rating-probs",
        help="ask for token logprobs and store each rating's distribution over 1..5",
    ),
    rating_samples: int = typer.Option(
        0,
        min=0,
        max=RATING_SAMPLES_LIMIT - 1,
        help="where logprobs give no distribution (a server without them, "
        "--no-rating-probs): draw N answers per rating call; a rating's "
        "distribution is then the draws' shares of 1..5 (0: none)",
    ),
    sample_temperature: float = typer.Option(1.0, help="--rating-samples: the draws' temperature"),
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file"),
    run_id: str | None = typer.Option(None, help="resume or rerun this run id (default: a new run)"),
    runner: str = typer.Option("dask", help="dask | threads"),
    dask_address: str | None = typer.Option(None, help="use an existing Dask scheduler (tcp://host:8786)"),
    dask_workers: int = typer.Option(2, help="local Dask workers (and user chunks)"),
    cache_dir: Path | None = typer.Option(None, help="LLM response cache (default: .doppel/ next to the db)"),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="score CF baselines on the same rows"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    price_prompt: float = typer.Option(0.0, help="USD per million prompt tokens (cost accounting)"),
    price_completion: float = typer.Option(0.0, help="USD per million completion tokens"),
    dry_run: bool = typer.Option(False, "--dry-run", help="estimate calls, tokens, cost and time; call nothing"),
    verbose: bool = typer.Option(False, "--verbose", help="show Prefect logs"),
) -> None:
    """Simulate users with an LLM, validate the output, and score it against the real ratings."""
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    if runner not in ("dask", "threads"):
        fail(f"--runner must be dask or threads, not {runner!r}")
    if target not in ("test", "slice"):
        fail(f"--target must be test or slice, not {target!r}")
    if not 0 < slice_frac < 1:
        fail(f"--slice-frac must lie strictly between 0 and 1, not {slice_frac}")
    if sample_temperature <= 0:
        fail(f"--sample-temperature must be above 0 (draws at 0 would all give the answer), not {sample_temperature}")
    try:  # a folder is kept as an absolute path: the run's config must still name it from elsewhere
        prompts = prompts if prompts in PROMPT_SETS else str(prompt_dir(prompts))
    except ValueError as exc:
        fail(f"--prompts: {exc}")
    settings = RunSettings(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        item_text=str(item_text) if item_text else None,
        synthetic_users=synthetic_users,
        synthetic_items=synthetic_items,
        folds=_folds(fold, dataset),
        users=users,
        user_ids=[u.strip() for u in user_ids.split(",")] if user_ids else None,
        sample_seed=seed,
        db=str(db),
        run_id=run_id,
        runner=runner,
        dask_address=dask_address,
        dask_workers=dask_workers,
        baselines=baselines,
        progress=progress,
        llm=LLMSettings(
            base_url=base_url,
            model=model,
            gguf=str(gguf) if gguf else None,
            temperature=temperature,
            seed=seed,
            timeout_s=timeout,
            concurrency=concurrency,
            rpm=rpm,
            concurrency_limit_name=concurrency_limit,
            cache_dir=str(cache_dir) if cache_dir else None,
            price_prompt_per_mtok=price_prompt,
            price_completion_per_mtok=price_completion,
            rating_probs=rating_probs,
            rating_samples=rating_samples,
            sample_temperature=sample_temperature,
        ),
        sim=SimulationSettings(
            history_n=history_n,
            profile_batch=profile_batch,
            recent_k=recent_k,
            rate_batch=rate_batch,
            update_profile=update,
            max_test_items=max_test_items,
            overview_chars=overview_chars,
            prompts=prompts,
            target=target,
            slice_frac=slice_frac,
            slice_seed=slice_seed,
        ),
    )
    if dry_run:
        _dry_run(settings)
        return
    summary = _run_flow(settings)
    print_summary(summary)


def _dry_run(settings: RunSettings) -> None:
    from doppel.flows.display import print_estimate
    from doppel.flows.errors import friendly_errors
    from doppel.tasks.estimate import estimate
    from doppel.tasks.ingest import ingest as ingest_step
    from doppel.tasks.store.db import init_db

    with friendly_errors(fail):
        preflight(settings, model=False)  # a dry run calls nothing
        init_db(settings.db)
        dataset, _ = ingest_step(settings)
        print_estimate(estimate(settings, dataset), settings)


def _run_flow(settings: RunSettings) -> dict:
    from doppel.flows.finished import finished_summary

    summary = finished_summary(settings)  # a finished run: stored results, no engine started
    if summary is not None:
        return summary
    from doppel.flows.errors import friendly_errors

    with friendly_errors(fail):
        preflight(settings)  # before any engine starts: a wrong path, fold or endpoint in seconds
        if settings.run_id and Path(settings.db).exists():
            from doppel.tasks.planning import check_resume_settings

            check_resume_settings(settings.db, settings.run_id, settings)
        from doppel.flows.runtime import discard_prestarted, prefect_api

        try:
            with prefect_api(on_url=lambda: _while_api_starts(settings)):
                from doppel.flows.simulate import simulate

                return simulate(settings)
        finally:
            discard_prestarted()


def _while_api_starts(settings: RunSettings) -> None:
    """Spawn the Dask workers and import the flow (prefect, ~1.5 s) while the API server boots."""
    from doppel.flows.runtime import prestart_cluster

    prestart_cluster(settings)
    import doppel.flows.simulate  # noqa: F401


@app.command()
def models(
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file whose runs give the measured seconds per call"),
) -> None:
    """List the embedded models: size, installed or not, and seconds per rating call measured in --db's runs."""
    from doppel.tasks.llm.embedded import list_models

    show(models_table(list_models(), measured_speed(db)))


def measured_speed(db: Path) -> dict[str, str]:
    """model -> 'median s per rating call (n calls)' from the database's own LLM calls (none: no runs yet)."""
    if not db.is_file():
        return {}
    from doppel.tasks.store.db import query

    try:
        frame = query(db, "model_speed", read_only=True)
    except Exception:  # noqa: BLE001 - a locked or foreign file: no figure rather than a wrong one
        return {}
    return {r.model: f"{r.median_s:.1f} s ({r.calls:,} calls)" for r in frame.itertuples()}


def models_table(rows: list[dict], speed: dict[str, str]):
    from rich.table import Table

    table = Table(title="embedded models")
    for column in ("name", "size", "installed", "assembled", "s per rating call here (median)", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.get("name")) + (" (default)" if row.get("default") else ""),
            f"{(row.get('size') or 0) / 1e6:,.0f} MB",
            "yes" if row.get("installed") else "no",
            "yes" if row.get("assembled") else "no",
            speed.get(str(row.get("name")), "not measured yet"),
            str(row.get("description", "")),
        )
    return table


@app.command()
def ingest(
    dataset: str = typer.Option("synthetic"),
    data_dir: Path | None = typer.Option(None),
    item_text: Path | None = typer.Option(None),
    db: Path = typer.Option(Path("doppel.duckdb")),
    force: bool = typer.Option(False, help="reload even if the same source is stored"),
) -> None:
    """Load a dataset into the DuckDB file (`doppel run` does this implicitly)."""
    from doppel.flows.errors import friendly_errors
    from doppel.tasks.ingest import ingest as ingest_step
    from doppel.tasks.store.db import init_db

    settings = RunSettings(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        item_text=str(item_text) if item_text else None,
        db=str(db),
        folds=[],
    )
    with friendly_errors(fail):
        init_db(db)
        name, loaded = ingest_step(settings, force=force)
    console.print(f"dataset [bold]{name}[/] {'loaded into' if loaded else 'already in'} {db}")


@app.command()
def score(
    run_id: str = typer.Option(...),
    db: Path = typer.Option(Path("doppel.duckdb")),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines"),
    hybrid: bool = typer.Option(
        False,
        "--hybrid",
        help="also score the calibrated hybrid (accuracy and realism modes, CF features) on the same rows",
    ),
) -> None:
    """Re-run the gate and the metrics of a finished run."""
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api

    with friendly_errors(fail), prefect_api():
        from doppel.flows.score import score_run

        records = score_run(db=str(db), run_id=run_id, baselines=baselines, hybrid=hybrid)
    show(metrics_table(records))
