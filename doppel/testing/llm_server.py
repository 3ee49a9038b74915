"""An OpenAI-compatible LLM test server for doppel's tests and benchmarks.

It answers ``POST /v1/chat/completions`` with well-formed doppel answers (ratings that are a hash of item
and profile, i.e. uniform noise, and short profiles), with a fixed latency, an optional server-side concurrency cap and seeded fault
injection (see ``tests/llm_faults.py``). Admin endpoints expose what happened:
``GET /_admin/stats``, ``GET /_admin/log``, ``GET|POST /_admin/config``, ``POST /_admin/reset``.

In-process::

    with LLMTestServer(latency=0.1, http_500=0.2) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")

Subprocess (from the repo root)::

    python -m doppel.testing.llm_server --port 0 --latency 0.5 --http-429 0.1
    # prints "LISTENING http://127.0.0.1:<port>/v1" once it accepts connections
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import uvicorn

# re-exported: benchmarks import the whole API from here
from .llm_faults import (  # noqa: F401
    CONTENT_FAULTS,
    FAULTS,
    HTTP_FAULTS,
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
    request_kind,
    requested_ids,
    sampled_ratings,
    sandbox_answer,
    schema_answer,
    spoil_ratings,
    token_logprobs,
)

HOST = "127.0.0.1"
AnswerFn = Callable[[str, dict], "str | None"]

# ----------------------------------------------------------------------------- options


@dataclass
class ServerOptions:
    latency: float = 0.0  # seconds per chat request (inside the concurrency slot)
    max_concurrency: int | None = None  # requests beyond it wait; None/0 = unlimited
    seed: int = 0
    retry_after: float = 1.0  # Retry-After of the 429 fault
    hang_seconds: float = 120.0  # the hang fault answers after this (or when the client leaves)
    trickle_seconds: float = 3.0  # the trickle fault spreads its body over this
    model: str = "doppel-test-model"  # listed by /v1/models; answers echo the request's model
    reject_json_schema: bool = False  # act like a server without json_schema support (HTTP 400)
    logprobs: bool = True  # answer token logprobs when asked (False: ignore the request, as some servers do)
    reject_logprobs: bool = False  # reject requests asking for logprobs (HTTP 400), as some models do
    llama_cpp: bool = False  # pose as llama.cpp: GET /props answers, `model` (a .gguf path) served under any name
    other_models: str = ""  # comma list listed beside `model`; then an unlisted model gets 404, as vLLM answers
    faults: dict[str, float] = field(default_factory=dict)  # {fault name: rate in [0, 1]}

    def update(self, **changes: Any) -> None:
        """Apply changes: option names, fault rates by name (``http_500=0.1``: the others stay), or
        ``faults={...}``: the whole fault map (faults not named there drop to 0)."""
        base = self.faults if changes.get("faults") is None else {}
        changes = {**(changes.pop("faults", None) or {}), **changes}
        rates = check_rates({k: v for k, v in changes.items() if k in FAULTS})
        settings = {k: v for k, v in changes.items() if k not in FAULTS}
        names = {f.name for f in fields(self)} - {"faults"}
        if unknown := set(settings) - names:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(names)} and {FAULTS}")
        for name, value in settings.items():
            if name in ("model", "other_models"):
                value = str(value)
            elif name in ("seed", "max_concurrency"):
                value = int(value) if value else (0 if name == "seed" else None)
            else:
                value = float(value)
            if name not in ("model", "other_models") and value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            setattr(self, name, value)
        self.faults = {**base, **rates}

    def listed_models(self) -> list[str]:
        return [self.model, *[m.strip() for m in self.other_models.split(",") if m.strip()]]

    def as_dict(self) -> dict:
        flat = {k: v for k, v in asdict(self).items() if k != "faults"}
        return {**flat, **{f: self.faults.get(f, 0.0) for f in FAULTS}}


# ----------------------------------------------------------------------------- the ASGI app


def completion(model: str, content: str, prompt_tokens: int, cid: str, top_logprobs: int | None = None) -> dict:
    """A chat.completion; with top_logprobs, token logprobs of the content (llm_faults.token_logprobs)."""
    completion_tokens = count_tokens(content)
    logprobs = None if top_logprobs is None else {"content": token_logprobs(content, top_logprobs), "refusal": None}
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "doppel-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def api_error(message: str, type_: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


async def _read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _watch(receive, closing: asyncio.Event) -> str:
    """Finish with "left" once the client disconnects, or "closing" once the server shuts down."""

    async def disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(disconnect()), asyncio.ensure_future(closing.wait())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return "left" if tasks[0] in done else "closing"
    finally:
        for task in tasks:
            task.cancel()


def _start(status: int, length: int, extra: tuple = ()) -> dict:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode()), *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}


async def _send_json(send, status: int, payload: Any, extra: tuple = ()) -> None:
    data = json.dumps(payload).encode()
    await send(_start(status, len(data), extra))
    await send({"type": "http.response.body", "body": data})


async def _drop(send) -> None:
    """Close the socket without a byte of response (httpx: RemoteProtocolError)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)  # uvicorn's h11 cycle
    if transport is None:  # other servers: start a response and abort it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ConnectionAbortedError("drop_connection fault")
    transport.close()  # the caller yields once more afterwards (see _chat), so uvicorn sees it


