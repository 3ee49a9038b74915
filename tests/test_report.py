"""tasks/report.py and the `doppel sql` / `doppel report` commands on the toy database of test_views."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from doppel.tasks import report
from tests.test_views import STAGING, VIEWS, make_toy_db

SECTIONS = ["overview", "fidelity", "distributions", "activity", "costs", "validation", "failed", "config"]
IMAGES = ["img-histogram", "img-confusion", "img-activity"]


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory) -> Path:
    return make_toy_db(tmp_path_factory.mktemp("report") / "toy.duckdb")


@pytest.fixture(scope="module")
def html(toy_db, tmp_path_factory) -> str:
    out = report.write_report(toy_db, "r1", tmp_path_factory.mktemp("out") / "sub" / "report.html")
    return out.read_text()


def images(html: str) -> dict[str, bytes]:
    found = re.findall(r'<img id="([\w-]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return {name: base64.b64decode(data) for name, data in found}


def test_report_has_every_section_and_the_plots(html):
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    pngs = images(html)
    assert sorted(pngs) == sorted(IMAGES)
    for png in pngs.values():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000


def test_report_is_self_contained(html):
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "url(" not in html


def test_report_numbers(html):
    assert "baseline:user_mean" in html and "fold f1" in html
    assert '<td class="n best">1.200</td>' in html  # the baseline's RMSE beats the LLM's
    assert "$0.0015" in html  # (450 x $2 + 60 x $10) / 1e6
    assert "FAILED" in html and "expect_column_values_to_not_be_null rating" in html  # validation
    assert "id i3 missing from the answer" in html  # failed pairs
    assert "Alien &lt;3" in html and "Alien <3" not in html  # data is escaped
    assert "1 of 3 rated pairs" in html and "Truth leakage" in html  # update_profile is on in r1


def test_leakage_is_warned_only_when_a_pair_was_rated_after_an_update(toy_db):
    data = report.load_report_data(toy_db, "r1")  # update_profile on, 1 of 3 rated pairs after batch 0
    assert "Truth leakage" in report.render_report(data)
    data.overview = {**data.overview, "pairs_later_batches": 0}  # every user's pairs in their first batch
    html = report.render_report(data)
    assert "Truth leakage" not in html and "No leakage" in html and "0 of 3 rated pairs" in html
    assert 'class="note warn" id="leak-note"' not in html


def test_report_of_an_empty_run(toy_db, tmp_path):
    text = report.write_report(toy_db, "r2", tmp_path / "r2.html").read_text()
    assert "No rated pairs yet" in text and "No leakage" in text and not images(text)


def test_report_unknown_run_and_latest(toy_db, tmp_path):
    with pytest.raises(ValueError, match="no run 'nope'.*r1"):
        report.write_report(toy_db, "nope", tmp_path / "x.html")
    assert report.latest_run_id(toy_db) == "r2"


def test_activity_bins_pool_exactly():
    users = pd.DataFrame(
        {
            "user_id": list("abcdef"),
            "n": [1, 3, 2, 2, 4, 0],
            "n_train": [10, 12, 14, 50, 60, 70],
            "rmse": [1.0, 2.0, 0.0, 1.0, 0.5, None],
            "mae": [1.0, 1.0, 0.0, 1.0, 0.5, None],
        }
    )
    bins = report.activity_bins(users)  # 5 users with pairs -> one bin (>= ~3 users per bin)
    assert bins["users"].tolist() == [5] and bins["pairs"].tolist() == [12]
    assert bins["rmse"][0] == pytest.approx(((1 + 12 + 0 + 2 + 1) / 12) ** 0.5)
    assert bins["mae"][0] == pytest.approx((1 + 3 + 0 + 2 + 2) / 12)


def test_read_view_and_sql_are_read_only_and_limited(toy_db):
    frame, more = report.read_view(toy_db, "user_error", run_id="r1", limit=1)
    assert len(frame) == 1 and more
    frame, more = report.run_sql(toy_db, "select count(*) as n from confusion_matrix")
    assert frame["n"].tolist() == [3] and not more
    with pytest.raises(duckdb.Error):
        report.run_sql(toy_db, "delete from runs")
    with pytest.raises(ValueError, match="no view"):
        report.read_view(toy_db, "runs")


def test_views_work_on_a_file_without_them(tmp_path):
    """A file written before the views existed is read with the checkout's definitions (temp views)."""
    db = make_toy_db(tmp_path / "old.duckdb")
    con = duckdb.connect(str(db))
    for view in VIEWS:
        con.execute(f"drop view {view}")
    con.close()
    frame, _ = report.read_view(db, "run_costs", run_id="r1")
    assert frame["calls"].tolist() == [3]


def test_cli_sql_and_report(toy_db, tmp_path):
    import doppel.flows.cli_explore  # noqa: F401  (registers the commands)
    from doppel.flows.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["sql", "--list"])
    assert listed.exit_code == 0 and listed.output.split() == sorted(STAGING + VIEWS)
    shown = runner.invoke(app, ["sql", "--db", str(toy_db), "--view", "failed_pairs", "--run-id", "r1"])
    assert shown.exit_code == 0, shown.output
    assert "missing" in shown.output and "1 row" in shown.output
    query = runner.invoke(
        app,
        [
            "sql",
            "--db",
            str(toy_db),
            "--max-width",
            "8",
            "select text from profile_evolution order by version desc limit 1",
        ],
    )
    assert query.exit_code == 0 and "Dislike…" in query.output  # "Dislikes  drama." cut to 8
    bad = runner.invoke(app, ["sql", "--db", str(toy_db), "select * from nowhere"])
    assert bad.exit_code == 2 and "nowhere" in bad.output
    out = tmp_path / "cli.html"
    made = runner.invoke(app, ["report", "--db", str(toy_db), "--run-id", "r1", "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert sorted(images(out.read_text())) == sorted(IMAGES)
