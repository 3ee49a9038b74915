"""The ensemble simulator as an arena judge: the 2-of-3 like vote of a finished `doppel ensemble` run.

The vote is binary (like / no like), so it judges by likes: nDCG@10 with 0/1 gains, precision@5 and
like-rate@10 as shares of voted likes; it has no rating and no P(like) beyond the vote itself.
"""

from __future__ import annotations

import pandas as pd

ENSEMBLE = "ensemble:vote"


def ensemble_votes(
    db: str, dataset: str, fold: str, train: pd.DataFrame, pairs: pd.DataFrame, ensemble_id: str | None = None
) -> tuple[pd.DataFrame | None, str]:
    """(user_id, item_id, vote in {0.0, 1.0} (NaN: item outside its catalogue), note) from the latest
    finished ensemble run of `dataset` on `fold` in `db`, whose train split must be `train`'s;
    (None, why) when there is none."""
    from doppel.tasks.arena.config import same_pairs
    from doppel.tasks.ensemble.evaluate import score_pairs
    from doppel.tasks.rl.rewards import ensemble_run, load_sasrec, read_ensemble_inputs

    try:
        row = ensemble_run(db, ensemble_id, dataset)
    except ValueError as exc:
        return None, f"no ensemble judge: {exc}"
    inputs = read_ensemble_inputs(db, row["run_id"], dataset)
    if inputs.fold != fold:
        return None, f"no ensemble judge: the latest ensemble run {row['run_id']} is of fold {inputs.fold}, not {fold}"
    if not same_pairs(inputs.train, train):
        return None, f"no ensemble judge: ensemble run {row['run_id']} was trained on another {dataset} {fold} split"
    keys = pairs[["user_id", "item_id"]].astype(str).drop_duplicates().reset_index(drop=True)
    known = keys["item_id"].isin(set(inputs.item_ids)).to_numpy()  # items outside its catalogue: no vote
    votes, _ = score_pairs(
        inputs.train,
        keys[known].assign(rating=0),
        inputs.item_ids,
        inputs.settings.like_threshold,
        inputs.keywords,
        inputs.embeddings,
        inputs.has_embedding,
        load_sasrec(inputs),
        None,
        inputs.settings.sim_top_k,
    )
    out = keys.assign(**{ENSEMBLE: float("nan")})
    out.loc[known, ENSEMBLE] = votes["ensemble"].to_numpy(bool).astype(float)
    return out, f"ensemble judge: run {row['run_id']} (like >= {inputs.settings.like_threshold})"
