"""`doppel serve`: serve the deployments of deployments/prefect.yaml from this process."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail

app = typer.Typer()


@app.command()
def serve(
    file: Path = typer.Option(None, help="a prefect.yaml (default: deployments/prefect.yaml of the repo)"),
    deployment: list[str] | None = typer.Option(
        None, "--deployment", "-d", help="serve only this deployment name (repeatable)"
    ),
    param: list[str] | None = typer.Option(
        None, "--param", "-p", help="key=value for every served flow that takes it (repeatable)"
    ),
    schedules: bool = typer.Option(True, "--schedules/--no-schedules", help="keep the yaml's schedules"),
    limit: int | None = typer.Option(None, help="flow runs at once (default: no limit)"),
    suffix: str = typer.Option("", help="append to the deployment names (e.g. -laptop), to serve beside deployed ones"),
    port: int = typer.Option(4200, help="port of the local Prefect server started when PREFECT_API_URL is unset"),
    log_level: str = typer.Option("INFO", help="log level of the runs started here (their logs print here)"),
) -> None:
    """Serve the Prefect deployments from this process: schedules fire, runs start here, Ctrl-C stops.

    Uses PREFECT_API_URL, or a Prefect server on 127.0.0.1:PORT (started here if none answers).
    Trigger a run with `prefect deployment run doppel-job/weekly --param users=5` or from the UI.
    """
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

    from doppel.flows.deploy import DEFAULT_FILE, parse_params, serve_file

    os.environ["PREFECT_LOGGING_LEVEL"] = log_level.upper()  # the flow-run processes' environment
    try:
        overrides = parse_params(param or [])
        # and the settings: Prefect was set up at the CLI's quiet level, and a served run's process takes
        # its settings from this one's context, not from the environment
        with temporary_settings(updates={PREFECT_LOGGING_LEVEL: log_level.upper()}):
            setup_logging(incremental=False)
            serve_file(
                file or DEFAULT_FILE,
                names=deployment or None,
                overrides=overrides,
                schedules=schedules,
                limit=limit,
                port=port,
                suffix=suffix,
                announce=lambda text: console.print(text, highlight=False),
            )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc), 2)
