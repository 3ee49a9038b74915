"""matplotlib for the HTML reports: the Agg backend with doppel's style, and a figure as an inline PNG."""

from __future__ import annotations

import base64
import io
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), with the reports' style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 10, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 110}
    )
    return plt


def png(fig: Any) -> str:
    """The figure as a data: URI (PNG, base64); closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
