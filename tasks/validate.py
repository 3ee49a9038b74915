"""The Great Expectations gate: validate a DataFrame against a JSON suite from expectations/.

One ephemeral GX context (no files, no network, no progress bars) is built on first use and
reused, so after a ~3-4 s warm-up (the GX import) a 20k-row frame validates in ~0.2 s.
Suites are `{"name", "expectations": [{"type", "kwargs", "meta": {"description"}}]}`; output
suites take the run id as the suite parameter `expected_run_ids`. GX has no cross-table
expectation, so "one row per requested pair" is checked here with pandas and reported as the
pseudo-expectation `one_row_per_requested_pair`. A check that needs Python (a profile's text is
degenerate: tasks/llm/profile_text.py, the same function that makes the gateway re-ask it) is a
computed column: a suite lists it under `meta.computed_columns`, `COMPUTED_COLUMNS` says how to
compute it, and the suite's expectations check it like any column. A suite of a table names it in
`meta.table`; its column check takes the suite parameter `table_columns`, filled here with the
table's columns as sql/ defines them (tasks/store/schema.py), then `meta.extra_columns` (columns
its query adds) and `meta.computed_columns`: no suite keeps its own copy of a table's columns.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from doppel.tasks.llm.profile_text import profile_problems
from doppel.tasks.paths import EXPECTATIONS_DIR
from doppel.tasks.store.schema import table_columns

SUITES_DIR = EXPECTATIONS_DIR
PAIR_CHECK = "one_row_per_requested_pair"
PAIR_COLUMNS = ["fold", "user_id", "item_id"]
RUN_PARAMETER = "expected_run_ids"
COLUMNS_PARAMETER = "table_columns"
_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 5}
_DETAIL_KEYS = ("observed_value", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
_LOCK = threading.Lock()  # one shared GX context; validations run one at a time


def _text_problems(df: pd.DataFrame) -> pd.Series:
    """What makes each row's `text` a degenerate profile ("; "-joined), None where it is fine."""
    texts = df["text"] if "text" in df.columns else pd.Series([""] * len(df), index=df.index)
    return texts.map(lambda t: "; ".join(profile_problems(t if isinstance(t, str) else "")) or None).astype(object)


COMPUTED_COLUMNS = {"text_problems": _text_problems}


class ValidationFailed(RuntimeError):
    """A suite failed: the gate stops the flow; the message lists what failed."""


@dataclass
class ValidationOutcome:
    """What one suite said about one frame."""

    suite: str
    success: bool
    n_rows: int
    n_checks: int
    failures: list[dict[str, Any]] = field(default_factory=list)  # {expectation, column, description, details}

    def to_record(self, run_id: str) -> dict[str, Any]:
        """A row for the `validation_results` table (failures as JSON text)."""
        row = asdict(self)
        del row["n_checks"]
        return {"run_id": run_id, **row, "failures": json.dumps(self.failures)}

    def raise_for_failure(self) -> ValidationOutcome:
        """Raise ValidationFailed with a readable summary unless the suite passed."""
        if not self.success:
            raise ValidationFailed(format_failures(self))
        return self


