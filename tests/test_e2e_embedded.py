"""End to end on the real embedded model: 3 synthetic users through the whole flow, no API key."""

from __future__ import annotations

import duckdb
import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def llama_children() -> list[psutil.Process]:
    me = psutil.Process()
    return [
        p
        for p in me.children(recursive=True)
        if "doppel.tasks.llm.embedded" in " ".join(p.cmdline() if p.is_running() else [])
    ]


def test_three_synthetic_users_on_the_embedded_model(prefect_server, tmp_path, monkeypatch):
    from doppel.flows.simulate import simulate
    from doppel.tasks.settings import LLMSettings, RunSettings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("DOPPEL_API_KEY", raising=False)
    db = str(tmp_path / "doppel.duckdb")
    settings = RunSettings(
        dataset="synthetic", users=3, db=db, run_id="e2e", progress=False, llm=LLMSettings(timeout_s=600)
    )
    summary = simulate(settings)

    assert summary["status"] == "finished" and summary["users"] == 3
    con = duckdb.connect(db, read_only=True)
    try:
        pairs = con.execute("select sum(n_pairs) from run_users where run_id = 'e2e'").fetchone()[0]
        rows = con.execute("select status, rating, rating_probs from simulated_ratings where run_id = 'e2e'").df()
        profiles = con.execute("select stage, text from profiles where run_id = 'e2e'").df()
        gate = con.execute("select bool_and(success) from validation_results where run_id = 'e2e'").fetchone()[0]
        llm = dict(
            con.execute("select metric, value from metrics where run_id = 'e2e' and simulator = 'llm'").fetchall()
        )
        scored = con.execute(
            "select simulated as pred, real as truth from stg_simulated_pairs where run_id = 'e2e' and status = 'ok'"
        ).df()
        model = con.execute("select model from runs where run_id = 'e2e'").fetchone()[0]
    finally:
        con.close()
    assert len(rows) == pairs > 0
    ok = rows[rows["status"] == "ok"]
    assert len(ok) >= 0.8 * pairs and ok["rating"].between(1, 5).all()  # a 0.5B model, schema-constrained
    # llama.cpp gives logprobs: each rating has the model's distribution, and greedy decoding took its mode
    assert all(
        len(p) == 5 and abs(sum(p) - 1) < 1e-6 and max(range(5), key=lambda k: p[k]) == r - 1
        for p, r in zip(ok["rating_probs"], ok["rating"])
    )
    assert len(profiles) >= 3 and profiles["text"].str.len().min() > 20
    assert gate is True
    # the stored LLM metrics are those of the run's own rated pairs against the real ratings
    err = (scored["pred"] - scored["truth"]).abs()
    assert llm["n"] == len(ok) == len(scored) and llm["n_missing"] == pairs - len(ok)
    assert llm["rmse"] == pytest.approx(float((err**2).mean() ** 0.5)) and 0 <= llm["rmse"] <= 4
    assert llm["exact"] == pytest.approx(100 * float((err == 0).mean()))
    assert model == "qwen2.5-0.5b"
    assert llama_children() == [], "the embedded server must be stopped after the run"


def test_embedded_slots_start_a_server_with_that_many_and_one_user_per_slot():
    """--embedded-slots 2: llama.cpp reports two slots, and the run sends two calls at once, one user each."""
    from doppel.flows.runtime.engines import llm_endpoint
    from doppel.tasks.llm.limits import server_slots
    from doppel.tasks.settings import LLMSettings
    from doppel.tasks.simulation import users_in_flight

    with llm_endpoint(LLMSettings(embedded_slots=2)) as (llm, model_id):
        assert server_slots(llm.base_url) == 2
        assert llm.concurrency == 2 and users_in_flight(llm.concurrency, llm.users_per_slot) == 2
        assert model_id == "qwen2.5-0.5b"
    assert llama_children() == []


def test_doppel_run_on_the_embedded_default_through_the_cli(tmp_path):
    """The README's command, one synthetic user: the CLI starts the embedded server, logs its load, finishes."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and "API_KEY" not in k}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    argv = [sys.executable, "-m", "doppel.flows.cli", "run", "--dataset", "synthetic", "--users", "1"]
    argv += ["--db", str(tmp_path / "doppel.duckdb"), "--verbose", "--no-progress"]
    cli = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = cli.communicate(timeout=900)
    assert cli.returncode == 0, out[-6000:]
    assert "embedded server qwen2.5-0.5b: loaded in" in out and "finished: 1 user, " in out
    # the CLI stopped its server before exiting (the server names its parent's pid on its command line)
    left = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if "doppel.tasks.llm.embedded" in " ".join(p.info["cmdline"] or [])
        and str(cli.pid) in (p.info["cmdline"] or [])
    ]
    assert left == []
