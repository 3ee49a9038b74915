"""Dataset loaders: tiny generated ML-100K files, generic CSVs, the synthetic set, and (if present) real ML-100K."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from doppel.tasks.data import load_dataset, load_generic, load_movielens, make_synthetic, movielens
from doppel.tasks.data.synthetic import ML100K_HISTOGRAM
from doppel.tasks.records import ITEM_COLUMNS, RATING_COLUMNS, SPLIT_COLUMNS, USER_COLUMNS, DataError
from tests.conftest import ML100K as ML100K_DIR
from tests.conftest import ML100K_TEXT
from tests.ml100k_files import DATA, ITEM, USER, write_ml, zip_dir


def check_frames(ds) -> None:
    assert list(ds.items.columns) == ITEM_COLUMNS and list(ds.users.columns) == USER_COLUMNS
    assert list(ds.ratings.columns) == RATING_COLUMNS and list(ds.splits.columns) == SPLIT_COLUMNS
    for frame, cols in (
        (ds.items, ["item_id", "title", "genres", "text"]),
        (ds.users, ["user_id", "gender", "occupation", "zip", "text"]),
        (ds.ratings, ["user_id", "item_id"]),
        (ds.splits, SPLIT_COLUMNS),
    ):
        for c in cols:
            assert pd.api.types.is_string_dtype(frame[c]), c
            assert not frame[c].isna().any(), c
    assert str(ds.items["year"].dtype) == "Int64" and str(ds.users["age"].dtype) == "Int64"
    assert ds.ratings["rating"].dtype == np.int64 and ds.ratings["ts"].dtype == np.int64
    assert ds.ratings["rating"].between(1, 5).all()
    assert not ds.ratings.duplicated(["user_id", "item_id"]).any()
    assert set(ds.splits["fold"]) == set(ds.folds) and set(ds.splits["split"]) <= {"train", "test"}


def test_ml_directory_loads(tmp_path):
    ds = load_movielens(write_ml(tmp_path))
    check_frames(ds)
    assert (len(ds.users), len(ds.items), len(ds.ratings)) == (3, 4, 8)
    assert ds.name == "ml-100k" and ds.folds == ["u1"]
    items = ds.items.set_index("item_id")
    assert items.loc["1", "title"] == "Toy Story" and items.loc["1", "year"] == 1995
    assert items.loc["1", "genres"] == "Comedy" and items.loc["3", "genres"] == "Action|Comedy"
    assert items.loc["3", "title"] == "Land Before Time III (V)"
    assert items.loc["4", "title"] == "unknown" and pd.isna(items.loc["4", "year"])
    assert (ds.items["text"] == "").all() and (ds.users["text"] == "").all()
    users = ds.users.set_index("user_id")
    assert users.loc["3", "zip"] == "T8H1N" and users.loc["2", "age"] == 53
    counts = ds.splits.groupby("split").size().to_dict()
    assert counts == {"train": 6, "test": 2}


def test_ml_zip_equals_directory(tmp_path):
    d = write_ml(tmp_path)
    a = load_movielens(d)
    b = load_movielens(zip_path=zip_dir(d, tmp_path / "ml-100k.zip"))
    for name in ("items", "users", "ratings", "splits"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert b.folds == a.folds


def test_ml_crlf_and_blank_lines_keep_line_numbers(tmp_path):
    data = DATA.replace("\n", "\r\n", 2)
    ds = load_movielens(write_ml(tmp_path, u_data=data))
    assert len(ds.ratings) == 8
    bad = "1\t1\t5\t1\n\n1\t2\tx\t2\n"
    with pytest.raises(DataError, match=r"u\.data:3: rating is not an integer: 'x'"):
        load_movielens(write_ml(tmp_path, u_data=bad))


BAD_CASES = [
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\t3\t4\n", r"u\.data:3: expected 4 fields.*found 3"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\tx\t4\t3\n", r"u\.data:3: item_id is not an integer: 'x'"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\t3\t6\t3\n", r"u\.data:3: rating '6' out of range 1\.\.5"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\t3\t0\t3\n", r"u\.data:3: rating '0' out of range"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n9\t3\t4\t3\n", r"u\.data:3: unknown user_id '9'"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\t7\t4\t3\n", r"u\.data:3: unknown item_id '7'"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\t1\t4\t3\n", r"u\.data:3: duplicate rating.*first at line 1"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\t3\t\t3\n", r"u\.data:3: rating is not an integer: ''"),
    ("u_data", "1\t1\t5\t1\n1\t2\t3\t2\n1\t3\t4\t99999999999999999999\n", r"u\.data:3: ts is not"),
    ("u1_test", "1\t3\t4\t881250951\n1\t4\t1\t881250953\n", r"u1\.test:2: .*'1'.*'4' is not in u\.data"),
    (
        "u1_test",
        "1\t3\t4\t881250951\n2\t4\t2\t881250953\n",
        r"u1\.test:2: rating '2' differs from u\.data line 5 \('1'\)",
    ),
    ("u1_test", "1\t3\t4\t881250951\n1\t1\t5\t881250949\n", r"u1\.test:2: .* is also in u1\.base"),
    ("u1_test", "1\t3\t4\t881250951\n2\t9\t1\t881250953\n", r"u1\.test:2: unknown item_id '9'"),
    ("u1_test", None, r"u1\.test: file not found"),
    ("u_item", ITEM.replace("|0|1|0\n", "|0|2|0\n"), r"u\.item:2: genre flag 'Action' is not 0/1: '2'"),
    ("u_item", ITEM.replace("|0|1|0\n", "|0|1\n"), r"u\.item:2: expected 8 fields"),
    (
        "u_item",
        ITEM.replace("01-Jan-1995||http://x|0|1|0", "1995||http://x|0|1|0"),
        r"u\.item:2: release date .*'1995'",
    ),
    ("u_item", ITEM + "2|Again (1990)|||x|0|0|1\n", r"u\.item:5: duplicate item .*first at line 2"),
    ("u_user", USER.replace("2|53|F", "2|fifty|F"), r"u\.user:2: age is not an integer: 'fifty'"),
    ("u_user", USER.replace("2|53|F", "2|53|X"), r"u\.user:2: gender is not M/F: 'X'"),
    ("u_user", USER.replace("student|94043", "pilot|94043"), r"u\.user:2: unknown occupation 'pilot'"),
    ("u_user", None, r"u\.user: file not found"),
    ("u_genre", "unknown|0\nAction|x\n", r"u\.genre:2: index is not an integer: 'x'"),
]


@pytest.mark.parametrize("as_zip", [False, True], ids=["dir", "zip"])
@pytest.mark.parametrize(("file", "text", "pattern"), BAD_CASES)
def test_ml_bad_lines(tmp_path, file, text, pattern, as_zip):
    d = write_ml(tmp_path, **{file: text})
    with pytest.raises(DataError, match=pattern) as err:
        load_movielens(zip_path=zip_dir(d, tmp_path / "z.zip")) if as_zip else load_movielens(d)
    assert err.value.path.endswith(file.replace("_", "."))


def test_ml_bad_utf8_names_line(tmp_path):
    d = write_ml(tmp_path)
    (d / "u.user").write_bytes(USER.encode() + b"4|30|M|writer|\xff\xfe\n")
    with pytest.raises(DataError, match=r"u\.user:4: not valid utf-8"):
        load_movielens(d)


def test_ml_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a zip file"):
        load_movielens(zip_path=tmp_path / "x.zip")


TEXT_HEADER = "movie_id\ttitle\trelease_date\ttmdb_overview\ttmdb_tagline\n"


def test_item_text(tmp_path):
    text = tmp_path / "text.tsv"
    text.write_text(
        TEXT_HEADER + '1\tToy Story (1995)\t01-Jan-1995\tToys "live"; Woody & Buzz.\tx\n'
        "2\tGoldenEye (1995)\t01-Jan-1995\t\t\n",
        encoding="utf-8",
    )
    ds = load_movielens(write_ml(tmp_path), item_text=text)
    got = ds.items.set_index("item_id")["text"].to_dict()
    assert got == {"1": 'Toys "live"; Woody & Buzz.', "2": "", "3": "", "4": ""}


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("1\ta\tb\tc\td\n1\ta\tb\tc\td\n", r"text\.tsv:3: duplicate item text .*first at line 2"),
        ("1\ta\tb\tc\td\n99\ta\tb\tc\td\n", r"text\.tsv:3: unknown item_id '99'"),
        ("1\ta\tb\tc\td\n2\ta\tb\tc\n", r"text\.tsv:3: expected 5 fields"),
    ],
)
def test_item_text_bad(tmp_path, body, pattern):
    text = tmp_path / "text.tsv"
    text.write_text(TEXT_HEADER + body, encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        load_movielens(write_ml(tmp_path), item_text=text)


def test_download_verifies_and_caches(tmp_path, monkeypatch):
    src = zip_dir(write_ml(tmp_path / "src"), tmp_path / "official.zip")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="sha256 mismatch"):
        movielens.download_ml100k(cache, url=src.as_uri(), sha256="0" * 64)
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written left behind
    monkeypatch.setattr(movielens, "ML100K_URL", src.as_uri())
    monkeypatch.setattr(movielens, "ML100K_ZIP_SHA256", digest)
    ds = load_movielens(cache_dir=cache)
    assert len(ds.ratings) == 8 and ds.source == src.as_uri()
    src.unlink()  # the second load must come from the cache
    assert len(load_movielens(cache_dir=cache).ratings) == 8
    monkeypatch.setenv("DOPPEL_CACHE_DIR", str(tmp_path / "env"))
    assert movielens.cache_root() == tmp_path / "env" / "datasets"
    monkeypatch.setattr(movielens, "ML100K_ZIP_SHA256", "1" * 64)
    with pytest.raises(DataError, match="sha256 mismatch.*delete the file"):
        load_movielens(cache_dir=cache)


def test_download_failure_is_data_error(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        movielens.download_ml100k(tmp_path, url=(tmp_path / "missing.zip").as_uri())


# --- generic CSV ---------------------------------------------------------------------------------

RATINGS_CSV = "userId,movieId,rating,timestamp,review\n" + "".join(
    f'{u},{i},{1 + (u + i) % 5},{1000 + 10 * i + u},"nice, really"\n' for u in (1, 2, 3) for i in range(1, 11)
)


def write_generic(
    tmp_path: Path, ratings: str = RATINGS_CSV, items: str | None = None, users: str | None = None
) -> dict[str, Path]:
    paths = {"ratings_csv": tmp_path / "ratings.csv"}
    paths["ratings_csv"].write_text(ratings)
    for key, text in (("items_csv", items), ("users_csv", users)):
        if text is not None:
            paths[key] = tmp_path / f"{key[:-4]}.csv"
            paths[key].write_text(text)
    return paths


def test_generic_time_split(tmp_path, caplog):
    items = 'movieId,title,genres\n1,"Shawshank Redemption, The (1994)",Drama\n2,Heat (1995),Action|Crime\n'
    users = "user_id,age,gender,occupation,zip,text\n1,30,F,writer,12345,likes noir\n2,,M,,,\n"
    with caplog.at_level(logging.WARNING):
        ds = load_generic(**write_generic(tmp_path, items=items, users=users), test_fraction=0.3)
    check_frames(ds)
    assert ds.name == tmp_path.name and ds.folds == ["t1"]
    it = ds.items.set_index("item_id")
    assert it.loc["1", "title"] == "Shawshank Redemption, The" and it.loc["1", "year"] == 1994
    assert it.loc["2", "genres"] == "Action|Crime" and it.loc["7", "title"] == "item 7"
    assert len(ds.items) == 10 and len(ds.users) == 3
    assert ds.users.set_index("user_id").loc["1", "text"] == "likes noir"
    assert pd.isna(ds.users.set_index("user_id").loc["3", "age"])
    assert "missing, added as placeholders" in caplog.text
    test = ds.splits[ds.splits.split == "test"].merge(ds.ratings, on=["user_id", "item_id"])
    train = ds.splits[ds.splits.split == "train"].merge(ds.ratings, on=["user_id", "item_id"])
    assert test.groupby("user_id").size().to_dict() == {"1": 3, "2": 3, "3": 3}
    assert (test.groupby("user_id").ts.min() > train.groupby("user_id").ts.max()).all()


def test_generic_random_folds(tmp_path):
    paths = write_generic(tmp_path)
    ds = load_generic(**paths, split="random", n_folds=5, seed=3, name="toy")
    assert ds.name == "toy" and ds.folds == ["r1", "r2", "r3", "r4", "r5"]
    test = ds.splits[ds.splits.split == "test"]
    assert len(test) == len(ds.ratings) and not test.duplicated(["user_id", "item_id"]).any()
    assert (ds.splits.groupby("fold").size() == len(ds.ratings)).all()
    assert test.groupby("fold").size().tolist() == [6] * 5
    again = load_generic(**paths, split="random", n_folds=5, seed=3)
    pd.testing.assert_frame_equal(ds.splits, again.splits)
    other = load_generic(**paths, split="random", n_folds=5, seed=4)
    assert not ds.splits.equals(other.splits)
    one = load_generic(**paths, split="random", test_fraction=0.2)
    assert (one.splits.split == "test").sum() == 6 and one.folds == ["r1"]


def test_generic_iso_timestamps(tmp_path):
    text = "user_id,item_id,rating,ts\na,x,4,2020-01-01T00:00:00Z\na,y,2,1577836801\nb,x,5,2020-01-02\n"
    ds = load_generic(**write_generic(tmp_path, ratings=text))
    assert ds.ratings.ts.tolist() == [1577836800, 1577836801, 1577923200]


@pytest.mark.parametrize(
    ("ratings", "items", "pattern"),
    [
        ("user_id,item_id,rating,timestamp\n1,1,5,10\n1,2,3\n", None, r"ratings\.csv:3: expected 4 fields"),
        (
            "user_id,item_id,rating,timestamp\n1,1,5,10\n1,2,3.5,11\n",
            None,
            r"ratings\.csv:3: rating is not an integer: '3\.5'",
        ),
        ("user_id,item_id,rating,timestamp\n1,1,5,10\n\n1,2,9,11\n", None, r"ratings\.csv:4: rating '9' out of range"),
        ("user_id,item_id,rating,timestamp\n1,1,5,10\n1,1,3,11\n", None, r"ratings\.csv:3: duplicate rating"),
        ("user_id,item_id,rating,timestamp\n1,1,5,10\n,2,3,11\n", None, r"ratings\.csv:3: empty user_id"),
        (
            "user_id,item_id,rating,timestamp\n1,1,5,10\n1,2,3,soon\n",
            None,
            r"ratings\.csv:3: timestamp is neither integer seconds nor an ISO date: 'soon'",
        ),
        ("user_id,item_id,stars,timestamp\n1,1,5,10\n", None, r"ratings\.csv:1: missing column\(s\) rating"),
        ("user_id,item_id,rating,timestamp\n", None, r"ratings\.csv: no ratings"),
        (
            "user_id,item_id,rating,timestamp\n1,1,5,10\n",
            "item_id,title,year\n1,A,1990\n1,B,1991\n",
            r"items\.csv:3: duplicate item",
        ),
        (
            "user_id,item_id,rating,timestamp\n1,1,5,10\n",
            'item_id,title,year\n1,"A\nB",1990\n2,C,19x1\n',
            r"items\.csv:4: year is not an integer: '19x1'",
        ),
    ],
)
def test_generic_bad_lines(tmp_path, ratings, items, pattern):
    with pytest.raises(DataError, match=pattern):
        load_generic(**write_generic(tmp_path, ratings=ratings, items=items))


def test_generic_bad_arguments(tmp_path):
    paths = write_generic(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_generic(**paths, split="leave-one-out")
    with pytest.raises(ValueError, match="test_fraction"):
        load_generic(**paths, test_fraction=1.0)


# --- synthetic -----------------------------------------------------------------------------------


def test_synthetic_deterministic():
    a, b, c = make_synthetic(seed=1), make_synthetic(seed=1), make_synthetic(seed=2)
    for name in ("items", "users", "ratings", "splits"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.ratings.equals(c.ratings)
    assert a.name == "synthetic" and a.source == "synthetic:seed=1,users=60,items=120"


def test_synthetic_shape_and_histogram():
    ds = make_synthetic(n_users=200, n_items=300, seed=0)
    check_frames(ds)
    assert len(ds.users) == 200 and len(ds.items) == 300
    per_user = ds.ratings.groupby("user_id").size()
    assert per_user.between(20, 60).all()
    hist = ds.ratings.rating.value_counts(normalize=True).sort_index().to_numpy()
    assert np.abs(hist - ML100K_HISTOGRAM).max() < 0.02
    assert ds.items.year.between(1960, 2020).all()
    n_genres = ds.items.genres.str.count(r"\|") + 1
    assert n_genres.between(1, 3).all() and ds.items.genres.str.split("|").explode().nunique() == 10
    assert (ds.items.text.str.len() > 20).all() and ds.items.title.is_unique
    ts_sorted = ds.ratings.groupby("user_id").ts.apply(lambda s: bool((s.diff().dropna() > 0).all()))
    assert ts_sorted.all()


def test_synthetic_folds():
    ds = make_synthetic(seed=5, ratings_per_user=(7, 9))
    assert ds.folds == ["u1", "u2", "u3", "u4", "u5"]
    test = ds.splits[ds.splits.split == "test"]
    assert len(test) == len(ds.ratings) and not test.duplicated(["user_id", "item_id"]).any()
    assert (ds.splits.groupby("fold").size() == len(ds.ratings)).all()
    train = ds.splits[ds.splits.split == "train"].groupby(["fold", "user_id"]).size()
    assert len(train) == 5 * 60 and train.min() >= 5
    with pytest.raises(ValueError):
        make_synthetic(ratings_per_user=(3, 10))


# --- dispatch ------------------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path):
    assert load_dataset("synthetic", n_users=10, n_items=30, ratings_per_user=(8, 12)).name == "synthetic"
    d = write_ml(tmp_path / "ml")
    assert len(load_dataset(str(d)).ratings) == 8
    assert len(load_dataset("ml-100k", data_dir=d).ratings) == 8
    assert len(load_dataset(str(zip_dir(d, tmp_path / "ml.zip"))).ratings) == 8
    g = tmp_path / "gen"
    g.mkdir()
    paths = write_generic(g, items="item_id,title\n1,One\n")
    assert load_dataset(str(g)).items.set_index("item_id").loc["1", "title"] == "One"
    assert load_dataset(str(paths["ratings_csv"]), split="random", n_folds=2).folds == ["r1", "r2"]
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset(str(tmp_path / "nope"))


# --- the real MovieLens-100K (only where it is available) ----------------------------------------


@pytest.mark.skipif(not (ML100K_DIR / "u.data").exists(), reason=f"{ML100K_DIR} not present")
def test_real_ml100k():
    text = ML100K_TEXT if ML100K_TEXT.exists() else None
    ds = load_movielens(ML100K_DIR, item_text=text)  # its time: benchmarks/load.py
    check_frames(ds)
    assert (len(ds.users), len(ds.items), len(ds.ratings)) == (943, 1682, 100000)
    assert ds.folds == ["u1", "u2", "u3", "u4", "u5", "ua", "ub"]
    u1_test = ds.splits[(ds.splits.fold == "u1") & (ds.splits.split == "test")]
    assert len(u1_test) == 20000 and u1_test.user_id.nunique() == 459
    assert (ds.splits.groupby("fold").size() == 100000).all()
    assert ds.items.set_index("item_id").loc["1", "title"] == "Toy Story"
    assert ds.ratings.rating.value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    if text is not None:
        assert (ds.items.text != "").sum() > 1500


def test_no_fold_means_the_datasets_own_default(tmp_path):
    """Without --fold a ratings CSV runs on its one split (t1), ML-100K and synthetic on u1; the one-fold
    modes (sandbox, ensemble) follow; a fold asked for is kept as asked."""
    from typer.testing import CliRunner

    from doppel.flows.cli import app
    from doppel.tasks.sandbox.config import SandboxSettings
    from doppel.tasks.settings import RunSettings

    csv = str(write_generic(tmp_path)["ratings_csv"])
    assert RunSettings(dataset=csv).folds == ["t1"]
    assert RunSettings().folds == ["u1"] and RunSettings(dataset="ml-100k", data_dir=str(tmp_path)).folds == ["u1"]
    assert RunSettings(dataset=csv, folds="u2").folds == ["u2"]
    assert RunSettings(dataset=str(tmp_path / "missing.csv")).folds == ["u1"]  # preflight names the path
    sandbox = SandboxSettings(run=RunSettings(dataset=csv))
    assert sandbox.fold == "t1" and sandbox.run.folds == ["t1"]
    db = str(tmp_path / "d.duckdb")
    done = CliRunner().invoke(
        app, ["run", "--dataset", csv, "--db", db, "--dry-run", "--base-url", "http://127.0.0.1:9/v1"]
    )
    assert done.exit_code == 0, done.output
    assert "| users " in done.output and "requested pairs" in done.output