@lru_cache(maxsize=1)
def _batch_definition() -> Any:
    """Import GX and build the ephemeral context + pandas whole-dataframe batch definition once."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:  # GX logs INFO noise per expectation; keep an explicit choice
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(  # in-memory stores, no data-docs site (GX's default makes a temp dir)
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    asset = context.data_sources.add_pandas("doppel").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


def warm_up(suites: tuple[str, ...] = ("simulated_ratings", "profiles")) -> None:
    """Import GX and build its context and suites now (~4 s of imports), e.g. while a run simulates."""
    with _LOCK:
        for name in suites:
            load_suite(name, SUITES_DIR)


@cache
def load_suite(name: str, suites_dir: Path = SUITES_DIR) -> tuple[Any, frozenset[str]]:
    """Load `<suites_dir>/<name>.json` as a GX ExpectationSuite; also return its parameter names."""
    _batch_definition()
    import great_expectations as gx

    path = Path(suites_dir) / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in Path(suites_dir).glob("*.json"))
        raise ValueError(f"no suite {name!r} in {suites_dir} (known: {', '.join(known)})")
    raw = json.loads(path.read_text())
    suite = gx.ExpectationSuite(**raw)
    if len(suite.expectations) != len(raw["expectations"]):  # GX logs and drops invalid entries
        raise ValueError(f"{path}: {len(raw['expectations']) - len(suite.expectations)} invalid expectation(s)")
    if unknown := set((raw.get("meta") or {}).get("computed_columns", [])) - COMPUTED_COLUMNS.keys():
        raise ValueError(f"{path}: unknown computed columns {sorted(unknown)} (known: {sorted(COMPUTED_COLUMNS)})")
    return suite, frozenset(_parameter_names(raw["expectations"]))


def _parameter_names(obj: Any) -> set[str]:
    """Every `{"$PARAMETER": name}` used inside a suite's expectations."""
    if isinstance(obj, dict):
        if "$PARAMETER" in obj:
            return {obj["$PARAMETER"]}
        return set().union(*(_parameter_names(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_parameter_names(v) for v in obj))
    return set()


def validate_frame(
    df: pd.DataFrame,
    suite_name: str,
    *,
    expected_run_id: str | None = None,
    expected_pairs: pd.DataFrame | None = None,
    suites_dir: Path = SUITES_DIR,
) -> ValidationOutcome:
    """Validate `df` against a suite; optionally check one row per requested (fold, user_id, item_id).

    Args:
        df: the frame to check (left unchanged).
        suite_name: file stem under `suites_dir`, e.g. "simulated_ratings".
        expected_run_id: the run every row must belong to; required by suites using `expected_run_ids`.
        expected_pairs: the requested (fold, user_id, item_id) pairs; missing and unexpected pairs fail.

    Returns:
        ValidationOutcome with one failure dict per failed expectation.
    """
    with _LOCK:  # `warm_up` may be building the context in another thread
        suite, params = load_suite(suite_name, Path(suites_dir))
    values: dict[str, Any] = {}
    if RUN_PARAMETER in params:
        if expected_run_id is None:
            raise ValueError(f"suite {suite_name!r} needs expected_run_id")
        values[RUN_PARAMETER] = [expected_run_id]
    meta = suite.meta or {}
    if COLUMNS_PARAMETER in params:
        if "table" not in meta:
            raise ValueError(f"suite {suite_name!r} uses {COLUMNS_PARAMETER} but names no meta.table")
        extra = [*meta.get("extra_columns", []), *meta.get("computed_columns", [])]
        values[COLUMNS_PARAMETER] = [*table_columns(meta["table"]), *extra]
    if unknown := params - values.keys():
        raise ValueError(f"suite {suite_name!r} uses unsupported parameters {sorted(unknown)}")

    for name in meta.get("computed_columns", []):
        if name not in df.columns:
            df = df.assign(**{name: COMPUTED_COLUMNS[name](df)})
    with _LOCK:
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": df})
        try:
            result = batch.validate(suite, result_format=_RESULT_FORMAT, expectation_parameters=values)
        finally:  # the engine caches the last batch: don't keep the caller's frame alive
            manager = batch.data.execution_engine.batch_manager
            manager.reset_batch_cache()
            manager.batch_data_cache.clear()
    failures = [_failure(r) for r in result.results if not r.success]
    failures.sort(key=lambda f: not f["expectation"].startswith("expect_table_"))  # schema first
    n_checks = len(result.results)
    if expected_pairs is not None:
        n_checks += 1
        if (pair_failure := _pair_failure(df, expected_pairs)) is not None:
            failures.append(pair_failure)
    return ValidationOutcome(suite_name, not failures, len(df), n_checks, failures)


def _failure(r: Any) -> dict[str, Any]:
    """One failed GX ExpectationValidationResult as a JSON-ready dict."""
    cfg = r.expectation_config
    kwargs = cfg.kwargs
    details = {k: _plain(r.result[k]) for k in _DETAIL_KEYS if k in r.result}
    if message := _exception_message(r.exception_info):
        details["exception"] = message
    return {
        "expectation": cfg.type,
        "column": kwargs.get("column", kwargs.get("column_list", kwargs.get("column_set"))),
        "description": (cfg.meta or {}).get("description") or cfg.description or "",
        "details": details,
    }


def _exception_message(info: Any) -> str | None:
    """GX reports errors either flat or keyed by metric id; return the first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for v in info.values():
        if isinstance(v, dict) and v.get("raised_exception"):
            return str(v.get("exception_message"))
    return None


def _plain(v: Any) -> Any:
    """numpy/pandas scalars, NaN and NA -> JSON-friendly Python values."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalar
        return _plain(v.item())
    return v if isinstance(v, (str, int, float, bool)) else str(v)


def _pair_failure(df: pd.DataFrame, expected: pd.DataFrame) -> dict[str, Any] | None:
    """Compare the frame's (fold, user_id, item_id) keys with the requested pairs."""
    failure = {
        "expectation": PAIR_CHECK,
        "column": PAIR_COLUMNS,
        "description": "exactly one row per requested (fold, user_id, item_id)",
    }
    missing_cols = [c for c in PAIR_COLUMNS if c not in df.columns or c not in expected.columns]
    if missing_cols:
        return {**failure, "details": {"exception": f"missing columns {missing_cols}"}}
    got = df[PAIR_COLUMNS].astype(str).drop_duplicates()
    want = expected[PAIR_COLUMNS].astype(str).drop_duplicates()
    both = got.merge(want, how="outer", on=PAIR_COLUMNS, indicator=True)
    missing = both[both["_merge"] == "right_only"].sort_values(PAIR_COLUMNS)[PAIR_COLUMNS]
    unexpected = both[both["_merge"] == "left_only"].sort_values(PAIR_COLUMNS)[PAIR_COLUMNS]
    if missing.empty and unexpected.empty:
        return None
    details = {
        "missing_count": len(missing),
        "unexpected_count": len(unexpected),
        "partial_missing_list": missing.head(5).to_dict("records"),
        "partial_unexpected_list": unexpected.head(5).to_dict("records"),
    }
    return {**failure, "details": details}


def format_failures(outcome: ValidationOutcome) -> str:
    """A short multi-line summary for the CLI and for ValidationFailed."""
    if outcome.success:
        return f"{outcome.suite}: ok ({outcome.n_checks} checks, {outcome.n_rows} rows)"
    lines = [f"{outcome.suite}: FAILED {len(outcome.failures)} of {outcome.n_checks} checks ({outcome.n_rows} rows)"]
    for f in outcome.failures:
        col = f["column"]
        where = f" [{', '.join(col) if isinstance(col, list) else col}]" if col else ""
        lines.append(f"  - {f['expectation']}{where}: {f['description']}{_summary(f['details'])}")
    return "\n".join(lines)


def _summary(d: dict[str, Any]) -> str:
    """'-- 3 unexpected (0.1%), e.g. 7, 9' style tail for one failure."""
    parts = []
    if "exception" in d:
        parts.append(f"error: {d['exception']}")
    if d.get("missing_count"):
        parts.append(f"{d['missing_count']} missing, e.g. {_examples(d['partial_missing_list'])}")
    if d.get("unexpected_count"):
        pct = f" ({d['unexpected_percent']:.2g}%)" if d.get("unexpected_percent") is not None else ""
        examples = d.get("partial_unexpected_list") or []
        parts.append(f"{d['unexpected_count']} unexpected{pct}" + (f", e.g. {_examples(examples)}" if examples else ""))
    if not parts and "observed_value" in d:
        parts.append(f"observed {d['observed_value']}")
    return " -- " + "; ".join(parts) if parts else ""


def _examples(values: list[Any]) -> str:
    """Render up to 3 example values; row dicts become (a, b, c) tuples."""
    shown = [("(" + ", ".join(map(str, v.values())) + ")") if isinstance(v, dict) else repr(v) for v in values[:3]]
    return ", ".join(shown)
