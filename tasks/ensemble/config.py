"""Settings of `doppel ensemble`: what the spine's RunSettings do not already say."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from doppel.tasks.settings import LLMSettings, OneFoldSettings, RunSettings


class SASRecSettings(BaseModel):
    """The statistical voter: a small SASRec with a like head (see tasks/ensemble/sasrec.py).

    Defaults picked on ML-100K fold u2 (like >= 4): AUC 0.722 with lr 5e-3 x 60 epochs, against 0.702
    for lr 2e-3 x 30, 0.715 for lr 5e-3 x 30, 0.705 for dim 64, 0.706 for maxlen 100.
    """

    maxlen: int = Field(50, ge=2, description="train items per sequence (the most recent)")
    dim: int = Field(48, ge=8)
    blocks: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    epochs: int = Field(60, ge=1, description="SASRec training epochs")
    batch_size: int = Field(128, ge=1)
    lr: float = 5e-3
    like_weight: float = Field(1.0, ge=0.0, description="weight of the like loss next to the next-item loss")
    seed: int = Field(0, description="SASRec seed")
    threads: int = Field(1, ge=1, description="torch threads while training and scoring (1 was fastest here)")


class EnsembleSettings(OneFoldSettings):
    """A whole `doppel ensemble`: dataset, fold, LLM item analysis, voters, evaluation."""

    WORK_SUBDIR = "ensemble"

    run: RunSettings = Field(default_factory=RunSettings)  # dataset, db, runner, llm (+ limits and cache)
    fold: str = Field(
        None,
        validate_default=True,
        description="the fold whose held-out ratings are scored (default: u1; a ratings CSV: t1)",
    )
    items: int | None = Field(None, ge=1, description="analyse only the N most-rated train items (None: all)")
    like_threshold: int = Field(4, ge=1, le=5, description="like = rating >= threshold (the seed used 3)")
    compare_run_id: str | None = Field(None, description="a `doppel run` id: score its LLM ratings beside the voters")
    ensemble_id: str | None = Field(
        None,
        description="this ensemble run's id: a known one is rerun, an id never used starts a new run under it (default: a new id)",
    )
    max_keywords: int = Field(5, ge=1, le=12, description="pros and cons per item and source")
    reviews_per_item: int = Field(5, ge=1, description="reviews quoted per subjective-analysis call")
    review_chars: int = Field(300, ge=20)
    overview_chars: int = Field(400, ge=0)
    max_tokens: int = Field(200, ge=32, description="completion tokens per item-analysis call")
    vocab_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="cosine similarity at which a keyword joins a more frequent one"
    )
    sim_top_k: int | None = Field(
        10, ge=1, description="f_sim: mean over the k most similar liked/disliked items (None: all)"
    )
    embed_batch: int = Field(64, ge=1)
    sasrec: SASRecSettings = Field(default_factory=SASRecSettings)


def model_key(llm: LLMSettings) -> str:
    """The model id asked for, known before any server starts.

    The embedded server serves a registry model under its registry name and a GGUF file under its
    stem (tasks/llm/embedded.py), so this equals the model id the gateway sends. An endpoint that answers
    under any name (llama.cpp) may serve another: `check_endpoint` says which, and keywords are stored
    under that one (the runs row's `model`, which `doppel rl` and the arena read them back by).
    """
    if llm.base_url is None and llm.gguf:
        return Path(llm.gguf).stem
    return llm.model
