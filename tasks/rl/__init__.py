"""A Gymnasium recommendation env whose user is a doppel simulator, and the agents trained on it.

- rewards.py: the simulated user as a (user x item) like matrix: the ensemble's 2-of-3 vote
  (tasks/ensemble, vectorised over every pair once) or a finished `doppel run`'s ratings.
- env.py: `DoppelRecEnv` and the registered ids `doppel/MovieLens-v0`, `doppel/Synthetic-v0`.
- agents.py: SB3 DQN / A2C / PPO, sb3-contrib TRPO, random and most-popular baselines, evaluation.
- config.py: the settings of `doppel rl`.
"""
