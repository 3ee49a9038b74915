"""The report's arena section (tasks/arena/report.py): a real `doppel-arena` run (Prefect, threads) on the
synthetic dataset written into the toy database of test_views, reported beside the toy run r1; and files
without an arena run (or without the arena tables at all) reported without the section."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from doppel.tasks import report
from tests.test_report import images
from tests.test_views import make_toy_db

ARENA_ID = "arena-report"
ARENA_TABLES = ["arena_recommenders", "arena_lists", "arena_judgments", "arena_metrics", "arena_agreement"]
ARENA_TABLES += ["arena_calibration", "arena_reliability"]


@pytest.fixture(scope="module")
def arena_db(prefect_server, tmp_path_factory) -> Path:
    """The toy file plus one finished two-fold arena run of three entrants (threads, 20 resamples: a cheap real run)."""
    from doppel.flows.arena import run_arena
    from doppel.tasks.arena.config import ArenaSettings

    folder = tmp_path_factory.mktemp("report-arena")
    db = make_toy_db(folder / "toy.duckdb")
    settings = ArenaSettings(
        db=str(db), folds=["u1", "u2"], only=["random", "most_popular", "biased_mf"], n_boot=20, runner="threads",
        run_id=ARENA_ID, cache_dir=str(folder / "cache"),
    )  # fmt: skip
    run_arena(settings)
    return db


def stored(db: Path, table: str) -> list[dict]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"select * from {table} where run_id = ? order by all", [ARENA_ID]).df().to_dict("records")


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The cells of each data row of <table id=table_id>, unescaped."""
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert body, f"no table {table_id}"
    rows = re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
    return [[html_lib.unescape(c.strip()) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows[1:]]


def interval(value, lo, hi) -> str:
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


@pytest.mark.slow
def test_report_shows_the_arena_run_with_both_plots_and_its_stored_numbers(arena_db, tmp_path):
    # the default run is the latest that simulated users, not the arena run started after it
    assert report.latest_run_id(arena_db) == "r2"
    html = report.write_report(arena_db, "r1", tmp_path / "report.html").read_text()
    assert '<section id="arena">' in html and f"<code>{ARENA_ID}</code>" in html
    assert '<section id="fidelity">' in html and "Alien &lt;3" in html  # the LLM run's report is still there
    pngs = images(html)
    for name in ("img-arena-scatter", "img-arena-reliability"):
        assert pngs[name].startswith(b"\x89PNG\r\n\x1a\n") and len(pngs[name]) > 5_000
    agreement = stored(arena_db, "arena_agreement")
    assert {a["protocol"] for a in agreement} == {"observed", "catalogue"} and {a["fold"] for a in agreement} == {
        "u1",
        "u2",
    }
    expected = [
        [
            a["fold"], a["protocol"], a["metric"], a["judge"], interval(a["tau"], a["tau_lo"], a["tau_hi"]),
            f"{a['rho']:.3f}", "–" if a["ceiling_ratio"] != a["ceiling_ratio"] else f"{a['ceiling_ratio']:.3f}",
        ]
        for a in sorted(agreement, key=lambda a: (a["fold"], a["protocol"], a["metric"], a["judge"]))
    ]  # fmt: skip
    assert table_rows(html, "arena-agreement") == expected
    calibration = sorted(stored(arena_db, "arena_calibration"), key=lambda c: (c["fold"], c["judge"]))
    shown = table_rows(html, "arena-calibration")
    assert [row[:2] for row in shown] == [[c["fold"], c["judge"]] for c in calibration]
    for row, c in zip(shown, calibration, strict=True):
        assert row[2:] == [
            f"{c['like_rate']:.1%}", f"{c['real_like_rate']:.1%}", f"{c['like_rate_gap']:+.2f}",
            f"{c['ece']:.3f}", f"{c['brier']:.3f}", f"{c['n']:,}",
        ]  # fmt: skip


@pytest.mark.slow
def test_the_scatter_has_every_judge_and_recommender_of_the_run(arena_db):
    arena = report.load_report_data(arena_db, "r1").arena
    assert arena is not None and arena.run["run_id"] == ARENA_ID
    metrics = [m for m in stored(arena_db, "arena_metrics") if m["protocol"] == "observed" and m["metric"] == "ndcg@10"]
    real = {m["recommender"]: m["value"] for m in metrics if m["judge"] == "real"}
    assert set(real) == {"random", "most_popular", "biased_mf"}
    simulated = {(m["judge"], m["recommender"]): m["value"] for m in metrics if m["judge"] != "real"}
    points = {(p["judge"], p["recommender"]): p for p in arena.scatter.to_dict("records")}
    assert set(points) == set(simulated)
    for key, point in points.items():
        assert point["simulated_value"] == pytest.approx(simulated[key])
        assert point["real_value"] == pytest.approx(real[key[1]])
    judges = {a["judge"] for a in stored(arena_db, "arena_agreement")}
    assert set(arena.scatter["judge"]) == judges  # each panel's title has its judge's tau
    reliability = [r for r in stored(arena_db, "arena_reliability") if r["n"] > 0]
    assert len(arena.reliability) == len(reliability) > 1


@pytest.mark.slow
def test_arena_run_option_names_a_run_or_fails_naming_the_id(arena_db, tmp_path):
    from doppel.flows.cli import app

    with pytest.raises(ValueError, match=f"no arena run 'r2'.*arena runs: {ARENA_ID}"):
        report.write_report(arena_db, "r1", tmp_path / "x.html", arena_run="r2")  # a run, but no arena run
    runner = CliRunner()
    out = tmp_path / "cli.html"
    bad = runner.invoke(app, ["report", "--db", str(arena_db), "--run-id", "r1", "--arena-run", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output, bad.output
    good = runner.invoke(
        app, ["report", "--db", str(arena_db), "--run-id", "r1", "--arena-run", ARENA_ID, "--out", str(out)]
    )
    assert good.exit_code == 0, good.output
    assert {"img-arena-scatter", "img-arena-reliability"} <= set(images(out.read_text()))
    itself = report.write_report(arena_db, ARENA_ID, tmp_path / "itself.html").read_text()  # a run of two folds
    assert "folds u1, u2" in itself and '<section id="arena">' in itself


def test_no_arena_run_no_section(tmp_path):
    db = make_toy_db(tmp_path / "toy.duckdb")  # the arena tables exist (init_db), without rows
    html = report.write_report(db, "r1", tmp_path / "r1.html").read_text()
    assert '<section id="fidelity">' in html and 'id="arena"' not in html
    assert not any(name.startswith("img-arena") for name in images(html))
    with pytest.raises(ValueError, match="no arena run 'a1'.*it has no arena runs"):
        report.write_report(db, "r1", tmp_path / "x.html", arena_run="a1")


def test_a_file_from_before_the_arena_is_reported_without_the_section(tmp_path):
    db = make_toy_db(tmp_path / "old.duckdb")
    with duckdb.connect(str(db)) as con:
        con.execute("drop view arena_scatter")
        for table in ARENA_TABLES:
            con.execute(f"drop table {table}")
    html = report.write_report(db, "r1", tmp_path / "old.html").read_text()
    assert '<section id="fidelity">' in html and 'id="arena"' not in html
