"""benchmarks/prompt_study.py end to end: variants run as real `doppel run`s against the test server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests._bad_input import user_env, write_ml100k

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_prompt_study_compares_variants_on_the_same_pairs(tmp_path, llm_server):
    data_dir = write_ml100k(tmp_path / "data")
    argv = [
        sys.executable,
        "benchmarks/prompt_study.py",
        "--data-dir",
        str(data_dir),
        "--no-item-text",
        "--users",
        "3",
        "--max-test-items",
        "0",
        "--variants",
        "compact,seed,compact+batch1+noupdate",
        "--base-url",
        llm_server.base_url,
        "--model",
        "doppel-test-model",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(argv, cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = dict(kv.split("=") for kv in done.stdout.strip().splitlines()[-1].split()[1:])
    assert float(result["tokens_per_rating_new"]) < float(result["tokens_per_rating_old"])  # the seed is verbose
    assert int(result["users"]) == 3 and int(result["pairs"]) > 0
    table = pd.read_csv(tmp_path / "out" / "prompt_study.csv").set_index("variant")
    assert list(table.index) == ["compact", "seed", "compact+batch1+noupdate"]
    assert table.loc["seed", "run_id"] == "study-u1-3u-alli-doppel-test-model-seed"
    assert (table["failed_pairs"] == 0).all() and (table["n"] == int(result["pairs"])).all()
    # one item per call: a rating call per pair, and never a profile update
    con = duckdb.connect(str(tmp_path / "work" / "doppel.duckdb"), read_only=True)
    kinds = con.execute(
        "select prompt_name, count(*) from llm_calls where run_id = ? group by 1",
        [table.loc["compact+batch1+noupdate", "run_id"]],
    ).fetchall()
    con.close()
    assert dict(kinds).get("rating") == table.loc["compact+batch1+noupdate", "n"]
    assert "profile_update" not in dict(kinds)
    assert table.loc["compact+batch1+noupdate", "calls"] > table.loc["compact", "calls"]
    assert "minus compact" in (tmp_path / "out" / "prompt_study.md").read_text()

    # a second study over the finished runs makes no LLM call
    before = llm_server.stats()["requests"]
    again = subprocess.run(argv, cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == done.stdout.strip().splitlines()[-1]
    assert llm_server.stats()["requests"] == before


def test_prompt_study_rejects_a_bad_variant(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/prompt_study.py", "--variants", "compact+batchX", "--work-dir", str(tmp_path)],
        cwd=REPO,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "compact+batchX" in done.stderr and "Traceback" not in done.stderr
