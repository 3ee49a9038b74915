"""`doppel sandbox` (run, export) and `doppel ui`: a sub-app of the `doppel` command (flows/cli.py adds it)."""

from __future__ import annotations

from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show
from doppel.tasks.preflight import preflight
from doppel.tasks.sandbox.config import MemorySettings, SandboxSettings
from doppel.tasks.settings import LLMSettings, RunSettings

app = typer.Typer()

sandbox_app = typer.Typer(
    help="Agent sandbox: agents with profiles and memories use a recommender, chat and post.", no_args_is_help=False
)
app.add_typer(sandbox_app, name="sandbox")


def make_settings(
    dataset: str,
    data_dir: Path | None,
    item_text: Path | None,
    fold: str,
    agents: int,
    rounds: int,
    sandbox_id: str | None,
    profile_run_id: str | None,
    recommender: str,
    retrain: bool,
    activity: str,
    friends: int,
    graph_file: Path | None,
    reflect_every: int,
    memories: int,
    chat_turns: int,
    max_steps: int,
    synthetic_users: int,
    synthetic_items: int,
    base_url: str | None,
    model: str,
    gguf: Path | None,
    concurrency: int,
    rpm: float | None,
    seed: int,
    timeout: float,
    temperature: float,
    db: Path,
    cache_dir: Path | None,
    progress: bool,
) -> SandboxSettings:
    if recommender not in ("random", "popular", "mf"):
        fail(f"--recommender must be random, popular or mf, not {recommender!r}")
    try:
        level = activity if activity == "data" else float(activity)
    except ValueError:
        fail(f"--activity must be a number in [0, 1] or 'data', not {activity!r}")
    if level != "data" and not 0.0 <= level <= 1.0:
        fail(f"--activity must be in [0, 1], not {level}")
    run = RunSettings(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        item_text=str(item_text) if item_text else None,
        synthetic_users=synthetic_users,
        synthetic_items=synthetic_items,
        folds=[fold],
        db=str(db),
        runner="threads",
        progress=progress,
        baselines=False,
        llm=LLMSettings(
            base_url=base_url,
            model=model,
            gguf=str(gguf) if gguf else None,
            seed=seed,
            timeout_s=timeout,
            concurrency=concurrency,
            rpm=rpm,
            cache_dir=str(cache_dir) if cache_dir else None,
        ),
    )
    return SandboxSettings(
        run=run,
        sandbox_id=sandbox_id,
        fold=fold,
        agents=agents,
        rounds=rounds,
        seed=seed,
        profile_run_id=profile_run_id,
        recommender=recommender,
        retrain=retrain,
        activity=level,
        friends=friends,
        graph_file=str(graph_file) if graph_file else None,
        chat_turns=chat_turns,
        max_steps=max_steps,
        temperature=temperature,
        memory=MemorySettings(reflect_every=reflect_every, k=memories),
    )


