"""Bad input at run time gets one clear line on stderr and a non-zero exit, never a traceback: a bad key,
an endpoint failing every call, a locked database, Ctrl-C, a 404 endpoint under the deployed flow.

Every case runs the real CLI or flow as a subprocess; the Ctrl-C test runs the whole stack (its own
Prefect API server, Dask LocalCluster) to check that every process it started ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

from doppel.tasks.trust import ALLOWED_ENDPOINTS_ENV, DATA_ROOTS_ENV
from tests._bad_input import GOOD_KEY, REPO, SYNTHETIC, assert_one_error_line, cli, run_args, user_env
from tests.processes import alive, descendants, doppel_run, marked, wait_gone

pytestmark = pytest.mark.slow


class _AuthHandler(BaseHTTPRequestHandler):
    """OpenAI-style 401 unless `Authorization: Bearer GOOD_KEY`; `/models` may be public."""

    models_public = False

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        return self.headers.get("authorization") == f"Bearer {GOOD_KEY}"

    def _reject(self) -> None:
        self.server.rejected += 1
        self._send(
            401,
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        )

    def do_GET(self) -> None:  # noqa: N802
        if self.path.endswith("/models") and (self.models_public or self._authorised()):
            return self._send(
                200,
                {
                    "object": "list",
                    "data": [{"id": "doppel-test-model", "object": "model", "created": 0, "owned_by": "test"}],
                },
            )
        self._reject()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._reject()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def auth_server(models_public: bool):
    handler = type("Handler", (_AuthHandler,), {"models_public": models_public})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.rejected = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("models_public", [False, True], ids=["all_routes_401", "chat_only_401"])
def test_bad_api_key(models_public, tmp_path, prefect_server):
    """A rejected key stops the run at once with one line (not one failed pair per call)."""
    with auth_server(models_public) as (server, url):
        done = cli(*run_args(tmp_path, url, *SYNTHETIC), env={"OPENAI_API_KEY": "sk-bad-key-000"})
        line = assert_one_error_line(done, "401")
        assert "API key" in line
        assert "sk-bad-key-000" not in done.stdout + done.stderr
        assert server.rejected > 0


def test_endpoint_failing_every_call_records_failed_pairs(prefect_server, llm_server, run_settings):
    """The endpoint answers every call with HTTP 500 (after the client's retries): no crash, no gate
    failure; every requested pair is recorded failed with its reason and the run is left incomplete."""
    from doppel.flows.simulate import simulate

    llm_server.configure(http_500=1.0)
    settings = run_settings(run_id="all-500", users=3, baselines=False)
    summary = simulate(settings)
    assert summary["status"] == "incomplete"
    con = duckdb.connect(settings.db, read_only=True)
    try:
        pairs = con.execute("select sum(n_pairs) from run_users where run_id = 'all-500'").fetchone()[0]
        rows = con.execute("select status, reason from simulated_ratings where run_id = 'all-500'").df()
    finally:
        con.close()
    assert len(rows) == pairs > 0 and set(rows["status"]) == {"failed"}
    assert rows["reason"].str.contains("HTTP 500").all(), rows["reason"].unique()


def test_unknown_user_ids_on_a_fresh_database_record_no_run(prefect_server, llm_server, run_settings):
    """The dataset is not stored yet, so the preflight cannot check --user-ids: the flow refuses them
    after loading it, before the run is recorded (no `failed` run row to clean up) and before any LLM call."""
    from doppel.flows.simulate import simulate

    settings = run_settings(run_id="no-such-users", users=None, user_ids=["no-such-user"], baselines=False)
    with pytest.raises(ValueError, match=r"no-such-user.*not test users of fold 'u1'"):
        simulate(settings)
    assert llm_server.stats()["requests"] == 0
    with duckdb.connect(settings.db, read_only=True) as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 0
        assert con.execute("select count(*) from ratings").fetchone()[0] > 0  # the dataset was loaded


# ----------------------------------------------------------------------------- a locked database


def hold_db(db: Path, seconds: float) -> subprocess.Popen:
    """A child process holding the DuckDB file read-write for `seconds`."""
    code = (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); con.execute('create table if not exists "
        "holder(x int)'); print('HOLDING', flush=True); time.sleep(float(sys.argv[2])); con.close()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HOLDING"
    return proc


def test_locked_database_is_waited_for(tmp_path, prefect_server, llm_server):
    """A short lock (someone's `duckdb` shell) is waited out with backoff: the run then succeeds."""
    db = tmp_path / "d.duckdb"
    holder = hold_db(db, 6)
    try:
        done = cli(*run_args(tmp_path, llm_server.base_url, *SYNTHETIC, db=db))
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stderr[-3000:]


def test_locked_database_fails_with_one_line(tmp_path, prefect_server, llm_server):
    """A lock that is not released: one line naming the file and the lock, after a configurable wait.

    doppel waits up to 120 s by default; the test shortens it with DOPPEL_DB_LOCK_WAIT_S.
    """
    db = tmp_path / "d.duckdb"
    holder = hold_db(db, 300)
    try:
        started = time.monotonic()
        try:
            done = cli(
                *run_args(tmp_path, llm_server.base_url, *SYNTHETIC, db=db),
                env={"DOPPEL_DB_LOCK_WAIT_S": "3"},
                timeout=75,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("doppel waited > 75 s for the locked database: DOPPEL_DB_LOCK_WAIT_S is not honoured")
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert_one_error_line(done, str(db), "locked")
    assert waited < 60


# ----------------------------------------------------------------------------- Ctrl-C


def _done_users(db: Path) -> int:
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        return 0  # not created yet, or the writer holds it right now
    try:
        return con.execute("select count(*) from run_users where status = 'done'").fetchone()[0]
    except duckdb.Error:
        return 0
    finally:
        con.close()


@pytest.mark.parametrize(
    "how",
    ["ctrl_c", "sigterm"],
    ids=["ctrl_c_to_the_process_group", "sigterm_to_the_main_process"],
)
def test_interrupt_stops_cleanly(how, tmp_path, llm_server):
    """Ctrl-C (SIGINT to the process group, what a terminal sends) or SIGTERM to doppel's main process
    (what `kill` or a service manager sends), mid-run, on the full stack: one line, no traceback,
    every process doppel started gone, finished users kept.

    20 users at concurrency 2: users run a few at a time, so the first finished users are written
    long before the last start (with 8 they all finished together on a loaded machine, before Ctrl-C).
    """
    llm_server.configure(latency=0.3)
    db = tmp_path / "d.duckdb"
    env = {k: v for k, v in user_env().items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"))
    argv = doppel_run(llm_server.base_url, db, "ctrl-c", 20, 2, "--no-baselines")
    at = argv.index("--run-id")
    del argv[at : at + 2]  # a new run: the message must name the id it was given
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as a terminal's foreground job: a shell's background job (pytest started with `&`) ignores SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: dict = {}
    deadline = time.monotonic() + 150
    try:
        while _done_users(db) < 1:  # the event: a first user written
            assert proc.poll() is None, f"doppel ended before the interrupt: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no user finished in 150 s"
            descendants(proc.pid, seen)
            time.sleep(0.3)
        descendants(proc.pid, seen)
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    line = assert_one_error_line(done, "interrupted: finished users are saved; rerun with --run-id ")
    run_id = line.split("--run-id ")[1].split()[0]
    assert proc.returncode == (130 if how == "ctrl_c" else 143)  # 128 + the signal, as a shell reports it
    assert wait_gone(seen, timeout=30) == [], f"still running after the interrupt: {alive(seen)}"
    con = duckdb.connect(str(db), read_only=True)
    try:
        status = con.execute("select status from runs where run_id = ?", [run_id]).fetchall()
        users = con.execute(
            "select u.status, u.n_pairs, count(s.item_id) from run_users u left join "
            "simulated_ratings s using (run_id, fold, user_id) where u.run_id = ? "
            "group by u.fold, u.user_id, u.status, u.n_pairs",
            [run_id],
        ).fetchall()
    finally:
        con.close()
    assert status == [("interrupted",)]
    done_users = [u for u in users if u[0] == "done"]
    assert done_users and all(n_pairs == n_rows for _, n_pairs, n_rows in done_users), users
    assert all(n_rows == 0 for s, _, n_rows in users if s == "pending"), users


def test_dask_logs_of_peers_gone_stay_off_the_terminal():
    """An interrupt closes the cluster under running tasks: a worker's heartbeat then finds the scheduler
    gone and the scheduler a client gone, and distributed logs each with a traceback (1 SIGTERM in 5
    showed one). Those are dropped, in the scheduler's process and on every worker; other records stay."""
    import io
    import logging

    from distributed.comm.core import CommClosedError

    from doppel.flows.runtime.worker_plugin import drop_gone_peer_logs

    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)  # as distributed's own handler on stderr
    logger = logging.getLogger("distributed")
    logger.addHandler(handler)
    try:
        drop_gone_peer_logs()
        drop_gone_peer_logs()  # a handler gets the filter once
        assert len(handler.filters) == 1
        for exc in (CommClosedError("ConnectionPool closing."), ValueError("a worker's real error")):
            try:
                raise exc
            except Exception:
                logging.getLogger("distributed.worker").exception("Failed to communicate with scheduler")
    finally:
        logger.removeHandler(handler)
    printed = terminal.getvalue()
    assert "ConnectionPool closing" not in printed
    assert "a worker's real error" in printed and printed.count("Traceback") == 1


class _NotFound(BaseHTTPRequestHandler):
    """An endpoint that answers 404 to everything (a wrong --base-url path, a proxy without the API)."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "not found"}}')

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *args) -> None:
        pass


def test_deployment_flow_from_python_leaves_no_process(tmp_path):
    """The `doppel-job` deployment's flow called from Python (a notebook, a worker) against an endpoint
    answering 404, with no Prefect API configured: every process it started (Prefect's API server, the
    Dask workers) is gone when the interpreter exits. Processes are found by a marker in their
    environment, so ones re-parented to init count too."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    marker = f"doppel-leftover-{os.getpid()}-{time.monotonic_ns()}"
    env = {k: v for k, v in user_env().items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), DOPPEL_TEST_MARKER=marker)
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    env.update(
        {ALLOWED_ENDPOINTS_ENV: url, DATA_ROOTS_ENV: str(tmp_path)}
    )  # the operator allows them (a worker's trust)
    script = (
        "from doppel.flows.deploy import run_job\n"
        f"run_job(dataset='synthetic', users=2, db={str(tmp_path / 'd.duckdb')!r}, "
        f"base_url={url!r}, model='m', timeout=5, baselines=False)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0 and "incomplete" in done.stderr, f"the flow did not run: {done.stderr[-3000:]}"
    left = wait_gone(marked(marker), timeout=30)
    assert left == [], f"still running after the interpreter exited: {left}"
