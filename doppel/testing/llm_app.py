"""The test server's ASGI app: OpenAI-compatible chat completions with latency, a concurrency cap and
seeded faults, plus the admin endpoints (stats, log, config, reset)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .llm_answers import (
    answer_layout,
    count_tokens,
    expected_ratings,
    message_text,
    profile_answer,
    profile_text,
    request_kind,
    requested_ids,
    requested_numbers,
    sampled_ratings,
    sandbox_answer,
)
from .llm_asgi import Call, api_error, completion, read_body, send_json, watch
from .llm_faults import CONTENT_FAULTS, choose_fault, fault_rng, ratings_answer
from .server_options import ServerOptions

AnswerFn = Callable[[str, dict], "str | None"]


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
            self._stats: dict[str, Any] = {
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
            return await send_json(send, 200, {"object": "list", "data": data})
        if (method, path) == ("GET", "/props") and self.options.llama_cpp:
            settings = {"n_ctx": 4096, "model": self.options.model}
            props = {
                "default_generation_settings": settings,
                "total_slots": self.options.max_concurrency or 1,
                "model_path": self.options.model,
            }
            return await send_json(send, 200, props)
        if (method, path) == ("GET", "/health"):
            return await send_json(send, 200, {"status": "ok"})
        if (method, path) == ("GET", "/_admin/stats"):
            return await send_json(send, 200, self.stats())
        if (method, path) == ("GET", "/_admin/log"):
            return await send_json(send, 200, self.log())
        if (method, path) == ("GET", "/_admin/config"):
            return await send_json(send, 200, self.options.as_dict())
        if (method, path) == ("POST", "/_admin/config"):
            try:
                return await send_json(send, 200, self.configure(**json.loads(await read_body(receive))))
            except (ValueError, TypeError) as exc:
                return await send_json(send, 400, api_error(str(exc), "invalid_request_error"))
        if (method, path) == ("POST", "/_admin/reset"):
            self.reset()
            return await send_json(send, 200, {"reset": True})
        await send_json(send, 404, api_error(f"no route {method} {path}", "invalid_request_error"))

    async def _chat(self, receive, send) -> None:
        raw = await read_body(receive)
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
            return await send_json(send, 400, api_error(f"bad request: {exc}", "invalid_request_error"))

        if self.options.reject_json_schema and (body.get("response_format") or {}).get("type") == "json_schema":
            self._record(
                {"kind": kind, "fault": None, "status": 400, "response": None, "request": body, "completed": True}
            )
            return await send_json(
                send, 400, api_error("response_format json_schema is not supported", "invalid_request_error")
            )
        if self.options.other_models and body.get("model") not in self.options.listed_models():
            self._record(
                {"kind": kind, "fault": None, "status": 404, "response": None, "request": body, "completed": True}
            )
            error = api_error(f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model_not_found")
            return await send_json(send, 404, error)
        if self.options.reject_logprobs and body.get("logprobs"):
            self._record(
                {"kind": kind, "fault": None, "status": 400, "response": None, "request": body, "completed": True}
            )
            return await send_json(
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
        entry = {
            "kind": kind,
            "fault": fault,
            "status": None,
            "request": body,
            "response": None,
            "seen_before": seen,
            "completed": False,
        }
        call = Call(self, entry, left=asyncio.ensure_future(watch(receive, self._closing)))
        try:
            if fault == "http_429":  # a rate limiter rejects at once: no latency, no slot
                retry = (b"retry-after", f"{opts.retry_after:g}".encode())
                error = api_error("Rate limit reached (test server)", "requests", "rate_limit_exceeded")
                return await call.respond(send, 429, error, extra=(retry,))
            if slots is not None and not await self._queue(slots, call):
                return  # the client left while queued: dropped unanswered, as llama.cpp drops it
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

    @staticmethod
    async def _queue(slots: asyncio.Semaphore, call: Call) -> bool:
        """Wait for a slot; False (holding none) if the client left first."""
        acquire = asyncio.ensure_future(slots.acquire())
        await asyncio.wait([acquire, call.left], return_when=asyncio.FIRST_COMPLETED)
        if acquire.done():
            return True
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire
        if acquire.done() and not acquire.cancelled():
            slots.release()
        return False

    async def _answer(self, call: Call, send, body, kind, fault, opts, rng, cid: str) -> None:
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
            spoil = fault if fault in CONTENT_FAULTS else None
            numbers = requested_numbers(body, len(ratings))
            content = ratings_answer(ratings, answer_layout(body), spoil, rng, numbers)
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
