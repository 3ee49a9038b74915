"""The `doppel` command: one Typer app made of the sub-apps in flows/cli_*.py. No domain logic here."""

from __future__ import annotations

import gc
import logging
import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # before prefect is imported; errors are ours to print
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Prefect's queue services log under their class names, outside "prefect", so PREFECT_LOGGING_LEVEL misses them:
# an exit that drains slowly (Ctrl-C under load) printed "EventsWorker - Still processing items" beside our error
for _service in ("EventsWorker", "APILogWorker"):
    logging.getLogger(_service).setLevel(logging.ERROR)

import typer  # noqa: E402

from doppel.flows import cli_arena, cli_deploy, cli_ensemble, cli_explore, cli_rl, cli_run, cli_sandbox  # noqa: E402
from doppel.flows.cli_output import TERMINAL, UNBOUNDED  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="doppel: LLM doppelganger users for recommender systems.",
    pretty_exceptions_enable=False,
    # into a pipe or file: click's plain help, never wrapped (Rich's panels would be cut at 80 columns)
    rich_markup_mode="rich" if TERMINAL else None,
    context_settings={} if TERMINAL else {"max_content_width": UNBOUNDED, "terminal_width": UNBOUNDED},
)
for sub_app in (
    cli_run.app,
    cli_explore.app,
    cli_ensemble.app,
    cli_sandbox.app,
    cli_rl.app,
    cli_arena.app,
    cli_deploy.app,
):
    app.add_typer(sub_app)


def main() -> None:  # pragma: no cover
    """The `doppel` command: the app, then a quick exit.

    Python's last garbage collections at exit walk every object a run leaves behind (pandas, GX,
    Prefect, Dask): 1.9 s after a `doppel run` on 6 users, measured. Freezing them first skips that
    walk; nothing else of the shutdown (atexit handlers, finalizers of live objects) is skipped.
    """
    try:
        app(prog_name="doppel")
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