@sandbox_app.callback(invoke_without_command=True)
def sandbox_run(
    ctx: typer.Context,
    dataset: str = typer.Option("synthetic", help="synthetic | ml-100k | a ratings CSV / directory"),
    data_dir: Path | None = typer.Option(None, help="local copy of the dataset (ml-100k: the unzipped folder)"),
    item_text: Path | None = typer.Option(None, help="item overview TSV (item id + overview)"),
    fold: str = typer.Option("u1", help="whose train split seeds the recommender and the agents' histories"),
    agents: int = typer.Option(20, min=1, help="agents (a seeded sample of the fold's users)"),
    rounds: int = typer.Option(5, min=0, help="total rounds; a rerun of a sandbox id continues after the last one"),
    sandbox_id: str | None = typer.Option(None, help="resume this sandbox (default: a new one)"),
    profile_run_id: str | None = typer.Option(None, help="take the agents' Phase-1 profiles from this doppel run"),
    recommender: str = typer.Option("mf", help="random | popular | mf (Surprise SVD)"),
    retrain: bool = typer.Option(True, "--retrain/--no-retrain", help="retrain on the sandbox's ratings each round"),
    activity: str = typer.Option("0.7", help="chance an agent acts in a round, or 'data' (by its rating count)"),
    friends: int = typer.Option(3, min=0, help="generated friendship graph: friends per agent"),
    graph_file: Path | None = typer.Option(None, help="friendship edges CSV (two agent or user ids per line)"),
    reflect_every: int = typer.Option(3, min=0, help="reflect every N rounds (0: never)"),
    memories: int = typer.Option(4, min=0, help="memories retrieved per decision"),
    chat_turns: int = typer.Option(4, min=2, max=8, help="lines per one-to-one chat"),
    max_steps: int = typer.Option(3, min=1, help="recommender steps per visit"),
    synthetic_users: int = typer.Option(60, help="synthetic dataset: number of users"),
    synthetic_items: int = typer.Option(120, help="synthetic dataset: number of items"),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint; default: the embedded model"),
    model: str = typer.Option("qwen2.5-0.5b", help="endpoint model id, or an embedded model name"),
    gguf: Path | None = typer.Option(None, help="run the embedded server on this GGUF file"),
    concurrency: int = typer.Option(8, min=1, help="LLM calls in flight"),
    rpm: float | None = typer.Option(None, help="requests per minute cap"),
    seed: int = typer.Option(0, help="agent sample, graph, activity and LLM seed"),
    timeout: float = typer.Option(120.0, help="seconds per LLM call"),
    temperature: float = typer.Option(0.8, help="sampling temperature of agent decisions (profiles use 0)"),
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file"),
    cache_dir: Path | None = typer.Option(None, help="LLM response cache (default: .doppel/ next to the db)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run the agent sandbox (the default sub-command): rounds of recommender visits, chats and posts."""
    if ctx.invoked_subcommand is not None:
        return
    settings = make_settings(
        dataset,
        data_dir,
        item_text,
        fold,
        agents,
        rounds,
        sandbox_id,
        profile_run_id,
        recommender,
        retrain,
        activity,
        friends,
        graph_file,
        reflect_every,
        memories,
        chat_turns,
        max_steps,
        synthetic_users,
        synthetic_items,
        base_url,
        model,
        gguf,
        concurrency,
        rpm,
        seed,
        timeout,
        temperature,
        db,
        cache_dir,
        progress,
    )
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api

    with friendly_errors(fail):
        preflight(settings.run)  # before any engine starts: a wrong path, fold or endpoint in seconds
    with friendly_errors(fail), prefect_api():
        from doppel.flows.sandbox import new_sandbox_id, run_sandbox

        settings = settings.model_copy(update={"sandbox_id": settings.sandbox_id or new_sandbox_id()})
        console.print(
            f"sandbox [bold]{settings.sandbox_id}[/] in {db} ({settings.agents} agents, rounds up to "
            f"{settings.rounds}, recommender {recommender})",
            highlight=False,
        )
        try:
            summary = run_sandbox(settings)
        except KeyboardInterrupt:
            fail(
                f"interrupted: finished rounds are saved; rerun with --sandbox-id {settings.sandbox_id} to continue",
                130,
            )
    print_sandbox(summary)


sandbox_app.command("run", help="Run the agent sandbox (same as `doppel sandbox` with these options).")(sandbox_run)


@sandbox_app.command("export")
def sandbox_export(
    sandbox_id: str = typer.Option(..., help="the sandbox to export"),
    out: Path = typer.Option(Path("sandbox-export"), help="directory for the files"),
    format: str = typer.Option("parquet", "--format", help="parquet | csv | json (JSON lines)"),
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file"),
) -> None:
    """Write every sandbox table (agents, friends, rounds, actions, pages, ratings, messages, posts, memories)."""
    from doppel.flows.errors import friendly_errors
    from doppel.tasks.sandbox.store import export

    with friendly_errors(fail):
        paths = export(db, sandbox_id, out, format)
    for path in paths:
        console.print(f"{path}  ({path.stat().st_size:,} bytes)", highlight=False)


@app.command("ui")
def ui(
    port: int = typer.Option(8765, min=0, max=65535, help="port on 127.0.0.1 (0: a free one)"),
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file"),
    dataset: str = typer.Option("synthetic", help="synthetic | ml-100k | a ratings CSV / directory"),
    data_dir: Path | None = typer.Option(None),
    item_text: Path | None = typer.Option(None),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint; default: the embedded model"),
    model: str = typer.Option("qwen2.5-0.5b"),
    concurrency: int = typer.Option(8, min=1),
    recommender: str = typer.Option("mf", help="random | popular | mf"),
    sandbox_id: str | None = typer.Option(None, help="show (and continue) this sandbox"),
) -> None:
    """A web page for the sandbox on 127.0.0.1: start / pause / reset, rounds, live log, agents, relations."""
    settings = make_settings(
        dataset,
        data_dir,
        item_text,
        "u1",
        8,
        3,
        sandbox_id,
        None,
        recommender,
        True,
        "0.7",
        3,
        None,
        3,
        4,
        4,
        3,
        60,
        120,
        base_url,
        model,
        None,
        concurrency,
        None,
        0,
        120.0,
        0.8,
        db,
        None,
        False,
    )
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api

    with friendly_errors(fail):
        preflight(settings.run)  # before any engine starts: a wrong path, fold or endpoint in seconds
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
        )
    else:
        console.print("items watched: none yet", highlight=False)
    if summary.get("profiles_failed"):
        console.print(f"[yellow]{summary['profiles_failed']} agent profile(s) failed[/] (they act on demographics)")
    console.print(
        f"tables in [bold]{summary['db']}[/] (sandbox_*; sandbox_id = '{summary['sandbox_id']}'); "
        f"`doppel sandbox export --sandbox-id {summary['sandbox_id']}` writes them to files"
    )


def _num(value, fmt: str = "{:,.0f}") -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)
