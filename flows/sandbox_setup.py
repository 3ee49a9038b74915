"""The sandbox's set-up flow: agents from dataset users, their profiles, the friendship graph, first memories.

Run once per sandbox; a resume finds the agents stored and only asks again the profiles that failed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from doppel.flows.fanout import fan_out
from doppel.tasks.ensemble import embeddings as emb
from doppel.tasks.llm.calls import CallOwner
from doppel.tasks.sandbox import build, memory, social, store
from doppel.tasks.sandbox.config import SandboxSettings
from doppel.tasks.settings import LLMSettings
from doppel.tasks.store.db import query

HISTORY_MEMORIES = 5

make_profiles = task(name="sandbox-profiles", cache_policy=NO_CACHE, persist_result=False)(build.build_profiles)


@flow(name="doppel-sandbox-setup")
def sandbox_setup(
    settings: SandboxSettings,
    sandbox_id: str,
    dataset: str,
    llm: LLMSettings,
    model_id: str,
    owner: CallOwner | None = None,
) -> dict:
    """Agents from dataset users (profile from a doppel run or built now), the friendship graph, first memories;
    agents already stored (a resume) are kept, only their failed profiles asked again."""
    db = settings.run.db
    stored = store.read(db, "sandbox_agents", sandbox_id=sandbox_id)
    if not stored.empty:
        return {
            "agents": len(stored),
            "created": False,
            **rebuild_profiles(settings, sandbox_id, dataset, llm, model_id, owner),
        }
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
    histories = build.user_histories(train, users, settings.profile_history)
    from_run = set(given["user_id"])
    todo = [
        (u, demo.get(u, "") or "a viewer", build.history_items(histories[u]), 0) for u in users if u not in from_run
    ]
    built = profiles_with_progress(settings, sandbox_id, todo, llm, model_id, owner)
    profiles = {**dict(zip(given["user_id"], given["profile"])), **built.texts}
    errors = built.errors
    agent_ids = [f"A{k + 1:02d}" for k in range(len(users))]
    activity = build.activity_levels(train, users, settings.activity)
    source = {u: f"run:{settings.profile_run_id}" if u in from_run else "built" for u in users}
    agents = pd.DataFrame(
        {
            "agent_id": agent_ids,
            "user_id": users,
            "demographics": [demo.get(u, "") or "a viewer" for u in users],
            "profile": [profiles.get(u, build.NO_PROFILE) for u in users],
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
    store.save_setup(db, sandbox_id, agents, friends, memories, store.calls_frame(built.calls))
    warn_failed(errors, "failed")
    return {
        "agents": len(agents),
        "created": True,
        "profiles_built": len(todo) - len(errors),
        "profiles_failed": len(errors),
        "edges": len(edges),
    }


def rebuild_profiles(
    settings: SandboxSettings, sandbox_id: str, dataset: str, llm: LLMSettings, model_id: str, owner: CallOwner | None
) -> dict:
    """A resume asks again, as fresh samples after the cached ones, every stored profile that failed; the
    agents' rows and the calls are saved together. No failed profile: nothing asked, {}."""
    db = settings.run.db
    failed = store.read(db, "sandbox_failed_profiles", sandbox_id=sandbox_id)
    if failed.empty:
        return {}
    train = store.read(db, "sandbox_fold_train", dataset=dataset, fold=settings.fold)
    histories = build.user_histories(train, failed["user_id"].tolist(), settings.profile_history)
    todo = [
        (r.user_id, r.demographics, build.history_items(histories[r.user_id]), int(r.profile_retries or 0) + 1)
        for r in failed.itertuples(index=False)
    ]
    built = profiles_with_progress(settings, sandbox_id, todo, llm, model_id, owner)
    store.save_profiles(db, sandbox_id, build.asked_again(failed, built), store.calls_frame(built.calls))
    get_run_logger().info("%d of %d failed profile(s) rebuilt", len(built.texts), len(failed))
    warn_failed(built.errors, "failed again")
    return {"profiles_rebuilt": len(built.texts), "profiles_failed": len(built.errors)}


def warn_failed(errors: dict[str, str], what: str) -> None:
    """One warning naming the first failed profiles (user: reason), if any failed."""
    if errors:
        get_run_logger().warning(
            "%d profile(s) %s; those agents act on demographics only: %s",
            len(errors),
            what,
            "; ".join(f"{u}: {e}" for u, e in list(errors.items())[:3]),
        )


def profiles_with_progress(
    settings: SandboxSettings, sandbox_id: str, todo: list, llm: LLMSettings, model_id: str, owner: CallOwner | None
) -> build.Profiles:
    """Build profiles with the fan-out (one chunk holding the whole concurrency) while a bar counts them
    (nothing to build: no fan-out)."""
    built: list[build.BuiltProfile] = []
    if todo:
        fan_out(
            make_profiles,
            todo,
            name=f"{sandbox_id}-profiles",
            llm=llm.model_copy(update={"max_tokens_profile": settings.profile_max_tokens}),
            runner="threads",
            workers=1,
            write=built.extend,
            key=lambda profile: profile.user_id,
            label="building agent profiles",
            progress=settings.run.progress,
            model_id=model_id,
            cache_dir=str(settings.run.cache_dir()),
            owner=owner,
        ).raise_for_errors("profile chunk(s)")
    return build.gather_profiles(built)
