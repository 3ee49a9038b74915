"""The calibrator: a multinomial model over ratings 1..5 fit on the calibration slice.

`fit_calibrator(X, y)` -> Calibrator; `.proba(X)` -> (n, 5) probabilities of ratings 1..5
(columns always 1..5, even when a rating is absent from the slice: it gets probability 0).
Kinds: "hgb" (scikit-learn HistGradientBoostingClassifier, default) and "logreg"
(standardised multinomial LogisticRegression).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

KINDS = ("hgb", "logreg")


@dataclass
class Calibrator:
    model: Any
    columns: list[str]
    classes: np.ndarray  # the ratings the model saw, subset of 1..5

    def proba(self, X: pd.DataFrame) -> np.ndarray:
        """(n, 5) float: P(rating = r) for r = 1..5; rows sum to 1."""
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise KeyError(f"calibrator: missing feature columns {missing}")
        part = self.model.predict_proba(X[self.columns].to_numpy(dtype=float))
        out = np.zeros((len(X), 5))
        out[:, self.classes.astype(int) - 1] = part
        return out


def fit_calibrator(
    X: pd.DataFrame,
    y: Sequence[int] | np.ndarray,
    kind: str = "hgb",
    seed: int = 0,
    columns: Sequence[str] | None = None,
) -> Calibrator:
    """Fit P(rating | features) on the slice: X features, y integer ratings 1..5."""
    labels = np.asarray(y).astype(int)
    if len(labels) != len(X):
        raise ValueError(f"X and y differ in length: {len(X)} vs {len(labels)}")
    if labels.size == 0 or labels.min() < 1 or labels.max() > 5:
        raise ValueError("y must be non-empty integer ratings in 1..5")
    cols = list(columns) if columns is not None else list(X.columns)
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(
            learning_rate=0.15,
            max_iter=150,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            l2_regularization=1.0,
            early_stopping=True,
            validation_fraction=0.15,
            n_iter_no_change=15,
            random_state=seed,
        )
    elif kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    else:
        raise ValueError(f"calibrator kind must be one of {KINDS}, got {kind!r}")
    model.fit(X[cols].to_numpy(dtype=float), labels)
    classes = model.classes_ if hasattr(model, "classes_") else model[-1].classes_
    return Calibrator(model=model, columns=cols, classes=np.asarray(classes))
