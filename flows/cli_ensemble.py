"""`doppel ensemble`: a sub-app of the `doppel` command (flows/cli.py adds it)."""

from __future__ import annotations

from pathlib import Path

import typer

from doppel.flows.cli_output import console, fail, show
from doppel.tasks.ensemble.config import EnsembleSettings, SASRecSettings
from doppel.tasks.preflight import preflight
from doppel.tasks.settings import LLMSettings, RunSettings

app = typer.Typer()


@app.command("ensemble")
def ensemble_command(
    dataset: str = typer.Option(
        "synthetic", help="synthetic | ml-100k | a ratings CSV / directory (a `review` column adds subjective keywords)"
    ),
    data_dir: Path | None = typer.Option(None, help="local copy of the dataset (ml-100k: the unzipped folder)"),
    item_text: Path | None = typer.Option(None, help="item overview TSV (item id + overview)"),
    fold: str = typer.Option("u1", help="the fold whose held-out ratings are scored"),
    items: int | None = typer.Option(None, min=1, help="analyse only the N most-rated train items (default: all)"),
    like_threshold: int = typer.Option(4, min=1, max=5, help="like = rating >= this (the seed used 3)"),
    run_id: str | None = typer.Option(None, help="a `doppel run` id: score its LLM ratings beside the voters"),
    ensemble_id: str | None = typer.Option(None, help="this ensemble run's id (default: a new one)"),
    synthetic_users: int = typer.Option(60, help="synthetic dataset: number of users"),
    synthetic_items: int = typer.Option(120, help="synthetic dataset: number of items"),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible endpoint; default: the embedded model"),
    model: str = typer.Option("qwen2.5-0.5b", help="endpoint model id, or an embedded model name"),
    gguf: Path | None = typer.Option(None, help="run the embedded server on this GGUF file"),
    concurrency: int = typer.Option(8, min=1, help="LLM calls in flight across all workers"),
    rpm: float | None = typer.Option(None, help="requests per minute cap"),
    concurrency_limit: str | None = typer.Option(None, help="also hold this Prefect global concurrency limit"),
    seed: int = typer.Option(0, help="LLM seed and SASRec seed"),
    timeout: float = typer.Option(120.0, help="seconds per LLM call"),
    max_keywords: int = typer.Option(5, min=1, max=12, help="pros and cons per item and source"),
    vocab_threshold: float = typer.Option(0.8, help="cosine similarity at which synonyms merge (1 = no merging)"),
    sasrec_epochs: int = typer.Option(60, min=1, help="SASRec training epochs"),
    db: Path = typer.Option(Path("doppel.duckdb"), help="DuckDB file"),
    runner: str = typer.Option("dask", help="dask | threads"),
    dask_address: str | None = typer.Option(None, help="use an existing Dask scheduler (tcp://host:8786)"),
    dask_workers: int = typer.Option(2, help="local Dask workers (and item chunks)"),
    cache_dir: Path | None = typer.Option(None, help="LLM response cache (default: .doppel/ next to the db)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Ensemble simulator: LLM item keywords + keyword, embedding and SASRec voters, scored on held-out likes."""
    if runner not in ("dask", "threads"):
        fail(f"--runner must be dask or threads, not {runner!r}")
    settings = EnsembleSettings(
        run=RunSettings(
            dataset=dataset,
            data_dir=str(data_dir) if data_dir else None,
            item_text=str(item_text) if item_text else None,
            synthetic_users=synthetic_users,
            synthetic_items=synthetic_items,
            folds=[fold],
            db=str(db),
            runner=runner,
            dask_address=dask_address,
            dask_workers=dask_workers,
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
                concurrency_limit_name=concurrency_limit,
                cache_dir=str(cache_dir) if cache_dir else None,
            ),
        ),
        fold=fold,
        items=items,
        like_threshold=like_threshold,
        compare_run_id=run_id,
        ensemble_id=ensemble_id,
        max_keywords=max_keywords,
        vocab_threshold=vocab_threshold,
        sasrec=SASRecSettings(epochs=sasrec_epochs, seed=seed),
    )
    from doppel.flows.errors import friendly_errors
    from doppel.flows.runtime import prefect_api

    with friendly_errors(fail):
        preflight(settings.run)  # before any engine starts: a wrong path, fold or endpoint in seconds
    with friendly_errors(fail), prefect_api():
        from doppel.flows.ensemble import ensemble

        summary = ensemble(settings)
    print_ensemble(summary)


def print_ensemble(summary: dict) -> None:
    for table in ensemble_tables(summary):
        show(table)
    for line in summary_lines(summary):
        console.print(line, highlight=False)


ORDER = [
    "ensemble:f_mat",
    "ensemble:f_mat:raw",
    "ensemble:f_sim",
    "ensemble:f_sta",
    "ensemble:vote",
    "llm:like",
    "baseline:user_like_rate",
    "baseline:item_like_rate",
]


def ensemble_tables(summary: dict) -> list:
    """One table for all held-out pairs, one for the spine run's pairs when a run was compared."""
    import pandas as pd
    from rich.table import Table

    frame = pd.DataFrame.from_records(summary.get("metrics") or [])
    if frame.empty:
        return ["no metrics"]
    frame["scope"] = frame["simulator"].str.contains("@llm-rows").map({True: "llm-rows", False: "all"})
    frame["name"] = frame["simulator"].str.replace("@llm-rows", "", regex=False)
    tables = []
    for scope, title in (("all", "every held-out pair"), ("llm-rows", "the pairs the LLM run rated")):
        part = frame[frame["scope"] == scope]
        if part.empty:
            continue
        wide = part.pivot_table(index="name", columns="metric", values="value", aggfunc="first")
        table = Table(title=f"ensemble voters — fold {summary['fold']}, {title}", title_justify="left")
        for column in ("simulator", "AUC", "accuracy", "coverage", "n"):
            table.add_column(column, justify="left" if column == "simulator" else "right")
        for name in sorted(wide.index, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
            row = wide.loc[name]
            table.add_row(
                f"[bold]{name}[/]" if name == "ensemble:vote" else name,
                _fmt(row.get("auc"), "{:.3f}"),
                _fmt(row.get("accuracy"), "{:.3f}"),
                _fmt(row.get("coverage"), "{:.1%}"),
                _fmt(row.get("n"), "{:,.0f}"),
            )
        tables.append(table)
    return tables


def _fmt(value, fmt: str) -> str:
    import math

    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def summary_lines(summary: dict) -> list[str]:
    a, t = summary.get("analysis") or {}, summary.get("timings") or {}
    lines = [
        f"ensemble run [bold]{summary['run_id']}[/] {summary['status']}: {summary['dataset']} fold "
        f"{summary['fold']}, {summary['pairs']:,} held-out pairs (like = rating >= "
        f"{summary.get('like_threshold', 4)}: {summary['like_rate_test']:.1%}), "
        f"keywords for {summary['keyword_items']:,} of {summary['catalogue_items']:,} items"
    ]
    if a.get("jobs"):
        lines.append(
            f"item analysis: {a.get('written', 0)} of {a['jobs']} (item, source) jobs, "
            f"{a.get('failed', 0)} failed, {a.get('new_calls', 0)} LLM calls "
            f"(+{a.get('cached_calls', 0)} cached), {a.get('wall_s', 0):.1f} s"
        )
        if a.get("first_error"):
            lines.append(f"  first failure: {a['first_error'][:200]}")
        if a.get("s_per_new_job"):
            full = a["s_per_new_job"] * summary["catalogue_items"]
            lines.append(
                f"  {a['s_per_new_job']:.2f} s per item (wall, this endpoint) -> the full catalogue of "
                f"{summary['catalogue_items']:,} items ~ {_duration(full)} (objective keywords only)"
            )
    else:
        lines.append("item analysis: nothing to do (every selected item already has keywords under this model)")
    v, s = summary.get("vocabulary") or {}, summary.get("sasrec") or {}
    sasrec = "loaded from its checkpoint" if s.get("loaded") else f"trained in {s.get('train_s', 0):.1f} s"
    lines.append(
        f"vocabulary: {v.get('keywords', 0)} keywords -> {v.get('canonical', 0)} canonical "
        f"({'rebuilt' if v.get('rebuilt') else 'unchanged'}); embeddings: "
        f"{summary['embeddings']['embedded']} new ({t.get('embeddings_s', 0):.1f} s); SASRec {sasrec}"
    )
    lines.append(
        f"voters on {summary['pairs']:,} pairs: f_mat {t.get('f_mat_s', 0):.3f} s, "
        f"f_sim {t.get('f_sim_s', 0):.3f} s, f_sta {t.get('f_sta_s', 0):.3f} s, "
        f"vote {t.get('ensemble_s', 0):.3f} s; total wall {summary['wall_s']:.1f} s"
    )
    lines.append(
        f"tables in [bold]{summary['db']}[/]: votes, item_keywords, keyword_vocabulary, item_embeddings, "
        f"metrics (run_id = '{summary['run_id']}')"
    )
    return lines
