"""The report's arena section: do the simulated judges rank the recommenders as the real ratings do?

For one arena run (the latest finished one, or the one named): a scatter per judge of the real vs the
simulated nDCG@10 per recommender (observed-items protocol) titled with the judge's Kendall tau and
its 95 % interval, the reliability diagram of P(like) with the calibration table, and the rank
agreement table. Frames come from sql/queries/arena_report_*.sql on the report's read-only connection;
a file without an arena run has no section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from doppel.tasks.plotting import png, pyplot
from doppel.tasks.store.db import execute

SCATTER_METRIC = ("observed", "ndcg@10")  # (protocol, metric) of the scatter and its titles


@dataclass
class ArenaReport:
    """One arena run's rows for the report (straight from its tables and the arena_scatter view)."""

    run: dict[str, Any]
    scatter: pd.DataFrame
    agreement: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame


def load_arena(con: duckdb.DuckDBPyConnection, db: Any, arena_run: str | None = None) -> ArenaReport | None:
    """The arena run's frames; None when the file holds no finished arena run (and none was named).

    `con` is the report's read-only connection with the views declared; a named run that is not an
    arena run of the file is an error naming it.
    """
    runs = _frame(execute(con, "arena_report_run", run_id=arena_run))
    if runs.empty:
        if arena_run is None:
            return None
        known = _frame(execute(con, "arena_report_runs"))["run_id"].tolist()
        hint = f"; arena runs: {', '.join(known[:10])}" if known else "; it has no arena runs"
        raise ValueError(f"--arena-run: no arena run {arena_run!r} in {db}{hint}")
    run = runs.iloc[0].to_dict()
    run["folds"] = [] if run["folds"] is None else list(run["folds"])  # an array (no truth value) from DuckDB
    frames = {
        name: _frame(execute(con, f"arena_report_{name}", run_id=run["run_id"]))
        for name in ("scatter", "agreement", "calibration", "reliability")
    }
    return ArenaReport(run=run, **frames)


def _frame(frame: pd.DataFrame | None) -> pd.DataFrame:
    return frame if frame is not None else pd.DataFrame()


def _interval(value: Any, lo: Any, hi: Any, fmt: str = "{:.3f}") -> str:
    if _missing(value):
        return "–"
    return fmt.format(value) + ("" if _missing(lo) or _missing(hi) else f" [{fmt.format(lo)}, {fmt.format(hi)}]")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _fmt(value: Any, fmt: str = "{:.3f}") -> str:
    return "–" if _missing(value) else fmt.format(value)


# ----------------------------------------------------------------------------- plots


def scatter_plot(scatter: pd.DataFrame, agreement: pd.DataFrame) -> str:
    """One panel per fold (rows) and judge (columns): real vs simulated metric, a labelled point per
    recommender, the judge's Kendall tau [95 % interval] of that fold in the title."""
    plt = pyplot()
    folds, judges = sorted(scatter["fold"].unique()), sorted(scatter["judge"].unique())
    taus = agreement[(agreement["protocol"] == SCATTER_METRIC[0]) & (agreement["metric"] == SCATTER_METRIC[1])]
    taus = taus.set_index(["fold", "judge"])
    fig, axes = plt.subplots(
        len(folds), len(judges), figsize=(3.3 * len(judges), 3.2 * len(folds)), squeeze=False, layout="constrained"
    )
    values = scatter[["real_value", "simulated_value"]].to_numpy(dtype=float)
    lo, hi = float(values.min()), float(values.max())
    pad = max(hi - lo, 0.02) * 0.08
    for r, fold in enumerate(folds):
        for c, judge in enumerate(judges):
            ax = axes[r][c]
            part = scatter[(scatter["fold"] == fold) & (scatter["judge"] == judge)]
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#bbb", lw=1, ls="--", zorder=0)
            ax.scatter(part["real_value"], part["simulated_value"], s=22, color="#4c72b0", zorder=2)
            for rec, x, y in zip(part["recommender"], part["real_value"], part["simulated_value"], strict=True):
                ax.annotate(rec, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7, color="#333")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            row = taus.loc[(fold, judge)] if (fold, judge) in taus.index else None
            tau = "τ –" if row is None else "τ " + _interval(row["tau"], row["tau_lo"], row["tau_hi"], "{:.2f}")
            ax.set_title(f"{judge} · {fold}\nKendall {tau}", loc="left", fontsize=9)
            ax.set_xlabel(f"real {SCATTER_METRIC[1]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"simulated {SCATTER_METRIC[1]}", fontsize=8)
            ax.tick_params(labelsize=7)
    return png(fig)


def reliability_plot(reliability: pd.DataFrame) -> str:
    """One panel per judge: mean P(like) vs the real like rate per bin, a line per fold, the diagonal."""
    plt = pyplot()
    judges = sorted(reliability["judge"].unique())
    fig, axes = plt.subplots(1, len(judges), figsize=(4.2 * len(judges), 4.0), squeeze=False, layout="constrained")
    for ax, judge in zip(axes[0], judges, strict=True):
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfectly calibrated")
        for fold, part in reliability[reliability["judge"] == judge].groupby("fold"):
            ax.plot(part["mean_p"], part["like_rate"], marker="o", ms=4, lw=1.2, label=f"fold {fold}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean P(like) in the bin")
        ax.set_ylabel("real like rate (rating ≥ 4)")
        ax.set_title(f"Reliability of {judge}'s P(like)", loc="left")
        ax.legend(frameon=False, fontsize=8, loc="upper left")
    return png(fig)


# ----------------------------------------------------------------------------- the template's context


def arena_context(arena: ArenaReport | None) -> dict[str, Any] | None:
    """What tasks/report_template.html shows of the arena run: images and formatted table rows."""
    if arena is None:
        return None
    images = {}
    if not arena.scatter.empty:
        images["scatter"] = scatter_plot(arena.scatter, arena.agreement)
    if not arena.reliability.empty:
        images["reliability"] = reliability_plot(arena.reliability)
    agreement = [
        {
            "fold": a["fold"],
            "protocol": a["protocol"],
            "metric": a["metric"],
            "judge": a["judge"],
            "tau": _interval(a["tau"], a["tau_lo"], a["tau_hi"]),
            "rho": _fmt(a["rho"]),
            "ceiling_ratio": _fmt(a["ceiling_ratio"]),
        }
        for a in arena.agreement.to_dict("records")
    ]
    calibration = [
        {
            "fold": c["fold"],
            "judge": c["judge"],
            "like_rate": _fmt(c["like_rate"], "{:.1%}"),
            "real_like_rate": _fmt(c["real_like_rate"], "{:.1%}"),
            "like_rate_gap": _fmt(c["like_rate_gap"], "{:+.2f}"),
            "ece": _fmt(c["ece"]),
            "brier": _fmt(c["brier"]),
            "n": _fmt(c["n"], "{:,.0f}"),
        }
        for c in arena.calibration.to_dict("records")
    ]
    run = arena.run
    return {
        "run_id": run["run_id"],
        "dataset": run["dataset"],
        "folds": ", ".join(run["folds"]),
        "status": run["status"],
        "images": images,
        "agreement": agreement,
        "calibration": calibration,
    }
