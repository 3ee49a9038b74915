"""A small, deterministic, MovieLens-like dataset for tests and demos (no download needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from doppel.tasks.records import ITEM_COLUMNS, RATING_COLUMNS, SPLIT_COLUMNS, USER_COLUMNS, Dataset

# genre -> (mood word for descriptions, subject phrases)
GENRES: dict[str, tuple[str, list[str]]] = {
    "Action": ("explosive", ["a rogue agent", "a heist gone wrong", "a city under siege"]),
    "Comedy": ("light-hearted", ["two hopeless roommates", "a disastrous wedding", "a talking dog"]),
    "Drama": ("moving", ["a family torn apart", "a teacher's last year", "an unlikely friendship"]),
    "Romance": ("tender", ["two strangers in Paris", "a summer love", "a second chance at love"]),
    "Thriller": ("tense", ["a missing witness", "a deadly secret", "a stalker next door"]),
    "Sci-Fi": ("mind-bending", ["a colony on Mars", "a rogue AI", "a time loop"]),
    "Horror": ("chilling", ["a haunted farmhouse", "a cursed video tape", "something in the woods"]),
    "Documentary": ("eye-opening", ["life in the deep ocean", "a jazz legend", "a forgotten war"]),
    "Animation": ("whimsical", ["a brave little robot", "a lost dragon", "toys that come alive"]),
    "Adventure": ("sweeping", ["a jungle expedition", "a treasure map", "a journey across the ice"]),
}
OCCUPATIONS = [
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
]
_ADJ = [
    "Silent",
    "Broken",
    "Golden",
    "Last",
    "Hidden",
    "Crimson",
    "Endless",
    "Wild",
    "Lonely",
    "Burning",
    "Frozen",
    "Secret",
    "Distant",
    "Midnight",
    "Electric",
    "Forgotten",
]
_NOUN = [
    "Harbor",
    "Horizon",
    "Garden",
    "Empire",
    "River",
    "Signal",
    "Kingdom",
    "Promise",
    "Road",
    "Mirror",
    "Storm",
    "Island",
    "Letter",
    "Machine",
    "Summer",
    "Shadow",
]
# MovieLens-100K's rating histogram (1..5)
ML100K_HISTOGRAM = np.array([6110, 11370, 27145, 34174, 21201]) / 100_000
N_FOLDS = 5
_T0 = 1_420_070_400  # 2015-01-01


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for _ in range(n):
        adj, noun, noun2 = rng.choice(_ADJ), rng.choice(_NOUN), rng.choice(_NOUN)
        form = rng.integers(3)
        title = (f"The {adj} {noun}", f"{adj} {noun}", f"{noun} of the {adj} {noun2}")[form]
        seen[title] = seen.get(title, 0) + 1
        out.append(title if seen[title] == 1 else f"{title} {seen[title]}")
    return out


def _describe(rng: np.random.Generator, genres: list[str], quality: float) -> str:
    main = genres[0]
    mood, subjects = GENRES[main]
    low = [g.lower() for g in genres]
    kinds = low[0] if len(low) == 1 else ", ".join(low[:-1]) + " and " + low[-1]
    article = "An" if mood[0] in "aeiou" else "A"
    first = f"{article} {mood} {kinds} film about {rng.choice(subjects)}."
    if rng.random() < 0.5:
        return first
    verdict = "unforgettable" if quality > 0.5 else "uneven" if quality < -0.5 else "solid"
    extra = f" Fans of {genres[-1].lower()} call it {verdict}."
    return first + extra


def make_synthetic(
    n_users: int = 60, n_items: int = 120, seed: int = 0, ratings_per_user: tuple[int, int] = (20, 60)
) -> Dataset:
    """Users with genre tastes rate items by taste + quality + noise; 5 folds "u1".."u5".

    Deterministic for a seed. Ratings follow MovieLens-100K's histogram (quantile mapping);
    each user's timestamps increase; every user keeps >= 5 train ratings in every fold.
    """
    lo, hi = ratings_per_user
    if not 7 <= lo <= hi <= n_items:
        raise ValueError(
            f"need 7 <= ratings_per_user[0] <= ratings_per_user[1] <= n_items, "
            f"got {ratings_per_user} with n_items={n_items}"
        )
    if n_users < 1:
        raise ValueError("n_users must be >= 1")
    rng = np.random.default_rng(seed)
    names = list(GENRES)
    n_g = len(names)

    item_genres = [np.sort(rng.choice(n_g, rng.integers(1, 4), replace=False)) for _ in range(n_items)]
    quality = rng.normal(0.0, 0.6, n_items)
    popularity = np.exp(0.8 * quality + rng.normal(0.0, 0.8, n_items))
    popularity /= popularity.sum()
    titles = _titles(rng, n_items)
    years = rng.integers(1960, 2021, n_items)
    texts = [_describe(rng, [names[g] for g in gs], q) for gs, q in zip(item_genres, quality)]
    items = pd.DataFrame(
        {
            "item_id": [str(i + 1) for i in range(n_items)],
            "title": titles,
            "year": years,
            "genres": ["|".join(names[g] for g in gs) for gs in item_genres],
            "text": texts,
        }
    )

    users = pd.DataFrame(
        {
            "user_id": [str(u + 1) for u in range(n_users)],
            "age": rng.integers(18, 71, n_users),
            "gender": rng.choice(["M", "F"], n_users),
            "occupation": rng.choice(OCCUPATIONS, n_users),
            "zip": [f"{z:05d}" for z in rng.integers(1000, 99999, n_users)],
            "text": "",
        }
    )
    taste = rng.normal(0.0, 1.0, (n_users, n_g))
    bias = rng.normal(0.0, 0.35, n_users)

    u_idx, i_idx, ts, score, fold = [], [], [], [], []
    for u in range(n_users):
        n = int(rng.integers(lo, hi + 1))
        chosen = rng.choice(n_items, n, replace=False, p=popularity)
        affinity = np.array([taste[u, item_genres[i]].mean() for i in chosen])
        score.append(bias[u] + quality[chosen] + 0.9 * affinity + rng.normal(0.0, 0.5, n))
        start = _T0 + int(rng.integers(0, 4 * 365 * 86400))
        ts.append(start + np.cumsum(rng.integers(60, 3 * 86400, n)))
        f = np.empty(n, dtype=np.int64)
        f[rng.permutation(n)] = (np.arange(n) + rng.integers(N_FOLDS)) % N_FOLDS
        u_idx.append(np.full(n, u))
        i_idx.append(chosen)
        fold.append(f)
    scores = np.concatenate(score)
    cuts = np.quantile(scores, np.cumsum(ML100K_HISTOGRAM)[:-1])
    ratings = pd.DataFrame(
        {
            "user_id": (np.concatenate(u_idx) + 1).astype(str),
            "item_id": (np.concatenate(i_idx) + 1).astype(str),
            "rating": (1 + np.searchsorted(cuts, scores, side="right")).astype(np.int64),
            "ts": np.concatenate(ts).astype(np.int64),
        }
    )
    test_fold = np.concatenate(fold)
    folds = [f"u{k + 1}" for k in range(N_FOLDS)]
    splits = pd.concat(
        [
            pd.DataFrame(
                {
                    "fold": name,
                    "split": np.where(test_fold == k, "test", "train"),
                    "user_id": ratings["user_id"],
                    "item_id": ratings["item_id"],
                }
            )
            for k, name in enumerate(folds)
        ],
        ignore_index=True,
    )
    return Dataset(
        name="synthetic",
        items=items.astype({"item_id": str, "title": str, "year": "Int64", "genres": str, "text": str})[ITEM_COLUMNS],
        users=users.astype({"user_id": str, "age": "Int64", "gender": str, "occupation": str, "zip": str, "text": str})[
            USER_COLUMNS
        ],
        ratings=ratings.astype({"user_id": str, "item_id": str})[RATING_COLUMNS],
        splits=splits.astype(str)[SPLIT_COLUMNS],
        source=f"synthetic:seed={seed},users={n_users},items={n_items}",
        folds=folds,
    )
