"""An OpenAI-compatible LLM test server for doppel's tests and benchmarks.

It answers ``POST /v1/chat/completions`` with well-formed doppel answers (ratings that are a hash of item
and profile, i.e. uniform noise, and short profiles), with a fixed latency, an optional server-side concurrency cap and seeded fault
injection (see ``llm_faults``). Admin endpoints expose what happened:
``GET /_admin/stats``, ``GET /_admin/log``, ``GET|POST /_admin/config``, ``POST /_admin/reset``.

Modules: ``llm_faults`` (answers and faults), ``server_options``, ``llm_asgi`` (responses and the
per-request bookkeeping), ``llm_app`` (the ASGI app); this one runs it (thread or subprocess).

In-process::

    with LLMTestServer(latency=0.1, http_500=0.2) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")

Subprocess (from the repo root)::

    python -m doppel.testing.llm_server --port 0 --latency 0.5 --http-429 0.1
    # prints "LISTENING http://127.0.0.1:<port>/v1" once it accepts connections
"""

from __future__ import annotations

import argparse
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import uvicorn

# re-exported: tests and benchmarks import the whole API from here
from .llm_app import AnswerFn, LLMApp
from .llm_faults import (  # noqa: F401
    CONTENT_FAULTS,
    FAULTS,
    HTTP_FAULTS,
    answer_layout,
    check_rates,
    choose_fault,
    count_tokens,
    digit_probs,
    expected_rating,
    expected_ratings,
    fault_rng,
    message_text,
    profile_answer,
    profile_text,
    ratings_answer,
    request_kind,
    requested_ids,
    sampled_ratings,
    sandbox_answer,
    schema_answer,
    spoil_ratings,
    token_logprobs,
)
from .server_options import ServerOptions

HOST = "127.0.0.1"


# ----------------------------------------------------------------------------- running it


class _UvicornServer(uvicorn.Server):
    def __init__(self, app: LLMApp, on_started: Callable[[], None], log_level: str = "warning"):
        super().__init__(
            uvicorn.Config(
                app,
                http="h11",
                ws="none",
                loop="asyncio",
                lifespan="off",
                log_config=None,
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=1,
                backlog=2048,
            )
        )
        self._on_started = on_started
        self._llm_app = app

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_started()

    async def shutdown(self, sockets=None) -> None:
        self._llm_app.begin_shutdown()  # hung and trickling requests drop their connections
        await super().shutdown(sockets=sockets)


def _bind(port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only then (else +40 ms per keep-alive request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    return sock


class LLMTestServer:
    """The test server on a background thread. ``options``: ServerOptions fields and fault rates."""

    def __init__(self, port: int = 0, answer_fn: AnswerFn | None = None, **options: Any):
        opts = ServerOptions()
        opts.update(**options)
        self.app = LLMApp(opts, answer_fn)
        self.port = port
        self.base_url: str | None = None
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; return the base URL ``http://127.0.0.1:PORT/v1``."""
        if self._thread is not None and self.base_url is not None:
            return self.base_url
        sock = _bind(self.port)
        self.app.new_loop()
        self.port = sock.getsockname()[1]
        started = threading.Event()
        self._server = _UvicornServer(self.app, on_started=started.set)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"llm-test-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not started.wait(0.02):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"LLM test server did not start on port {self.port}")
        self.base_url = f"{self.root_url}/v1"
        return self.base_url

    def stop(self) -> None:
        """Stop serving; hung or trickling requests drop their connections at once."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = self._thread = None

    def __enter__(self) -> LLMTestServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict:
        return self.app.stats()

    def log(self) -> list[dict]:
        return self.app.log()

    def configure(self, **changes: Any) -> dict:
        """Change options/fault rates at run time; return the whole configuration."""
        return self.app.configure(**changes)

    def reset(self) -> None:
        self.app.reset()


# ----------------------------------------------------------------------------- subprocess mode


def admin(base_url: str, action: str, payload: dict | None = None) -> Any:
    """Call an admin endpoint of a (subprocess) server: action = stats | log | config | reset."""
    import httpx

    url = f"{base_url.rstrip('/').removesuffix('/v1')}/_admin/{action}"
    post = payload is not None or action == "reset"
    response = httpx.post(url, json=payload or {}) if post else httpx.get(url)
    response.raise_for_status()
    return response.json()


def start_subprocess(timeout: float = 30.0, **options: Any) -> tuple[subprocess.Popen, str]:
    """Run ``python -m doppel.testing.llm_server`` with these options; return (process, base_url). Caller kills it."""
    argv = [sys.executable, "-m", "doppel.testing.llm_server", "--port", str(options.pop("port", 0))]
    ServerOptions().update(**options)  # fail here, not in the child, on a bad option
    for name, value in {**options.pop("faults", {}), **options}.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("LISTENING "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"LLM test server subprocess did not start (exit {proc.returncode}): {line!r}")
    return proc, line.split()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m doppel.testing.llm_server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="warning")
    for f in fields(ServerOptions):
        if f.name != "faults":
            kind = {"max_concurrency": int, "seed": int, "model": str, "other_models": str}.get(f.name, float)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    for fault in FAULTS:
        parser.add_argument(f"--{fault.replace('_', '-')}", type=float, default=None, metavar="RATE")
    args = vars(parser.parse_args(argv))
    port, log_level = args.pop("port"), args.pop("log_level")
    options = ServerOptions()
    options.update(**{k: v for k, v in args.items() if v is not None})
    sock = _bind(port)
    url = f"http://{HOST}:{sock.getsockname()[1]}/v1"
    server = _UvicornServer(LLMApp(options), lambda: print(f"LISTENING {url}", flush=True), log_level)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
