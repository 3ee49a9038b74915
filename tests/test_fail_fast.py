"""Fail fast: wrong inputs are reported before any engine starts (Prefect API server, Dask, embedded LLM).

Each case runs the real CLI as a subprocess with no Prefect server in its environment, watches its
process tree until it exits, and requires one `error:` line in the user's terms and no engine among its
children: the engines were never started. The one child allowed is the openai client's first-request
probe (`platform.platform()` runs `uname -p`): short-lived, and seen either as `uname -p` or, between
fork and exec, as a copy of doppel's own command line. The time is printed (and bounded only loosely:
the engines alone take 10-40 s to start on this machine).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests._bad_input import assert_one_error_line, cli, closed_port, user_env, write_ml100k
from tests.processes import descendants

# how long a child may be seen and still be the openai client's `uname -p` probe (engines live far longer)
PROBE_SECONDS = 2.0


def run_watched(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict, float]:
    """Run the CLI; its children as {(pid, create time): (command lines seen, seconds seen)} and the wall."""
    env = {k: v for k, v in user_env().items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    argv = [sys.executable, "-m", "doppel.flows.cli", *args]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sightings: dict = {}
    while proc.poll() is None:
        now = time.monotonic()
        for key, cmd in tree(proc.pid).items():
            if key[0] != proc.pid:
                cmds, first, _ = sightings.get(key, (set(), now, now))
                sightings[key] = (cmds | {cmd}, first, now)
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    elapsed = time.monotonic() - started
    children = {key: (cmds, last - first) for key, (cmds, first, last) in sightings.items()}
    print(f"{' '.join(args)} -> {elapsed:.1f} s")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), children, elapsed


def tree(pid: int) -> dict:
    """`pid` and its descendants now, as {(pid, create time): command line}."""
    now: dict = {}
    descendants(pid, now)
    return now


def engines(done: subprocess.CompletedProcess, children: dict) -> dict:
    """The children that are not the openai client's short-lived `uname -p` probe."""
    own = " ".join(done.args)[:200]
    return {
        key: (cmds, seen)
        for key, (cmds, seen) in children.items()
        if not (cmds <= {own, "uname -p"} and seen < PROBE_SECONDS)
    }


def check_fast(done: subprocess.CompletedProcess, children: dict, elapsed: float, *fragments: str) -> str:
    line = assert_one_error_line(done, *fragments)
    started = engines(done, children)
    assert started == {}, f"processes were started before the input was checked: {started}"
    assert elapsed < 30, f"{elapsed:.1f} s to report a wrong input"
    return line


def test_wrong_data_dir(tmp_path):
    missing = tmp_path / "no" / "ml-100k"
    done, children, elapsed = run_watched(
        "run", "--dataset", "ml-100k", "--data-dir", str(missing), "--db", str(tmp_path / "d.duckdb"), tmp_path=tmp_path
    )
    check_fast(done, children, elapsed, str(missing), "--data-dir")


def test_folder_without_ml100k_files(tmp_path):
    done, children, elapsed = run_watched(
        "run",
        "--dataset",
        "ml-100k",
        "--data-dir",
        str(tmp_path),
        "--db",
        str(tmp_path / "d.duckdb"),
        tmp_path=tmp_path,
    )
    check_fast(done, children, elapsed, str(tmp_path), "u.data")


@pytest.mark.parametrize("dataset", ["ml-100k", "movielens"])
def test_nonexistent_fold_in_the_users_terms(dataset, tmp_path):
    data = write_ml100k(tmp_path / "data")
    for name in ("u2", "u3", "u4", "u5", "ua"):  # the fixture has u1 only: give it the five folds and ua
        for part in ("base", "test"):
            (data / f"{name}.{part}").write_text((data / f"u1.{part}").read_text())
    done, children, elapsed = run_watched(
        "run", "--dataset", dataset, "--data-dir", str(data), "--fold", "u1,u9", "--db", str(tmp_path / "d.duckdb"),
        tmp_path=tmp_path,
    )  # fmt: skip
    line = check_fast(done, children, elapsed, "'u9'", "--fold", "u1..u5", str(data))
    assert "item_text" not in line and "ua" not in line and "'u1'" not in line


