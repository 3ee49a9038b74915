"""`doppel ensemble`: a sub-app of the `doppel` command (flows/cli.py adds it)."""

from __future__ import annotations

import typer
from rich.markup import escape

from doppel.flows.cli_output import console, fail, show
from doppel.flows.options import OptionSet, dataset_options, llm_options, opt, settings_command
from doppel.tasks.ensemble.config import EnsembleSettings
from doppel.tasks.preflight import preflight

app = typer.Typer()


ENSEMBLE = OptionSet(
    EnsembleSettings,
    (
        *dataset_options("run.")[:3],
        opt("fold"),
        opt("items"),
        opt("like_threshold"),
        opt("run_id", "compare_run_id"),
        opt("ensemble_id"),
        *dataset_options("run.")[3:],
        *llm_options("run.")[:6],
        opt("seed", "run.llm.seed", "sasrec.seed"),
        *llm_options("run.")[6:7],
        opt("max_keywords"),
        opt("vocab_threshold"),
        opt("sasrec_epochs", "sasrec.epochs"),
        opt("db", "run.db"),
        opt("runner", "run.runner"),
        opt("dask_address", "run.dask_address"),
        opt("dask_workers", "run.dask_workers"),
        *llm_options("run.")[7:],
        opt("progress", "run.progress"),
    ),
    fixed={"run.baselines": False},
)


@app.command("ensemble")
@settings_command(ENSEMBLE, fail)
def ensemble_command(settings: EnsembleSettings) -> None:
    """Ensemble simulator: LLM item keywords + keyword, embedding and SASRec voters, scored on held-out likes."""
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
            f"item analysis: {a.get('written', 0)} of {a['jobs']} (item, source) jobs done, {a.get('ok', 0)} with "
            f"keywords, {a.get('failed', 0)} failed{' (a rerun asks those again)' if a.get('failed') else ''}, "
            f"{a.get('new_calls', 0)} LLM calls "
            f"(+{a.get('cached_calls', 0)} cached), {a.get('wall_s', 0):.1f} s"
        )
        if a.get("written") and not a.get("ok"):
            lines.append("  [bold red]every analysis failed[/]: f_mat has no keywords (does the endpoint answer JSON?)")
        if a.get("first_error"):
            lines.append(f"  first failure: {escape(a['first_error'][:200])}")  # quotes the model's answer
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
