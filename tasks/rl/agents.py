"""Agents on `DoppelRecEnv`: SB3 DQN / A2C / PPO, sb3-contrib TRPO, random and most-popular baselines.

The SB3 agents use their default hyper-parameters and `MlpPolicy`, on the env as it is (no mask,
no wrapper but `Monitor` for the learning curve); DQN is evaluated greedy, the policy-gradient agents
by sampling their policy (see `ModelPolicy`). Evaluation runs K episodes with seeds
seed, seed+1, ... (the same users for every agent) and reports, per agent:
- `avg_reward`: reward per step over all steps of the K episodes;
- `total_reward`: mean reward per episode;
- `liking`: share of the recommended items that the user saw for the first time and liked
  (repeats and unrated pairs are not counted as recommendations);
- `episode_len`: mean steps per episode (the leave rule shortens episodes).
Each comes with `<metric>_std`: over training seeds when there are several, else over episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from doppel.tasks.rl.env import DoppelRecEnv

EVAL_METRICS = ("avg_reward", "total_reward", "liking", "episode_len")


class Policy(Protocol):
    def act(self, obs: np.ndarray, env: DoppelRecEnv) -> int: ...


class RandomPolicy:
    """Uniform over the items that can still earn a reward (the env's action mask), seeded."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, env: DoppelRecEnv) -> int:
        allowed = np.flatnonzero(env.action_masks())
        return int(self.rng.choice(allowed)) if len(allowed) else int(self.rng.integers(env.action_space.n))


class PopularPolicy:
    """The most-rated train item the user has not seen yet (ties by item code)."""

    def __init__(self, popularity: np.ndarray):
        self.order = np.argsort(-popularity, kind="stable")

    def act(self, obs: np.ndarray, env: DoppelRecEnv) -> int:
        allowed = env.action_masks()[self.order]
        return int(self.order[np.argmax(allowed)]) if allowed.any() else int(self.order[0])


class ModelPolicy:
    """A trained SB3 model: DQN greedy; A2C / PPO / TRPO sample from their policy (seeded torch RNG).

    The argmax of a policy-gradient agent's distribution over ~1,700 items keeps naming one item,
    i.e. repeats it until the user leaves; the sampled policy is the one that was trained.
    """

    def __init__(self, model, seed: int, deterministic: bool | None = None):
        from stable_baselines3 import DQN

        self.model = model
        self.seed = seed
        self.deterministic = isinstance(model, DQN) if deterministic is None else deterministic
        self._seeded = False

    def act(self, obs: np.ndarray, env: DoppelRecEnv) -> int:
        if not self._seeded:  # seeded at the first action, so that evaluation order does not matter
            import torch

            torch.manual_seed(self.seed)
            self._seeded = True
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return int(action)


def algorithm(name: str):
    from sb3_contrib import TRPO
    from stable_baselines3 import A2C, DQN, PPO

    classes = {"dqn": DQN, "a2c": A2C, "ppo": PPO, "trpo": TRPO}
    if name not in classes:
        raise ValueError(f"unknown algorithm {name!r}: one of {', '.join(classes)}")
    return classes[name]


@dataclass
class Trained:
    algo: str
    seed: int
    model: object
    curve: list[tuple[int, float]] = field(default_factory=list)  # (timesteps, episode return)
    seconds: float = 0.0


def train(
    algo: str, make: Callable[[], DoppelRecEnv], steps: int, seed: int, threads: int = 1, **hyper: Any
) -> Trained:
    """Train one SB3 agent for `steps` env steps from `seed` (`hyper`: the algorithm's own keyword
    arguments, e.g. n_steps); records every finished episode's return."""
    import time

    import torch
    from stable_baselines3.common.monitor import Monitor

    torch.set_num_threads(threads)
    env = Monitor(make())
    env.reset(seed=seed)
    env.action_space.seed(seed)
    model = algorithm(algo)("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **hyper)
    t = time.monotonic()
    model.learn(total_timesteps=steps)
    seconds = time.monotonic() - t
    ends = np.cumsum(env.get_episode_lengths())
    curve = [(int(s), float(r)) for s, r in zip(ends, env.get_episode_rewards())]
    return Trained(algo, seed, model, curve, round(seconds, 2))


def save(trained: Trained, folder: Path) -> str:
    """The trained SB3 model as folder/<algo>-seed<seed>.zip; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trained.algo}-seed{trained.seed}.zip"
    trained.model.save(path)  # type: ignore[attr-defined]
    return str(path)


def load(path: str | Path, algo: str):
    """A model `save` wrote, on the CPU."""
    return algorithm(algo).load(str(path), device="cpu")


def evaluate(policy: Policy, env: DoppelRecEnv, episodes: int, seed: int) -> np.ndarray:
    """Per episode (rows) reset with seeds seed .. seed + episodes - 1: reward, steps, recommended, liked."""
    out = np.zeros((episodes, 4))
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy.act(obs, env))
            fresh = not info["repeat"] and not info["unrated"]
            out[k] += (reward, 1, fresh, fresh and info["liked"])
            done = terminated or truncated
    return out


def summarise(runs: list[np.ndarray]) -> dict[str, float]:
    """EVAL_METRICS (means) and their `<metric>_std`: over seeds when there are several, else over episodes.

    runs: one `evaluate` array per training seed.
    """

    def metrics(e: np.ndarray) -> dict[str, float]:
        reward, steps, recommended, liked = e.sum(axis=0)
        return {
            "avg_reward": reward / max(1, steps),
            "total_reward": reward / len(e),
            "liking": liked / recommended if recommended else 0.0,
            "episode_len": steps / len(e),
        }

    pooled = metrics(np.concatenate(runs))
    parts = [metrics(e) for e in runs] if len(runs) > 1 else [metrics(row[None]) for row in runs[0]]
    spread = {f"{m}_std": float(np.std([p[m] for p in parts], ddof=1)) if len(parts) > 1 else 0.0 for m in EVAL_METRICS}
    return {**pooled, **spread, "spread_over_seeds": float(len(runs) > 1), "episodes": float(sum(map(len, runs)))}


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str, window: int = 50) -> None:
    """Episode return against training steps, a moving average of `window` episodes per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        if not curve:
            continue
        x = np.array([c[0] for c in curve])
        y = np.array([c[1] for c in curve])
        w = max(1, min(window, len(y)))
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(x[w - 1 :], smooth, label=name)
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"episode return (moving mean of {window})")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