class LLMApp:
    """The ASGI app. All state lives here; the event loop writes it, other threads read it under a lock."""

    def __init__(self, options: ServerOptions | None = None, answer_fn: AnswerFn | None = None):
        self.options = options or ServerOptions()
        self.answer_fn = answer_fn
        self._lock = threading.Lock()
        self.new_loop()
        self._in_flight = self._active = 0
        self.reset()

    # -- state, safe to call from any thread
    def configure(self, **changes: Any) -> dict:
        with self._lock:
            options = replace(self.options, faults=dict(self.options.faults))
            options.update(**changes)  # validate on a copy: a bad change changes nothing
            self.options = options
            if "max_concurrency" in changes:
                self._slots = self._semaphore()
            return options.as_dict()

    def _semaphore(self) -> asyncio.Semaphore | None:
        n = self.options.max_concurrency
        return asyncio.Semaphore(n) if n else None

    def new_loop(self) -> None:
        """Fresh asyncio primitives: call before serving on a new event loop."""
        self._slots = self._semaphore()
        self._closing = asyncio.Event()  # set when the server shuts down: hung requests then drop

    def begin_shutdown(self) -> None:
        """Called on the event loop when the server starts shutting down."""
        self._closing.set()

    def reset(self) -> None:
        """Forget log, stats and seen bodies (so fault draws start over); keeps the options."""
        with self._lock:
            self._log: list[dict] = []
            self._seen: dict[str, int] = {}
            self._stats = {
                "requests": 0,
                "by_kind": {},
                "by_fault": {},
                "by_status": {},
                "ok": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "max_in_flight": self._in_flight,
                "max_active": self._active,
            }

    def stats(self) -> dict:
        with self._lock:
            stats = json.loads(json.dumps(self._stats))
            return {**stats, "in_flight": self._in_flight, "active": self._active}

    def log(self) -> list[dict]:
        with self._lock:
            return list(self._log)

    # -- ASGI
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        api = path[3:] if path.startswith("/v1/") else path
        if (method, api) == ("POST", "/chat/completions"):
            return await self._chat(receive, send)
        if (method, api) == ("GET", "/models"):
            owner = "llamacpp" if self.options.llama_cpp else "doppel-tests"
            ids = self.options.listed_models()
            data = [{"id": i, "object": "model", "created": 0, "owned_by": owner} for i in ids]
            return await _send_json(send, 200, {"object": "list", "data": data})
        if (method, path) == ("GET", "/props") and self.options.llama_cpp:
            settings = {"n_ctx": 4096, "model": self.options.model}
            props = {"default_generation_settings": settings, "total_slots": 1, "model_path": self.options.model}
            return await _send_json(send, 200, props)
        if (method, path) == ("GET", "/health"):
            return await _send_json(send, 200, {"status": "ok"})
        if (method, path) == ("GET", "/_admin/stats"):
            return await _send_json(send, 200, self.stats())
        if (method, path) == ("GET", "/_admin/log"):
            return await _send_json(send, 200, self.log())
        if (method, path) == ("GET", "/_admin/config"):
            return await _send_json(send, 200, self.options.as_dict())
        if (method, path) == ("POST", "/_admin/config"):
            try:
                return await _send_json(send, 200, self.configure(**json.loads(await _read_body(receive))))
            except (ValueError, TypeError) as exc:
                return await _send_json(send, 400, api_error(str(exc), "invalid_request_error"))
        if (method, path) == ("POST", "/_admin/reset"):
            self.reset()
            return await _send_json(send, 200, {"reset": True})
        await _send_json(send, 404, api_error(f"no route {method} {path}", "invalid_request_error"))

    async def _chat(self, receive, send) -> None:
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
            if not isinstance(body.get("messages"), list) or body.get("stream"):
                raise ValueError("need a non-streaming request with a 'messages' list")
            kind = request_kind(body)
        except (ValueError, AttributeError, TypeError) as exc:
            self._record(
                {
                    "kind": "invalid",
                    "fault": None,
                    "status": 400,
                    "response": None,
                    "request": raw.decode(errors="replace"),
                    "completed": True,
                }
            )
            return await _send_json(send, 400, api_error(f"bad request: {exc}", "invalid_request_error"))

        if self.options.reject_json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
            self._record(
                {"kind": kind, "fault": None, "status": 400, "response": None, "request": body, "completed": True}
            )
            return await _send_json(
                send, 400, api_error("response_format json_schema is not supported", "invalid_request_error")
            )
        if self.options.other_models and body.get("model") not in self.options.listed_models():
            self._record(
                {"kind": kind, "fault": None, "status": 404, "response": None, "request": body, "completed": True}
            )
            error = api_error(f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model_not_found")
            return await _send_json(send, 404, error)
        if self.options.reject_logprobs and body.get("logprobs"):
            self._record(
                {"kind": kind, "fault": None, "status": 400, "response": None, "request": body, "completed": True}
            )
            return await _send_json(
                send, 400, api_error("logprobs are not supported with this model", "invalid_request_error")
            )
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            seen = self._seen.get(digest, 0)
            self._seen[digest] = seen + 1
            opts, slots = self.options, self._slots
            self._in_flight += 1
            self._stats["max_in_flight"] = max(self._stats["max_in_flight"], self._in_flight)
        rng = fault_rng(opts.seed, digest, seen)
        fault = choose_fault(opts.faults, kind, rng)
        call = _Call(
            self,
            {
                "kind": kind,
                "fault": fault,
                "status": None,
                "request": body,
                "response": None,
                "seen_before": seen,
                "completed": False,
            },
        )
        call.left = asyncio.ensure_future(_watch(receive, self._closing))
        try:
            if fault == "http_429":  # a rate limiter rejects at once: no latency, no slot
                retry = (b"retry-after", f"{opts.retry_after:g}".encode())
                error = api_error("Rate limit reached (test server)", "requests", "rate_limit_exceeded")
                return await call.respond(send, 429, error, extra=(retry,))
            if slots is not None:
                await slots.acquire()
            try:
                call.activate()
                await asyncio.sleep(opts.latency)
                await self._answer(call, send, body, kind, fault, opts, rng, f"chatcmpl-{digest[:16]}-{seen}")
            finally:
                if slots is not None:
                    slots.release()
        finally:
            call.left.cancel()
            call.settle(completed=False)  # no-op unless the request ended without a full response
            if call.dropped:
                await asyncio.sleep(0.01)  # let connection_lost run, else uvicorn answers 500 for us

    async def _answer(self, call: _Call, send, body, kind, fault, opts, rng, cid: str) -> None:
        if fault == "drop_connection":
            return await call.drop(send)
        if fault == "http_500":
            error = api_error("Internal server error (test server)", "server_error")
            return await call.respond(send, 500, error)
        content = self.answer_fn(kind, body) if self.answer_fn else None
        call.entry["scripted"] = content is not None
        if content is None and kind == "rating":
            ratings = expected_ratings(requested_ids(body), profile_text(body))
            if float(body.get("temperature") or 0) > 0:  # sampling: the request's seed picks the draw
                ratings = sampled_ratings(ratings, random.Random(json.dumps(body, sort_keys=True)))
            content = (
                spoil_ratings(fault, ratings, rng) if fault in CONTENT_FAULTS else json.dumps({"ratings": ratings})
            )
        elif content is None and kind == "sandbox":
            content = sandbox_answer(body)
        elif content is None:
            content = profile_answer(body)
        elif fault in CONTENT_FAULTS:
            call.entry["fault"] = None  # scripted answers are sent as scripted
        prompt_tokens = count_tokens("".join(message_text(m) for m in body["messages"]))
        top = int(body.get("top_logprobs") or 0) if body.get("logprobs") and opts.logprobs else None
        payload = completion(body.get("model") or opts.model, content, prompt_tokens, cid, top)
        if fault == "hang":
            await asyncio.wait([call.left], timeout=opts.hang_seconds)
            if call.left.done():  # the client left, or the server is stopping
                return await call.drop(send)
        call.entry.update(response=content, usage=payload["usage"])
        await call.respond(send, 200, payload, trickle=opts.trickle_seconds if fault == "trickle" else None)

    def _record(self, entry: dict) -> None:
        fault = entry["fault"] or "none"
        with self._lock:
            stats = self._stats
            stats["requests"] += 1
            status = str(entry["status"] or "none")
            for key, value in (("by_kind", entry["kind"]), ("by_fault", fault), ("by_status", status)):
                stats[key][value] = stats[key].get(value, 0) + 1
            if entry["status"] == 200 and entry["completed"] and entry["fault"] not in CONTENT_FAULTS:
                stats["ok"] += 1
            if usage := entry.get("usage"):
                stats["prompt_tokens"] += usage["prompt_tokens"]
                stats["completion_tokens"] += usage["completion_tokens"]
            self._log.append({"seq": len(self._log), **entry})


class _Call:
    """The bookkeeping of one chat request. It is settled (counted, logged) *before* its last byte is
    sent, so a client that has its answer always finds it in ``stats()`` and ``log()``."""

    def __init__(self, app: LLMApp, entry: dict):
        self.app, self.entry = app, entry
        self.left: asyncio.Future | None = None  # done once the client left or the server is closing
        self.active = self.settled = self.dropped = False

    def activate(self) -> None:
        with self.app._lock:
            self.app._active += 1
            self.app._stats["max_active"] = max(self.app._stats["max_active"], self.app._active)
        self.active = True

    def settle(self, completed: bool) -> None:
        if self.settled:
            return
        self.settled = True
        self.entry["completed"] = completed
        with self.app._lock:
            self.app._in_flight -= 1
            self.app._active -= self.active
        self.app._record(self.entry)

    async def drop(self, send) -> None:
        self.settle(completed=False)
        self.dropped = True
        await _drop(send)

    async def respond(self, send, status: int, payload: Any, extra: tuple = (), trickle: float | None = None):
        """Send a JSON response; with ``trickle`` (seconds) in 8-byte pieces spread over that time."""
        data = json.dumps(payload).encode()
        self.entry["status"] = status
        await send(_start(status, len(data), extra))
        pieces = [data] if trickle is None else [data[i : i + 8] for i in range(0, len(data), 8)]
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.wait([self.left], timeout=trickle / (len(pieces) - 1))
            if self.left.done():
                return await self.drop(send)
            last = i == len(pieces) - 1
            if last:
                self.settle(completed=True)
            await send({"type": "http.response.body", "body": piece, "more_body": not last})


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
        if self._thread is not None:
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
