"""Exploration and the run report: the sql/views of a DuckDB file, as frames and as one HTML page.

Everything here reads the file on a short read-only connection, so it works beside a live run.
The views are (re)declared as temporary views on that connection from sql/ (in dependency order), so a file
written by an older doppel (or before the views existed) is read with the checkout's definitions.
The report is self-contained: plots are matplotlib PNGs inlined as base64, no scripts, no URLs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from doppel.tasks.arena.report import ArenaReport, arena_context, load_arena
from doppel.tasks.plotting import png, pyplot
from doppel.tasks.store.db import connect, execute, run_not_found
from doppel.tasks.store.schema import declare_temp_views, view_files

TEMPLATE = "report_template.html"
SCALE = (1, 2, 3, 4, 5)
# (metric, label, format, better): better is "low", "high" or "" (no winner is marked)
METRICS = [
    ("rmse", "RMSE", "{:.3f}", "low"),
    ("mae", "MAE", "{:.3f}", "low"),
    ("exact", "exact %", "{:.1f}", "high"),
    ("off_by_one", "off-by-1 %", "{:.1f}", ""),
    ("close", "close %", "{:.1f}", "high"),
    ("tv", "hist. TV", "{:.3f}", "low"),
    ("n", "n", "{:,.0f}", ""),
    ("n_missing", "failed", "{:,.0f}", ""),
]
LEAK_NOTE = (
    "Profile updates were on (sim.update_profile = true): after each rating batch the profile was "
    "updated with that batch's true ratings, so every later batch was rated by a profile that had seen "
    "held-out truth ({later:,} of {rated:,} rated pairs came after a user's first batch). The LLM's "
    "scores are optimistic against a strict hold-out; rerun with --no-update for a leak-free estimate."
)
NO_LEAK_NOTE = (
    "Profile updates were off (sim.update_profile = false): every rating call saw only the train "
    "split, so no held-out truth leaked into later batches."
)
NO_LATER_NOTE = (  # updates on, but each user's pairs fit in one batch: no update ever fed a rating call
    "Profile updates were on (sim.update_profile = true), but 0 of {rated:,} rated pairs came after a user's "
    "first batch, so no rating call saw an updated profile and no held-out truth leaked."
)


# ----------------------------------------------------------------------------- exploration


def view_names() -> list[str]:
    """The views doppel defines (sql/staging/ and sql/views/, <name>.sql), sorted."""
    return sorted(view_files())


def run_sql(db: str | Path, sql: str, limit: int | None = None, files: bool = False) -> tuple[pd.DataFrame, bool]:
    """Run the user's SQL read-only; returns (at most `limit` rows, whether rows were left out).

    A read-only connection still reads and writes other files (read_csv, COPY ... TO, ATTACH,
    INSTALL): unless `files`, the SQL sees only the database, and cannot change that setting back.
    """
    with connect(db, read_only=True) as con:
        declare_temp_views(con)
        if not files:
            con.execute("set enable_external_access = false")
            con.execute("set lock_configuration = true")
        rel = con.sql(sql)
        if rel is None:  # a statement without rows (e.g. SET)
            return pd.DataFrame(), False
        frame = rel.df() if limit is None else rel.limit(limit + 1).df()
    return _cut(frame, limit)


def read_view(
    db: str | Path, name: str, run_id: str | None = None, limit: int | None = None
) -> tuple[pd.DataFrame, bool]:
    """Rows of one view (optionally of one run); returns (at most `limit` rows, whether rows were left out)."""
    if name not in view_names():
        raise ValueError(f"no view {name!r}; views: {', '.join(view_names())}")
    with connect(db, read_only=True) as con:
        if name in declare_temp_views(con):
            raise ValueError(
                f"{db}: view {name!r} needs tables or columns this file does not have yet (written by an older "
                f"doppel); a command that writes to it brings it up to date, e.g. doppel score --db {db}"
            )
        frame = _rows(con, name, run_id, limit=None if limit is None else limit + 1)
    return _cut(frame, limit)


def _cut(frame: pd.DataFrame, limit: int | None) -> tuple[pd.DataFrame, bool]:
    if limit is None or len(frame) <= limit:
        return frame, False
    return frame.head(limit), True


def _rows(con: duckdb.DuckDBPyConnection, name: str, run_id: str | None, limit: int | None = None) -> pd.DataFrame:
    """A table's or view's rows, filtered on run_id with a bound constant (no SQL text is built)."""
    rel = con.table(name)
    if run_id is not None:
        rel = rel.filter(duckdb.ColumnExpression("run_id") == duckdb.ConstantExpression(run_id))
    if limit is not None:
        rel = rel.limit(limit)
    return rel.df()


def latest_run_id(db: str | Path) -> str | None:
    """The most recently started run that simulated users (else of any kind), if any."""
    with connect(db, read_only=True) as con:
        found = execute(con, "latest_report_run")
    return None if found is None or found.empty else str(found.iloc[0]["run_id"])


# ----------------------------------------------------------------------------- report data


@dataclass
class ReportData:
    """Everything the report shows about one run (frames straight from the views and tables)."""

    run: dict[str, Any]
    config: dict[str, Any]
    overview: dict[str, Any]
    costs: dict[str, Any]
    histograms: pd.DataFrame
    confusion: pd.DataFrame
    user_error: pd.DataFrame
    metrics: pd.DataFrame
    validation: pd.DataFrame
    failed: pd.DataFrame
    arena: ArenaReport | None = None  # the arena section's run (tasks/arena/report.py), if the file has one


def load_report_data(db: str | Path, run_id: str, arena_run: str | None = None) -> ReportData:
    """Read one run's rows from the views and tables on one short read-only connection, and those of
    the arena run `arena_run` (default: the latest finished one, if any)."""
    with connect(db, read_only=True) as con:
        declare_temp_views(con)
        runs = _rows(con, "runs", run_id)
        if runs.empty:
            raise run_not_found(con, db, run_id)
        names = "run_overview run_costs rating_histograms confusion_matrix user_error failed_pairs metrics validation_results"
        frames = {name: _rows(con, name, run_id) for name in names.split()}
        arena = load_arena(con, db, arena_run)
    run = runs.iloc[0].to_dict()
    run["folds"] = [] if run["folds"] is None else list(run["folds"])  # an array (no truth value) from DuckDB
    config = json.loads(run["config"]) if isinstance(run["config"], str) else dict(run["config"] or {})
    return ReportData(
        run=run,
        config=config,
        overview=frames["run_overview"].iloc[0].to_dict(),
        costs=frames["run_costs"].iloc[0].to_dict(),
        histograms=frames["rating_histograms"],
        confusion=frames["confusion_matrix"],
        user_error=frames["user_error"],
        metrics=frames["metrics"],
        validation=frames["validation_results"].sort_values("checked_at"),
        failed=frames["failed_pairs"].sort_values(["fold", "user_id", "item_id"]),
        arena=arena,
    )


# ----------------------------------------------------------------------------- plots


def pooled_histogram(histograms: pd.DataFrame) -> pd.DataFrame:
    """Shares of ratings 1..5 per source (real, simulated), pooled over the run's folds."""
    counts = histograms.groupby(["source", "rating"])["n"].sum().unstack("source").reindex(SCALE).fillna(0)
    return counts / counts.sum().replace(0, 1)


