"""`doppel sandbox`: agents built from dataset users act in rounds beside a recommender (RecAgent-like).

set-up flow (agents, profiles, friendship graph, memories seeded from real ratings), then one flow
per round: train the recommender -> last round's posts become the readers' memories -> retrieve
memories -> fan agent chunks out (same gateway, limits and cache as `doppel run`) -> write each
agent's rows as it arrives -> mark the round finished. A rerun with the same sandbox id continues
after the last finished round; a round interrupted half-way is redone from the response cache.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from doppel.flows.runtime import llm_endpoint
from doppel.tasks.channel import ChannelReader, ResultChannel
from doppel.tasks.ensemble import embeddings as emb
from doppel.tasks.ensemble.config import model_key
from doppel.tasks.ingest import ingest
from doppel.tasks.llm.gateway import check_endpoint
from doppel.tasks.llm.templates import prompt_hash
from doppel.tasks.sandbox import build, memory, social, store
from doppel.tasks.sandbox.config import SandboxSettings
from doppel.tasks.sandbox.recommender import build_recommender
from doppel.tasks.sandbox.records import Agent, PackedTurns, Turn
from doppel.tasks.settings import LLMSettings
from doppel.tasks.simulation import LimitSpec
from doppel.tasks.store.db import init_db, query
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
HISTORY_MEMORIES = 5

make_profiles = task(build.build_profiles, name="sandbox-profiles", cache_policy=NO_CACHE, persist_result=False)
agent_chunk = task(build.run_turns, name="sandbox-agents", cache_policy=NO_CACHE, persist_result=False)
train_recommender = task(build_recommender, name="sandbox-recommender", cache_policy=NO_CACHE, persist_result=False)


class Control:
    """Pause between rounds (the web page's pause button); `round` and `status` for whoever watches."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.round = 0
        self.status = "idle"
        self.sandbox_id: str | None = None


def new_sandbox_id() -> str:
    return datetime.now(UTC).strftime("sbx-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def finished_rounds(db: str, sandbox_id: str) -> int:
    rounds = store.read(db, "sandbox_rounds", sandbox_id=sandbox_id)
    done = 0
    for r in rounds.itertuples(index=False):
        if r.round != done + 1 or r.status != "finished":
            break
        done = r.round
    return done


def run_sandbox(settings: SandboxSettings, control: Control | None = None) -> dict:
    """Set up (once) and play rounds up to `settings.rounds`; returns the summary of the whole sandbox."""
    db = settings.run.db
    init_db(db)
    sandbox_id = settings.sandbox_id or new_sandbox_id()
    control = control or Control()
    control.sandbox_id = sandbox_id
    dataset, _ = ingest(settings.run.model_copy(update={"folds": [settings.fold]}))
    done = finished_rounds(db, sandbox_id)
    todo = list(range(done + 1, settings.rounds + 1))
    has_agents = not store.read(db, "sandbox_agents", sandbox_id=sandbox_id).empty
    store.start(
        db,
        sandbox_id,
        dataset,
        settings.fold,
        model_key(settings.llm),
        settings.recommender,
        {"kind": "sandbox", **settings.model_dump(mode="json"), "sandbox_id": sandbox_id},
        code_version(),
        {p: prompt_hash(p) for p in PROMPTS},
    )
    status, started = "interrupted", time.monotonic()
    control.round, control.status = done, "running"
    try:
        with llm_endpoint(settings.llm, start=bool(todo) or not has_agents) as (llm, model_id):
            if todo or not has_agents:
                check_endpoint(llm, model_id)
            sandbox_setup(settings, sandbox_id, dataset, llm, model_id)
            for round_no in todo:
                if control.stop.is_set():
                    break
                runner = ThreadPoolTaskRunner(max_workers=n_chunks_for(llm, settings))
                sandbox_round.with_options(task_runner=runner)(settings, sandbox_id, dataset, round_no, llm, model_id)
                control.round = round_no
        status = "finished" if finished_rounds(db, sandbox_id) >= settings.rounds else "paused"
    except BaseException:
        status = "failed"
        raise
    finally:
        store.set_status(db, sandbox_id, status)
        control.status = status
    return {
        **summarize(db, sandbox_id),
        "status": status,
        "wall_s": round(time.monotonic() - started, 2),
        "new_rounds": [r for r in todo if r <= control.round],
    }


def n_chunks_for(llm: LLMSettings, settings: SandboxSettings) -> int:
    return 1 if llm.concurrency <= 1 else max(1, min(settings.run.dask_workers, llm.concurrency))


def _limits(llm: LLMSettings, n_chunks: int) -> list[LimitSpec]:
    shares = [llm.concurrency // n_chunks + (1 if k < llm.concurrency % n_chunks else 0) for k in range(n_chunks)]
    return [
        LimitSpec(
            local_slots=max(1, s),
            rpm=llm.rpm / n_chunks if llm.rpm else None,
            prefect_limit_name=llm.concurrency_limit_name,
        )
        for s in shares
    ]


@flow(name="doppel-sandbox-setup")
def sandbox_setup(settings: SandboxSettings, sandbox_id: str, dataset: str, llm: LLMSettings, model_id: str) -> dict:
    """Agents from dataset users (profile from a doppel run or built now), the friendship graph, first memories."""
    logger = get_run_logger()
    db = settings.run.db
    stored = store.read(db, "sandbox_agents", sandbox_id=sandbox_id)
    if not stored.empty:
        return {"agents": len(stored), "created": False}
    train = store.read(db, "sandbox_fold_train", dataset=dataset, fold=settings.fold)
    given = (
        store.read(db, "sandbox_run_profiles", run_id=settings.profile_run_id)
        if settings.profile_run_id
        else pd.DataFrame(columns=["user_id", "profile"])
    )
    if settings.profile_run_id and given.empty:
        raise ValueError(f"run {settings.profile_run_id!r} has no Phase-1 profiles in {db}")
    users = build.choose_users(train, settings.agents, settings.seed, set(given["user_id"]) or None)
    demo = query(db, "user_demographics", dataset=dataset, user_ids=users).set_index("user_id")["demographics"]
    histories = {
        u: g.tail(settings.profile_history)
        for u, g in train[train["user_id"].isin(users)].groupby("user_id", sort=False)
    }
    profiles = dict(zip(given["user_id"], given["profile"]))
    todo = [(u, demo.get(u, "") or "a viewer", build.history_items(histories[u])) for u in users if u not in profiles]
    calls, errors = [], {}
    if todo:
        for user_id, text, error, user_calls in profiles_with_progress(settings, sandbox_id, todo, llm, model_id):
            calls += [(user_id, c) for c in user_calls]
            if text is None:
                errors[user_id] = error or "no profile"
            else:
                profiles[user_id] = " ".join(text.split())
    agent_ids = [f"A{k + 1:02d}" for k in range(len(users))]
    activity = build.activity_levels(train, users, settings.activity)
    source = {u: f"run:{settings.profile_run_id}" if u in set(given["user_id"]) else "built" for u in users}
    agents = pd.DataFrame(
        {
            "agent_id": agent_ids,
            "user_id": users,
            "demographics": [demo.get(u, "") or "a viewer" for u in users],
            "profile": [profiles.get(u, "(no profile)") for u in users],
            "profile_source": ["failed" if u in errors else source[u] for u in users],
            "profile_error": [errors.get(u) for u in users],
            "activity": activity,
        }
    )
    by_user = dict(zip(users, agent_ids))
    edges = (
        social.load(settings.graph_file, agent_ids, by_user)
        if settings.graph_file
        else social.generate(agent_ids, settings.friends, settings.seed)
    )
    friends = pd.DataFrame(edges, columns=["agent_id", "friend_id"])
    friends["source"] = "file" if settings.graph_file else "generated"
    rows = [
        {"agent_id": by_user[u], **m}
        for u in users
        for m in memory.history_memories(histories[u].tail(HISTORY_MEMORIES))
    ]
    memories = pd.DataFrame(rows, columns=["agent_id", "kind", "text", "importance"])
    memories["seq"] = np.arange(1, len(memories) + 1)
    memories["embedding"] = [v.tolist() for v in emb.encode(memories["text"].tolist())] if len(memories) else []
    store.save_setup(db, sandbox_id, agents, friends, memories, store.calls_frame(calls))
    if errors:
        logger.warning(
            "%d profile(s) failed; those agents act on demographics only: %s",
            len(errors),
            "; ".join(f"{u}: {e}" for u, e in list(errors.items())[:3]),
        )
    return {
        "agents": len(agents),
        "created": True,
        "profiles_built": len(todo) - len(errors),
        "profiles_failed": len(errors),
        "edges": len(edges),
    }


def profiles_with_progress(
    settings: SandboxSettings, sandbox_id: str, todo: list, llm: LLMSettings, model_id: str
) -> list:
    """Build profiles on the task runner while a progress bar counts them."""
    short = llm.model_copy(update={"max_tokens_profile": settings.profile_max_tokens})
    channel = ResultChannel(f"doppel-{sandbox_id}-profiles-{uuid.uuid4().hex[:8]}", "local")
    reader = ChannelReader(channel)
    future = make_profiles.submit(todo, short, model_id, str(settings.run.cache_dir()), _limits(llm, 1)[0], channel)
    with _progress(settings.run.progress) as progress:
        bar = progress.add_task("profiles", total=len(todo), round="set-up", stats="building agent profiles")
        while not future.wrapped_future.done():
            progress.update(bar, advance=len(reader.drain(timeout=0.25)))
        progress.update(bar, completed=len(todo))
    reader.close()
    return future.result()


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]round {task.fields[round]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def load_agents(db: str, sandbox_id: str) -> list[Agent]:
    frame = store.read(db, "sandbox_agents", sandbox_id=sandbox_id)
    edges = store.read(db, "sandbox_friends", sandbox_id=sandbox_id)
    ids = frame["agent_id"].tolist()
    friends = social.neighbours(list(zip(edges["agent_id"], edges["friend_id"])), ids)
    return [
        Agent(r.agent_id, r.user_id, r.demographics, r.profile, float(r.activity), friends[r.agent_id])
        for r in frame.itertuples(index=False)
    ]


def post_read_memories(agents: list[Agent], posts: pd.DataFrame, round_no: int) -> pd.DataFrame:
    """Each post of the last round becomes a memory of every friend of its author (read this round)."""
    friends = {a.agent_id: a.friends for a in agents}
    rows = [
        {
            "agent_id": reader,
            "kind": "post_read",
            "text": f"Round {round_no - 1}: {p.agent_id} posted: {p.text}",
            "importance": memory.POST_READ_IMPORTANCE,
        }
        for p in posts.itertuples(index=False)
        for reader in friends.get(p.agent_id, ())
    ]
    frame = pd.DataFrame(rows, columns=["agent_id", "kind", "text", "importance"])
    frame["k"] = np.arange(len(frame))
    frame["embedding"] = [v.tolist() for v in emb.encode(frame["text"].tolist())] if len(frame) else []
    return frame


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
    settings: SandboxSettings, sandbox_id: str, dataset: str, round_no: int, llm: LLMSettings, model_id: str
) -> dict:
    """One round: recommender, posts read, memories retrieved, agents fanned out, rows written as they arrive."""
    logger = get_run_logger()
    t0 = time.monotonic()
    db = settings.run.db
    agents = load_agents(db, sandbox_id)
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
    inbox = post_read_memories(agents, posts, round_no)
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
) -> dict:
    """Agent chunks on the task runner; every finished agent's rows are written as they arrive."""
    n_chunks = min(n_chunks_for(llm, settings), len(turns))
    chunks = [turns[k::n_chunks] for k in range(n_chunks)]
    channel = ResultChannel(f"doppel-{sandbox_id}-r{round_no}-{uuid.uuid4().hex[:8]}", "local")
    reader = ChannelReader(channel)
    futures = [
        agent_chunk.submit(
            PackedTurns(chunk), rec, catalogue, settings, llm, model_id, str(settings.run.cache_dir()), limit, channel
        )
        for chunk, limit in zip(chunks, _limits(llm, n_chunks))
    ]
    stats = {
        "active": sum(t.active for t in turns),
        "new_calls": 0,
        "cached_calls": 0,
        "failed": 0,
        "agents": 0,
        "llm_s": 0.0,
    }
    with _progress(settings.run.progress) as progress:
        bar = progress.add_task("agents", total=len(turns), round=round_no, stats="")
        while True:
            all_done = all(f.wrapped_future.done() for f in futures)
            outcomes = reader.drain(timeout=0.5 if all_done else 0.25)
            if outcomes:
                store.save_outcomes(
                    settings.run.db, sandbox_id, round_no, store.outcome_frames(outcomes, user_of, emb.encode)
                )
                for o in outcomes:
                    new = [c for c in o.calls if not c.cached]
                    stats["agents"] += 1
                    stats["new_calls"] += len(new)
                    stats["cached_calls"] += len(o.calls) - len(new)
                    stats["failed"] += o.n_failed
                    stats["llm_s"] += sum(c.latency_s for c in new)
                progress.update(
                    bar,
                    advance=len(outcomes),
                    stats=f"{stats['new_calls']} calls ({stats['cached_calls']} cached), {stats['failed']} failed",
                )
            elif all_done:
                break
    reader.close()
    errors = [str(f.state.message) for f in futures if not f.state.is_completed()]
    if errors:  # the round stays unfinished: a rerun redoes it
        raise RuntimeError(f"{len(errors)} agent chunk(s) of round {round_no} failed: {'; '.join(errors)[:500]}")
    stats["llm_s"] = round(stats["llm_s"], 2)
    return stats


def summarize(db: str, sandbox_id: str) -> dict:
    """What the CLI prints: rounds and their timings, the action mix, items watched, ratings."""
    run = store.read(db, "sandbox_run", sandbox_id=sandbox_id)
    agents = store.read(db, "sandbox_agents", sandbox_id=sandbox_id)
    return {
        "sandbox_id": sandbox_id,
        "db": str(db),
        "dataset": run["dataset"].iloc[0] if len(run) else None,
        "recommender": run["recommender"].iloc[0] if len(run) else None,
        "agents": len(agents),
        "profiles_failed": int((agents["profile_source"] == "failed").sum()),
        "rounds": store.read(db, "sandbox_rounds", sandbox_id=sandbox_id).to_dict(orient="records"),
        "action_mix": store.read(db, "sandbox_action_mix", sandbox_id=sandbox_id).to_dict(orient="records"),
        "ratings": store.read(db, "sandbox_rating_stats", sandbox_id=sandbox_id).to_dict(orient="records")[0],
        "top_watched": store.read(db, "sandbox_top_watched", sandbox_id=sandbox_id).to_dict(orient="records"),
    }
