"""`doppel ui`: one static page and a few JSON endpoints on 127.0.0.1; the sandbox runs in a thread here.

The simulation runs in a background thread of this process (one round after another, pausing between
rounds), so this process is the only one holding the DuckDB file: the page's reads are short
connections in the same process (tasks/store/db.connect), which never block the simulation's writes.
"""

from __future__ import annotations

import threading
import traceback
from importlib.resources import files

from doppel.tasks.sandbox.config import SandboxSettings
from doppel.tasks.store.db import DatabaseLockedError, init_db, query

READ_WAIT_S = 2.0  # a read gives up quickly (the page polls again) rather than queue behind a writer


class SandboxController:
    """Start / pause / reset one sandbox at a time; the state the page shows."""

    def __init__(self, settings: SandboxSettings):
        from doppel.flows.sandbox import new_sandbox_id

        self.settings = settings
        self.sandbox_id = settings.sandbox_id or new_sandbox_id()
        self.thread: threading.Thread | None = None
        self.control = None
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
            update = {"sandbox_id": self.sandbox_id}
            if agents:
                update["agents"] = int(agents)
            if rounds:
                update["rounds"] = int(rounds)
            if recommender in ("random", "popular", "mf"):
                update["recommender"] = recommender
            self.settings = self.settings.model_copy(update=update)
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
        from doppel.flows.sandbox import new_sandbox_id

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


def create_app(controller: SandboxController):
    from fastapi import Body, FastAPI, HTTPException
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
    def start(body: dict = Body(default={})) -> dict:
        return controller.start(body.get("agents"), body.get("rounds"), body.get("recommender"))

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
    def log(after_action: int = 0, after_message: int = 0, limit: int = 500) -> dict:
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


def serve(settings: SandboxSettings, port: int) -> None:
    """Serve the page on 127.0.0.1 only, until Ctrl-C."""
    import uvicorn

    controller = SandboxController(settings)
    uvicorn.run(create_app(controller), host="127.0.0.1", port=port, log_level="warning")
