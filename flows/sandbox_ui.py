"""`doppel ui`: one static page and a few JSON endpoints on 127.0.0.1; the sandbox runs in a thread here.

The simulation runs in a background thread of this process (one round after another, pausing between
rounds), so this process is the only one holding the DuckDB file: the page's reads are short
connections in the same process (tasks/store/db.connect), which never block the simulation's writes.

Strangers are refused (`Guard`): a per-launch token, printed in the URL as Jupyter does, is required on
every request (the page gets it as a SameSite=Strict cookie); the Host header must name the bound
address (DNS rebinding); a request with a foreign Origin is refused; the start settings are validated
by the settings model.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import traceback
from collections.abc import Callable
from http.cookies import SimpleCookie
from importlib.resources import files
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field

from doppel.tasks.sandbox.config import SandboxSettings
from doppel.tasks.store.db import DatabaseLockedError, init_db, query

if TYPE_CHECKING:
    from doppel.flows.sandbox import Control

READ_WAIT_S = 2.0  # a read gives up quickly (the page polls again) rather than queue behind a writer


class SandboxController:
    """Start / pause / reset one sandbox at a time; the state the page shows."""

    def __init__(self, settings: SandboxSettings):
        from doppel.tasks.sandbox.config import new_sandbox_id

        self.settings = settings
        self.sandbox_id = settings.sandbox_id or new_sandbox_id()
        self.thread: threading.Thread | None = None
        self.control: Control | None = None
        self.error: str | None = None
        self.target_rounds = settings.rounds
        self.lock = threading.Lock()
        init_db(settings.run.db)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, agents: int | None = None, rounds: int | None = None, recommender: str | None = None) -> dict:
        from doppel.flows.sandbox import Control, run_sandbox

        with self.lock:
            if self.running:
                return self.state()
            update = {"sandbox_id": self.sandbox_id, "agents": agents, "rounds": rounds, "recommender": recommender}
            update = {k: v for k, v in update.items() if v is not None}
            # validated as a whole (model_copy(update=...) would skip every rule, e.g. agents >= 1)
            self.settings = SandboxSettings.model_validate({**self.settings.model_dump(), **update})
            self.target_rounds = self.settings.rounds
            self.control, self.error = Control(), None

            def work() -> None:
                try:
                    run_sandbox(self.settings, self.control)
                except BaseException as exc:  # shown on the page; the round stays unfinished and can be redone
                    self.error = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()

            self.thread = threading.Thread(target=work, name="doppel-sandbox", daemon=True)
            self.thread.start()
            return self.state()

    def pause(self) -> dict:
        if self.control is not None:
            self.control.stop.set()  # takes effect when the running round ends
        return self.state()

    def reset(self) -> dict:
        from doppel.tasks.sandbox.config import new_sandbox_id

        with self.lock:
            if self.running:
                raise RuntimeError("pause first and wait for the round to end")
            self.sandbox_id, self.error, self.control = new_sandbox_id(), None, None
            return self.state()

    def state(self) -> dict:
        rounds = self.read("sandbox_rounds")
        done = rounds[rounds["status"] == "finished"] if not rounds.empty else rounds
        status = "running" if self.running else (self.control.status if self.control else "idle")
        if self.running and self.control is not None and self.control.stop.is_set():
            status = "pausing"
        return {
            "sandbox_id": self.sandbox_id,
            "status": status,
            "error": self.error,
            "round": int(done["round"].max()) if len(done) else 0,
            "target_rounds": self.target_rounds,
            "agents": self.settings.agents,
            "recommender": self.settings.recommender,
            "rounds": rounds.astype({"started": str, "finished": str}).to_dict(orient="records")
            if not rounds.empty
            else [],
        }

    def read(self, name: str, **params):
        import pandas as pd

        try:
            return query(self.settings.run.db, name, sandbox_id=self.sandbox_id, **params)
        except DatabaseLockedError:
            return pd.DataFrame()


class StartRequest(BaseModel):
    """The page's start form; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")
    agents: int | None = Field(None, ge=1)
    rounds: int | None = Field(None, ge=0)
    recommender: Literal["random", "popular", "mf"] | None = None