def histogram_plot(histograms: pd.DataFrame) -> str:
    plt = pyplot()
    shares = pooled_histogram(histograms)
    tv = 0.5 * (shares["real"] - shares["simulated"]).abs().sum()
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    x = pd.Series(range(len(SCALE)), dtype=float)
    for offset, source, color in ((-0.2, "real", "#4c72b0"), (0.2, "simulated", "#dd8452")):
        bars = ax.bar(x + offset, shares[source], width=0.4, label=source, color=color)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in shares[source]], fontsize=8, padding=1)
    ax.set_xticks(x, [str(r) for r in SCALE])
    ax.set_xlabel("rating")
    ax.set_ylabel("share of rated pairs")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_title(f"Real vs simulated ratings (total variation {tv:.3f})", loc="left")
    ax.set_ylim(0, max(shares.max().max(), 0.01) * 1.25)  # headroom for the labels and the legend
    ax.legend(frameon=False, ncol=2, loc="upper left")
    return png(fig)


def confusion_grid(confusion: pd.DataFrame) -> pd.DataFrame:
    """Counts real (rows) x simulated (columns) on the 1..5 scale, pooled over folds."""
    grid = confusion.pivot_table(index="real", columns="simulated", values="n", aggfunc="sum", fill_value=0)
    return grid.reindex(index=list(SCALE), columns=list(SCALE), fill_value=0).astype(int)


