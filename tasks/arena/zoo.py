"""Recommenders of the arena: one small protocol, built-in entrants from well-kept libraries, plug-ins.

The protocol (`Recommender`), all a researcher's model needs to enter:

    class MyRecommender:
        def fit(self, train: pd.DataFrame) -> object: ...
            # train: user_id (str), item_id (str), rating (float 1..5), ts (int); one fold's train split
        def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...
            # users, items: equal-length arrays of str ids; returns float scores, higher = recommend
            # first; NaN where the model cannot score the pair (unknown user or item: ranked last)

    doppel arena --recommender my_pkg.my_module:factory     # factory() -> such an object

Built-ins: Cornac 3 (most popular, item-/user-KNN, biased MF, BPR, EASE), implicit 0.7 (ALS),
doppel's SASRec (tasks/ensemble/sasrec.py, its like head), and seeded random scores.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd


@runtime_checkable
class Recommender(Protocol):
    def fit(self, train: pd.DataFrame) -> Any: ...

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Entrant:
    """One arena entrant: a name, its family (for the circularity audit) and how to build it."""

    name: str
    family: str  # baseline | knn | mf | sequence | rl | plugin
    factory: str  # a built-in name or "module:callable"
    params: dict[str, Any] = field(default_factory=dict)


class RandomScores:
    """Uniform scores from a hash of (seed, user, item): the same pair always gets the same score."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, train: pd.DataFrame) -> RandomScores:
        return self

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return pair_hash(users, items, self.seed)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 -> well-spread uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def pair_hash(users: np.ndarray, items: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per (seed, user id, item id), whatever the order."""
    hu = pd.util.hash_array(np.asarray(users, dtype=object), hash_key=f"{seed:016d}"[-16:])
    hi = pd.util.hash_array(np.asarray(items, dtype=object))
    with np.errstate(over="ignore"):
        return (_mix(hu * np.uint64(0x9E3779B97F4A7C15) + hi) >> np.uint64(11)) / float(2**53)


class _Indexed:
    """Shared id mapping: a (users x items) score matrix from `_user_scores` answers any pairs."""

    uid: dict[str, int]
    iid: dict[str, int]

    def _user_scores(self, u: np.ndarray) -> np.ndarray:  # (len(u), n_items)
        raise NotImplementedError

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        u = pd.Series(np.asarray(users, dtype=str)).map(self.uid)
        i = pd.Series(np.asarray(items, dtype=str)).map(self.iid)
        out = np.full(len(u), np.nan)
        ok = (u.notna() & i.notna()).to_numpy()
        if ok.any():
            uu, ii = u[ok].astype(int).to_numpy(), i[ok].astype(int).to_numpy()
            rows, inverse = np.unique(uu, return_inverse=True)
            for start in range(0, rows.size, 256):  # bounded memory: 256 users' rows at a time
                part = rows[start : start + 256]
                mat = self._user_scores(part)
                sel = (inverse >= start) & (inverse < start + part.size)
                out[np.flatnonzero(ok)[sel]] = mat[inverse[sel] - start, ii[sel]]
        return out


class CornacRecommender(_Indexed):
    """A Cornac model on the train ratings (explicit models use the 1..5 values, implicit ones see
    every rating as an interaction)."""

    def __init__(self, model: str, seed: int = 0, **params: Any):
        self.model_name, self.seed, self.params = model, seed, params

    def fit(self, train: pd.DataFrame) -> CornacRecommender:
        import cornac

        triples = list(zip(train["user_id"].astype(str), train["item_id"].astype(str), train["rating"].astype(float)))
        data = cornac.data.Dataset.from_uir(triples, seed=self.seed)
        cls = getattr(cornac.models, self.model_name)
        extra = {"seed": self.seed} if "seed" in cls.__init__.__code__.co_varnames else {}
        self.model = cls(**self.params, **extra)
        if "verbose" in cls.__init__.__code__.co_varnames:
            self.model.verbose = False
        self.model.fit(data)
        self.uid, self.iid = dict(data.uid_map), dict(data.iid_map)
        return self

    def _user_scores(self, u: np.ndarray) -> np.ndarray:
        rows = [self.model.score(int(x)) for x in u]  # EASE answers a sparse row, the others arrays
        return np.stack([np.asarray(r.toarray() if hasattr(r, "toarray") else r, dtype=float).ravel() for r in rows])


class ImplicitALS(_Indexed):
    """implicit's AlternatingLeastSquares on the interaction matrix (confidence 1 + alpha per rating)."""

    def __init__(
        self, factors: int = 64, regularization: float = 0.05, iterations: int = 15, alpha: float = 2.0, seed: int = 0
    ):
        self.kw = dict(factors=factors, regularization=regularization, iterations=iterations, alpha=alpha)
        self.seed = seed

    def fit(self, train: pd.DataFrame) -> ImplicitALS:
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        users, items = train["user_id"].astype(str), train["item_id"].astype(str)
        self.uid = {u: k for k, u in enumerate(sorted(users.unique()))}
        self.iid = {i: k for k, i in enumerate(sorted(items.unique()))}
        mat = csr_matrix(
            (np.ones(len(train), dtype=np.float32), (users.map(self.uid).to_numpy(), items.map(self.iid).to_numpy())),
            shape=(len(self.uid), len(self.iid)),
        )
        self.model = AlternatingLeastSquares(**self.kw, num_threads=1, random_state=self.seed)
        with threadpool_limits(1, "blas"):  # implicit warns (and slows) when BLAS runs threads of its own
            self.model.fit(mat, show_progress=False)
        return self

    def _user_scores(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.user_factors[u] @ self.model.item_factors.T, dtype=float)


class SASRecScores:
    """doppel's SASRec (the ensemble's sequence voter): its like probability as the score."""

    def __init__(self, like_threshold: int = 4, epochs: int = 60, seed: int = 0, checkpoint_dir: str | None = None):
        self.like_threshold, self.epochs, self.seed, self.checkpoint_dir = like_threshold, epochs, seed, checkpoint_dir

    def fit(self, train: pd.DataFrame) -> SASRecScores:
        from pathlib import Path

        from doppel.tasks.ensemble.config import SASRecSettings
        from doppel.tasks.ensemble.sasrec import train_sasrec

        if "ts" not in train:
            raise KeyError("SASRec needs a ts column in train (the rating order)")
        item_ids = sorted(train["item_id"].astype(str).unique())
        cfg = SASRecSettings(epochs=self.epochs, seed=self.seed)
        ckpt = Path(self.checkpoint_dir) if self.checkpoint_dir else None
        frame = train.astype({"user_id": str, "item_id": str})
        self.voter = train_sasrec(frame, item_ids, self.like_threshold, cfg, ckpt, tag="arena-")
        self.known = set(item_ids)
        return self

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users, items = np.asarray(users, dtype=str), np.asarray(items, dtype=str)
        out = np.full(len(users), np.nan)
        ok = np.fromiter((i in self.known for i in items), bool, len(items))
        for start in range(0, int(ok.sum()), 50_000):
            rows = np.flatnonzero(ok)[start : start + 50_000]
            out[rows] = self.voter.like_probability(users[rows], items[rows])
        return out


BUILTINS: dict[str, Callable[..., Any]] = {
    "random": RandomScores,
    "cornac": CornacRecommender,
    "implicit_als": ImplicitALS,
    "sasrec": SASRecScores,
}

# the built-in zoo: settings are each library's documented defaults unless a comment says why
DEFAULT_ZOO: tuple[Entrant, ...] = (
    Entrant("random", "baseline", "random"),
    Entrant("most_popular", "baseline", "cornac", {"model": "MostPop"}),
    Entrant("item_knn", "knn", "cornac", {"model": "ItemKNN", "k": 40, "similarity": "cosine", "mean_centered": True}),
    Entrant("user_knn", "knn", "cornac", {"model": "UserKNN", "k": 40, "similarity": "cosine", "mean_centered": True}),
    Entrant(
        "biased_mf",
        "mf",
        "cornac",
        {"model": "MF", "k": 20, "max_iter": 40, "learning_rate": 0.01, "lambda_reg": 0.04, "use_bias": True},
    ),
    Entrant("implicit_als", "mf", "implicit_als"),
    Entrant(
        "bpr", "mf", "cornac", {"model": "BPR", "k": 32, "max_iter": 200, "learning_rate": 0.01, "lambda_reg": 0.01}
    ),
    Entrant("ease", "knn", "cornac", {"model": "EASE", "lamb": 500}),
    Entrant("sasrec", "sequence", "sasrec", {"epochs": 20}),  # 20 epochs: ~70 s on u1 (60: ~220 s)
)


def plugin(spec: str, name: str | None = None) -> Entrant:
    """`module:callable` -> an Entrant of family "plugin" (checked importable and callable now)."""
    load_factory(spec)
    return Entrant(name or spec.rsplit(":", 1)[-1], "plugin", spec)


def load_factory(spec: str) -> Callable[..., Any]:
    if spec in BUILTINS:
        return BUILTINS[spec]
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"--recommender {spec!r}: expected 'package.module:factory'")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"--recommender {spec!r}: cannot import module {module!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--recommender {spec!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--recommender {spec!r}: {attr!r} is not callable")
    return obj


def build(entrant: Entrant, seed: int = 0) -> Recommender:
    """A fresh, unfitted recommender for `entrant`; plug-ins must follow the protocol."""
    factory = load_factory(entrant.factory)
    params = dict(entrant.params)
    if entrant.factory in ("random", "cornac", "implicit_als", "sasrec"):
        params.setdefault("seed", seed)
    rec = factory(**params)
    missing = [m for m in ("fit", "score") if not callable(getattr(rec, m, None))]
    if missing:
        raise TypeError(
            f"recommender {entrant.name!r} ({entrant.factory}) lacks {', '.join(missing)}: "
            "see doppel.tasks.arena.zoo.Recommender"
        )
    return rec


def entrant_key(entrant: Entrant, train: pd.DataFrame, seed: int) -> str:
    """Cache key of a fitted entrant's outputs: its spec, seed and the train data's fingerprint."""
    h = hashlib.sha256(
        repr((entrant.name, entrant.family, entrant.factory, sorted(entrant.params.items()), seed)).encode()
    )
    frame = train[["user_id", "item_id", "rating", "ts"]].sort_values(["user_id", "item_id"])
    h.update(pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:20]
