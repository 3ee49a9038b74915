"""The product pictures of the README and the docs, made from runs on the REAL embedded model.

    python benchmarks/pictures.py [--users 2] [--agents 2] [--work-dir /tmp/doppel-pictures]

What it does (the embedded 0.5B model on the CPU: tens of seconds per call on an idle machine, minutes
on a loaded one; `taskset -c 1 python benchmarks/pictures.py` gives the server one core and one
thread, which wastes less when other jobs share the cores):
1. `doppel run --users N --history-n 20 --max-test-items 5 --no-update` on the synthetic dataset (the
   embedded model; one profile call and one rating call per user), then `doppel report`; headless Chromium screenshots the report ->
   benchmarks/results/report.png.
2. `doppel sandbox --agents A --rounds 1 --profile-run-id <that run>` (the agents' profiles come from
   the run: no profile calls), then `doppel ui --sandbox-id <it>`; Chromium screenshots the page once
   it shows the agents and the round's log -> benchmarks/results/sandbox_ui.png.
3. benchmarks/results/pictures.md: date, command, commit, machine, the run and sandbox ids, each
   step's command and wall time.

Needs chromium on PATH (`apt-get install -y chromium`) and Playwright (the `dev` extra). Rerunning
with the same --work-dir reuses the runs (a finished run and sandbox answer from the database and the
response cache: no LLM call). The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _provenance import RESULTS, write_result

RUN_ID = "pictures-run"
SANDBOX_ID = "sbx-pictures"
URL = re.compile(r"https?://127\.0\.0\.1:\d+/\S*")


def doppel(*args: str, work: Path, timeout: float = 3 * 3600) -> tuple[str, float]:
    """Run `doppel ...` in the work dir; its output and wall time. Fails loudly with the output's tail."""
    cmd = [sys.executable, "-m", "doppel.flows.cli", *args]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, env=_env(work))
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(
            f"doppel {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    print(f"doppel {' '.join(args)}: {wall:.0f} s", flush=True)
    return done.stdout, wall


def _env(work: Path) -> dict:
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect-home"), COLUMNS="200")
    env.pop("PREFECT_API_URL", None)
    return env


def screenshot(url: str, out: Path, width: int, wait_js: str | None = None, full_page: bool = True) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(url)
            if wait_js:
                page.wait_for_function(wait_js, timeout=120_000)
            page.wait_for_timeout(1500)  # the page's last poll and layout
            page.screenshot(path=str(out), full_page=full_page)
        finally:
            browser.close()


def ui_screenshot(work: Path, db: Path, out: Path, width: int) -> float:
    """`doppel ui` on the finished sandbox, its page in Chromium, then the server stopped."""
    started = time.monotonic()
    port = _free_port()
    cmd = [sys.executable, "-m", "doppel.flows.cli", "ui", "--db", str(db), "--sandbox-id", SANDBOX_ID]
    cmd += ["--port", str(port)]
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(work),
        start_new_session=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    raise SystemExit(f"doppel ui exited ({proc.returncode}) before it served")
                continue
            print("ui:", line.rstrip(), flush=True)
            match = URL.search(line)
            url = match.group(0) if match else None
        if url is None:
            raise SystemExit("doppel ui printed no URL within 300 s")
        _wait_http(url)
        wait = (
            "document.querySelectorAll('#agents .agent').length > 0 && document.querySelectorAll('#log li').length > 0"
        )
        screenshot(url, out, width, wait)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - started


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=2, help="synthetic users simulated for the report")
    ap.add_argument("--agents", type=int, default=2, help="sandbox agents (one round)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/doppel-pictures"))
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="the run's sampling temperature (at 0 a small model may repeat a rejected profile on every re-ask)",
    )
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds per LLM call: a loaded machine slows the CPU model a lot"
    )
    args = ap.parse_args()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    db = work / "pictures.duckdb"

    timeout = ["--timeout", f"{args.timeout:g}"]
    run_args = [
        "run",
        "--users",
        str(args.users),
        "--history-n",
        "20",
        "--max-test-items",
        "5",
        "--no-update",
        *timeout,
    ]
    run_args += ["--temperature", f"{args.temperature:g}", "--db", str(db), "--run-id", RUN_ID]
    _, run_s = doppel(*run_args, "--no-progress", work=work)
    report = work / "report.html"
    _, report_s = doppel("report", "--db", str(db), "--run-id", RUN_ID, "--out", str(report), work=work)
    screenshot(report.as_uri(), RESULTS / "report.png", args.width)

    sandbox_args = ["sandbox", "--agents", str(args.agents), "--rounds", "1", "--profile-run-id", RUN_ID]
    sandbox_args += ["--sandbox-id", SANDBOX_ID, "--db", str(db), *timeout]
    _, sandbox_s = doppel(*sandbox_args, "--no-progress", work=work)
    ui_s = ui_screenshot(work, db, RESULTS / "sandbox_ui.png", args.width)

    calls = _count_calls(db)
    body = "\n".join(
        [
            "The README's and the docs' pictures of the report and the sandbox page, from runs on the embedded",
            f"model (the default, qwen2.5-0.5b) in `{work}`: run `{RUN_ID}`, sandbox `{SANDBOX_ID}`; "
            f"{calls} LLM calls over HTTP in the file (cached answers not counted).",
            "",
            "| step | command | wall |",
            "|---|---|---|",
            f"| the run | `doppel {' '.join(run_args)} --no-progress` | {run_s:.0f} s |",
            f"| the report | `doppel report --db ... --run-id {RUN_ID} --out report.html` | {report_s:.0f} s |",
            f"| the sandbox | `doppel {' '.join(sandbox_args)} --no-progress` | {sandbox_s:.0f} s |",
            f"| the page | `doppel ui --db ... --sandbox-id {SANDBOX_ID}`, then Chromium | {ui_s:.0f} s |",
            "",
            "![the report](report.png)",
            "",
            "![the sandbox page](sandbox_ui.png)",
        ]
    )
    result = f"RESULT run_s={run_s:.0f} sandbox_s={sandbox_s:.0f} llm_calls={calls}"
    print("wrote", write_result("pictures", "# Product pictures (benchmarks/pictures.py)", body, result))
    print(result)


def _count_calls(db: Path) -> int:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("select count(*) from llm_calls where not cached").fetchone()[0]


if __name__ == "__main__":
    main()