def confusion_plot(confusion: pd.DataFrame) -> str:
    plt = pyplot()
    grid = confusion_grid(confusion)
    shares = grid.div(grid.sum(axis=1).replace(0, 1), axis=0)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    image = ax.imshow(shares.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    for i, real in enumerate(SCALE):
        for j, sim in enumerate(SCALE):
            count = grid.loc[real, sim]
            ax.text(
                j,
                i,
                f"{count}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if shares.loc[real, sim] > 0.55 else "#222",
            )
    ax.set_xticks(range(5), [str(r) for r in SCALE])
    ax.set_yticks(range(5), [str(r) for r in SCALE])
    ax.set_xlabel("simulated rating")
    ax.set_ylabel("real rating")
    ax.spines[:].set_visible(False)
    ax.set_title("Confusion matrix (counts)", loc="left")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, format=lambda v, _: f"{v:.0%}")
    bar.set_label("share of the real rating's row")
    return png(fig)


def activity_bins(user_error: pd.DataFrame, max_bins: int = 5) -> pd.DataFrame:
    """Pooled RMSE/MAE per bin of user activity (train ratings), quantile bins; one row per bin."""
    users = user_error[user_error["n"] > 0].copy()
    if users.empty:
        return pd.DataFrame(columns=["bin", "users", "pairs", "rmse", "mae"])
    q = max(1, min(max_bins, len(users) // 3, users["n_train"].nunique()))  # >= ~3 users per bin
    users["bin"] = pd.qcut(users["n_train"], q=q, duplicates="drop") if q > 1 else "all"
    users["sq"] = users["n"] * users["rmse"].astype(float) ** 2  # back to sums so bins pool exactly
    users["ab"] = users["n"] * users["mae"].astype(float)
    out = users.groupby("bin", observed=True).agg(
        users=("user_id", "size"),
        pairs=("n", "sum"),
        sq=("sq", "sum"),
        ab=("ab", "sum"),
        lo=("n_train", "min"),
        hi=("n_train", "max"),
    )
    out["rmse"] = (out["sq"] / out["pairs"]) ** 0.5
    out["mae"] = out["ab"] / out["pairs"]
    out["bin"] = [f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in zip(out["lo"], out["hi"], strict=True)]
    return out.reset_index(drop=True)[["bin", "users", "pairs", "rmse", "mae"]]


def activity_plot(user_error: pd.DataFrame) -> str:
    plt = pyplot()
    users = user_error[user_error["n"] > 0]
    bins = activity_bins(user_error)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.2, 3.4), gridspec_kw={"width_ratios": [1, 1.2]})
    left.scatter(users["n_train"], users["rmse"].astype(float), s=12 + 4 * users["n"], alpha=0.6, color="#4c72b0")
    left.set_xlabel("user activity (train ratings)")
    left.set_ylabel("RMSE per user")
    left.set_ylim(bottom=0)
    left.set_title("Per user (size = rated pairs)", loc="left")
    x = pd.Series(range(len(bins)), dtype=float)
    for offset, metric, color in ((-0.2, "rmse", "#4c72b0"), (0.2, "mae", "#55a868")):
        bars = right.bar(x + offset, bins[metric], width=0.4, label=metric.upper(), color=color)
        right.bar_label(bars, fmt="%.2f", fontsize=8, padding=1)
    right.set_xticks(x, [f"{b}\n{u} users" for b, u in zip(bins["bin"], bins["users"], strict=True)], fontsize=8)
    right.set_xlabel("train ratings per user (quantile bins)")
    right.set_title("Pooled error by activity", loc="left")
    right.set_ylim(0, max(float(bins[["rmse", "mae"]].max().max()), 0.01) * 1.3)
    right.legend(frameon=False, ncol=2, loc="upper left")
    fig.tight_layout()
    return png(fig)


