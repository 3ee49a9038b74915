"""`doppel run`, `doppel ingest`, `doppel score` and `doppel models`: parse options, call flows, print results."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show
from doppel.flows.display import metrics_table, print_summary
from doppel.flows.options import DB, RUN, settings_command
from doppel.tasks.llm.templates import PROMPT_SETS, prompt_dir
from doppel.tasks.preflight import preflight
from doppel.tasks.settings import RunSettings

app = typer.Typer()


@app.command()
@settings_command(RUN, fail)
def run(
    settings: RunSettings,
    dry_run: bool = typer.Option(False, "--dry-run", help="estimate calls, tokens, cost and time; call nothing"),
    verbose: bool = typer.Option(False, "--verbose", help="show Prefect logs"),
) -> None:
    """Simulate users with an LLM, validate the output, and score it against the real ratings."""
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    prompts = settings.sim.prompts
    try:  # a folder is kept as an absolute path: the run's config must still name it from elsewhere
        prompts = prompts if prompts in PROMPT_SETS else str(prompt_dir(prompts))
    except ValueError as exc:
        fail(f"--prompts: {exc}", 2)
    settings = settings.model_copy(update={"sim": settings.sim.model_copy(update={"prompts": prompts})})
    if dry_run:
        _dry_run(settings)
        return
    summary = _run_flow(settings)
    print_summary(summary)


def _dry_run(settings: RunSettings) -> None:
    from doppel.flows.display import print_estimate
    from doppel.flows.errors import friendly_errors
    from doppel.tasks.estimate import estimate, measured_speed
    from doppel.tasks.ingest import ingest as ingest_step
    from doppel.tasks.store.db import init_db

    with friendly_errors(fail):
        preflight(settings, model=False)  # a dry run calls nothing
        init_db(settings.db)
        dataset, _ = ingest_step(settings)
        print_estimate(
            estimate(settings, dataset), settings, measured_speed(settings.db, every_call=True).get(settings.llm.model)
        )


def _run_flow(settings: RunSettings) -> dict:
    from doppel.flows.errors import friendly_errors
    from doppel.flows.plan import RunPlan, plan_run

    plan: RunPlan | None = None

    def interrupted() -> str:  # names the id a new run was given, which the user has not seen yet
        if plan is None:  # before the plan: nothing started
            return "interrupted"
        return f"interrupted: finished users are saved; rerun with --run-id {plan.run_id} to continue"

    with friendly_errors(fail, interrupted):
        plan = plan_run(settings)  # the resume decision, once, before any engine starts
        if plan.finished is not None:  # a finished run: stored results, no engine started
            console.print(f"finished run [bold]{plan.run_id}[/]: its stored results, nothing to run", highlight=False)
            return plan.finished
        preflight(settings)  # before any engine starts: a wrong path, fold or endpoint in seconds
        # said first: a --run-id with a typo starts a new run under that name instead of resuming one
        console.print(f"{'resuming' if plan.resume else 'new'} run [bold]{plan.run_id}[/]", highlight=False)
        from doppel.flows.runtime import discard_prestarted, prefect_api

        try:
            with prefect_api(on_url=lambda: _while_api_starts(settings, plan.work_left)):
                from doppel.flows.simulate import simulate

                return simulate(settings, plan)
        finally:
            discard_prestarted()


def _while_api_starts(settings: RunSettings, work_left: bool) -> None:
    """Spawn the Dask workers and import the flow (prefect, ~1.5 s) while the API server boots."""
    from doppel.flows.runtime import prestart_cluster

    if work_left:
        prestart_cluster(settings, preload=["doppel.flows.simulate"])
    import doppel.flows.simulate  # noqa: F401


@app.command()
def models(
    db: Path = DB,
) -> None:
    """List the embedded models: size, installed or not, and seconds per rating call measured in --db's runs."""
    from doppel.tasks.llm.embedded import list_models

    show(models_table(list_models(), measured_speed(db)))


def measured_speed(db: Path) -> dict[str, str]:
    """model -> 'median s per rating call (n calls)' from the database's own LLM calls (none: no runs yet)."""
    from doppel.tasks.estimate import measured_speed as measured

    return {model: f"{median:.1f} s ({calls:,} calls)" for model, (median, calls) in measured(db).items()}


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
@settings_command(
    RUN.only("dataset", "data_dir", "item_text", "synthetic_users", "synthetic_items", "db", fold=[]), fail
)
def ingest(
    settings: RunSettings,
    force: bool = typer.Option(False, help="reload even if the same source is stored"),
) -> None:
    """Load a dataset into the DuckDB file (`doppel run` does this implicitly)."""
    from doppel.flows.errors import friendly_errors
    from doppel.tasks.ingest import ingest as ingest_step
    from doppel.tasks.store.db import init_db

    with friendly_errors(fail):
        preflight(settings, model=False)
        init_db(settings.db)
        name, loaded = ingest_step(settings, force=force)
    console.print(f"dataset [bold]{name}[/] {'loaded into' if loaded else 'already in'} {settings.db}")


@app.command()
@settings_command(RUN.only("db", "baselines"), fail)
def score(
    settings: RunSettings,
    run_id: str = typer.Option(..., help="the finished run to score"),
    hybrid: bool = typer.Option(
        False,
        "--hybrid",
        help="also score the calibrated hybrid (accuracy and realism modes, CF features) on the same rows",
    ),
) -> None:
    """Re-run the gate and the metrics of a finished run."""
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api
    from doppel.tasks.store.db import require_run

    with friendly_errors(fail):
        require_run(settings.db, run_id)  # in a second, before Prefect starts; a missing file is not created
    with friendly_errors(fail), prefect_api():
        from doppel.flows.score import score_run

        records = score_run(db=settings.db, run_id=run_id, baselines=settings.baselines, hybrid=hybrid)
    show(metrics_table(records))
