"""`doppel sandbox` (run, export) and `doppel ui`: a sub-app of the `doppel` command (flows/cli.py adds it)."""

from __future__ import annotations

from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show
from doppel.flows.options import DB, OptionSet, dataset_options, llm_options, opt, settings_command
from doppel.tasks.preflight import preflight
from doppel.tasks.records import DataError
from doppel.tasks.sandbox.config import SandboxSettings

app = typer.Typer()

sandbox_app = typer.Typer(
    help="Agent sandbox: agents with profiles and memories use a recommender, chat and post.", no_args_is_help=False
)
app.add_typer(sandbox_app, name="sandbox")


SANDBOX = OptionSet(
    SandboxSettings,
    (
        *dataset_options("run.")[:3],
        opt("fold"),
        opt("agents"),
        opt("rounds"),
        opt("sandbox_id"),
        opt("profile_run_id"),
        opt("recommender"),
        opt("retrain"),
        opt("activity"),
        opt("friends"),
        opt("graph_file"),
        opt("reflect_every", "memory.reflect_every"),
        opt("memories", "memory.k"),
        opt("chat_turns"),
        opt("max_steps"),
        *dataset_options("run.")[3:],
        *llm_options("run.")[:5],
        opt("seed", "seed", "run.llm.seed"),
        *llm_options("run.")[6:7],
        opt("temperature"),
        opt("db", "run.db"),
        *llm_options("run.")[7:],
        opt("progress", "run.progress"),
    ),
    fixed={"run.runner": "threads", "run.baselines": False},
)
UI = SANDBOX.only(
    "db", "dataset", "data_dir", "item_text", "base_url", "model", "concurrency", "recommender", "sandbox_id",
    agents=8, rounds=3, progress=False,
)  # fmt: skip


def preflight_sandbox(settings: SandboxSettings) -> None:
    """The sandbox's own file (its edges are read once the agents are known), then the run's checks."""
    if settings.graph_file and not Path(settings.graph_file).is_file():
        raise DataError(settings.graph_file, None, "no such file (--graph-file)")
    preflight(settings.run)


@sandbox_app.callback(invoke_without_command=True)
@settings_command(SANDBOX, fail)
def sandbox_run(settings: SandboxSettings, ctx: typer.Context) -> None:
    """Run the agent sandbox (the default sub-command): rounds of recommender visits, chats and posts."""
    if ctx.invoked_subcommand is not None:
        return
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api
    from doppel.tasks.sandbox.config import new_sandbox_id

    with friendly_errors(fail):
        preflight_sandbox(settings)  # before any engine starts: a wrong path, fold or endpoint in seconds
        agents, used = stored_sandbox(settings.run.db, settings.sandbox_id) if settings.sandbox_id else (0, None)
    settings = settings.model_copy(update={"sandbox_id": settings.sandbox_id or new_sandbox_id()})
    # said first, as `doppel run` does: a --sandbox-id with a typo starts a new sandbox under that name
    console.print(sandbox_header(settings, agents, used), highlight=False)

    def interrupted() -> str:
        return f"interrupted: finished rounds are saved; rerun with --sandbox-id {settings.sandbox_id} to continue"

    with friendly_errors(fail, interrupted), prefect_api():
        from doppel.flows.sandbox import run_sandbox

        summary = run_sandbox(settings)
    print_sandbox(summary)


sandbox_app.command("run", help="Run the agent sandbox (same as `doppel sandbox` with these options).")(sandbox_run)


@sandbox_app.command("export")
def sandbox_export(
    sandbox_id: str = typer.Option(..., help="the sandbox to export"),
    out: Path = typer.Option(Path("sandbox-export"), help="directory for the files"),
    format: str = typer.Option("parquet", "--format", help="parquet | csv | json (JSON lines)"),
    db: Path = DB,
) -> None:
    """Write every sandbox table (agents, friends, rounds, actions, pages, ratings, messages, posts, memories)."""
    from doppel.flows.errors import friendly_errors
    from doppel.tasks.sandbox.store import export

    with friendly_errors(fail):
        paths = export(db, sandbox_id, out, format)
    for path in paths:
        console.print(f"{path}  ({path.stat().st_size:,} bytes)", highlight=False)