# ----------------------------------------------------------------------------- tables


def metrics_tables(metrics: pd.DataFrame) -> list[dict[str, Any]]:
    """Per fold: rows of formatted cells (the LLM first, then baselines), the best value per column marked."""
    tables = []
    for fold, group in sorted(metrics.groupby("fold"), key=lambda kv: (kv[0] == "all", kv[0])):  # "all" last
        wide = group.pivot_table(index="simulator", columns="metric", values="value", aggfunc="first")
        best = {}
        for key, _, _, better in METRICS:
            if better and key in wide and wide[key].notna().any():
                best[key] = wide[key].min() if better == "low" else wide[key].max()
        rows = []
        for sim in sorted(wide.index, key=lambda s: (s != "llm", s)):
            cells = []
            for key, _, fmt, _ in METRICS:
                value = wide.loc[sim].get(key)
                missing = value is None or pd.isna(value)
                cells.append(
                    {
                        "text": "–" if missing else fmt.format(value),
                        "best": not missing and key in best and abs(value - best[key]) < 1e-12,
                    }
                )
            rows.append({"simulator": sim, "llm": sim == "llm", "cells": cells})
        tables.append({"fold": fold, "title": "mean over folds" if fold == "all" else f"fold {fold}", "rows": rows})
    return tables


def validation_rows(validation: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for rec in validation.to_dict("records"):
        failures = json.loads(rec["failures"]) if isinstance(rec["failures"], str) else (rec["failures"] or [])
        notes = [" ".join(str(f.get(k)) for k in ("expectation", "column") if f.get(k)) for f in failures]
        rows.append(
            {
                "suite": rec["suite"],
                "success": bool(rec["success"]),
                "n_rows": int(rec["n_rows"]),
                "failures": "; ".join(notes) or "–",
                "checked_at": str(rec["checked_at"])[:19],
            }
        )
    return rows


def _num(value: Any, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None or pd.isna(value) else fmt.format(value)


# ----------------------------------------------------------------------------- HTML


def render_report(data: ReportData) -> str:
    """The report as one self-contained HTML document."""
    rated = not data.histograms.empty
    images = {}
    if rated:
        images = {
            "histogram": histogram_plot(data.histograms),
            "confusion": confusion_plot(data.confusion),
            "activity": activity_plot(data.user_error),
        }
    update = bool(data.config.get("sim", {}).get("update_profile", False))
    later, n_rated = int(data.overview["pairs_later_batches"]), int(data.overview["pairs_rated"])
    leaks = update and later > 0  # truth leaks only into a batch rated after an update
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    return env.get_template(TEMPLATE).render(
        run=data.run,
        overview=data.overview,
        costs=data.costs,
        images=images,
        rated=rated,
        metric_labels=[label for _, label, _, _ in METRICS],
        metrics=metrics_tables(data.metrics),
        activity=activity_bins(data.user_error).to_dict("records"),
        validation=validation_rows(data.validation),
        failed=data.failed.head(50).to_dict("records"),
        n_failed=len(data.failed),
        leak_note=(LEAK_NOTE if leaks else NO_LATER_NOTE if update else NO_LEAK_NOTE).format(
            later=later, rated=n_rated
        ),
        leaks=leaks,
        config_json=json.dumps(data.config, indent=2, sort_keys=False),
        folds=", ".join(data.run["folds"]),
        arena=arena_context(data.arena),
    )


def write_report(
    db: str | Path, run_id: str | None = None, out: str | Path = "report.html", arena_run: str | None = None
) -> Path:
    """Write the HTML report of `run_id` (default: the latest run) to `out`; returns the path.

    The arena section shows `arena_run` (default: the latest finished arena run; none: no section)."""
    run_id = run_id or latest_run_id(db)
    if run_id is None:
        raise ValueError(f"{db} has no runs yet")
    html = render_report(load_report_data(db, run_id, arena_run))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
