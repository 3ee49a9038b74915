"""The documentation: the site builds strictly, the README stays short, and no page retypes a figure.

Figures live in benchmarks/results/ (written by the benchmark that measured them, with date, command,
commit and machine) and reach the docs only by inclusion; benchmarks/results/README.md indexes them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# what a retyped measurement looks like in prose: 0.949, 44.2 %, 51,674 steps/s, 1.23 x
FIGURE = re.compile(r"\b\d+\.\d{2,}\b|\b\d+(\.\d+)?\s?%|\b[\d,]+\s?(steps/s|tok/s|calls/s|ms)\b|\b\d+(\.\d+)?\s?x\b")


# not measurements: a library's version ("Python 3.11", "torch 2.13.0"), an interval's confidence level
VERSION = re.compile(
    r"(?i)\b(python|torch|numpy|pandas|prefect|duckdb|gymnasium|fastapi|sqlalchemy|dask|cornac|implicit|lenskit"
    r"|scikit-learn|scikit-surprise|setuptools|pip|mkdocs|llama\.cpp|xllamacpp)\s*[<>=~!]*\s*\d+(\.\d+)*"
)
CONFIDENCE = re.compile(
    r"\b\d+\s?%(?=\s+(confidence|bootstrap|percentile|credible)?\s*interval)|\b\d+\s?%(?=\s+(confidence|bootstrap|percentile))"
)


def prose(text: str) -> str:
    """The text outside code fences, inline code, link targets and HTML comments, without versions."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return CONFIDENCE.sub("", VERSION.sub("", text))


def hand_written() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150: the rest belongs in docs/)"


@pytest.mark.parametrize("path", hand_written(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_retypes_a_figure(path):
    found = [m.group(0) for m in FIGURE.finditer(prose(path.read_text()))]
    assert not found, f"{path.relative_to(REPO)} quotes figures {found}: include them from benchmarks/results/"


def test_the_results_index_lists_every_result_file():
    index = (RESULTS / "README.md").read_text()
    missing = [p.name for p in sorted(RESULTS.iterdir()) if p.name != "README.md" and p.name not in index]
    assert not missing, f"benchmarks/results/README.md does not mention {missing}"


def test_new_result_files_say_where_they_came_from():
    for path in sorted(RESULTS.glob("*.md")):
        text = path.read_text()
        if "- commit:" in text:  # written through benchmarks/_provenance.py
            for key in ("date", "command", "commit", "machine"):
                assert re.search(rf"^- {key}: \S", text, re.M), f"{path.name} has no {key}"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").exists()
    config = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert 'id="doppel-run"' in config and "--rate-batch" in config  # generated from the CLI
    api = (tmp_path / "site" / "python-api" / "index.html").read_text()
    assert "doppel.api.simulate" in api  # rendered from the docstrings
