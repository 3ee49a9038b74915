"""doppel's Python API: a run, its tables and its scores from a notebook or a script.

The same flows as the `doppel` command (no second implementation): `simulate` runs the `doppel-run`
flow on a `RunSettings`, `fidelity` the `doppel-score` flow, and `open_run` reads the run's tables
back from the DuckDB file as pandas DataFrames.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from doppel.tasks.settings import RunSettings

# what the CLI sets before Prefect is imported: quiet logs, no telemetry, offline embeddings
_QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "DASK_LOGGING__DISTRIBUTED": "error",
    "GX_ANALYTICS_ENABLED": "false",
}


def settings(base: RunSettings | None = None, **options: Any) -> RunSettings:
    """A `RunSettings` from `base` (default: the defaults of `doppel run`) and options by name.

    Each option is a field of `RunSettings`, of its `llm` (`LLMSettings`) or of its `sim`
    (`SimulationSettings`), named as in the model (`users=3`, `base_url=...`, `rate_batch=5`);
    `llm={...}` and `sim={...}` set several at once. Configuration lists every field.

    Raises:
        TypeError: an option that none of the three models has.
        pydantic.ValidationError: a value out of its range.
    """
    from doppel.tasks.settings import LLMSettings, RunSettings, SimulationSettings

    base = base or RunSettings()
    top, llm, sim = {}, dict(options.pop("llm", {}) or {}), dict(options.pop("sim", {}) or {})
    for name, value in options.items():
        if name in RunSettings.model_fields:
            top[name] = value
        elif name in LLMSettings.model_fields:
            llm[name] = value
        elif name in SimulationSettings.model_fields:
            sim[name] = value
        else:
            raise TypeError(
                f"doppel.settings: unknown option {name!r} (not a field of RunSettings, LLMSettings or SimulationSettings)"
            )
    merged = base.model_dump()
    merged.update(top)
    merged["llm"] = {**merged["llm"], **llm}
    merged["sim"] = {**merged["sim"], **sim}
    return RunSettings.model_validate(merged)


@dataclass
class Run:
    """A run's tables as DataFrames (`open_run`), one attribute per table.

    Attributes:
        db: the DuckDB file.
        run_id: the run's id.
        info: the run's row of `runs` (dataset, folds, status, model, ...; `config` parsed to a dict).
        users: `run_users`: one row per (fold, user) with its state.
        profiles: every profile version per user (initial, refine, update).
        ratings: one row per requested (fold, user, item): `rating` (simulated, null if failed),
            `real_rating`, `status`, `reason`, `rating_probs` (P of 1..5 or null).
        calls: `llm_calls`: every LLM call of the run with tokens, latency and the answer.
        validation: the gate's verdicts (`validation_results`).
        metrics: the stored scores, long format: fold, simulator, metric, value.
        histograms: real vs simulated rating histograms per fold (the `rating_histograms` view).
    """

    db: str
    run_id: str
    info: dict = field(repr=False)
    users: pd.DataFrame = field(repr=False)
    profiles: pd.DataFrame = field(repr=False)
    ratings: pd.DataFrame = field(repr=False)
    calls: pd.DataFrame = field(repr=False)
    validation: pd.DataFrame = field(repr=False)
    metrics: pd.DataFrame = field(repr=False)
    histograms: pd.DataFrame = field(repr=False)
    summary: dict = field(default_factory=dict, repr=False)

    def fidelity(self) -> pd.DataFrame:
        """The stored scores as a table: one row per (fold, simulator), one column per metric."""
        return wide_metrics(self.metrics)


def open_run(db: str | os.PathLike = "doppel.duckdb", run_id: str | None = None) -> Run:
    """Read a run's tables from a DuckDB file (read-only; safe beside a live run).

    Args:
        db: the DuckDB file a run wrote (`doppel run --db`).
        run_id: the run; default: the latest run that simulated users (else the latest of any kind).

    Returns:
        Run: the run's tables as pandas DataFrames.

    Raises:
        FileNotFoundError: no file at `db`.
        LookupError: no such run (or no run at all) in the file.
    """
    from doppel.tasks.store.db import query

    path = str(db)
    if not Path(path).exists():
        raise FileNotFoundError(f"no DuckDB file at {path}")
    row = query(path, "open_run_run", read_only=True, run_id=run_id)
    if row.empty:
        raise LookupError(f"no run {run_id!r} in {path}" if run_id else f"no run in {path}")
    info = row.iloc[0].to_dict()
    for key in ("config", "prompt_hashes"):
        if isinstance(info.get(key), str):
            info[key] = json.loads(info[key])
    rid = info["run_id"]

    def read(name: str) -> pd.DataFrame:
        return query(path, name, read_only=True, run_id=rid)

    return Run(
        db=path,
        run_id=rid,
        info=info,
        users=read("open_run_users"),
        profiles=read("open_run_profiles"),
        ratings=read("open_run_ratings"),
        calls=read("open_run_calls"),
        validation=read("open_run_validation"),
        metrics=read("run_metrics"),
        histograms=read("open_run_histograms"),
    )


def simulate(base: RunSettings | None = None, /, **options: Any) -> Run:
    """Run `doppel run` from Python: simulate users, gate the output, score it; return its tables.

    Runs the same `doppel-run` Prefect flow as the command (a Prefect API server is started for the
    call unless `PREFECT_API_URL` names one); a finished run id answers from the database without
    starting anything, an unfinished one resumes.

    Args:
        base: a `RunSettings` (default: the defaults of `doppel run`).
        **options: settings by field name, as for `doppel.settings` (e.g. `users=3`,
            `base_url="http://localhost:8000/v1"`, `model="qwen2.5:7b"`, `db="runs.duckdb"`).

    Returns:
        Run: the run's tables (`open_run`); `Run.summary` holds the run's summary (status, pairs,
        failed pairs, calls, tokens, scores, wall time).

    Example:
        >>> run = doppel.simulate(users=3, base_url="http://localhost:8000/v1", model="qwen2.5:7b")
        >>> run.fidelity()
    """
    guard = '`if __name__ == "__main__":` (as for any script that starts processes), or pass runner="threads"'
    if sys._getframe(1).f_globals.get("__name__") == "__mp_main__":
        # a Dask worker process (forkserver/spawn) is importing the caller's script as __mp_main__: running
        # again would start processes from a process still starting (Python's "bootstrapping phase" error)
        raise RuntimeError(
            f"doppel.simulate() was called while a worker process imported your script: put the call under {guard}"
        )
    chosen = settings(base, **options)
    if chosen.runner == "dask" and not chosen.dask_address and _unguarded_script_line(sys._getframe(1)):
        # said here, before any worker starts: each worker would otherwise fail on the line above, and the
        # advice would drown in their tracebacks
        raise RuntimeError(
            f"doppel.simulate() is called where Dask's worker processes would call it again: put the call under {guard}"
        )
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from doppel.flows.plan import plan_run

    plan = plan_run(chosen)  # the resume decision, once; a finished run answers with no engine started
    summary = plan.finished
    if summary is None:
        from doppel.flows.runtime import prefect_api

        with prefect_api():
            from doppel.flows.simulate import simulate as run_flow

            summary = run_flow(chosen, plan)
    run = open_run(chosen.db, summary["run_id"])
    run.summary = summary
    return run


def _unguarded_script_line(frame: Any) -> int | None:
    """The line of the running script's top level that led to this call, if no `if __name__ == "__main__":`
    holds it (None: a guarded call, a notebook, `python -c`, or a module run as no script)."""
    import ast

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    while frame is not None and not (
        frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__"
    ):
        frame = frame.f_back
    if frame is None or not main_file or frame.f_code.co_filename != main_file:
        return None
    try:
        tree = ast.parse(Path(main_file).read_text(), main_file)
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    for node in tree.body:  # a guard is a top-level `if __name__ == "__main__":`
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            if node.lineno <= line <= (node.end_lineno or node.lineno):
                return None
    return line


def fidelity(
    db: str | os.PathLike = "doppel.duckdb",
    run_id: str | None = None,
    *,
    rescore: bool = False,
    baselines: bool = True,
    hybrid: bool = False,
) -> pd.DataFrame:
    """A run's fidelity table: the LLM and the baselines scored on the same rows.

    Reads the stored scores; with `rescore` (or `hybrid`, or when the run has none) runs the
    `doppel-score` flow first, as `doppel score` does: the gate, then the metrics.

    Args:
        db: the DuckDB file.
        run_id: the run; default: the latest run in the file.
        rescore: validate and score again even if scores are stored.
        baselines: score the CF baselines (global/user/item mean, item-KNN, SVD) too.
        hybrid: also score the calibrated hybrid's accuracy and realism modes.

    Returns:
        pandas.DataFrame: one row per (fold, simulator), one column per metric (rmse, mae, exact,
        off_by_one, close, tv, n).
    """
    run = open_run(db, run_id)
    if rescore or hybrid or run.metrics.empty:
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        from doppel.flows.runtime import prefect_api

        with prefect_api():
            from doppel.flows.score import score_run

            score_run(db=run.db, run_id=run.run_id, baselines=baselines, hybrid=hybrid)
        run = open_run(db, run.run_id)
    return wide_metrics(run.metrics)


def wide_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Long (fold, simulator, metric, value) rows to one row per (fold, simulator)."""
    if metrics.empty:
        return metrics
    table = metrics.pivot_table(index=["fold", "simulator"], columns="metric", values="value", aggfunc="first")
    table.columns.name = None
    return table.reset_index()
