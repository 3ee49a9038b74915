"""The plan step of `doppel run`: the resume decision, made once, before any engine starts.

A new run id starts a run. A known one is resumed with the settings it was started with (other
settings: one clear error). What is left decides what starts: users to simulate need the cluster
and the LLM; a run with nothing left is only gated and scored again; a finished run (every
requested user done, gate passed, scores stored, rows unchanged since) answers from DuckDB with no
engine at all (a rerun of a 459-user run would otherwise spend ~35% of its wall for nothing).
Anything unusual (an unreadable file, a locked one) takes the normal path, which reports it.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from doppel.tasks.settings import RunSettings

NOTHING_DONE = {"users": 0, "calls": 0, "new_calls": 0, "cached_calls": 0}


class RunPlan(BaseModel):
    """The decision: which run, whether it is resumed, whether anything is left to simulate."""

    run_id: str
    resume: bool = False
    work_left: bool = True
    finished: dict | None = None  # a finished run's stored summary: nothing to run


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def plan_run(settings: RunSettings, started: float | None = None) -> RunPlan:
    """Start, resume, re-score or answer from the stored results (see the module docstring)."""
    started = time.monotonic() if started is None else started
    if not settings.run_id or not Path(settings.db).exists():
        return RunPlan(run_id=settings.run_id or new_run_id())
    from doppel.tasks.planning import check_resume_settings

    check_resume_settings(settings.db, settings.run_id, settings)  # asked with other settings: say which
    try:
        return _plan_known(settings, started)
    except Exception:  # noqa: BLE001 - e.g. a locked or older file: the flow handles (and reports) it
        return RunPlan(run_id=settings.run_id)


def finished_summary(settings: RunSettings, started: float | None = None) -> dict | None:
    """The summary `simulate` would return for an already finished run, or None to run the flow."""
    try:
        return plan_run(settings, started).finished
    except Exception:  # noqa: BLE001
        return None


def _plan_known(settings: RunSettings, started: float) -> RunPlan:
    from doppel.tasks.planning import select_users
    from doppel.tasks.store.db import query

    db, run_id = settings.db, settings.run_id
    state = query(db, "finished_run", read_only=True, run_id=run_id)
    if state.empty:
        return RunPlan(run_id=run_id)
    row = state.iloc[0]
    registered = query(db, "run_user_ids", read_only=True, run_id=run_id)
    have = set(zip(registered["fold"], registered["user_id"], strict=True))
    new_users = any(
        (fold, user) not in have
        for fold in settings.folds
        for user in select_users(db, row["dataset"], fold, settings.users, settings.user_ids, settings.sample_seed)
    )
    if new_users or row["users_left"]:
        return RunPlan(run_id=run_id, resume=True)
    plan = RunPlan(run_id=run_id, resume=True, work_left=False)
    if (
        row["status"] != "finished"
        or not row["llm_metrics"]
        or not row["checks"]
        or row["failing_suites"]
        or (settings.baselines and not row["baseline_metrics"])
        or not bool(row["rows_unchanged"])  # rows edited since they were scored: gate them again
    ):
        return plan
    scores = query(db, "run_metrics", read_only=True, run_id=run_id)
    if not settings.baselines:
        scores = scores[~scores["simulator"].str.startswith("baseline:")]
    summary = query(db, "run_summary", read_only=True, run_id=run_id).iloc[0].to_dict()
    summary.update(
        run_id=run_id,
        dataset=row["dataset"],
        status="finished",
        db=str(db),
        this_invocation=dict(NOTHING_DONE),
        scores=scores.to_dict(orient="records"),
        wall_s=round(time.monotonic() - started, 2),
    )
    return plan.model_copy(update={"finished": summary})
