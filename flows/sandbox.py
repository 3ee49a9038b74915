"""`doppel sandbox`: agents built from dataset users act in rounds beside a recommender (RecAgent-like).

set-up flow (flows/sandbox_setup.py: agents, profiles, friendship graph, memories seeded from real
ratings), then one flow per round: train the recommender -> last round's posts become the readers'
memories -> retrieve memories -> fan agent chunks out (same gateway, limits and cache as `doppel run`)
-> write each agent's rows as it arrives -> mark the round finished. A rerun with the same sandbox id
asks again the agent profiles that failed, then continues after the last finished round; a round
interrupted half-way is redone from the response cache.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from doppel.flows.fanout import fan_out
from doppel.flows.lifecycle import lifecycle
from doppel.flows.runtime import engines
from doppel.flows.sandbox_setup import sandbox_setup
from doppel.tasks.ensemble import embeddings as emb
from doppel.tasks.ensemble.config import model_key
from doppel.tasks.ingest import ingest
from doppel.tasks.llm.calls import CallOwner
from doppel.tasks.llm.endpoint import check_endpoint
from doppel.tasks.llm.templates import prompt_hash
from doppel.tasks.sandbox import build, memory, store
from doppel.tasks.sandbox.config import SandboxSettings, new_sandbox_id
from doppel.tasks.sandbox.recommender import build_recommender
from doppel.tasks.sandbox.records import Agent, PackedTurns, Turn
from doppel.tasks.settings import LLMSettings, RunSettings
from doppel.tasks.store.db import init_db
from doppel.tasks.version import code_version

PROMPTS = (
    "sandbox_system",
    "sandbox_persona",
    "sandbox_decide",
    "sandbox_browse",
    "sandbox_watch",
    "sandbox_chat",
    "sandbox_post",
    "sandbox_reflect",
    "sandbox_repair",
    "profile_create",
)
agent_chunk = task(name="sandbox-agents", cache_policy=NO_CACHE, persist_result=False)(build.run_turns)
train_recommender = task(name="sandbox-recommender", cache_policy=NO_CACHE, persist_result=False)(build_recommender)


class Control:
    """Pause between rounds (the web page's pause button); `round` and `status` for whoever watches."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.round = 0
        self.status = "idle"
        self.sandbox_id: str | None = None


def run_sandbox(settings: SandboxSettings, control: Control | None = None) -> dict:
    """Set up (once) and play rounds up to `settings.rounds`; returns the summary of the whole sandbox."""
    started = time.monotonic()
    control = control or Control()
    plan = plan_sandbox(settings, control)
    finish = partial(finish_sandbox, settings.run.db, plan.sandbox_id, control)
    with lifecycle(finish, start=partial(register, settings, plan)) as run:
        with engines(threads(settings), settings.llm, start=plan.needs_llm) as run_on:
            sandbox_setup(settings, plan.sandbox_id, plan.dataset, run_on.llm, run_on.model_id, plan.owner)
            for round_no in plan.rounds_left:
                if control.stop.is_set():
                    break
                sandbox_round.with_options(task_runner=run_on.task_runner())(
                    settings, plan.sandbox_id, plan.dataset, round_no, run_on.llm, run_on.model_id, plan.owner
                )
                control.round = round_no
        run.status = (
            "finished" if store.finished_rounds(settings.run.db, plan.sandbox_id) >= settings.rounds else "paused"
        )
    return {
        **store.summary(settings.run.db, plan.sandbox_id),
        "status": run.status,
        "wall_s": round(time.monotonic() - started, 2),
        "new_rounds": [r for r in plan.rounds_left if r <= control.round],
    }


@dataclass
class SandboxPlan:
    """Which sandbox, on which dataset; the rounds left; whether the LLM is needed (rounds, agents or failed
    profiles to build); whose calls this invocation makes (a resume records, once, the calls an interrupted one
    made but never wrote)."""

    sandbox_id: str
    dataset: str
    done: int
    rounds_left: list[int]
    needs_llm: bool
    owner: CallOwner
    model: str  # the id the endpoint answers with (a llama.cpp server's file path)


def plan_sandbox(settings: SandboxSettings, control: Control) -> SandboxPlan:
    """Ingest the fold; continue after the last finished round of this sandbox id (or start a new one)."""
    db = settings.run.db
    init_db(db)
    sandbox_id = settings.sandbox_id or new_sandbox_id()
    control.sandbox_id = sandbox_id
    dataset, _ = ingest(settings.run.model_copy(update={"folds": [settings.fold]}))
    done = store.finished_rounds(db, sandbox_id)
    left = list(range(done + 1, settings.rounds + 1))
    has_agents = not store.read(db, "sandbox_agents", sandbox_id=sandbox_id).empty
    failed = not store.read(db, "sandbox_failed_profiles", sandbox_id=sandbox_id).empty  # asked again at set-up
    needs_llm = bool(left) or not has_agents or failed
    model = check_endpoint(settings.llm, model_key(settings.llm))
    if needs_llm:
        store.check_same_model(db, sandbox_id, model, settings.llm.base_url)
    control.round, control.status = done, "running"
    return SandboxPlan(sandbox_id, dataset, done, left, needs_llm, CallOwner(sandbox_id), model)


def register(settings: SandboxSettings, plan: SandboxPlan) -> None:
    """The sandbox's row: its config (no secrets), code version and prompt hashes."""
    store.start(
        settings.run.db,
        plan.sandbox_id,
        plan.dataset,
        settings.fold,
        plan.model,
        settings.recommender,
        {"kind": "sandbox", **settings.model_dump(mode="json"), "sandbox_id": plan.sandbox_id},
        code_version(),
        {p: prompt_hash(p) for p in PROMPTS},
    )


def finish_sandbox(db: str, sandbox_id: str, control: Control, status: str) -> None:
    store.set_status(db, sandbox_id, status)
    control.status = status


def threads(settings: SandboxSettings) -> RunSettings:
    """Agents' chunks run on threads (the round's rows are small; no cluster to start)."""
    return settings.run.model_copy(update={"runner": "threads"})


@task(name="sandbox-plan-turns", cache_policy=NO_CACHE, persist_result=False)
def plan_turns(
    settings: SandboxSettings,
    agents: list[Agent],
    memories: pd.DataFrame,
    so_far: pd.DataFrame,
    train: pd.DataFrame,
    inbox: pd.DataFrame,
    round_no: int,
) -> list[Turn]:
    """Who acts, what each remembers (retrieval), what it read, what it has watched."""
    by_id = {a.agent_id: a for a in agents}
    queries = [f"{a.profile} {' '.join(inbox.loc[inbox['agent_id'] == a.agent_id, 'text'])}" for a in agents]
    vectors = emb.encode(queries)
    seen = {
        u: set(g["item_id"])
        for u, g in pd.concat([train[["user_id", "item_id"]], so_far[["user_id", "item_id"]]]).groupby("user_id")
    }
    turns = []
    for agent, vector in zip(agents, vectors):
        mine = memories[memories["agent_id"] == agent.agent_id]
        reads = inbox[inbox["agent_id"] == agent.agent_id]["text"].str.replace(r"^Round \d+: ", "", regex=True)
        turns.append(
            Turn(
                agent=agent,
                round=round_no,
                active=build.is_active(settings.seed, agent.agent_id, round_no, agent.activity),
                memories=memory.retrieve(mine, vector, round_no, settings.memory),
                inbox=reads.tolist(),
                friends={f: by_id[f].demographics[:60] for f in agent.friends},
                watched=frozenset(seen.get(agent.user_id, ())),
                reflect_on=memory.reflection_input(mine, round_no, settings.memory),
            )
        )
    return turns


@flow(name="doppel-sandbox-round")
def sandbox_round(
    settings: SandboxSettings,
    sandbox_id: str,
    dataset: str,
    round_no: int,
    llm: LLMSettings,
    model_id: str,
    owner: CallOwner | None = None,
) -> dict:
    """One round: recommender, posts read, memories retrieved, agents fanned out, rows written as they arrive."""
    logger = get_run_logger()
    t0 = time.monotonic()
    db = settings.run.db
    agents = store.load_agents(db, sandbox_id)
    train = store.read(db, "sandbox_fold_train", dataset=dataset, fold=settings.fold)
    so_far = store.read(db, "sandbox_ratings_so_far", sandbox_id=sandbox_id, round=round_no)
    items = store.read(db, "sandbox_catalogue", dataset=dataset)
    rec = train_recommender(
        settings.recommender,
        items,
        train,
        so_far,
        [a.user_id for a in agents],
        seed=settings.seed + round_no,
        retrain=settings.retrain,
    )
    posts = store.read(db, "sandbox_posts_of_round", sandbox_id=sandbox_id, round=round_no - 1)
    inbox = memory.post_read_memories(agents, posts, round_no, emb.encode)
    store.begin_round(db, sandbox_id, round_no, inbox, {"kind": rec.kind, **(rec.info or {})})
    memories = store.read(db, "sandbox_memories", sandbox_id=sandbox_id, round=round_no + 1)
    turns = plan_turns(settings, agents, memories, so_far, train, inbox, round_no)
    stats = play_round(
        settings,
        sandbox_id,
        round_no,
        turns,
        rec,
        build.catalogue_cards(items),
        llm,
        model_id,
        {a.agent_id: a.user_id for a in agents},
        owner,
    )
    stats["wall_s"] = round(time.monotonic() - t0, 2)
    store.finish_round(db, sandbox_id, round_no, stats)
    logger.info("round %d: %s", round_no, stats)
    return stats


def play_round(
    settings: SandboxSettings,
    sandbox_id: str,
    round_no: int,
    turns: list[Turn],
    rec,
    catalogue: dict,
    llm: LLMSettings,
    model_id: str,
    user_of: dict[str, str],
    owner: CallOwner | None,
) -> dict:
    """Agent chunks on the task runner; every finished agent's rows are written as they arrive."""

    def write(outcomes: list) -> None:
        frames = store.outcome_frames(outcomes, user_of, emb.encode)
        store.save_outcomes(settings.run.db, sandbox_id, round_no, frames)

    gathered = fan_out(
        agent_chunk,
        turns,
        name=f"{sandbox_id}-r{round_no}",
        llm=llm,
        runner="threads",
        workers=settings.run.dask_workers,
        write=write,
        key=lambda outcome: outcome.agent_id,
        label=f"round {round_no} agents",
        progress=settings.run.progress,
        pack=PackedTurns,
        rec=rec,
        catalogue=catalogue,
        cfg=settings,
        model_id=model_id,
        cache_dir=str(settings.run.cache_dir()),
        owner=owner,
    )
    gathered.raise_for_errors(f"agent chunk(s) of round {round_no}")  # the round stays unfinished: a rerun redoes it
    tally = gathered.tally
    return {
        "active": sum(t.active for t in turns),
        # the round's bill: a redone round also paid, in the interrupted invocation, for what it replays now
        "new_calls": tally.calls + tally.replayed,
        "cached_calls": tally.cached - tally.replayed,
        "failed": tally.failed,
        "agents": tally.results,
        "llm_s": round(tally.llm_s, 2),
    }