class Guard:
    """ASGI wrapper that refuses strangers: a wrong Host (DNS rebinding), a foreign Origin (another
    site's page), no token. The token comes as `Authorization: Bearer`, as the cookie the page gets,
    or as `?token=` on the page's URL (which then sets the cookie)."""

    def __init__(self, app, token: str, port: int):
        self.app, self.token, self.cookie = app, token, f"doppel-ui-{port}"
        self.hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost")}
        self.origins = {f"http://{host}" for host in self.hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return None  # no websockets here: nothing to hold open for a stranger
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if headers.get("host") not in self.hosts:
            return await _refuse(send, 403, f"Host {headers.get('host')!r} is not this server")
        if "origin" in headers and headers["origin"] not in self.origins:
            return await _refuse(send, 403, f"Origin {headers['origin']!r} may not call this server")
        cookies = SimpleCookie(headers.get("cookie", ""))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        given = [
            headers.get("authorization", "").removeprefix("Bearer "),
            cookies[self.cookie].value if self.cookie in cookies else "",
            query if scope["path"] == "/" else "",
        ]
        if not any(secrets.compare_digest(g.encode(), self.token.encode()) for g in given if g):
            return await _refuse(send, 401, "no valid token: open the URL `doppel ui` printed (…/?token=…)")
        if not query:
            return await self.app(scope, receive, send)
        cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"set-cookie", cookie.encode())]}
            await send(message)

        return await self.app(scope, receive, send_with_cookie)


async def _refuse(send, status: int, text: str) -> None:
    body = json.dumps({"detail": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(controller: SandboxController):
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="doppel sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    page = files("doppel.tasks.sandbox").joinpath("ui/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/state")
    def state() -> dict:
        return controller.state()

    @app.post("/api/start")
    def start(body: StartRequest | None = None) -> dict:
        from pydantic import ValidationError

        body = body or StartRequest()
        try:
            return controller.start(body.agents, body.rounds, body.recommender)
        except ValidationError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.post("/api/pause")
    def pause() -> dict:
        return controller.pause()

    @app.post("/api/reset")
    def reset() -> dict:
        try:
            return controller.reset()
        except RuntimeError as exc:
            raise HTTPException(409, str(exc)) from exc

    @app.get("/api/log")
    def log(
        after_action: int = Query(0, ge=0), after_message: int = Query(0, ge=0), limit: int = Query(500, ge=1)
    ) -> dict:
        frame = controller.read("sandbox_log", after_action=after_action, after_message=after_message, limit=limit)
        lines = frame.drop(columns=["created"]).to_dict(orient="records") if not frame.empty else []
        actions = [x["seq"] for x in lines if x["type"] == "action"]
        messages = [x["seq"] for x in lines if x["type"] == "message"]
        return {
            "lines": lines,
            "after_action": max(actions, default=after_action),
            "after_message": max(messages, default=after_message),
        }

    @app.get("/api/agents")
    def agents() -> list[dict]:
        frame = controller.read("sandbox_agents")
        memories = controller.read("sandbox_ui_memories", per_agent=5)
        by_agent = (
            {a: g.drop(columns=["agent_id"]).to_dict(orient="records") for a, g in memories.groupby("agent_id")}
            if not memories.empty
            else {}
        )
        return [
            {**row, "memories": by_agent.get(row["agent_id"], [])}
            for row in (frame.to_dict(orient="records") if not frame.empty else [])
        ]

    @app.get("/api/graph")
    def graph() -> dict:
        agents_frame = controller.read("sandbox_agents")
        edges = controller.read("sandbox_friends")
        return {
            "nodes": agents_frame["agent_id"].tolist() if not agents_frame.empty else [],
            "edges": edges[["agent_id", "friend_id"]].values.tolist() if not edges.empty else [],
        }

    return app


def serve(settings: SandboxSettings, port: int, announce: Callable[[str], None] = print) -> None:
    """Serve the page on 127.0.0.1 only, until Ctrl-C; `announce` gets the URL with this launch's token."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # bound before the URL is printed: port 0 picks a free one
    port, token = sock.getsockname()[1], secrets.token_urlsafe(32)
    controller = SandboxController(settings)
    server = uvicorn.Server(uvicorn.Config(Guard(create_app(controller), token, port), log_level="warning"))
    announce(f"http://127.0.0.1:{port}/?token={token}")
    server.run(sockets=[sock])
