"""notebooks/figures.ipynb runs top to bottom (nbclient, a real kernel) on a small hand-made results
directory and draws its figures through the library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_invariance

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "figures.ipynb"


def test_notebook_executes(rank_results, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    make_invariance(rank_results)
    monkeypatch.setenv("LORA_LAB_RESULTS", str(rank_results))
    monkeypatch.setenv("LORA_LAB_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # rank curves, LR U-curves, early curves (C7), invariance
    text = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "reproduced" in text and "LoRA r16" in text
    assert (tmp_path / "out" / "report.html").is_file()
