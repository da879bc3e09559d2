"""``dentalmim predict``: per-image findings JSON, overlay PNG and SR; unreadable inputs never stop the batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from dentalmim.cli import main
from dentalmim.data.synth import generate_corpus
from dentalmim.errors import CocoValidationError, ConfigError
from dentalmim.evaluation.evaluate import evaluate_model
from dentalmim.inference.outputs import collect_inputs, predict_files
from dentalmim.inference.predictor import Predictor, save_model_bundle
from dentalmim.inference.sr import read_findings_sr
from dentalmim.models.detector import CariesDetector
from dentalmim.models.vit import ViTEncoder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    detector = CariesDetector(ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2),
                              num_classes=1, fpn_channels=32)
    meta = {"tile_size": 64, "score_threshold": 0.0, "image_threshold": 0.5, "version": "test-1",
            "class_names": ["caries"]}
    return save_model_bundle(detector, tmp_path_factory.mktemp("model") / "m.safetensors", meta)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scans")
    generate_corpus(root, n=2, seed=5, n_unlabeled=0, scale=0.12, progress=False)
    (root / "labeled" / "images" / "broken.dcm").write_bytes(b"not a dicom file")
    return root / "labeled" / "images"


def test_predict_files_writes_json_overlay_and_sr(model: Path, scans: Path, tmp_path: Path) -> None:
    summary = predict_files(Predictor.from_checkpoint(model), [scans], tmp_path, progress=False)
    assert len(summary.written) == 2
    assert [f["code"] for f in summary.failed] == ["not_dicom"]
    for written in summary.written:
        source = pydicom.dcmread(written["file"], stop_before_pixels=True)
        findings = json.loads(Path(written["findings"]).read_text())
        assert findings["model_version"] == "test-1" and len(findings["findings"]) > 0  # threshold 0: all boxes
        first = findings["findings"][0]
        assert "box_mm" in first or "bbox_mm" in json.dumps(first)
        overlay = Image.open(written["overlay"])
        assert overlay.size == (source.Columns, source.Rows)
        sr = pydicom.dcmread(written["sr"])
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        records = read_findings_sr(sr)
        boxes = [r["box"] for r in records if r["kind"] == "finding"]
        assert len(boxes) == len(findings["findings"])


def test_predict_cli_skips_sr_on_request_and_warns_of_a_default_threshold(
        model: Path, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["predict", str(scans / "img_00000.dcm"), "--model", str(model), "--out", str(tmp_path),
                 "--no-sr", "--no-progress", "--threshold", "0.99"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_00000.findings.json", "img_00000.overlay.png"]
    err = capsys.readouterr().err  # the test model was never validated: its image threshold is the default
    assert err.count("warning: image_threshold 0.500 is the default") == 1
    findings = json.loads((tmp_path / "img_00000.findings.json").read_text())
    assert len(findings["warnings"]) == 1 and "is the default" in findings["warnings"][0]
    assert main(["predict", str(scans / "broken.dcm"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2  # nothing could be read: an error line, not just a count
    assert "dentalmim: error: none of the 1 inputs could be predicted" in capsys.readouterr().err


def test_predict_cli_warns_once_about_an_image_type_the_threshold_barely_saw(
        scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    detector = CariesDetector(ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2),
                              num_classes=1, fpn_channels=32)
    meta = {"tile_size": 64, "image_threshold": 0.6, "threshold_rule": "validated", "threshold_val_caries_images": 6,
            "threshold_val_caries_free_images": 6, "threshold_val_image_types": {"intraoral": [6, 6]}}
    model = save_model_bundle(detector, tmp_path / "m.safetensors", meta)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        ds = pydicom.dcmread(scans / "img_00000.dcm")
        ds.Modality = "IO" if name == "c.dcm" else "PX"  # two panoramics, one intraoral image
        ds.save_as(folder / name)
    assert main(["predict", str(folder), "--model", str(model), "--out", str(tmp_path / "out"), "--no-sr",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: panoramic image: the image threshold was chosen with only 0 panoramic") == 1
    warnings = {n: json.loads((tmp_path / "out" / f"{n}.findings.json").read_text())["warnings"] for n in "abc"}
    assert len(warnings["a"]) == len(warnings["b"]) == 1 and warnings["c"] == []


def test_collect_inputs_rejects_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        collect_inputs([tmp_path / "nope.dcm"])


def test_output_names_stay_unique(model: Path, scans: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "img_00000.dcm").write_bytes((scans / "img_00000.dcm").read_bytes())
    summary = predict_files(Predictor.from_checkpoint(model), [scans / "img_00000.dcm", other], tmp_path / "out",
                            write_sr=False, progress=False)
    names = sorted(Path(w["findings"]).name for w in summary.written)
    assert names == ["img_00000.findings.json", "img_00000_2.findings.json"]
    assert np.isfinite([json.loads(Path(w["findings"]).read_text())["image_probability"]
                        for w in summary.written]).all()


def test_evaluate_cli_writes_report_with_provenance(model: Path, scans: Path, tmp_path: Path) -> None:
    coco = scans.parent / "annotations.json"
    code = main(["evaluate", "--model", str(model), "--data", str(coco), "--out", str(tmp_path / "report"),
                 "--n-boot", "20", "--no-progress"])
    assert code == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for key in ("froc_fom", "sensitivity_at_1fp", "ap50", "auroc"):
        assert key in metrics and key in metrics["ci"]
    provenance = metrics["provenance"]
    assert provenance["model_version"] == "test-1" and len(provenance["model_sha256"]) == 64
    assert len(provenance["dataset_sha256"]) == 64
    html = (tmp_path / "report" / "report.html").read_text()
    assert "test-1" in html and html.count("data:image/png;base64,") >= 5
    assert (tmp_path / "report" / "report.pdf").read_bytes().startswith(b"%PDF")
    # per_image.csv: one row per COCO image, outcomes that add up to the summary's confusion counts
    with open(tmp_path / "report" / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = json.loads(coco.read_text())["images"]
    assert sorted(r["file_name"] for r in rows) == sorted(im["file_name"] for im in images)
    assert {r["image_type"] for r in rows} <= {"panoramic", "intraoral"}  # from the DICOM Modality (PX / IO)
    op = metrics["operating_point"]
    for kind in ("tp", "fp", "tn", "fn"):
        assert sum(r["image_outcome"] == kind.upper() for r in rows) == op[kind]


def test_a_bad_file_of_any_kind_never_stops_the_batch(model: Path, scans: Path, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    good = batch / "z_good.dcm"  # sorts after every bad file
    good.write_bytes((scans / "img_00000.dcm").read_bytes())
    no_modality = pydicom.dcmread(good)
    del no_modality.Modality  # readable, but an SR cannot reference it
    no_modality.save_as(batch / "a_no_modality.dcm")
    (batch / "b_loop.dcm").symlink_to(batch / "b_loop.dcm")
    (batch / "c_dangling.dcm").symlink_to(batch / "missing_target.dcm")
    out = tmp_path / "out"
    summary = predict_files(Predictor.from_checkpoint(model), [batch], out, progress=False)
    assert [Path(w["file"]).name for w in summary.written] == ["z_good.dcm"]
    codes = {Path(f["file"]).name: f["code"] for f in summary.failed}
    assert codes == {"a_no_modality.dcm": "sr_failed", "b_loop.dcm": "dicom_read_error",
                     "c_dangling.dcm": "dicom_read_error"}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("a_")) == []  # no half set of outputs
    assert "--no-sr" in next(f["reason"] for f in summary.failed if f["code"] == "sr_failed")


def test_predict_rejects_bad_arguments_before_reading_any_image(model: Path, scans: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(model)
    for bad in (2.0, float("nan"), -0.1):
        with pytest.raises(ConfigError, match="threshold"):
            predict_files(predictor, [scans], tmp_path / "out", threshold=bad, progress=False)
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(ConfigError, match="should be a folder"):
        predict_files(predictor, [scans], tmp_path / "a_file", progress=False)
    assert not (tmp_path / "out").exists()


def test_evaluate_checks_the_set_before_predicting_and_names_every_problem(model: Path, scans: Path,
                                                                          tmp_path: Path, monkeypatch) -> None:
    coco = json.loads((scans.parent / "annotations.json").read_text())
    for im in coco["images"]:
        im["file_name"] = str(scans.parent / im["file_name"])
    coco["images"][0]["width"] += 1  # labels drawn on another size than the DICOM's
    coco["images"][1]["file_name"] = str(scans / "broken.dcm")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    predictor = Predictor.from_checkpoint(model)
    monkeypatch.setattr(Predictor, "predict", lambda *a, **k: pytest.fail("predicted before checking the set"))
    with pytest.raises(CocoValidationError, match="2 problem") as exc:
        evaluate_model(predictor, bad, tmp_path / "report", progress=False)
    assert "the COCO file gives" in str(exc.value) and "no DICM prefix" in str(exc.value)
    coco["images"], coco["annotations"] = [], []
    bad.write_text(json.dumps(coco))
    with pytest.raises(CocoValidationError, match="images should not be empty"):
        evaluate_model(predictor, bad, tmp_path / "report", progress=False)
    with pytest.raises(ConfigError, match="n_boot"):
        evaluate_model(predictor, bad, tmp_path / "report", n_boot=-1, progress=False)
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(ConfigError, match="should be a folder"):
        evaluate_model(predictor, bad, tmp_path / "a_file", progress=False)
    with pytest.raises(CocoValidationError, match="cannot be read"):
        evaluate_model(predictor, tmp_path, tmp_path / "report", progress=False)  # a folder, not a COCO file
    assert not (tmp_path / "report").exists()
