"""`doppel rl`: a sub-app of the `doppel` command (flows/cli.py adds it)."""

from __future__ import annotations

from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show
from doppel.tasks.rl.config import ALGOS, BASELINES, EnvSettings, RLSettings

app = typer.Typer()


@app.command("rl")
def rl_command(
    algo: str = typer.Option("all", help=f"{' | '.join(ALGOS + BASELINES)}, a comma list, or all"),
    steps: int = typer.Option(20_000, min=1, help="training steps per agent and seed"),
    seed: int = typer.Option(0, help="first training seed (seeds: seed, seed+1, ...)"),
    seeds: int = typer.Option(1, min=1, help="training seeds per agent (the table's spread is over them)"),
    episodes: int = typer.Option(100, min=1, help="K: seeded evaluation episodes per agent and seed"),
    ensemble_id: str | None = typer.Option(None, help="a finished `doppel ensemble` run (default: the latest)"),
    reward: str = typer.Option("ensemble", help="ensemble | run:<run_id> (a finished `doppel run`'s ratings)"),
    like_threshold: int | None = typer.Option(
        None, min=1, max=5, help="run reward: like = rating >= this (default: the ensemble's)"
    ),
    horizon: int = typer.Option(20, min=1, help="T: recommendations per episode"),
    leave_after: int = typer.Option(3, min=0, help="L: the user leaves after L non-likes in a row (0: never)"),
    history_len: int = typer.Option(10, min=1, help="H: interactions in the observation"),
    seen_in_obs: bool = typer.Option(
        True, "--seen-in-obs/--no-seen-in-obs", help="end the observation with one seen flag per item"
    ),
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file"),
    rl_id: str | None = typer.Option(None, help="this run's id (default: a new one)"),
    plot: Path | None = typer.Option(None, help="learning-curve PNG (default: rl_learning_curve.png by the db)"),
) -> None:
    """RL on a simulated user: DQN, A2C, PPO, TRPO and two baselines on the doppel Gymnasium env."""
    names = list(ALGOS + BASELINES) if algo == "all" else [a.strip() for a in algo.split(",") if a.strip()]
    unknown = [n for n in names if n not in ALGOS + BASELINES]
    if unknown:
        fail(f"unknown --algo {', '.join(unknown)}: use {', '.join(ALGOS + BASELINES)} or all")
    settings = RLSettings(
        db=str(db),
        ensemble_id=ensemble_id,
        reward=reward,
        like_threshold=like_threshold,
        algos=names,
        steps=steps,
        seeds=seeds,
        seed=seed,
        episodes=episodes,
        rl_id=rl_id,
        plot=str(plot) if plot else None,
        env=EnvSettings(
            horizon=horizon, leave_after=leave_after or None, history_len=history_len, seen_in_obs=seen_in_obs
        ),
    )
    if not db.is_file():
        fail(f"{db}: no such DuckDB file (--db); `doppel ensemble` or `doppel run` writes one")
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api

    with friendly_errors(fail), prefect_api():
        from doppel.flows.rl import rl

        summary = rl(settings)
    show(rl_table(summary))
    for line in summary_lines(summary):
        console.print(line, highlight=False)


def rl_table(summary: dict):
    from rich.table import Table

    spread = "sd over seeds" if summary["seeds"] > 1 else "sd over episodes"
    table = Table(
        title=f"doppel rl — {summary['dataset']} {summary['fold']}, reward {summary['reward']}, "
        f"{summary['episodes']} episodes x {summary['seeds']} seed(s), ± {spread}",
        title_justify="left",
    )
    for column in ("agent", "avg reward / step", "total reward / episode", "liking %", "episode length", "wall s"):
        table.add_column(column, justify="left" if column == "agent" else "right")
    for name, s in summary["table"].items():
        table.add_row(
            f"rl:{name}",
            f"{s['avg_reward']:.3f} ± {s['avg_reward_std']:.3f}",
            f"{s['total_reward']:.2f} ± {s['total_reward_std']:.2f}",
            f"{s['liking']:.1%} ± {s['liking_std']:.1%}",
            f"{s['episode_len']:.1f} ± {s['episode_len_std']:.1f}",
            f"{summary['timings'][name]:.1f}",
        )
    return table


def summary_lines(summary: dict) -> list[str]:
    likes = summary.get("likes") or {}
    made = (
        "from the cache"
        if likes.get("cached")
        else f"computed in {likes.get('seconds', 0):.1f} s"
        if likes
        else "from the run's ratings"
    )
    lines = [
        (
            f"rl run [bold]{summary['rl_id']}[/] on ensemble run {summary['ensemble_id']}: {summary['users']:,} "
            f"users x {summary['items']:,} items, like rate {summary['like_rate']:.1%} (like matrix {made}); "
            f"{summary['steps']:,} training steps per agent and seed; total wall {summary['wall_s']:.1f} s"
        ),
        f"metrics in [bold]{summary['db']}[/] (run_id = '{summary['rl_id']}', simulator = 'rl:<agent>')",
    ]
    if summary.get("plot"):
        lines.append(f"learning curves: {summary['plot']}")
    return lines
