"""Kill -9 resume: SIGKILL `doppel run` mid-way, rerun with the same run id, compare with an uninterrupted run.

The real CLI runs as a subprocess (its own process group, Dask runner) against the in-repo LLM test
server; the session's Prefect API server is shared through PREFECT_API_URL so no run starts its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from tests.processes import alive, descendants, doppel_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "kill-resume"
CONCURRENCY = 4


def doppel(base_url: str, db: Path, *extra: str) -> list[str]:
    return doppel_run(base_url, db, RUN_ID, 8, CONCURRENCY, "--no-baselines", "--dask-workers", "2", *extra)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rows(db: Path, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, [RUN_ID]).df()
    finally:
        con.close()


def tables(db: Path):
    ratings = rows(
        db, "select fold, user_id, item_id, rating, status from simulated_ratings where run_id = ? order by all"
    )
    profiles = rows(db, "select fold, user_id, version, stage, text from profiles where run_id = ? order by all")
    return ratings, profiles


def test_kill9_mid_run_then_resume_equals_an_uninterrupted_run(prefect_server, llm_server, tmp_path):
    llm_server.configure(latency=0.2)
    ref_db, db = tmp_path / "ref" / "doppel.duckdb", tmp_path / "killed" / "doppel.duckdb"
    ref_db.parent.mkdir()
    db.parent.mkdir()

    run(doppel(llm_server.base_url, ref_db))  # uninterrupted, own db and response cache
    ref_requests = llm_server.stats()["requests"]
    ref = tables(ref_db)
    assert len(ref[0]) > 0 and set(ref[0]["status"]) == {"ok"}

    llm_server.reset()
    proc = subprocess.Popen(
        doppel(llm_server.base_url, db),
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    seen: dict = {}
    deadline = time.monotonic() + 120
    try:
        while llm_server.stats()["requests"] < ref_requests // 2:
            assert proc.poll() is None, f"doppel ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "doppel made too few calls in 120 s"
            descendants(proc.pid, seen)
            time.sleep(0.02)
        descendants(proc.pid, seen)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    # nothing the kill left behind stays alive (children end by PDEATHSIG: poll for it, a generous
    # deadline only bounds a failure), and the file holds whole users only
    deadline = time.monotonic() + 60
    while alive(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(seen) == [], f"processes of the killed run are still alive 60 s after the kill: {alive(seen)}"
    killed_requests = llm_server.stats()["requests"]  # read once the dying workers can send no more
    assert killed_requests < ref_requests, "the kill came after the run had made all its calls"
    state = rows(
        db,
        "select u.user_id, u.status, u.n_pairs, count(s.item_id) as n_rows from run_users u "
        "left join simulated_ratings s using (run_id, fold, user_id) where u.run_id = ? group by all",
    )
    assert len(state) == 8 and (state["status"] != "done").any(), state
    assert (state.loc[state["status"] == "done", "n_rows"] == state.loc[state["status"] == "done", "n_pairs"]).all()
    assert (state.loc[state["status"] == "pending", "n_rows"] == 0).all(), "a half-written user"

    resumed = run(doppel(llm_server.base_url, db))  # resume
    total = llm_server.stats()["requests"]
    # the summary's counts add up: calls made = requests the server got, cached ones beside them
    counts = re.search(r"(\d+) LLM calls? made, (\d+) answered from the cache", resumed.stdout)
    assert counts, resumed.stdout[-2000:]
    made, cached = map(int, counts.groups())
    # a call is one request, or more when the client retried it (a timeout under load): never fewer
    assert 0 < made <= total - killed_requests and cached >= 0, (counts.group(0), total, killed_requests)
    got = tables(db)
    assert got[0].equals(ref[0]), "simulated_ratings differ from the uninterrupted run"
    assert got[1].equals(ref[1]), "profiles differ from the uninterrupted run"
    repeated = total - ref_requests
    # only calls in flight at the kill are lost: at most --concurrency of them
    assert 0 <= repeated <= CONCURRENCY, f"{repeated} calls repeated ({killed_requests} before the kill)"
    runs = rows(db, "select status from runs where run_id = ?")
    assert runs["status"].tolist() == ["finished"]
    # calls the killed invocation made for users it never recorded come back from the cache as the run's
    # own: the run's bill is the uninterrupted run's, once each
    bill = "select count(*), sum(prompt_tokens), sum(completion_tokens) from llm_calls where run_id = ? and not cached"
    assert rows(db, bill).values.tolist() == rows(ref_db, bill).values.tolist()
    assert rows(db, bill).iloc[0, 0] > made, "no call of the killed invocation was counted"