@app.command("ui")
@settings_command(UI, fail)
def ui(settings: SandboxSettings, port: int = typer.Option(8765, help="port on 127.0.0.1")) -> None:
    """A web page for the sandbox on 127.0.0.1: start / pause / reset, rounds, live log, agents, relations."""
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api

    with friendly_errors(fail):
        preflight_sandbox(settings)  # before any engine starts: a wrong path, fold or endpoint in seconds
    with friendly_errors(fail), prefect_api():
        from doppel.flows.sandbox_ui import serve

        serve(
            settings,
            port,
            lambda url: console.print(f"doppel ui on {url}  (Ctrl-C stops)", highlight=False, soft_wrap=True),
        )


def print_sandbox(summary: dict) -> None:
    from rich.table import Table

    rounds = Table(
        title=f"sandbox {summary['sandbox_id']} — {summary['agents']} agents, recommender "
        f"{summary['recommender']}, {summary['status']}",
        title_justify="left",
    )
    for column in ("round", "wall s", "active", "LLM calls", "cached", "failed"):
        rounds.add_column(column, justify="right")
    for r in summary["rounds"]:
        rounds.add_row(
            str(r["round"]),
            _num(r.get("wall_s"), "{:.1f}"),
            _num(r.get("active_agents")),
            _num(r.get("new_calls")),
            _num(r.get("cached_calls")),
            _num(r.get("failed_actions")),
        )
    show(rounds)
    mix = summary["action_mix"]
    total = sum(m["n"] for m in mix) or 1
    console.print(
        "action mix (each agent's first action per round): "
        + ", ".join(f"{m['action']} {m['n']} ({m['n'] / total:.0%})" for m in mix),
        highlight=False,
    )
    r = summary["ratings"]
    if r.get("n_ratings"):
        console.print(
            f"items watched: {r['n_ratings']} views of {r['n_items']} distinct items; ratings mean "
            f"{r['mean_rating']:.2f}, 1-5 stars: {r['r1']}/{r['r2']}/{r['r3']}/{r['r4']}/{r['r5']}",
            highlight=False,
        )
        console.print(
            "most watched: "
            + "; ".join(f"{t['title']} x{t['n']} ({t['mean_rating']:.1f})" for t in summary["top_watched"][:5]),
            highlight=False,
            markup=False,  # dataset titles, shown as they are
        )
    else:
        console.print("items watched: none yet", highlight=False)
    calls = summary.get("profile_calls") or {}
    console.print(
        f"agent profiles: {_num(calls.get('new_calls', 0))} LLM calls, {_num(calls.get('cached_calls', 0))} "
        "from the cache",
        highlight=False,
    )
    if summary.get("profiles_failed"):
        console.print(
            f"[yellow]{summary['profiles_failed']} agent profile(s) failed[/] (they act on demographics); "
            f"rerun with [bold]--sandbox-id {summary['sandbox_id']}[/] to ask them again",
            highlight=False,
        )
    console.print(
        f"tables in [bold]{summary['db']}[/] (sandbox_*; sandbox_id = '{summary['sandbox_id']}'); "
        f"`doppel sandbox export --sandbox-id {summary['sandbox_id']}` writes them to files"
    )


def _num(value, fmt: str = "{:,.0f}") -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def sandbox_header(settings: SandboxSettings, agents: int, used: str | None) -> str:
    """'new sandbox X ...' or 'resuming sandbox X ...' (it has `agents` stored; its rounds used `used`)."""
    switched = f"; rounds so far: {used}" if used and used.split(" -> ")[-1] != settings.recommender else ""
    return (
        f"{'resuming' if agents else 'new'} sandbox [bold]{settings.sandbox_id}[/] in {settings.run.db} "
        f"({agents or settings.agents} agents{' as stored' if agents else ''}, rounds up to "
        f"{settings.rounds}, recommender {settings.recommender}{switched})"
    )


def stored_sandbox(db: str, sandbox_id: str) -> tuple[int, str | None]:
    """A sandbox being resumed: its stored agents and the recommenders its rounds used ((0, None): new)."""
    import duckdb

    from doppel.tasks.sandbox.store import recommenders_used
    from doppel.tasks.store.db import query

    if not Path(db).expanduser().is_file():
        return 0, None
    try:
        agents = query(db, "sandbox_agents", read_only=True, sandbox_id=sandbox_id)
        rounds = query(db, "sandbox_rounds", read_only=True, sandbox_id=sandbox_id)
    except duckdb.Error:  # a database with no sandbox tables yet
        return 0, None
    return len(agents), recommenders_used(rounds, None)
