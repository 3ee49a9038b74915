"""Output into a pipe (`doppel run ... > run.log 2>&1`): full lines, no ellipsis, progress lines as the run goes.

The real CLI runs as a subprocess with stdout and stderr to pipes (not a terminal): Rich would assume 80
columns there and cut lines and tables with '…', and draw its progress bar only at the end.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests._bad_input import REPO, user_env

pytestmark = pytest.mark.slow


def doppel(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "doppel.flows.cli", *args],
        cwd=REPO,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def no_cut_line(text: str) -> None:
    cut = [line for line in text.splitlines() if "…" in line]
    assert cut == [], "cut lines:\n" + "\n".join(cut[:10])


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory, prefect_server, llm_server_session):
    """One run at concurrency 1 against a server that takes 1 s per call: its fan-out lasts > 8 s."""
    llm_server_session.app.reset()
    llm_server_session.app.configure(latency=1.0, faults={}, max_concurrency=None)
    db = tmp_path_factory.mktemp("pipe") / "d.duckdb"
    done = doppel(
        "run", "--base-url", llm_server_session.base_url, "--model", "doppel-test-model", "--users", "3",
        "--concurrency", "1", "--runner", "threads", "--db", str(db), "--run-id", "piped",
    )  # fmt: skip
    llm_server_session.app.configure(latency=0.0)
    return done, db


def test_run_log_has_progress_lines_and_whole_lines(piped_run):
    done, _ = piped_run
    no_cut_line(done.stdout + done.stderr)
    progress = [line for line in done.stderr.splitlines() if line.startswith("simulating ")]
    # 8+ calls one after another at 1 s each: at least one line while it runs, one at the end
    assert len(progress) >= 2, done.stderr[-2000:]
    assert progress[-1].startswith("simulating users 3/3")
    assert "calls" in progress[-1] and "tokens" in progress[-1] and "elapsed" in progress[-1]
    assert done.stdout.splitlines()[0] == "new run piped"  # said before the work: not a resumed run
    summary = [line for line in done.stdout.splitlines() if line.startswith("run piped finished:")]
    assert summary and summary[0].endswith("tokens in all"), done.stdout
    table = [line for line in done.stdout.splitlines() if line.startswith("| llm ")]
    assert table and table[0].endswith("|"), done.stdout  # a Markdown row, whole


def test_a_finished_run_rerun_says_so_first(piped_run, llm_server_session):
    _, db = piped_run
    done = doppel(
        "run", "--base-url", llm_server_session.base_url, "--model", "doppel-test-model", "--users", "3",
        "--concurrency", "1", "--runner", "threads", "--db", str(db), "--run-id", "piped",
    )  # fmt: skip
    assert done.stdout.splitlines()[0] == "finished run piped: its stored results, nothing to run", done.stdout


def test_every_view_is_readable_in_a_pipe(piped_run):
    _, db = piped_run
    views = doppel("sql", "--list").stdout.split()
    assert "rating_distributions" in views
    for view in views:
        out = doppel("sql", "--db", str(db), "--view", view).stdout
        no_cut_line(out)
        header = next((line for line in out.splitlines() if line.startswith("| ")), None)
        if view == "rating_distributions":
            names = [cell.strip() for cell in header.strip("|").split("|")]
            assert names[:4] == ["run_id", "fold", "user_id", "item_id"], header
            row = out.splitlines()[out.splitlines().index(header) + 2]
            assert [cell.strip() for cell in row.strip("|").split("|")][:2] == ["piped", "u1"], row


@pytest.mark.parametrize("command", [[], ["run"], ["sandbox"], ["ensemble"], ["sql"], ["serve"]])
def test_help_is_not_wrapped_or_cut(command):
    out = doppel(*command, "--help").stdout
    no_cut_line(out)
    if command == ["run"]:
        line = next(line for line in out.splitlines() if line.strip().startswith("--concurrency-limit"))
        assert "Prefect global concurrency limit" in line, line


def test_models_speed_is_the_one_measured_in_the_database(piped_run):
    """`doppel models` states no typed-in speed: its s/call is the median of the database's own rating calls."""
    from doppel.flows.cli_run import measured_speed

    _, db = piped_run
    speed = measured_speed(db)["doppel-test-model"]  # the test server answers each call after 1 s
    seconds, calls = speed.split(" s (")
    assert float(seconds) >= 1.0 and int(calls.split()[0]) >= 3, speed
    out = doppel("models", "--db", str(db)).stdout
    no_cut_line(out)
    assert "qwen2.5-0.5b" in out and "per rating call" in out and "~7.7" not in out


def test_dry_run_times_the_run_at_the_speed_measured_in_the_database(piped_run, llm_server_session):
    """The dry run's wall time uses the mean s/call of this model's calls in --db; with none recorded
    (another file) it shows a few speeds and says how to measure one."""
    from doppel.tasks.estimate import measured_speed

    _, db = piped_run
    seconds, calls = measured_speed(db, every_call=True)["doppel-test-model"]
    assert seconds >= 1.0 and calls > measured_speed(db)["doppel-test-model"][1]  # 1 s per call; profiles too
    args = ("run", "--base-url", llm_server_session.base_url, "--model", "doppel-test-model", "--users", "3")
    out = doppel(*args, "--dry-run", "--db", str(db)).stdout
    no_cut_line(out)
    assert f"wall at {seconds:.1f} s/call (mean of {calls:,} calls in --db), concurrency 8" in out, out
    other = db.parent / "other.duckdb"
    out = doppel(*args, "--dry-run", "--db", str(other)).stdout
    assert "median of" not in out and "wall at 0.5 s/call, concurrency 8" in out, out
    assert "no call of doppel-test-model is recorded" in out, out
