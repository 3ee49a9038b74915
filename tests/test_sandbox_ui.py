"""`doppel ui` started as a user starts it (a subprocess of the CLI), against the HTTP LLM test server.

First the page refuses strangers: no token, a foreign Origin, a foreign Host (DNS rebinding), settings
the model rejects; none of them changes anything. Then headless Chromium (Playwright, Debian's
/usr/bin/chromium) opens the URL the command printed, starts a small sandbox, sees log lines, rounds,
agents and the graph; pauses, continues, resets. Everything is written under temporary folders.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from doppel.testing.llm_server import LLMTestServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ui(prefect_server, tmp_path_factory):
    """`doppel ui --port 0` in a subprocess; yields the URL it printed (with its token)."""
    root = tmp_path_factory.mktemp("ui")
    server = LLMTestServer(latency=0.05)  # a round takes a few seconds: the page sees it happen
    server.start()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_server, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "doppel.flows.cli", "ui", "--port", "0", "--db", str(root / "ui.duckdb")]
    argv += ["--base-url", server.base_url, "--model", "doppel-test-model"]
    log = root / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, url = time.monotonic() + 180, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"doppel ui on (http://127\.0\.0\.1:\d+/\?token=[\w-]+)", log.read_text(errors="replace"))
            url = found.group(1) if found else time.sleep(0.2)
        assert url, f"doppel ui printed no URL (exit {proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}"
        yield {"url": url, "base": url.split("/?")[0], "token": url.split("token=")[1], "server": server, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        server.stop()


def state(ui) -> dict:
    response = httpx.get(f"{ui['base']}/api/state", headers={"Authorization": f"Bearer {ui['token']}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_strangers_are_refused_and_change_nothing(ui):
    base, token = ui["base"], ui["token"]
    auth = {"Authorization": f"Bearer {token}"}
    before = state(ui)
    assert before["status"] == "idle" and before["round"] == 0

    # no token (or a wrong one): the page and every endpoint
    for method, path in [("GET", "/"), ("GET", "/api/state"), ("GET", "/api/log"), ("GET", "/api/agents")]:
        assert httpx.request(method, base + path, timeout=30).status_code == 401, path
    assert httpx.get(f"{base}/?token=not-{token}", timeout=30).status_code == 401
    assert httpx.post(f"{base}/api/start", json={"agents": 2}, timeout=30).status_code == 401
    # another site's page (a cross-site POST carries its Origin), even were it to hold the token
    for path in ("/api/start", "/api/pause", "/api/reset"):
        refused = httpx.post(base + path, json={}, headers={**auth, "Origin": "http://evil.example"}, timeout=30)
        assert refused.status_code == 403 and "Origin" in refused.text, path
    # DNS rebinding: the browser sends the attacker's host name
    port = base.rsplit(":", 1)[1]
    for path in ("/api/log", "/api/agents", "/api/state"):
        refused = httpx.get(base + path, headers={**auth, "Host": f"rebind.evil.example:{port}"}, timeout=30)
        assert refused.status_code == 403 and "Host" in refused.text, path
    # settings the model rejects (the agents >= 1 rule, a recommender that does not exist, unknown keys)
    for body in ({"agents": 0}, {"agents": -3}, {"rounds": -1}, {"recommender": "os.system"}, {"db": "/tmp/x"}):
        assert httpx.post(f"{base}/api/start", json=body, headers=auth, timeout=30).status_code == 422, body
    assert httpx.get(f"{base}/api/log", params={"limit": -1}, headers=auth, timeout=30).status_code == 422

    after = state(ui)
    assert after == before, "a refused request changed the sandbox"
    assert ui["server"].stats()["requests"] == 0, "a refused request spent LLM calls"

    # the printed URL: the page, and a SameSite=Strict cookie that lets the page's own requests through
    page = httpx.get(ui["url"], timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    with httpx.Client(cookies=page.cookies, timeout=30) as client:
        assert client.get(f"{base}/api/state").json()["sandbox_id"] == before["sandbox_id"]
        same_origin = client.get(f"{base}/api/state", headers={"Origin": base})
        assert same_origin.status_code == 200


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium")
def test_the_page_runs_pauses_continues_and_resets_a_sandbox(ui, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(ui["url"])  # as printed: the token rides in the URL, then in the cookie
            assert page.text_content("#status") == "idle" and page.text_content("#round") == "0"
            page.fill("#agents-n", "4")
            page.fill("#rounds-n", "3")
            page.click("#start")
            page.wait_for_selector("#log li.line", timeout=120_000)  # the live log fills while round 1 runs
            page.click("#pause")
            page.wait_for_function("document.getElementById('status').textContent === 'paused'", timeout=120_000)
            paused_at = int(page.text_content("#round"))
            assert 1 <= paused_at < 3
            page.click("#start")  # continues the same sandbox after its last finished round
            try:
                page.wait_for_function(
                    "document.getElementById('round').textContent === '3' && "
                    "document.getElementById('status').textContent === 'finished'",
                    timeout=300_000,
                )
            except playwright.TimeoutError:
                shown = {k: page.text_content(f"#{k}") for k in ("status", "round", "error")}
                pytest.fail(f"the sandbox did not finish: {shown}\n{ui['log'].read_text(errors='replace')[-3000:]}")
            page.wait_for_function("document.querySelectorAll('#agents .agent').length === 4", timeout=20_000)
            page.wait_for_function("document.querySelectorAll('#graph circle').length === 4", timeout=20_000)
            time.sleep(1.5)  # one more log poll
            lines = page.eval_on_selector_all("#log li.line", "els => els.map(e => e.textContent)")
            rounds_seen = {line.split()[0] for line in lines}
            assert {"r1", "r2", "r3"} <= rounds_seen, lines[:5]
            auth = {"Authorization": f"Bearer {ui['token']}"}
            every = httpx.get(f"{ui['base']}/api/log", params={"limit": 100_000}, headers=auth, timeout=30).json()
            assert len(lines) == len(every["lines"]) > 0  # every action and chat line once, none twice
            page.click("#agents .agent summary")
            assert "Before: watched" in page.text_content("#agents") or page.locator(".mem").count() > 0
            page.screenshot(path=str(tmp_path / "sandbox_ui.png"), full_page=True)  # never the tracked picture
            sandbox = page.text_content("#sandbox")
            page.click("#reset")
            page.wait_for_function(f"document.getElementById('sandbox').textContent !== '{sandbox}'", timeout=10_000)
            assert page.text_content("#round") == "0" and page.locator("#log li").count() == 0
            assert not errors, errors
        finally:
            browser.close()
