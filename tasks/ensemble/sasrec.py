"""f_sta: a small SASRec (self-attentive sequential recommender) with a like head, in torch.

Input: a user's train ratings in time order, each token = item embedding + liked/disliked embedding
+ position embedding, causal self-attention (as SASRec, Kang & McAuley 2018: padded positions are
zeroed, attention is causal only). At every position t the hidden state h_t is trained on two
targets for the next item i_{t+1}:
- next item (SASRec's loss): BCE of <h_t, e_{i_{t+1}}> against one sampled negative item the user
  never rated in train (uniform, collisions resampled);
- like: BCE of like_head([h_t, e_i, h_t * e_i]) + b_i against [rating of i_{t+1} >= threshold].
The voter's like probability for (u, i) is sigmoid(like logit) from h at the end of u's whole train
sequence (its last `maxlen` items). Seeded (torch + numpy); the checkpoint is keyed by a fingerprint
of the train data, the threshold and the settings, so a rerun loads it instead of training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from doppel.tasks.ensemble.config import SASRecSettings

log = logging.getLogger("doppel")


class SASRec(nn.Module):
    causal: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, n_items: int, cfg: SASRecSettings):
        super().__init__()
        d = cfg.dim
        self.maxlen = cfg.maxlen
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.like_in = nn.Embedding(3, d, padding_idx=0)  # 0 pad, 1 disliked, 2 liked
        self.pos = nn.Embedding(cfg.maxlen, d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.heads, dim_feedforward=2 * d, dropout=cfg.dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.ModuleList([layer] + [_clone(layer) for _ in range(cfg.blocks - 1)])
        self.norm = nn.LayerNorm(d)
        self.like_head = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, 1))
        self.item_bias = nn.Embedding(n_items + 1, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.register_buffer(
            "causal", torch.triu(torch.ones(cfg.maxlen, cfg.maxlen, dtype=torch.bool), 1), persistent=False
        )

    def encode(self, items: torch.Tensor, likes: torch.Tensor) -> torch.Tensor:
        """items, likes: (B, L) left-padded with 0 -> hidden states (B, L, d)."""
        length = items.shape[1]
        keep = (items > 0).unsqueeze(-1).float()
        positions = torch.arange(length, device=items.device).unsqueeze(0)
        x = self.item(items) * math.sqrt(self.item.embedding_dim) + self.like_in(likes) + self.pos(positions)
        x = self.drop(x) * keep
        mask = self.causal[:length, :length]
        for block in self.blocks:
            x = block(x, src_mask=mask) * keep
        return self.norm(x)

    def next_logit(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (h * self.item(target)).sum(-1)

    def like_logit(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        e = self.item(target)
        return self.like_head(torch.cat([h, e, h * e], -1)).squeeze(-1) + self.item_bias(target).squeeze(-1)


def _clone(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer)


@dataclass
class Sequences:
    """Per-user train sequences as 1-based item indices and like flags, in time order."""

    users: list[str]
    items: list[np.ndarray]
    likes: list[np.ndarray]


def build_sequences(train: pd.DataFrame, item_index: dict[str, int], threshold: int) -> Sequences:
    """train: user_id, item_id, rating, ts. Ties in ts are broken by item id (stable)."""
    frame = train.sort_values(["user_id", "ts", "item_id"], kind="stable")
    idx = frame["item_id"].map(item_index).to_numpy(dtype=np.int64) + 1
    liked = (frame["rating"].to_numpy() >= threshold).astype(np.int64)
    users, starts = np.unique(frame["user_id"].to_numpy(), return_index=True)
    bounds = list(starts) + [len(frame)]
    return Sequences(
        users=[str(u) for u in users],
        items=[idx[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        likes=[liked[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
    )


def _left_pad(rows: list[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), dtype=np.int64)
    for r, row in enumerate(rows):
        row = row[-length:]
        if len(row):
            out[r, length - len(row) :] = row
    return out


def fingerprint(train: pd.DataFrame, item_ids: list[str], threshold: int, cfg: SASRecSettings) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"cfg": cfg.model_dump(), "threshold": threshold, "torch": torch.__version__}, sort_keys=True
        ).encode()
    )
    digest.update("\n".join(item_ids).encode())
    frame = train[["user_id", "item_id", "rating", "ts"]].sort_values(["user_id", "item_id"])
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


class SASRecVoter:
    """A trained SASRec plus the train sequences it scores users from."""

    def __init__(self, model: SASRec, item_ids: list[str], sequences: Sequences, info: dict, threads: int = 1):
        self.model = model.eval()
        self.item_index = {item: i for i, item in enumerate(item_ids)}
        self.sequences = sequences
        self.info = info
        self.threads = threads
        with _threads(threads):
            self._hidden = self._user_states()

    @torch.no_grad()
    def _user_states(self) -> dict[str, np.ndarray]:
        L = self.model.maxlen
        items = torch.from_numpy(_left_pad(self.sequences.items, L))
        likes = torch.from_numpy(_left_pad([x + 1 for x in self.sequences.likes], L))
        states = [self.model.encode(items[a : a + 512], likes[a : a + 512])[:, -1] for a in range(0, len(items), 512)]
        hidden = torch.cat(states).numpy() if states else np.zeros((0, self.model.item.embedding_dim), np.float32)
        return dict(zip(self.sequences.users, hidden))

    def like_probability(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """P(like) per pair; users without train history get the state of an empty sequence."""
        with _threads(self.threads):
            return self._like_probability(user_ids, item_ids)

    @torch.no_grad()
    def _like_probability(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        L = self.model.maxlen
        empty = self.model.encode(torch.zeros((1, L), dtype=torch.long), torch.zeros((1, L), dtype=torch.long))
        empty_state = empty[0, -1].numpy()
        h = (
            np.stack([self._hidden.get(str(u), empty_state) for u in user_ids])
            if len(user_ids)
            else np.zeros((0, self.model.item.embedding_dim), np.float32)
        )
        targets = np.array([self.item_index.get(str(i), -1) + 1 for i in item_ids], dtype=np.int64)
        logits = self.model.like_logit(torch.from_numpy(h), torch.from_numpy(targets))
        return torch.sigmoid(logits).numpy().astype(float)


def train_sasrec(
    train: pd.DataFrame,
    item_ids: list[str],
    threshold: int,
    cfg: SASRecSettings,
    checkpoint_dir: Path | None = None,
    tag: str = "",
) -> SASRecVoter:
    """Train (or load from `checkpoint_dir`) a SASRec on the train split; deterministic for a seed."""
    item_index = {item: i for i, item in enumerate(item_ids)}
    sequences = build_sequences(train, item_index, threshold)
    key = fingerprint(train, item_ids, threshold, cfg)
    path = Path(checkpoint_dir) / f"sasrec-{tag}{key}.pt" if checkpoint_dir else None
    torch.manual_seed(cfg.seed)  # the initial weights come from the seed too
    model = SASRec(len(item_ids), cfg)
    if path is not None and path.exists():
        # tensors and plain values only: a checkpoint cannot carry code to run (pickle's objects)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        info = {**state["info"], "loaded": True, "checkpoint": str(path)}
        return SASRecVoter(model, item_ids, sequences, info, cfg.threads)
    started = time.monotonic()
    with _threads(cfg.threads):
        losses = _fit(model, sequences, len(item_ids), cfg)
    info = {
        "loaded": False,
        "train_s": round(time.monotonic() - started, 2),
        "epochs": cfg.epochs,
        "final_loss": round(losses[-1], 4) if losses else None,
        "users": len(sequences.users),
        "checkpoint": str(path) if path else None,
        "fingerprint": key,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "config": cfg.model_dump(), "items": item_ids, "info": info}, tmp)
        tmp.replace(path)
    log.info("SASRec trained in %.1f s (%d epochs, loss %.4f)", info["train_s"], cfg.epochs, info["final_loss"] or 0)
    return SASRecVoter(model, item_ids, sequences, info, cfg.threads)


@contextlib.contextmanager
def _threads(n: int):
    """torch's intra-op threads for a block: small models run faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(model: SASRec, seqs: Sequences, n_items: int, cfg: SASRecSettings) -> list[float]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    trainable = [u for u, s in enumerate(seqs.items) if len(s) >= 2]
    if not trainable:
        return []
    seen = np.zeros((len(seqs.users), n_items + 1), dtype=bool)
    for u, s in enumerate(seqs.items):
        seen[u, s] = True
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    bce = nn.BCEWithLogitsLoss(reduction="none")
    L = cfg.maxlen
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(trainable)
        total, count = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            users = order[start : start + cfg.batch_size]
            inp, lin, tgt, ltg = [], [], [], []
            for u in users:
                items, likes = seqs.items[u], seqs.likes[u]
                # a window of up to maxlen+1 items ending at a random point (the full history for short users)
                end = int(rng.integers(min(len(items), L + 1), len(items) + 1))
                window, wlikes = items[max(0, end - L - 1) : end], likes[max(0, end - L - 1) : end]
                inp.append(window[:-1])
                lin.append(wlikes[:-1] + 1)
                tgt.append(window[1:])
                ltg.append(wlikes[1:])
            inp_t = torch.from_numpy(_left_pad(inp, L))
            tgt_np = _left_pad(tgt, L)
            neg_np = _negatives(rng, seen, users, tgt_np.shape, n_items)
            valid = torch.from_numpy(tgt_np > 0)
            h = model.encode(inp_t, torch.from_numpy(_left_pad(lin, L)))
            tgt_t, neg_t = torch.from_numpy(tgt_np), torch.from_numpy(neg_np)
            like_t = torch.from_numpy(_left_pad(ltg, L)).float()
            pos, neg = model.next_logit(h, tgt_t), model.next_logit(h, neg_t)
            per_token = (
                bce(pos, torch.ones_like(pos))
                + bce(neg, torch.zeros_like(neg))
                + cfg.like_weight * bce(model.like_logit(h, tgt_t), like_t)
            )
            loss = per_token[valid].mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * int(valid.sum())
            count += int(valid.sum())
        losses.append(total / max(1, count))
    model.eval()
    return losses


def _negatives(rng: np.random.Generator, seen: np.ndarray, users: np.ndarray, shape: tuple, n_items: int) -> np.ndarray:
    """Uniform items the user did not rate in train (up to 5 resampling rounds for collisions)."""
    neg = rng.integers(1, n_items + 1, size=shape)
    rows = np.asarray(users)[:, None].repeat(shape[1], 1)
    for _ in range(5):
        clash = seen[rows, neg]
        if not clash.any():
            break
        neg[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
    return neg
