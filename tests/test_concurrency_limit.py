"""The run-wide LLM concurrency limit holds across Dask workers: with --concurrency 3 split over two
worker processes (chunk shares 2 + 1, plus the run's Dask semaphore), the test server never has more
than 3 chat requests inside it at once, and it does reach 3 (so the check could see an excess)."""

from __future__ import annotations

import pytest

from tests.test_flow import check_complete_run, table

pytestmark = pytest.mark.slow

CONCURRENCY = 3


def test_concurrency_limit_holds_across_two_dask_workers(prefect_server, llm_server, run_settings):
    from doppel.flows.simulate import simulate

    llm_server.configure(latency=0.3)  # calls overlap for long enough that every slot fills
    settings = run_settings(runner="dask", dask_workers=2, users=12, run_id="conc-limit")
    settings.llm.concurrency = CONCURRENCY
    summary = simulate(settings)
    check_complete_run(settings.db, "conc-limit", n_users=12)
    stats = llm_server.stats()
    calls = table(settings.db, "select count(*) n from llm_calls where run_id = ? and not cached", summary["run_id"])
    assert stats["requests"] == calls["n"][0] > 4 * CONCURRENCY
    assert stats["max_in_flight"] <= CONCURRENCY, f"{stats['max_in_flight']} requests at once, limit {CONCURRENCY}"
    assert stats["max_in_flight"] == CONCURRENCY, "the limit was never reached: the test could not see an excess"
