"""Review texts for subjective keywords: the optional `review` column of a generic ratings CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from doppel.tasks.data.generic import _RATING_ALIASES
from doppel.tasks.data.lines import read_csv_rows


def ratings_csv(dataset: str) -> Path | None:
    """The ratings CSV behind a generic dataset path (None for ml-100k, synthetic, or no CSV)."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        path = path / "ratings.csv"
    return path if path.is_file() and path.suffix.lower() == ".csv" else None


def load_reviews(path: Path) -> pd.DataFrame:
    """item_id, user_id, review for every non-empty review (empty frame when the CSV has none)."""
    table = read_csv_rows(path, ["user_id", "item_id"], ["review"], _RATING_ALIASES)
    if "review" not in table.df.columns:
        return pd.DataFrame(columns=["item_id", "user_id", "review"])
    frame = pd.DataFrame(
        {
            "item_id": table.text("item_id", required=True),
            "user_id": table.text("user_id", required=True),
            "review": table.text("review"),
        }
    )
    frame = frame[frame["review"].str.strip() != ""]
    return frame.drop_duplicates(["item_id", "user_id"]).reset_index(drop=True)