def test_unreachable_base_url_before_any_engine(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done, children, elapsed = run_watched(
        "run", "--base-url", url, "--model", "m", "--db", str(tmp_path / "d.duckdb"), tmp_path=tmp_path
    )
    check_fast(done, children, elapsed, "cannot reach", url)


def test_unknown_embedded_model(tmp_path):
    done, children, elapsed = run_watched(
        "run", "--model", "no-such-model", "--db", str(tmp_path / "d.duckdb"), tmp_path=tmp_path
    )
    check_fast(done, children, elapsed, "'no-such-model'", "qwen2.5-0.5b")


def test_unknown_user_ids_of_a_stored_dataset(tmp_path):
    """--user-ids that are no test users of a dataset --db holds: one line before any engine, no run row."""
    db = tmp_path / "d.duckdb"
    ingested = cli("ingest", "--dataset", "synthetic", "--db", str(db), timeout=300)
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    url = f"http://127.0.0.1:{closed_port()}/v1"  # never asked: the ids are refused first
    done, children, elapsed = run_watched(
        "run", "--user-ids", "1,no-such-user", "--base-url", url, "--model", "m", "--db", str(db), tmp_path=tmp_path
    )
    check_fast(done, children, elapsed, "no-such-user", "fold 'u1'")
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 0


def test_missing_db_folder_and_ensemble_fold(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    db = tmp_path / "a-file" / "d.duckdb"  # a missing folder is made; one under a file cannot be
    done, children, elapsed = run_watched("run", "--db", str(db), tmp_path=tmp_path)
    check_fast(done, children, elapsed, str(tmp_path / "a-file"), "--db")
    done, children, elapsed = run_watched(
        "ensemble", "--fold", "u6", "--db", str(tmp_path / "d.duckdb"), tmp_path=tmp_path
    )
    check_fast(done, children, elapsed, "'u6'", "--fold")


def test_movielens_alias_loads_a_fresh_database(tmp_path):
    """`--dataset movielens` is ml-100k, also when nothing is stored yet (it was "unknown dataset")."""
    data = write_ml100k(tmp_path / "data")
    db = tmp_path / "d.duckdb"
    done = cli("ingest", "--dataset", "movielens", "--data-dir", str(data), "--db", str(db), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dataset ml-100k loaded" in " ".join(done.stdout.split())


def test_score_of_an_unknown_run_or_a_missing_file(tmp_path):
    """`doppel score` checked nothing before it started Prefect: a wrong run id crashed in the scoring with
    a traceback, after the gate had recorded it as passed, and a missing --db file was created."""
    import duckdb

    from doppel.tasks.store.db import init_db

    missing = tmp_path / "nowhere" / "x.duckdb"
    done, children, elapsed = run_watched("score", "--run-id", "r1", "--db", str(missing), tmp_path=tmp_path)
    check_fast(done, children, elapsed, "no DuckDB file", str(missing))
    assert done.returncode == 2 and not missing.parent.exists()
    db = tmp_path / "d.duckdb"
    init_db(db)
    done, children, elapsed = run_watched("score", "--run-id", "nosuch", "--db", str(db), tmp_path=tmp_path)
    check_fast(done, children, elapsed, "no run 'nosuch'", "it has no runs")
    assert done.returncode == 2
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from validation_results").fetchone() == (0,)
    done, children, elapsed = run_watched("run", "--users", "0", "--db", str(db), tmp_path=tmp_path)
    check_fast(done, children, elapsed, "--users 0")
    done, children, elapsed = run_watched("rl", "--db", str(tmp_path / "none.duckdb"), tmp_path=tmp_path)
    check_fast(done, children, elapsed, "no such DuckDB file")
    assert done.returncode == 2


def test_arena_entrants_are_checked_before_any_engine(tmp_path):
    """An unknown --only name was reported only after Prefect and Dask had started; one entrant ran a whole
    fold to print rank agreements that cannot exist (NaN) under dozens of numpy warnings."""
    db = str(tmp_path / "d.duckdb")
    done, children, elapsed = run_watched("arena", "--only", "random,no_such", "--db", db, tmp_path=tmp_path)
    check_fast(done, children, elapsed, "--only", "'no_such'")
    done, children, elapsed = run_watched("arena", "--only", "random", "--db", db, tmp_path=tmp_path)
    check_fast(done, children, elapsed, "two or more", "['random']", "--only")
    assert not (tmp_path / "d.duckdb").exists()


def test_no_dask_scheduler_a_missing_graph_file_and_values_out_of_range(tmp_path):
    """An unreachable --dask-address was Dask's traceback after 30 s; a missing --graph-file was read after
    the agents' profiles were built; `--rpm -5` and `--timeout 0` ran, each pair failing."""
    db = str(tmp_path / "d.duckdb")
    scheduler = f"tcp://127.0.0.1:{closed_port()}"
    for command in ("run", "arena", "ensemble"):
        done, children, elapsed = run_watched(command, "--dask-address", scheduler, "--db", db, tmp_path=tmp_path)
        check_fast(done, children, elapsed, scheduler, "no Dask scheduler", "--dask-address")
    done, children, elapsed = run_watched("run", "--dask-address", "tcp://host:port", "--db", db, tmp_path=tmp_path)
    check_fast(done, children, elapsed, "tcp://host:port", "tcp://host:port")
    missing = str(tmp_path / "friends.csv")
    done, children, elapsed = run_watched("sandbox", "--graph-file", missing, "--db", db, tmp_path=tmp_path)
    check_fast(done, children, elapsed, missing, "--graph-file")
    for option, value in (("--rpm", "-5"), ("--timeout", "0"), ("--temperature", "-1")):
        done, children, elapsed = run_watched("run", option, value, "--db", db, tmp_path=tmp_path)
        check_fast(done, children, elapsed, option, "greater than")
    assert not (tmp_path / "d.duckdb").exists()
