"""`DoppelRecEnv`: recommend items to a simulated doppel user, one item per step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

if TYPE_CHECKING:  # importing this module stays light: the world is built by make_env, not here
    from doppel.tasks.rl.rewards import World


class DoppelRecEnv(gym.Env):
    """
    ## Description
    Each episode samples one user of the fold's train users (uniformly, from `self.np_random`) and
    recommends them one catalogue item per step. The user answers with the simulator's like
    decision for (that user, that item), looked up in a matrix precomputed from the user's OWN train
    history (`tasks/rl/rewards.py`), so a step costs microseconds.

    ## Action Space
    `Discrete(n_items)`: the item code to recommend (the catalogue in `world.likes.item_ids` order).
    An action outside the space raises `ValueError`, as Gymnasium's own envs refuse invalid actions.

    ## Observation Space
    `Box(-1, 1, (H * (d + 1) + 2 [+ n_items],), float32)`, H = `history_len`, d = item feature size:
    - H rows (oldest first) of the user's last H interactions: first the train history (real
      ratings), then this episode's recommendations (simulated answers); each row is the item's d
      features (PCA of its sentence embedding, in [-1, 1]) then +1 liked / -1 not liked; rows
      before the first interaction are all 0.
    - t / T (steps taken over the horizon) and s / L (the current non-like streak over `leave_after`).
    - with `seen_in_obs` (default): n_items flags, 1 for each item already seen (shown this episode,
      and with `exclude_train` the user's train items), else 0: what lets an unmasked agent learn
      not to repeat itself, and a bag-of-items view of the user's taste.
    The item codes behind the rows are in `info["history"]` (-1 = empty row).

    ## Rewards
    1.0 if the user likes the item, else 0.0 (with the hybrid reward the like is drawn from the
    calibrated P(like) of the pair with the env's RNG, so `reset(seed=...)` fixes the answers). No reward for an item already shown this episode or
    (with `exclude_train`) already in the user's train history, nor (run reward) for a pair the
    source never rated: such a step returns 0.0 and leaves the history unchanged (`info["repeat"]`,
    `info["unrated"]`). `action_masks()` gives the actions that can still earn a reward
    (for MaskablePPO and the baselines); the SB3 agents get no mask and learn the penalty.

    ## Episode End
    - Termination: the user leaves after `leave_after` (L, default 3) consecutive steps without a
      like (a dislike, a repeat and an unrated pair all count); `None` disables it.
    - Truncation: after `horizon` (T, default 20) steps.

    ## Arguments
    `world` (the simulated user and the observation inputs), `horizon`, `leave_after`,
    `history_len`, `exclude_train`, `seen_in_obs`. `reset(options={"user": code})` or `{"user_id": "42"}` fixes the user.

    ## Version History
    - v0: initial version; an action outside the space raises `ValueError` (it used to index from the end).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # declared as gym.Env declares it
    action_space: spaces.Discrete

    def __init__(
        self,
        world: World,
        horizon: int = 20,
        leave_after: int | None = 3,
        history_len: int = 10,
        exclude_train: bool = True,
        seen_in_obs: bool = True,
    ):
        self.world = world
        self.horizon = int(horizon)
        self.leave_after = leave_after
        self.history_len = int(history_len)
        self.exclude_train = exclude_train
        self.seen_in_obs = seen_in_obs
        self._like = world.likes.like
        self._defined = world.likes.defined
        self._p_like = world.likes.p_like
        self._features = world.item_features.astype(np.float32)
        self._user_code = {u: k for k, u in enumerate(world.likes.user_ids)}
        n_items, dim = self._features.shape
        self.action_space = spaces.Discrete(n_items)
        size = self.history_len * (dim + 1) + 2 + (n_items if seen_in_obs else 0)
        self.observation_space = spaces.Box(-1.0, 1.0, (size,), dtype=np.float32)
        # the feature row of "no item" is the last row of this padded table
        self._table = np.vstack([self._features, np.zeros((1, dim), np.float32)])
        self._user = 0
        self._t = 0
        self._streak = 0
        self._seen = np.zeros(n_items, dtype=bool)
        self._hist_items = np.full(self.history_len, -1, dtype=np.int64)
        self._hist_flags = np.zeros(self.history_len, dtype=np.float32)

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "user_id" in options:
            self._user = self._user_code[str(options["user_id"])]
        elif "user" in options:
            self._user = int(options["user"])
        else:
            self._user = int(self.np_random.integers(len(self.world.likes.user_ids)))
        self._t, self._streak = 0, 0
        items = self.world.history_items[self._user]
        flags = self.world.history_likes[self._user]
        self._seen[:] = False
        if self.exclude_train:
            self._seen[items] = True
        self._hist_items[:] = -1
        self._hist_flags[:] = 0.0
        tail = min(self.history_len, len(items))
        if tail:
            self._hist_items[-tail:] = items[-tail:]
            self._hist_flags[-tail:] = np.where(flags[-tail:], 1.0, -1.0)
        return self._obs(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(
                f"action {action!r} is not in the action space {self.action_space} (an item code 0..{self.action_space.n - 1})"
            )
        item = int(action)
        repeat = bool(self._seen[item])
        unrated = not self._defined[self._user, item]
        liked = not repeat and not unrated and self._answer(item)
        if not repeat:
            self._seen[item] = True
            self._push(item, liked)
        self._t += 1
        self._streak = 0 if liked else self._streak + 1
        terminated = self.leave_after is not None and self._streak >= self.leave_after
        truncated = not terminated and self._t >= self.horizon
        info = self._info()
        info.update(item=item, item_id=self.world.likes.item_ids[item], liked=liked, repeat=repeat, unrated=unrated)
        return self._obs(), float(liked), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """(n_items,) bool: items not yet seen whose pair the reward source defines."""
        return ~self._seen & self._defined[self._user]

    # ------------------------------------------------------------------ helpers

    def _answer(self, item: int) -> bool:
        """The user's like: the source's decision, or a draw from its P(like) with the env's RNG."""
        if self._p_like is None:
            return bool(self._like[self._user, item])
        return bool(self.np_random.random() < self._p_like[self._user, item])

    def _push(self, item: int, liked: bool) -> None:
        self._hist_items[:-1] = self._hist_items[1:]
        self._hist_flags[:-1] = self._hist_flags[1:]
        self._hist_items[-1] = item
        self._hist_flags[-1] = 1.0 if liked else -1.0

    def _obs(self) -> np.ndarray:
        rows = np.concatenate([self._table[self._hist_items], self._hist_flags[:, None]], axis=1)
        leave = self._streak / self.leave_after if self.leave_after else 0.0
        tail = np.array([self._t / self.horizon, min(1.0, leave)], dtype=np.float32)
        parts = [rows.ravel(), tail, self._seen.astype(np.float32)] if self.seen_in_obs else [rows.ravel(), tail]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _info(self) -> dict[str, Any]:
        return {
            "user": self._user,
            "user_id": self.world.likes.user_ids[self._user],
            "t": self._t,
            "history": self._hist_items.copy(),
        }


def make_env(
    db: str = "doppel.duckdb",
    ensemble_id: str | None = None,
    dataset: str | None = None,
    reward: str = "ensemble",
    like_threshold: int | None = None,
    feature_dim: int = 16,
    world: World | None = None,
    **env_kwargs: Any,
) -> DoppelRecEnv:
    """The registered entry point: a `DoppelRecEnv` over a finished ensemble run of a DuckDB file."""
    from doppel.tasks.rl.rewards import load_world

    world = world or load_world(db, ensemble_id, dataset, reward, like_threshold, feature_dim)
    return DoppelRecEnv(world, **env_kwargs)


def make_synthetic_env(
    db: str | None = None,
    ensemble_id: str | None = None,
    reward: str | None = None,
    like_threshold: int | None = None,
    feature_dim: int = 16,
    world: World | None = None,
    users: int = 60,
    items: int = 120,
    seed: int = 0,
    fold: str = "u1",
    **env_kwargs: Any,
) -> DoppelRecEnv:
    """`doppel/Synthetic-v0`: with `db` (or `ensemble_id`), a finished ensemble run of the synthetic dataset,
    as `make_env`; without, the built-in synthetic dataset judged by item-KNN, built in memory (no file, no
    LLM: tasks/rl/synthetic.py; `users`, `items`, `seed` and `fold` choose the dataset)."""
    if world is None and db is None and ensemble_id is None:
        if reward not in (None, "item_knn"):
            raise ValueError(f"reward {reward!r} reads a database: pass db= (a DuckDB file with that run)")
        from doppel.tasks.rl.synthetic import synthetic_world

        world = synthetic_world(users, items, seed, fold, like_threshold or 4, feature_dim)
    return make_env(
        db or "doppel.duckdb",
        ensemble_id,
        "synthetic-%",
        reward or "ensemble",
        like_threshold,
        feature_dim,
        world,
        **env_kwargs,
    )


def register_envs() -> None:
    """Register the ids (kept for `import doppel.tasks.rl.env`; doppel.envs does it when gymnasium is imported)."""
    from doppel.envs import register_envs as register

    register()


register_envs()
