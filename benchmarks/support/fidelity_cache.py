"""The fidelity benchmark's cache: features and per-fold results pickled under a key of their inputs
(a cache entry is reused only with the same code and the same input frames)."""

from __future__ import annotations

import hashlib
import pickle
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from .output import HERE


def inputs_hash(data_dir: Path | None) -> str:
    """Everything a cached number depends on besides the arguments, hashed whole: doppel's source (every
    file of the installed doppel package: tasks/, sql/, expectations/, the root package), the benchmark's
    own code (fidelity.py and support/), every installed distribution's version and the Python version,
    and every data file under data_dir (None: the downloaded zip). A change in any of them (e.g. tasks/metrics.py, tasks/baselines.py,
    a new scikit-surprise) misses."""
    import doppel
    import doppel.expectations
    import doppel.sql
    import doppel.tasks

    h = hashlib.sha256()
    for root in sorted({Path(m.__file__).parent for m in (doppel, doppel.tasks, doppel.sql, doppel.expectations)}):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(f"{root.name}/{path.relative_to(root)}\0".encode() + path.read_bytes())
    for path in [HERE / "fidelity.py", *sorted((HERE / "support").glob("*.py"))]:
        h.update(path.read_bytes())
    versions = sorted(f"{d.metadata['Name']}=={d.version}".lower() for d in metadata.distributions())
    h.update("\n".join([sys.version, *versions]).encode())
    if data_dir is None:  # no local copy: doppel's verified download of the public zip is the data
        from doppel.tasks.data.movielens import download_ml100k

        h.update(download_ml100k().read_bytes())
        return h.hexdigest()[:16]
    for path in sorted(p for p in Path(data_dir).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(data_dir)}\0".encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cached(cache_dir: Path, key: dict, compute):
    name = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:20]
    path = cache_dir / f"{key.get('kind', 'x')}-{key.get('fold', '')}-{name}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    value = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(value)}")
    with open(tmp, "wb") as f:
        pickle.dump(value, f)
    tmp.replace(path)
    return value


def frame_hash(frame: pd.DataFrame) -> str:
    lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()]
    frame = frame.assign(**{c: frame[c].map(repr) for c in lists})  # lists are not hashable: hash their text
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values).hexdigest()
