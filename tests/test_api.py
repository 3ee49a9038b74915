"""The Python API (doppel.simulate / open_run / fidelity / settings) and the Gymnasium ids.

The run goes through the real `doppel-run` flow (real Prefect API, DuckDB file, GX gate) against the
HTTP test LLM server; the Gymnasium check runs the exact one-liner of the docs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import doppel


def test_settings_route_options_to_their_model():
    s = doppel.settings(users=3, base_url="http://x/v1", rate_batch=5, llm={"concurrency": 2})
    assert (s.users, s.llm.base_url, s.sim.rate_batch, s.llm.concurrency) == (3, "http://x/v1", 5, 2)
    again = doppel.settings(s, model="m")
    assert (again.users, again.llm.model, again.llm.base_url) == (3, "m", "http://x/v1")
    with pytest.raises(TypeError, match="unknown option 'userz'"):
        doppel.settings(userz=3)


def test_open_run_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DuckDB file"):
        doppel.open_run(tmp_path / "none.duckdb")
    from doppel.tasks.store.db import init_db

    init_db(tmp_path / "empty.duckdb")
    with pytest.raises(LookupError, match="no run in"):
        doppel.open_run(tmp_path / "empty.duckdb")
    with pytest.raises(LookupError, match="no run 'nope'"):
        doppel.open_run(tmp_path / "empty.duckdb", "nope")


@pytest.mark.slow
def test_simulate_open_run_and_fidelity(prefect_server, llm_server, run_settings):
    settings = run_settings()
    run = doppel.simulate(settings)
    assert run.summary["status"] == "finished" and run.info["status"] == "finished"
    assert run.run_id == run.summary["run_id"] and run.info["config"]["users"] == 6
    assert sorted(run.users["user_id"]) == sorted(run.ratings["user_id"].unique()) and len(run.users) == 6
    assert len(run.ratings) == run.summary["pairs"] and run.ratings["real_rating"].notna().all()
    assert run.ratings["rating"].between(1, 5).all() and (run.ratings["status"] == "ok").all()
    assert len(run.calls) == run.summary["calls"] + run.summary["cached_calls"] and not run.profiles.empty
    assert run.validation["success"].all()
    hist = run.histograms[run.histograms["source"] == "simulated"]
    counts = run.ratings["rating"].value_counts().reindex(range(1, 6), fill_value=0).to_numpy()
    assert np.array_equal(hist.sort_values("rating")["n"].to_numpy(), counts)

    table = doppel.fidelity(settings.db, run.run_id)
    llm = table[table["simulator"] == "llm"].iloc[0]
    err = run.ratings["rating"] - run.ratings["real_rating"]
    assert llm["rmse"] == pytest.approx(float(np.sqrt((err**2).mean())))
    assert {"baseline:svd", "baseline:item_knn"} <= set(table["simulator"])
    assert table.equals(run.fidelity())

    again = doppel.simulate(settings, run_id=run.run_id)  # finished: answered from the database
    assert again.summary["this_invocation"]["new_calls"] == 0 and again.ratings.equals(run.ratings)
    rescored = doppel.fidelity(settings.db, run.run_id, rescore=True)
    assert (
        rescored[rescored["simulator"] == "llm"]
        .reset_index(drop=True)
        .equals(table[table["simulator"] == "llm"].reset_index(drop=True))
    )


@pytest.mark.parametrize("through_a_function", [False, True])
def test_simulate_in_a_script_without_a_main_guard_says_what_to_do(tmp_path, llm_server, through_a_function):
    """Dask's worker processes import the caller's script again (forkserver): a `doppel.simulate` the
    script's top level reaches outside `if __name__ == "__main__":` is refused with the fix, before any
    process starts (not Python's "bootstrapping phase" error, nor the advice inside every worker's traceback)."""
    script = tmp_path / "unguarded.py"
    db = tmp_path / "d.duckdb"
    call = f"doppel.simulate(users=1, base_url={llm_server.base_url!r}, model='doppel-test-model', db={str(db)!r})"
    body = f"def main():\n    {call}\n\nmain()\n" if through_a_function else f"{call}\n"
    script.write_text("import doppel\n" + body)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert 'put the call under `if __name__ == "__main__":`' in done.stderr, done.stderr[-3000:]
    assert "Nanny" not in done.stderr and not db.exists()  # refused before any worker, Prefect or database


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_doppel_is_light(tmp_path):
    code = "import sys, doppel; heavy = [m for m in ('prefect', 'duckdb', 'pandas', 'dask') if m in sys.modules]; print(heavy)"
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_gymnasium_finds_the_envs_with_no_other_import(tmp_path):
    code = "import gymnasium as gym; env = gym.make('doppel/Synthetic-v0'); env.reset(seed=0)"
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == []  # built in memory: no database, no files


def test_importing_the_env_module_loads_no_world(tmp_path):
    code = "import sys, doppel.tasks.rl.env; print([m for m in ('duckdb', 'surprise', 'torch') if m in sys.modules])"
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("action", [-1, 120, 10**6])
def test_an_action_outside_the_space_raises(action):
    import gymnasium as gym

    env = gym.make("doppel/Synthetic-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in the action space"):
        env.step(action)
    obs, reward, *_ = env.step(119)  # the last item is a valid action
    assert env.observation_space.contains(obs) and reward in (0.0, 1.0)
