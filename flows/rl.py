"""`doppel rl`: a finished ensemble run -> like matrix -> env -> train agents -> evaluate -> metrics + curve.

read the ensemble run's stored inputs -> like votes for every (train user, item) (cached) -> for each
agent and seed: train (SB3) or build (baseline), evaluate on K seeded episodes -> write `metrics`
(simulator `rl:<agent>`) under a new run id -> plot the learning curves.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from doppel.flows.untrusted import refusal_fails_the_run
from doppel.tasks.rl import agents, rewards
from doppel.tasks.rl.config import BASELINES, RLSettings
from doppel.tasks.rl.env import DoppelRecEnv
from doppel.tasks.rl.hybrid_reward import cached_hybrid_likes
from doppel.tasks.rl.store import agents_dir, save_results
from doppel.tasks.store.db import init_db
from doppel.tasks.store.writes import finish_run, start_run
from doppel.tasks.version import code_version

read_inputs = task(name="rl-read-ensemble", cache_policy=NO_CACHE, persist_result=False)(rewards.read_ensemble_inputs)
ensemble_likes = task(name="rl-ensemble-likes", cache_policy=NO_CACHE, persist_result=False)(
    rewards.cached_ensemble_likes
)
run_likes = task(name="rl-run-likes", cache_policy=NO_CACHE, persist_result=False)(rewards.read_run_likes)
hybrid_likes = task(name="rl-hybrid-likes", cache_policy=NO_CACHE, persist_result=False)(cached_hybrid_likes)
train_agent = task(name="rl-train", cache_policy=NO_CACHE, persist_result=False)(agents.train)


def new_rl_id() -> str:
    return datetime.now(UTC).strftime("rl-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@task(name="rl-evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate_agent(name: str, policies: list, world: rewards.World, settings: RLSettings) -> dict:
    """One policy per training seed, each on the same K seeded episodes."""
    runs = [
        agents.evaluate(
            policy,
            DoppelRecEnv(world, **settings.env.model_dump(exclude={"feature_dim"})),
            settings.episodes,
            settings.seed + 10_000,
        )
        for policy in policies
    ]
    return agents.summarise(runs)


@flow(name="doppel-rl")
@refusal_fails_the_run
def rl(settings: RLSettings) -> dict:
    """Train and evaluate the agents on the env whose reward is a simulated doppel user."""
    from doppel.flows.untrusted import refuse_untrusted

    refuse_untrusted(db=settings.db, plot=settings.plot)  # a deployment's parameters are anyone's
    logger = get_run_logger()
    started = time.monotonic()
    init_db(settings.db)
    inputs = read_inputs(settings.db, settings.ensemble_id)
    threshold = settings.like_threshold or inputs.settings.like_threshold
    if settings.reward == "ensemble":
        likes, like_info = ensemble_likes(inputs)
    elif settings.reward.startswith("run:"):
        likes, like_info = run_likes(settings.db, settings.reward.split(":", 1)[1], inputs, threshold), {}
    elif settings.reward == "hybrid":
        likes, like_info = hybrid_likes(inputs, threshold, settings.reward_users, settings.seed)
    else:
        raise ValueError(f"--reward must be 'ensemble', 'hybrid' or 'run:<run_id>', not {settings.reward!r}")
    world = rewards.build_world(
        inputs.train, likes, inputs.embeddings, inputs.has_embedding, threshold, settings.env.feature_dim
    )
    rl_id = settings.rl_id or new_rl_id()
    agents_dir(settings.db, rl_id)  # refuses an id that is no plain name before any training
    start_run(
        settings.db,
        rl_id,
        inputs.dataset,
        [inputs.fold],
        {"kind": "rl", **settings.model_dump(mode="json"), "ensemble_id": inputs.run_id},
        code_version(),
        {},
        likes.source,
        "none",
    )
    status = "failed"
    table, curves, timings, saved = {}, {}, {}, {}
    try:
        env_kwargs = settings.env.model_dump(exclude={"feature_dim"})
        seeds = [settings.seed + k for k in range(settings.seeds)]
        for name in settings.algos:
            t = time.monotonic()
            if name in BASELINES:
                policies: list[agents.Policy] = [
                    agents.RandomPolicy(s) if name == "random" else agents.PopularPolicy(world.popularity)
                    for s in seeds
                ]
            else:
                trained = [
                    train_agent(
                        name, lambda: DoppelRecEnv(world, **env_kwargs), settings.steps, s, settings.torch_threads
                    )
                    for s in seeds
                ]
                curves[name] = [point for tr in trained[:1] for point in tr.curve]
                saved[name] = [agents.save(tr, agents_dir(settings.db, rl_id)) for tr in trained]
                policies = [agents.ModelPolicy(tr.model, settings.seed + 10_000) for tr in trained]
            table[name] = evaluate_agent(name, policies, world, settings)
            timings[name] = round(time.monotonic() - t, 2)
            logger.info("%s: %s (%.1f s)", name, table[name], timings[name])
        rows = [
            (inputs.fold, f"rl:{name}", metric, float(value))
            for name, stats in table.items()
            for metric, value in {**stats, "wall_s": timings[name]}.items()
        ]
        save_results(settings.db, rl_id, pd.DataFrame(rows, columns=["fold", "simulator", "metric", "value"]))
        plot = settings.plot or str(Path(settings.db).resolve().parent / "rl_learning_curve.png")
        if curves:
            agents.plot_curves(
                curves, plot, f"doppel rl: {inputs.dataset} {inputs.fold}, reward {likes.source}, seed {settings.seed}"
            )
        status = "finished"
    finally:
        finish_run(settings.db, rl_id, status)
    return {
        "rl_id": rl_id,
        "ensemble_id": inputs.run_id,
        "dataset": inputs.dataset,
        "fold": inputs.fold,
        "reward": likes.source,
        "users": len(likes.user_ids),
        "items": len(likes.item_ids),
        "like_rate": _like_rate(likes),
        "agents": saved,
        "likes": like_info,
        "table": table,
        "timings": timings,
        "plot": plot if curves else None,
        "steps": settings.steps,
        "seeds": settings.seeds,
        "episodes": settings.episodes,
        "wall_s": round(time.monotonic() - started, 2),
        "db": settings.db,
    }


def _like_rate(likes: rewards.UserItemLikes) -> float:
    if likes.p_like is not None:
        return float(likes.p_like.mean())
    return float(likes.like[likes.defined].mean()) if likes.defined.any() else 0.0
