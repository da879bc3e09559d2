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


def test_an_evaluation_cancelled_while_it_ran_ends_cancelled_without_a_report(tmp_path: Path, monkeypatch) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    registry = SimpleNamespace(file_path=lambda info: tmp_path / "model.safetensors", verify=lambda info: True)
    settings = SimpleNamespace(data_dir=tmp_path, device="cpu", precision="fp32", eval_bootstrap=10)

    def cancelled() -> None:
        raise worker_module.JobCancelledError("cancelled on request")

    ctx = SimpleNamespace(worker=SimpleNamespace(registry=registry, settings=settings), check=cancelled)
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: object()))

    def finished(predictor, coco, out, **kwargs):
        Path(out).mkdir(parents=True)
        (Path(out) / "report.html").write_text("<html>whole")
        return SimpleNamespace(metrics={"froc_fom": 0.5})

    monkeypatch.setattr(evaluate_module, "evaluate_model", finished)
    with pytest.raises(worker_module.JobCancelledError):
        worker_module.evaluate_version(ctx, SimpleNamespace(version="v1"), tmp_path / "c.json", "clinic", "ab")
    assert list(reports.iterdir()) == []


def test_a_failed_subprocess_is_explained_without_progress_bars(tmp_path: Path) -> None:
    log = tmp_path / "finetune.log"
    log.write_text("loading data\nEpoch 4: 100%|█████| 7/7 [00:05<00:00,  1.38it/s, loss=2.1]\r"
                   "Epoch 5:   0%|          | 0/7 [00:00<?, ?it/s]\rtrain/loss is not finite at step 12\n\n")
    assert worker_module._log_reason(log) == "loading data | train/loss is not finite at step 12"
    assert worker_module._exit_reason(2) == "exit 2"
    assert worker_module._exit_reason(-9) == "killed by SIGKILL, possibly out of memory"
    assert worker_module._exit_reason(-15) == "killed by SIGTERM"
