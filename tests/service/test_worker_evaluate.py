"""A report is written whole or not at all: a failing evaluation leaves no half-written folder behind."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import dentalmim.evaluation.evaluate as evaluate_module
from dentalmim.inference.predictor import Predictor
from service import worker as worker_module


def test_a_failing_evaluation_leaves_no_partial_report_folder(tmp_path: Path, monkeypatch) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    registry = SimpleNamespace(file_path=lambda info: tmp_path / "model.safetensors", verify=lambda info: True)
    settings = SimpleNamespace(data_dir=tmp_path, device="cpu", precision="fp32", eval_bootstrap=10)
    ctx = SimpleNamespace(worker=SimpleNamespace(registry=registry, settings=settings))
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: object()))

    def half_written(predictor, coco, out, **kwargs):
        Path(out).mkdir(parents=True)
        (Path(out) / "report.html").write_text("<html>half")
        raise RuntimeError("image 3 is corrupt")

    monkeypatch.setattr(evaluate_module, "evaluate_model", half_written)
    with pytest.raises(RuntimeError, match="corrupt"):
        worker_module.evaluate_version(ctx, SimpleNamespace(version="v1"), tmp_path / "c.json", "clinic", "ab")
    assert list(reports.iterdir()) == []
