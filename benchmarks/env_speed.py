"""Steps per second of the doppel RL env: random-action steps on the bare env, through `gym.make`
(its TimeLimit / order / passive-checker wrappers), and with the most-popular baseline choosing.

    python benchmarks/env_speed.py [--steps 200000]                      # no database, no LLM
    python benchmarks/env_speed.py --db /tmp/rl/doppel.duckdb [--ensemble-id ens-...]

Without --db the world is `doppel/Synthetic-v0`'s in-memory one at MovieLens-100K's shape (943 users,
1,682 items: the same observation and action sizes as `doppel/MovieLens-v0`); a step's cost depends
on those sizes, not on where the likes came from. With --db, a finished `doppel ensemble` run, and
the time to build its like matrix with the vectorised voters is measured too. Writes
benchmarks/results/env_speed.md (with --write); the last line is `RESULT steps_per_s=<bare env> ...`.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np


def steps_per_s(env, steps: int, choose) -> float:
    env.reset(seed=0)
    t = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(choose(env))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="a DuckDB file with a finished doppel ensemble run")
    parser.add_argument("--ensemble-id", default=None)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/env_speed.md")
    args = parser.parse_args()

    from doppel.tasks.rl.agents import PopularPolicy
    from doppel.tasks.rl.env import DoppelRecEnv

    if args.db:
        world, what, extra = ensemble_world(args.db, args.ensemble_id)
    else:
        from doppel.tasks.rl.synthetic import synthetic_world

        t = time.perf_counter()
        world = synthetic_world(users=943, items=1682)
        what = f"synthetic world at ML-100K's shape ({len(world.likes.user_ids)} users x {len(world.likes.item_ids)} items, item-KNN user)"
        extra = f"world built in {time.perf_counter() - t:.1f} s; like rate {world.likes.like.mean():.1%}"
    print(f"{what}; {extra}", flush=True)

    rng = np.random.default_rng(0)
    n_items = len(world.likes.item_ids)

    def random_action(env) -> int:
        return int(rng.integers(n_items))

    bare = steps_per_s(DoppelRecEnv(world), args.steps, random_action)
    made = steps_per_s(gym.make("doppel/MovieLens-v0", world=world), args.steps, random_action)
    popular = PopularPolicy(world.popularity)
    policy = steps_per_s(DoppelRecEnv(world), args.steps // 4, lambda env: popular.act(None, env))
    obs = DoppelRecEnv(world).observation_space.shape[0]
    lines = [
        f"| bare env, random actions | {bare:,.0f} | {1e6 / bare:.1f} |",
        f"| `gym.make` (wrappers), random actions | {made:,.0f} | {1e6 / made:.1f} |",
        f"| bare env, most-popular baseline choosing (mask + argmax) | {policy:,.0f} | {1e6 / policy:.1f} |",
    ]
    for line in lines:
        print(line)
    result = f"RESULT steps_per_s={bare:.0f} gym_make_steps_per_s={made:.0f} popular_steps_per_s={policy:.0f}"
    if args.write:
        from _provenance import write_result

        body = "\n".join(
            [
                f"{what}; observation {obs} floats, {n_items} actions; {args.steps:,} steps per measurement",
                f"({args.steps // 4:,} for the policy), one process. {extra}.",
                "",
                "| | steps/s | us/step |",
                "|---|---|---|",
                *lines,
            ]
        )
        print("wrote", write_result("env_speed", "# RL env speed (benchmarks/env_speed.py)", body, result))
    print(result)


def ensemble_world(db: str, ensemble_id: str | None):
    from doppel.tasks.rl import rewards

    t = time.perf_counter()
    inputs = rewards.read_ensemble_inputs(db, ensemble_id)
    sasrec = rewards.load_sasrec(inputs)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    likes = rewards.ensemble_run_likes(inputs, sasrec)
    votes_s = time.perf_counter() - t
    world = rewards.build_world(
        inputs.train, likes, inputs.embeddings, inputs.has_embedding, inputs.settings.like_threshold, 16
    )
    what = (
        f"ensemble run {inputs.run_id}: {inputs.dataset} {inputs.fold}, {len(likes.user_ids)} users x "
        f"{len(likes.item_ids)} items, keywords for {inputs.keywords['item_id'].nunique()} items; "
        f"SASRec {'loaded' if sasrec.info.get('loaded') else 'trained'}"
    )
    extra = (
        f"read inputs + SASRec: {read_s:.1f} s; like votes for {likes.like.size:,} pairs: {votes_s:.1f} s "
        f"({likes.like.size / votes_s:,.0f} pairs/s); like rate {likes.like.mean():.1%}"
    )
    return world, what, extra


if __name__ == "__main__":
    main()
