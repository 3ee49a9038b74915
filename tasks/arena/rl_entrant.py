"""`doppel rl` agents as arena entrants: trained on simulated users only, judged on real held-out ratings.

An agent's preference over the catalogue for a user is read off its network at the user's state: the
env's observation at the start of an episode (the user's last train ratings, their train items seen).
Policy-gradient agents (PPO, A2C, TRPO): the logits of the action distribution; DQN: its Q-values.
An agent enters only the fold its RL run was trained on (the ensemble run's fold): there its train
split is the arena's, so no held-out rating reached it through the simulated user.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from doppel.tasks.arena.zoo import Entrant

FAMILY = "rl"
FACTORY = f"{__name__}:RLAgentScores"  # built like a plug-in (zoo.load_factory), entered by the operator's --rl-run


def rl_entrants(db: str, rl_run: str) -> tuple[str, list[Entrant]]:
    """(the RL run's fold, one entrant per trained agent it saved)."""
    from doppel.tasks.rl.config import ALGOS
    from doppel.tasks.rl.store import agents_dir, finished_rl_run

    row = finished_rl_run(db, rl_run)
    seed = int(row["config"].get("seed", 0))
    folder = agents_dir(db, rl_run)
    algos = [a for a in row["config"].get("algos", []) if a in ALGOS and (folder / f"{a}-seed{seed}.zip").exists()]
    if not algos:
        raise ValueError(
            f"--rl-run {rl_run!r}: no saved agent in {folder} (runs of doppel before 2026-12-05 saved none)"
        )
    entrants = [Entrant(f"rl_{a}", FAMILY, FACTORY, {"db": str(db), "rl_run": rl_run, "algo": a}) for a in algos]
    return str(list(row["folds"])[0]), entrants


class RLAgentScores:
    """One saved agent of a `doppel rl` run (see the module docstring)."""

    def __init__(self, db: str, rl_run: str, algo: str, seed: int = 0):
        self.db, self.rl_run, self.algo = db, rl_run, algo

    def fit(self, train: pd.DataFrame) -> RLAgentScores:
        from doppel.tasks.arena.config import same_pairs
        from doppel.tasks.rl import agents
        from doppel.tasks.rl.config import EnvSettings
        from doppel.tasks.rl.env import DoppelRecEnv
        from doppel.tasks.rl.rewards import UserItemLikes, build_world, read_ensemble_inputs
        from doppel.tasks.rl.store import agents_dir, finished_rl_run

        row = finished_rl_run(self.db, self.rl_run)
        config = row["config"]
        inputs = read_ensemble_inputs(self.db, config["ensemble_id"])
        if not same_pairs(inputs.train, train):
            raise ValueError(
                f"rl agent {self.algo} of {self.rl_run}: trained on another train split than this fold's "
                f"(its ensemble run {inputs.run_id} is of fold {inputs.fold})"
            )
        env = EnvSettings.model_validate(config.get("env", {}))
        users = sorted(inputs.train["user_id"].astype(str).unique())
        blank = np.zeros((len(users), len(inputs.item_ids)), dtype=bool)  # the state needs no answers
        likes = UserItemLikes(users, inputs.item_ids, blank, ~blank, "none")
        threshold = config.get("like_threshold") or inputs.settings.like_threshold
        world = build_world(inputs.train, likes, inputs.embeddings, inputs.has_embedding, threshold, env.feature_dim)
        self.env = DoppelRecEnv(world, **env.model_dump(exclude={"feature_dim"}))
        seed = int(config.get("seed", 0))
        self.model = agents.load(agents_dir(self.db, self.rl_run) / f"{self.algo}-seed{seed}.zip", self.algo)
        self.item_code = {item: k for k, item in enumerate(inputs.item_ids)}
        self.user_ids = set(users)
        return self

    def _preferences(self, user_id: str) -> np.ndarray:
        import torch
        from stable_baselines3 import DQN

        obs, _ = self.env.reset(options={"user_id": user_id})
        with torch.no_grad():
            tensor, _ = self.model.policy.obs_to_tensor(obs)
            out: Any = (
                self.model.q_net(tensor)
                if isinstance(self.model, DQN)
                else self.model.policy.get_distribution(tensor).distribution.logits
            )
        return out[0].cpu().numpy().astype(float)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users, items = np.asarray(users, dtype=str), np.asarray(items, dtype=str)
        codes = pd.Series(items).map(self.item_code).to_numpy(dtype=float)
        out = np.full(len(users), np.nan)
        for user in np.unique(users):
            if user not in self.user_ids:
                continue  # no train history: no state (ranked last)
            rows = np.flatnonzero((users == user) & ~np.isnan(codes))
            out[rows] = self._preferences(user)[codes[rows].astype(int)]
        return out
