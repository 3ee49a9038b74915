"""The simulated user of the RL env: one like decision (or probability) per (user, item), computed once.

Three sources:
- `ensemble` (default): the ensemble simulator's 2-of-3 vote (tasks/ensemble: f_mat, f_sim, f_sta,
  `score_pairs`) for every (train user, catalogue item) pair of the fold, each pair judged from ITS
  user's own train history. Computed in blocks of users (943 x 1,682 pairs on ML-100K u1).
- `run:<run_id>`: a finished `doppel run`'s simulated ratings, like = rating >= threshold. Only the
  pairs the run rated are defined; `defined` marks them and the env gives 0 for the others.
- `hybrid`: the calibrated hybrid's P(like) for a seeded sample of train users x every catalogue
  item (tasks/rl/hybrid_reward.py); the env draws each like from it with its own seeded RNG.

`World` adds what the env observes: each user's train history in time order and item features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from doppel.tasks.ensemble.evaluate import score_pairs
from doppel.tasks.ensemble.voters import Index
from doppel.tasks.rl.world import EnsembleInputs, UserItemLikes, World
from doppel.tasks.store.db import first_run, query

if TYPE_CHECKING:
    pass


def ensemble_likes(
    train: pd.DataFrame,
    item_ids: list[str],
    threshold: int,
    keywords: pd.DataFrame,
    embeddings: np.ndarray,
    has_embedding: np.ndarray,
    sasrec,
    sim_top_k: int | None = 10,
    users: list[str] | None = None,
    block: int = 96,
) -> UserItemLikes:
    """The ensemble's like vote for every (user, item): `score_pairs` on blocks of users x all items.

    train: user_id, item_id, rating (the fold's train split); embeddings/has_embedding: one row per
    `item_ids` entry (see tasks.ensemble.embeddings.embedding_matrix); users default to train's users.
    """
    users = sorted(set(train["user_id"])) if users is None else list(users)
    like = np.zeros((len(users), len(item_ids)), dtype=bool)
    for start in range(0, len(users), block):
        chunk = users[start : start + block]
        pairs = pd.DataFrame(
            {
                "user_id": np.repeat(chunk, len(item_ids)),
                "item_id": np.tile(np.asarray(item_ids, dtype=object), len(chunk)),
                "rating": 0,
            }
        )
        index = Index.build(train, pairs, item_ids)
        votes, _ = score_pairs(
            train, pairs, item_ids, threshold, keywords, embeddings, has_embedding, sasrec, index, sim_top_k
        )
        like[start : start + len(chunk)] = votes["ensemble"].to_numpy(bool).reshape(len(chunk), len(item_ids))
    return UserItemLikes(users, list(item_ids), like, np.ones_like(like), "ensemble")


def run_likes(
    ratings: pd.DataFrame, users: list[str], item_ids: list[str], threshold: int, run_id: str
) -> UserItemLikes:
    """ratings: user_id, item_id, rating (a spine run's successful simulated ratings)."""
    u_code = {u: k for k, u in enumerate(users)}
    i_code = {i: k for k, i in enumerate(item_ids)}
    rated = ratings[ratings["user_id"].isin(u_code) & ratings["item_id"].isin(i_code)]
    u = rated["user_id"].map(u_code).to_numpy(np.int64)
    i = rated["item_id"].map(i_code).to_numpy(np.int64)
    like = np.zeros((len(users), len(item_ids)), dtype=bool)
    defined = np.zeros_like(like)
    like[u, i] = rated["rating"].to_numpy() >= threshold
    defined[u, i] = True
    return UserItemLikes(list(users), list(item_ids), like, defined, f"run:{run_id}")


def item_features(embeddings: np.ndarray, has_embedding: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` principal components of the item embeddings, scaled into [-1, 1] (0 = no embedding)."""
    out = np.zeros((len(embeddings), dim), dtype=np.float32)
    if not has_embedding.any():
        return out
    x = embeddings[has_embedding].astype(np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:dim].T
    scale = np.abs(proj).max(axis=0)
    proj = proj / np.where(scale > 0, scale, 1.0)
    out[has_embedding, : proj.shape[1]] = proj
    return out


def build_world(
    train: pd.DataFrame,
    likes: UserItemLikes,
    embeddings: np.ndarray,
    has_embedding: np.ndarray,
    threshold: int,
    feature_dim: int,
) -> World:
    """Histories (time order, ties by item id) and popularity from `train`, aligned with `likes`' codes."""
    u_code = {u: k for k, u in enumerate(likes.user_ids)}
    i_code = {i: k for k, i in enumerate(likes.item_ids)}
    frame = train[train["user_id"].isin(u_code) & train["item_id"].isin(i_code)]
    frame = frame.sort_values(["user_id", "ts", "item_id"], kind="stable")
    codes = frame["item_id"].map(i_code).to_numpy(np.int64)
    liked = frame["rating"].to_numpy() >= threshold
    groups = frame.groupby("user_id", sort=False).indices
    items, flags = [], []
    for user in likes.user_ids:
        rows = groups.get(user, np.zeros(0, dtype=np.int64))
        items.append(codes[rows])
        flags.append(liked[rows])
    popularity = np.bincount(codes, minlength=len(likes.item_ids)).astype(np.int64)
    return World(likes, item_features(embeddings, has_embedding, feature_dim), items, flags, popularity, threshold)


# ----------------------------------------------------------------------------- reading a finished ensemble run


def ensemble_run(db: str | Path, ensemble_id: str | None = None, dataset: str | None = None) -> dict:
    """The runs row of a finished ensemble run (the given id, else the latest one; `dataset`: a LIKE pattern)."""
    row = first_run(db, "rl_ensemble_run", run_id=ensemble_id, dataset=dataset)
    if row is None:
        what = (
            f"ensemble run {ensemble_id!r}"
            if ensemble_id
            else "finished `doppel ensemble` run" + (f" of dataset {dataset!r}" if dataset else "")
        )
        raise ValueError(f"no {what} in {db}: run `doppel ensemble` first (or pass --ensemble-id)")
    return row


def read_ensemble_inputs(db: str | Path, ensemble_id: str | None = None, dataset: str | None = None) -> EnsembleInputs:
    """Keywords (of the items the run asked for), embeddings and the fold's train split of an ensemble run."""
    from doppel.tasks.ensemble import embeddings as emb
    from doppel.tasks.ensemble.config import EnsembleSettings

    row = ensemble_run(db, ensemble_id, dataset)
    config = {k: v for k, v in row["config"].items() if k != "kind"}
    settings = EnsembleSettings.model_validate(config)
    settings = settings.model_copy(update={"run": settings.run.model_copy(update={"db": str(db)})})
    dataset, fold = row["dataset"], settings.fold
    catalogue = query(db, "ensemble_catalogue", dataset=dataset, fold=fold)
    item_ids = catalogue["item_id"].tolist()
    chosen = set(catalogue.head(settings.items)["item_id"]) if settings.items else set(item_ids)
    # under the model id the run stored them with (a llama.cpp server's is its file path, not --model)
    keywords = query(db, "ensemble_keywords", dataset=dataset, model=row["model"])
    keywords = keywords[keywords["item_id"].isin(chosen)].reset_index(drop=True)
    ratings = query(db, "ensemble_fold_ratings", dataset=dataset, fold=fold)
    train = ratings[ratings["split"] == "train"].reset_index(drop=True)
    stored = query(db, "ensemble_embeddings", dataset=dataset, model=emb.EMBED_MODEL)
    matrix, has = emb.embedding_matrix(stored, {item: k for k, item in enumerate(item_ids)})
    return EnsembleInputs(row["run_id"], dataset, fold, settings, train, item_ids, keywords, matrix, has)


def load_sasrec(inputs: EnsembleInputs):
    """The run's SASRec from its checkpoint (trained again, same seed, if the checkpoint is gone)."""
    from doppel.tasks.ensemble.sasrec import train_sasrec

    s = inputs.settings
    return train_sasrec(
        inputs.train,
        inputs.item_ids,
        s.like_threshold,
        s.sasrec,
        s.work_dir() / "sasrec",
        f"{inputs.dataset}-{inputs.fold}-",
    )


def likes_cache_path(inputs: EnsembleInputs, sasrec_key: str) -> Path:
    """Where the like matrix of these inputs is cached (keyed by everything the votes depend on)."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "run": inputs.run_id,
                "sasrec": sasrec_key,
                "items": len(inputs.item_ids),
                "top_k": inputs.settings.sim_top_k,
                "threshold": inputs.settings.like_threshold,
            },
            sort_keys=True,
        ).encode()
    )
    digest.update(
        pd.util.hash_pandas_object(inputs.keywords[["item_id", "polarity", "canonical"]], index=False)
        .to_numpy()
        .tobytes()
    )
    digest.update(inputs.embeddings.tobytes())
    return inputs.settings.run.work_dir() / "rl" / f"likes-{inputs.run_id}-{digest.hexdigest()[:16]}.npz"


def ensemble_run_likes(inputs: EnsembleInputs, sasrec) -> UserItemLikes:
    """`ensemble_likes` with a finished ensemble run's train split, keywords, embeddings and settings."""
    return ensemble_likes(
        inputs.train,
        inputs.item_ids,
        inputs.settings.like_threshold,
        inputs.keywords,
        inputs.embeddings,
        inputs.has_embedding,
        sasrec,
        inputs.settings.sim_top_k,
    )


def cached_ensemble_likes(inputs: EnsembleInputs) -> tuple[UserItemLikes, dict]:
    """The ensemble like matrix of a run, from the cache file or computed (and cached); plus timing info."""
    import time

    sasrec = load_sasrec(inputs)
    path = likes_cache_path(inputs, str(sasrec.info.get("fingerprint") or sasrec.info.get("checkpoint")))
    if path.exists():
        data = np.load(path, allow_pickle=False)
        likes = UserItemLikes(
            data["users"].tolist(), data["items"].tolist(), data["like"], np.ones_like(data["like"]), "ensemble"
        )
        return likes, {"cached": True, "path": str(path), "seconds": 0.0}
    t = time.monotonic()
    likes = ensemble_run_likes(inputs, sasrec)
    seconds = time.monotonic() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, users=np.asarray(likes.user_ids), items=np.asarray(likes.item_ids), like=likes.like)
    tmp.replace(path)
    return likes, {"cached": False, "path": str(path), "seconds": round(seconds, 2)}


def read_run_likes(db: str | Path, run_id: str, inputs: EnsembleInputs, threshold: int) -> UserItemLikes:
    """A spine run's ratings on the ensemble run's fold, over the fold's train users and its catalogue."""
    ratings = query(db, "ensemble_llm_ratings", run_id=run_id, fold=inputs.fold)
    if ratings.empty:
        raise ValueError(f"run {run_id!r} has no successful simulated ratings on fold {inputs.fold!r}")
    users = sorted(set(inputs.train["user_id"]) & set(ratings["user_id"]))
    if not users:
        raise ValueError(f"run {run_id!r} rated no train user of fold {inputs.fold!r}")
    return run_likes(ratings, users, inputs.item_ids, threshold, run_id)


def load_world(
    db: str | Path,
    ensemble_id: str | None = None,
    dataset: str | None = None,
    reward: str = "ensemble",
    like_threshold: int | None = None,
    feature_dim: int = 16,
) -> World:
    """One call from a DuckDB file to a `World` (what `gym.make("doppel/MovieLens-v0")` uses)."""
    inputs = read_ensemble_inputs(db, ensemble_id, dataset)
    threshold = like_threshold or inputs.settings.like_threshold
    if reward == "ensemble":
        likes, _ = cached_ensemble_likes(inputs)
    elif reward.startswith("run:"):
        likes = read_run_likes(db, reward.split(":", 1)[1], inputs, threshold)
    elif reward == "hybrid":
        from doppel.tasks.rl.hybrid_reward import cached_hybrid_likes

        likes, _ = cached_hybrid_likes(inputs, threshold)
    else:
        raise ValueError(f"reward must be 'ensemble', 'hybrid' or 'run:<run_id>', not {reward!r}")
    return build_world(inputs.train, likes, inputs.embeddings, inputs.has_embedding, threshold, feature_dim)
