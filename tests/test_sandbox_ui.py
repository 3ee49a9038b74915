"""`doppel ui` in headless Chromium (Playwright, Debian's /usr/bin/chromium): start a small sandbox from the page
against the HTTP LLM test server, see log lines, rounds, agents and the graph; pause, continue, reset.

Also saves the README screenshot to benchmarks/results/sandbox_ui.png.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sandbox_ui.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium"),
]


@pytest.fixture
def ui_url(prefect_server, run_settings, llm_server):
    import uvicorn

    from doppel.flows.runtime import free_port
    from doppel.flows.sandbox_ui import SandboxController, create_app
    from doppel.tasks.sandbox.config import SandboxSettings

    llm_server.configure(latency=0.05)  # a round takes a few seconds: the page sees it happen
    settings = SandboxSettings(
        run=run_settings(synthetic_users=16, synthetic_items=60), agents=4, rounds=2, seed=1, activity=1.0
    )
    controller = SandboxController(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(controller), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", controller
    if controller.control is not None:
        controller.control.stop.set()
    if controller.thread is not None:
        controller.thread.join(timeout=120)
    server.should_exit = True
    thread.join(timeout=10)


def test_the_page_runs_pauses_continues_and_resets_a_sandbox(ui_url):
    url, controller = ui_url
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
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
            page.wait_for_function(
                "document.getElementById('round').textContent === '3' && "
                "document.getElementById('status').textContent === 'finished'",
                timeout=180_000,
            )
            page.wait_for_function("document.querySelectorAll('#agents .agent').length === 4", timeout=20_000)
            page.wait_for_function("document.querySelectorAll('#graph circle').length === 4", timeout=20_000)
            time.sleep(1.5)  # one more log poll
            lines = page.eval_on_selector_all("#log li.line", "els => els.map(e => e.textContent)")
            rounds_seen = {line.split()[0] for line in lines}
            assert {"r1", "r2", "r3"} <= rounds_seen, lines[:5]
            db_lines = controller.read("sandbox_log", after_action=0, after_message=0, limit=100_000)
            assert len(lines) == len(db_lines) > 0  # every action and chat line once, none twice
            page.click("#agents .agent summary")
            assert "Before: watched" in page.text_content("#agents") or page.locator(".mem").count() > 0
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            sandbox = page.text_content("#sandbox")
            page.click("#reset")
            page.wait_for_function(f"document.getElementById('sandbox').textContent !== '{sandbox}'", timeout=10_000)
            assert page.text_content("#round") == "0" and page.locator("#log li").count() == 0
            assert not errors, errors
        finally:
            browser.close()
