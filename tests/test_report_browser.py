"""The HTML report in headless Debian Chromium: every plot loads and the page renders.

Needs /usr/bin/chromium (`apt-get install -y chromium`); skipped with a reason when it is missing.
Also a tool for the README screenshot:

    python -m tests.test_report_browser report.html benchmarks/results/report.png
"""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.test_report import IMAGES, SECTIONS
from tests.test_views import make_toy_db

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
]
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    var box = img.getBoundingClientRect();
    return {id: img.id, complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
            shownWidth: box.width};
  });
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images, height: document.documentElement.scrollHeight,
    sections: document.querySelectorAll("section").length}));
});
</script>"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium"),
]


def _chromium(args: list[str], width: int, height: int) -> str:
    """Run headless Chromium once with a fresh profile; returns stdout."""
    with tempfile.TemporaryDirectory(prefix="doppel-chromium-") as profile:
        command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def probe(report: Path, width: int = 1100) -> dict:
    """Load a copy of the report with a probe script; returns what the page saw after `load`."""
    text = report.read_text(encoding="utf-8")
    copy = report.with_name(report.stem + ".probe.html")
    copy.write_text(text.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    try:
        dom = _chromium(["--dump-dom", copy.resolve().as_uri()], width, 900)
    finally:
        copy.unlink()
    found = re.search(r'data-probe="([^"]*)"', dom)
    if found is None:
        raise AssertionError(f"the probe did not run; DOM starts: {dom[:500]!r}")
    return json.loads(htmllib.unescape(found.group(1)))


def screenshot(report: Path, png: Path, width: int = 1100) -> tuple[int, int]:
    """A full-page PNG screenshot of the report; returns its (width, height) in pixels."""
    height = probe(report, width)["height"]
    png.parent.mkdir(parents=True, exist_ok=True)
    _chromium([f"--screenshot={png.resolve()}", report.resolve().as_uri()], width, height)
    return png_size(png)


def png_size(png: Path) -> tuple[int, int]:
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    from doppel.tasks.report import write_report

    root = tmp_path_factory.mktemp("browser")
    return write_report(make_toy_db(root / "toy.duckdb"), "r1", root / "report.html")


def test_plots_load_in_chromium(report_file):
    seen = probe(report_file)
    assert seen["sections"] == len(SECTIONS)
    assert sorted(img["id"] for img in seen["images"]) == sorted(IMAGES)
    for img in seen["images"]:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
        assert img["shownWidth"] > 200, img  # laid out, not collapsed


def test_screenshot(report_file, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    width, height = screenshot(report_file, png)
    assert width == 1100 and height > 1500  # the whole page, not one viewport
    with Image.open(png) as image:
        colours = image.convert("RGB").resize((200, 400)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # plots and tables, not a blank page


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) not in (3, 4) or CHROMIUM is None:
        sys.exit("usage: python -m tests.test_report_browser REPORT.html OUT.png [WIDTH]  (needs chromium)")
    size = screenshot(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 1100)
    print(f"{sys.argv[2]}: {size[0]}x{size[1]} px")
