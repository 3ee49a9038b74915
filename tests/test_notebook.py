"""examples/quickstart.ipynb runs top to bottom (nbclient, a real kernel) against the test LLM server."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # the kernel inherits it
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("DOPPEL_BASE_URL", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit it without outputs"
    )
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = {i: cell.outputs for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for outs in outputs.values() for o in outs
    )
    assert "'finished'" in text  # the run's status
    assert "baseline:svd" in text  # the fidelity table
    assert any("image/png" in o.get("data", {}) for outs in outputs.values() for o in outs)  # the histogram
    assert (tmp_path / "quickstart.duckdb").exists()
