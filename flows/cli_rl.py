"""`doppel rl`: a sub-app of the `doppel` command (flows/cli.py adds it)."""

from __future__ import annotations

from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show
from doppel.flows.options import OptionSet, opt, settings_command
from doppel.tasks.rl.config import RLSettings

app = typer.Typer()


RL = OptionSet(
    RLSettings,
    (
        opt("algo", "algos"),
        opt("steps"),
        opt("seed"),
        opt("seeds"),
        opt("episodes"),
        opt("ensemble_id"),
        opt("reward"),
        opt("reward_users"),
        opt("like_threshold"),
        *(opt(name, "env." + name) for name in ("horizon", "leave_after", "history_len", "seen_in_obs")),
        opt("db"),
        opt("rl_id"),
        opt("plot"),
    ),
)


@app.command("rl")
@settings_command(RL, fail)
def rl_command(settings: RLSettings) -> None:
    """RL on a simulated user: DQN, A2C, PPO, TRPO and two baselines on the doppel Gymnasium env."""
    db = Path(settings.db)
    if not db.is_file():
        fail(f"{db}: no such DuckDB file (--db); `doppel ensemble` or `doppel run` writes one", 2)
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
        caption="liking %: share of the first-time, rated recommendations the user liked; a repeat or an unrated "
        "pair earns no reward but is a step, so an agent that repeats itself shows a low reward beside a high liking",
        caption_justify="left",
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
    if summary.get("agents"):
        folder = Path(next(iter(summary["agents"].values()))[0]).parent
        lines.append(f"trained agents: {folder} (`doppel arena --rl-run {summary['rl_id']}` enters them)")
    return lines
