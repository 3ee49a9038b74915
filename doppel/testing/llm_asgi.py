"""ASGI pieces of the test server: the chat.completion body, JSON responses, dropped connections,
watching for a client that leaves, and ``Call``, the bookkeeping of one chat request."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from .llm_faults import count_tokens, token_logprobs

if TYPE_CHECKING:
    from .llm_app import LLMApp


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


async def read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def watch(receive, closing: asyncio.Event) -> str:
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


def response_start(status: int, length: int, extra: tuple = ()) -> dict:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode()), *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}


async def send_json(send, status: int, payload: Any, extra: tuple = ()) -> None:
    data = json.dumps(payload).encode()
    await send(response_start(status, len(data), extra))
    await send({"type": "http.response.body", "body": data})


async def drop_connection(send) -> None:
    """Close the socket without a byte of response (httpx: RemoteProtocolError)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)  # uvicorn's h11 cycle
    if transport is None:  # other servers: start a response and abort it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ConnectionAbortedError("drop_connection fault")
    transport.close()  # the caller yields once more afterwards (see _chat), so uvicorn sees it


class Call:
    """The bookkeeping of one chat request. It is settled (counted, logged) *before* its last byte is
    sent, so a client that has its answer always finds it in ``stats()`` and ``log()``."""

    def __init__(self, app: LLMApp, entry: dict, left: asyncio.Future):
        self.app, self.entry = app, entry
        self.left = left  # done once the client left or the server is closing
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
        await drop_connection(send)

    async def respond(self, send, status: int, payload: Any, extra: tuple = (), trickle: float | None = None):
        """Send a JSON response; with ``trickle`` (seconds) in 8-byte pieces spread over that time."""
        data = json.dumps(payload).encode()
        self.entry["status"] = status
        await send(response_start(status, len(data), extra))
        pieces = [data] if trickle is None else [data[i : i + 8] for i in range(0, len(data), 8)]
        pause = (trickle or 0.0) / max(1, len(pieces) - 1)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.wait([self.left], timeout=pause)
            if self.left.done():
                return await self.drop(send)
            last = i == len(pieces) - 1
            if last:
                self.settle(completed=True)
            await send({"type": "http.response.body", "body": piece, "more_body": not last})
