"""`doppel arena`: a sub-app of the `doppel` command (flows/cli.py adds it)."""

from __future__ import annotations

from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show

app = typer.Typer()


@app.command("arena")
def arena_command(
    dataset: str = typer.Option("synthetic", help="synthetic | ml-100k | a path"),
    data_dir: Path | None = typer.Option(None, help="ML-100K directory"),
    fold: list[str] = typer.Option(["u1"], help="fold(s) to run (repeat the option)"),
    recommender: list[str] = typer.Option(
        [],
        help="your recommender, module:factory (repeatable); factory() -> an object with fit(train) and score(users, items)",
    ),
    only: str = typer.Option("", help="built-in entrants to keep, comma list (default: all)"),
    k: int = typer.Option(10, min=1, help="catalogue list length"),
    ensemble_id: str | None = typer.Option(None, help="ensemble run that judges too (default: the latest of the fold)"),
    llm_run: str | None = typer.Option(
        None,
        help="`doppel run --target arena --arena-run ID` whose LLM ratings judge too (default: the latest of --run-id)",
    ),
    rl_run: str | None = typer.Option(
        None, help="a finished `doppel rl` run whose trained agents enter (on the fold they were trained on)"
    ),
    seed: int = typer.Option(0),
    n_boot: int = typer.Option(500, min=0, help="bootstrap resamples of users for the intervals"),
    runner: str = typer.Option("dask", help="dask | threads"),
    dask_address: str | None = typer.Option(None, help="an existing Dask scheduler"),
    workers: int = typer.Option(2, min=1, help="local Dask workers (recommenders fitted in parallel)"),
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file"),
    run_id: str | None = typer.Option(None, help="this arena run's id (default: a new one)"),
    cache_dir: Path = typer.Option(
        Path(".doppel/arena-cache"), help="fitted lists and hybrid judgments (a rerun fits only what changed)"
    ),
    progress: bool = typer.Option(
        True, help="show each fold's steps (a bar on a terminal, a line every few seconds elsewhere)"
    ),
) -> None:
    """Recommender arena: do simulated users rank recommenders the way real users do?"""
    from doppel.tasks.arena.config import ArenaSettings

    if runner not in ("dask", "threads"):
        fail(f"--runner must be dask or threads, not {runner!r}", 2)
    settings = ArenaSettings(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        folds=fold,
        db=str(db),
        run_id=run_id,
        recommenders=recommender,
        only=[x.strip() for x in only.split(",") if x.strip()],
        k=k,
        ensemble_id=ensemble_id,
        llm_run=llm_run,
        rl_run=rl_run,
        seed=seed,
        n_boot=n_boot,
        runner=runner,
        dask_address=dask_address,
        workers=workers,
        cache_dir=str(cache_dir),
        progress=progress,
    )
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api
    from doppel.tasks.arena.config import new_arena_id

    with friendly_errors(fail):  # wrong names, too few entrants, no scheduler: said before Prefect and Dask start
        from doppel.flows.arena import check_entrants
        from doppel.tasks.preflight import check_dask_address

        check_entrants(settings)
        check_dask_address(settings.dask_address)
    settings = settings.model_copy(update={"run_id": settings.run_id or new_arena_id()})
    # said first: the tables come only once every fold is scored (minutes on ML-100K)
    console.print(
        f"arena run [bold]{settings.run_id}[/] on {dataset}, fold(s) {', '.join(settings.folds)}: each fold's "
        "recommenders are fitted, judged and scored; the tables follow at the end",
        highlight=False,
    )
    with friendly_errors(fail), prefect_api():
        from doppel.flows.arena import run_arena

        summary = run_arena(settings)
    for fold_name, result in summary["folds"].items():
        for table in fold_tables(fold_name, result):
            show(table)
        for note in (result.get("ensemble_note"), result.get("llm_note")):  # which judges there were, or why not
            if note:
                console.print(f"{fold_name}: {note}", highlight=False, markup=False)
        checked = "; ".join(f"{c['suite']}: passed, {c['n_rows']:,} rows" for c in result.get("gate") or [])
        console.print(f"{fold_name}: output contracts (GX gate): {checked}", highlight=False)
    console.print(
        f"arena run [bold]{summary['run_id']}[/] in {db}: tables arena_*, view arena_scatter", highlight=False
    )


def fold_tables(fold: str, result: dict) -> list:
    """Rich tables: recommender x real metric x each judge's; the rank correlations; calibration."""
    from rich.table import Table

    m = result["metrics"]
    wide = m.pivot_table(index="recommender", columns=["protocol", "metric", "judge"], values="value")
    out = []
    for protocol, metric in (("observed", "ndcg@10"), ("observed", "precision@5"), ("catalogue", "like_rate@10")):
        part = wide[(protocol, metric)].sort_values("real", ascending=False)
        t = Table(title=f"arena {fold} — {protocol} items, {metric} (real vs each judge)", title_justify="left")
        t.add_column("recommender")
        for judge in part.columns:
            t.add_column(judge, justify="right")
        for name, row in part.iterrows():
            t.add_row(name, *(f"{v:.3f}" for v in row))
        out.append(t)
    t = Table(
        title=f"arena {fold} — rank agreement with the real order (95% bootstrap over users)", title_justify="left"
    )
    for c in ("protocol", "metric", "judge", "Kendall tau", "Spearman rho", "ceiling ratio"):
        t.add_column(c, justify="left" if c in ("protocol", "metric", "judge") else "right")
    for _, r in result["agreement"].iterrows():
        ceiling = "" if r["ceiling_ratio"] != r["ceiling_ratio"] else f"{r['ceiling_ratio']:.3f}"
        t.add_row(
            r["protocol"], r["metric"], r["judge"],
            f"{r['tau']:.3f} [{r['tau_lo']:.3f}, {r['tau_hi']:.3f}]",
            f"{r['rho']:.3f} [{r['rho_lo']:.3f}, {r['rho_hi']:.3f}]",
            ceiling,
        )  # fmt: skip
    out.append(t)
    t = Table(title=f"arena {fold} — positivity calibration on held-out pairs", title_justify="left")
    for c in ("judge", "like-rate gap (points)", "like rate", "real like rate", "ECE of P(like)", "Brier"):
        t.add_column(c, justify="left" if c == "judge" else "right")
    for _, r in result["calibration"].iterrows():
        t.add_row(
            r["judge"],
            f"{r['like_rate_gap']:+.2f}",
            f"{r['like_rate']:.3f}",
            f"{r['real_like_rate']:.3f}",
            f"{r['ece']:.4f}",
            f"{r['brier']:.4f}",
        )
    out.append(t)
    return out
