"""The walkthrough notebook runs top to bottom at tiny size, importing only from dentalmim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "representation_analysis.ipynb"


def code_of(nb: nbformat.NotebookNode) -> str:
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


def test_notebook_is_committed_without_outputs_and_imports_only_dentalmim() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in nb.cells if cell.cell_type == "code")
    imported = set(re.findall(r"^\s*(?:from|import) ([A-Za-z_][\w]*)", code_of(nb), flags=re.MULTILINE))
    assert "dentalmim" in imported and imported <= {"dentalmim", "os", "pathlib", "torch", "IPython", "__future__"}


def test_notebook_executes_at_tiny_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENTALMIM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("DENTALMIM_NOTEBOOK_OUT", str(tmp_path / "work"))
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "tiny: True" in text and "mae: last layer attention distance" in text and "contrastive" in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 5  # the plots are shown
    payload = json.loads((tmp_path / "work" / "analysis" / "analysis.json").read_text())
    assert set(payload["encoders"]) == {"mae", "contrastive"}
    assert [enc["objective"] for enc in payload["encoders"].values()] == ["mae", "contrastive"]
