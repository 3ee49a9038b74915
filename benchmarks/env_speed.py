"""Steps per second of the doppel RL env (`doppel/MovieLens-v0`) on a finished ensemble run.

Measures, single process: building the like matrix with the vectorised voters (every train user x
every item of the fold, no cache), then random-action env steps on the bare env, through `gym.make`
(its TimeLimit / order / passive-checker wrappers), and with the most-popular baseline choosing.

    python benchmarks/env_speed.py --db /tmp/rl/doppel.duckdb [--ensemble-id ens-...] [--steps 200000]

Needs a finished `doppel ensemble` run in the db (see the README's RL section). The last line is
`RESULT steps_per_s=<bare env, random actions> ...`.
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--ensemble-id", default=None)
    parser.add_argument("--steps", type=int, default=200_000)
    args = parser.parse_args()

    from doppel.tasks.rl import rewards
    from doppel.tasks.rl.agents import PopularPolicy
    from doppel.tasks.rl.env import DoppelRecEnv

    t = time.perf_counter()
    inputs = rewards.read_ensemble_inputs(args.db, args.ensemble_id)
    sasrec = rewards.load_sasrec(inputs)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    likes = rewards.ensemble_likes(
        inputs.train,
        inputs.item_ids,
        inputs.settings.like_threshold,
        inputs.keywords,
        inputs.embeddings,
        inputs.has_embedding,
        sasrec,
        inputs.settings.sim_top_k,
    )
    votes_s = time.perf_counter() - t
    world = rewards.build_world(
        inputs.train, likes, inputs.embeddings, inputs.has_embedding, inputs.settings.like_threshold, 16
    )
    print(
        f"ensemble run {inputs.run_id}: {inputs.dataset} {inputs.fold}, {len(likes.user_ids)} users x "
        f"{len(likes.item_ids)} items, keywords for {inputs.keywords['item_id'].nunique()} items; "
        f"SASRec {'loaded' if sasrec.info.get('loaded') else 'trained'}",
        flush=True,
    )
    print(
        f"read inputs + SASRec: {read_s:.1f} s; like votes for {likes.like.size:,} pairs: {votes_s:.1f} s "
        f"({likes.like.size / votes_s:,.0f} pairs/s); like rate {likes.like.mean():.1%}",
        flush=True,
    )

    rng = np.random.default_rng(0)
    n_items = len(likes.item_ids)

    def random_action(env) -> int:
        return int(rng.integers(n_items))

    bare = steps_per_s(DoppelRecEnv(world), args.steps, random_action)
    made = steps_per_s(gym.make("doppel/MovieLens-v0", world=world), args.steps, random_action)
    popular = PopularPolicy(world.popularity)
    policy = steps_per_s(DoppelRecEnv(world), args.steps // 4, lambda env: popular.act(None, env))
    print(f"bare env, random actions: {bare:,.0f} steps/s ({1e6 / bare:.1f} us/step)")
    print(f"gym.make (wrappers), random actions: {made:,.0f} steps/s")
    print(f"bare env, most-popular baseline choosing (mask + argmax each step): {policy:,.0f} steps/s")
    print(
        f"RESULT steps_per_s={bare:.0f} gym_make_steps_per_s={made:.0f} popular_steps_per_s={policy:.0f} "
        f"like_matrix_s={votes_s:.1f}"
    )


if __name__ == "__main__":
    main()
