"""Predictor: loading bundles and checkpoints, DICOM and array input, findings in mm, device / precision choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dentalmim.data.spacing import resample_image
from dentalmim.errors import ConfigError
from dentalmim.inference import predictor as predictor_mod
from dentalmim.inference.predictor import (Prediction, Predictor, load_model, resolve_device, resolve_precision,
                                           save_model_bundle)
from dentalmim.inference.tiling import tile_grid
from dentalmim.models.detector import CariesDetector
from dentalmim.models.vit import ViTEncoder
from dentalmim.training.export import CheckpointError
from tests.dicom_files import write_dicom

torch.set_num_threads(1)


def tiny_detector(num_classes: int = 1) -> CariesDetector:
    torch.manual_seed(0)
    encoder = ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)
    return CariesDetector(encoder, num_classes=num_classes, fpn_channels=32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "caries-v3.safetensors"
    return save_model_bundle(tiny_detector(2), path, {"tile_size": 64, "score_threshold": 0.01, "image_threshold":
                                                      0.4, "version": "caries-3", "class_names": ["enamel", "dentin"]})





def test_bundle_round_trip_keeps_weights_and_metadata(bundle: Path) -> None:
    meta = json.loads(bundle.with_suffix(".json").read_text())
    assert meta["format"] == "dentalmim-detector" and meta["format_version"] == 1
    assert meta["version"] == "caries-3" and meta["detector"]["num_classes"] == 2
    detector, loaded = load_model(bundle)
    reference = tiny_detector(2)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in detector.state_dict().items())
    assert loaded["score_threshold"] == 0.01 and loaded["class_names"] == ["enamel", "dentin"]
    bundle.with_suffix(".json").rename(bundle.with_suffix(".moved"))
    try:  # the metadata embedded in the safetensors file is enough
        assert load_model(bundle)[1]["version"] == "caries-3"
    finally:
        bundle.with_suffix(".moved").rename(bundle.with_suffix(".json"))
    with pytest.raises(ConfigError, match="class_names should have 2 names"):
        save_model_bundle(detector, bundle.parent / "bad.safetensors", {"class_names": ["caries"]})


def test_predict_on_an_array_uses_the_stored_threshold(bundle: Path) -> None:
    predictor = Predictor.from_checkpoint(bundle, device="cpu")
    assert predictor.score_threshold == 0.01 and predictor.image_threshold == 0.4
    image = np.random.default_rng(0).random((100, 150), dtype=np.float32)
    pred = predictor.predict(image)
    assert isinstance(pred, Prediction) and pred.threshold == 0.01 and pred.model_version == "caries-3"
    assert pred.boxes.dtype == np.float32 and pred.boxes.shape == (len(pred.scores), 4) and len(pred.scores) > 0
    assert (pred.scores >= 0.01).all() and np.all(np.diff(pred.scores) <= 0)
    assert (pred.boxes[:, 2] <= 150).all() and (pred.boxes[:, 3] <= 100).all() and (pred.boxes[:, :2] >= 0).all()
    assert set(pred.labels.tolist()) <= {0, 1} and pred.class_names == ["enamel", "dentin"]
    assert pred.num_tiles == len(tile_grid(100, 150, 64, 0.25).origins)
    assert 0.0 <= pred.image_probability <= 1.0 and pred.image_size == (100, 150)
    strict = predictor.predict(image, threshold=0.99)
    assert len(strict.boxes) == 0 and strict.image_probability == pytest.approx(pred.image_probability)
    assert len(predictor.predict_batch([image, image[:64, :80]])) == 2


def test_findings_give_mm_boxes_with_column_spacing_for_x(bundle: Path) -> None:
    pred = Predictor.from_checkpoint(bundle, device="cpu").predict(np.full((64, 96), 0.5, dtype=np.float32))
    findings = json.loads(json.dumps(pred.to_findings(spacing_mm=(0.1, 0.2))))  # rows 0.1 mm, columns 0.2 mm
    assert findings["model_version"] == "caries-3" and findings["image"]["pixel_spacing_mm"] == [0.1, 0.2]
    assert len(findings["findings"]) == len(pred.boxes) > 0
    first, box = findings["findings"][0], pred.boxes[0]
    assert first["box_px"]["x2"] == pytest.approx(box[2], abs=0.01)
    assert first["box_mm"]["x2"] == pytest.approx(box[2] * 0.2, abs=1e-3)
    assert first["box_mm"]["y2"] == pytest.approx(box[3] * 0.1, abs=1e-3)
    assert first["class"] in ("enamel", "dentin") and findings["caries_present"] == (pred.image_probability >= 0.4)
    assert all(f["box_mm"] is None for f in pred.to_findings()["findings"])  # no spacing known: pixels only


def test_findings_carry_the_operating_point_warnings(bundle: Path, tmp_path: Path) -> None:
    image = np.full((64, 96), 0.5, dtype=np.float32)
    unvalidated = Predictor.from_checkpoint(bundle, device="cpu").predict(image).to_findings()
    assert len(unvalidated["warnings"]) == 1 and "is the default" in unvalidated["warnings"][0]
    support = {"tile_size": 64, "image_threshold": 0.727, "threshold_rule": "validated",
               "threshold_val_caries_images": 4, "threshold_val_caries_free_images": 1}
    thin = save_model_bundle(tiny_detector(), tmp_path / "thin.safetensors", support)
    warned = Predictor.from_checkpoint(thin, device="cpu").predict(image).to_findings()["warnings"]
    assert len(warned) == 1 and "only 4 caries and 1 caries-free" in warned[0]
    solid = save_model_bundle(tiny_detector(), tmp_path / "solid.safetensors",
                              {**support, "threshold_val_caries_free_images": 7, "threshold_val_caries_images": 9})
    assert Predictor.from_checkpoint(solid, device="cpu").predict(image).to_findings()["warnings"] == []


def _with_modality(path: Path, modality: str) -> Path:
    ds = pydicom.dcmread(path)
    ds.Modality = modality
    ds.save_as(path)
    return path


def test_an_image_type_the_threshold_barely_saw_is_flagged_on_its_images(tmp_path: Path) -> None:
    support = {"tile_size": 64, "image_threshold": 0.6, "threshold_rule": "validated",
               "threshold_val_caries_images": 9, "threshold_val_caries_free_images": 7,
               "threshold_val_image_types": {"intraoral": [8, 6], "panoramic": [1, 1]}}
    model = Predictor.from_checkpoint(save_model_bundle(tiny_detector(), tmp_path / "m.safetensors", support),
                                      device="cpu")
    assert model.warnings == [] and model.type_support == {"intraoral": [8, 6], "panoramic": [1, 1]}
    pixels = (np.random.default_rng(2).random((64, 96)) * 4095).astype(np.uint16)
    intraoral = _with_modality(write_dicom(tmp_path / "io.dcm", pixels), "IO")
    panoramic = _with_modality(write_dicom(tmp_path / "px.dcm", pixels), "PX")
    assert model.predict(pixels / 4095.0).warnings == []  # an array: type unknown, nothing to say
    io_pred, px_pred = model.predict(intraoral), model.predict(panoramic)
    assert (io_pred.image_type, io_pred.warnings) == ("intraoral", [])
    (warning,) = px_pred.warnings
    assert px_pred.image_type == "panoramic" and warning.startswith("panoramic image:")
    assert "only 1 panoramic validation image(s) with caries and 1 without" in warning
    px_pred.note_image_type("PX")  # idempotent
    assert px_pred.to_findings()["warnings"] == [warning]
    (other,) = predictor_mod.image_type_warnings(model.type_support, "CR")  # a type validation never saw
    assert "only 0 CR validation image(s) with caries and 0 without" in other
    older = Predictor.from_checkpoint(save_model_bundle(
        tiny_detector(), tmp_path / "old.safetensors",
        {k: v for k, v in support.items() if k != "threshold_val_image_types"}), device="cpu")
    assert older.type_support == {} and older.predict(panoramic).warnings == []  # no record: no per-type claim


def test_predict_on_a_dicom_path_reads_spacing(bundle: Path, tmp_path: Path) -> None:
    pixels = (np.random.default_rng(1).random((80, 120)) * 4095).astype(np.uint16)
    path = write_dicom(tmp_path / "bitewing.dcm", pixels, spacing=(0.05, 0.04))
    pred = Predictor.from_checkpoint(bundle, device="cpu").predict(path)
    assert pred.pixel_spacing_mm == (0.05, 0.04) and pred.image_size == (80, 120)
    findings = pred.to_findings()
    assert findings["image"]["pixel_spacing_mm"] == [0.05, 0.04]
    assert findings["findings"] and findings["findings"][0]["box_mm"]["x1"] == pytest.approx(
        pred.boxes[0, 0] * 0.04, abs=1e-3)
    assert set(pred.timing_ms) == {"read", "inference", "total"} and pred.timing_ms["total"] > 0


def test_a_panoramic_sized_image_runs_tiled(bundle: Path) -> None:
    predictor = Predictor.from_checkpoint(bundle, device="cpu", tile_batch_size=16)
    predictor.metadata["tile_size"] = 256
    image = np.random.default_rng(2).random((1500, 3000), dtype=np.float32)
    pred = predictor.predict(image, threshold=0.05)
    assert pred.num_tiles == len(tile_grid(1500, 3000, 256, 0.25).origins) == 8 * 16
    assert pred.boxes.shape[0] <= 100 and (pred.boxes[:, 2] <= 3000).all() and (pred.boxes[:, 3] <= 1500).all()
    assert pred.timing_ms["inference"] < 60_000


def test_invalid_inputs_are_rejected_with_named_errors(bundle: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(bundle, device="cpu")
    with pytest.raises(ValueError, match="image should be a 2-D"):
        predictor.predict(np.zeros((2, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="image should be float"):
        predictor.predict(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"image should hold finite values in \[0, 1\]"):
        predictor.predict(np.full((32, 32), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"threshold should be in \[0, 1\]"):
        predictor.predict(np.zeros((32, 32), dtype=np.float32), threshold=1.5)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not a model")
    other.with_suffix(".json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a dentalmim model bundle"):
        Predictor.from_checkpoint(other)
    garbage = tmp_path / "garbage.safetensors"  # no JSON beside it: the header itself is read
    garbage.write_bytes(b"this is not a safetensors file")
    with pytest.raises(CheckpointError, match="not a dentalmim model bundle"):
        Predictor.from_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="no such model file"):
        Predictor.from_checkpoint(tmp_path / "missing.ckpt")
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(CheckpointError, match="not a dentalmim fine-tuning checkpoint"):
        Predictor.from_checkpoint(bogus)


def test_device_and_precision_fall_back_to_cpu_fp32_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    predictor = Predictor(tiny_detector(), {}, device="auto")
    assert predictor.device.type == "cpu" and predictor.precision == "fp32" and predictor.score_threshold == 0.3
    with pytest.raises(ConfigError, match="device should be 'cpu' or 'auto' on this machine"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device should be one of"):
        resolve_device("tpu")
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", cuda) == "bf16" and resolve_precision("fp32", cuda) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ConfigError, match="precision should be one of"):
        resolve_precision("int8", cuda)


def test_bf16_autocast_on_cpu_gives_the_same_boxes_roughly(bundle: Path) -> None:
    image = np.random.default_rng(3).random((64, 64), dtype=np.float32)
    fp32 = Predictor.from_checkpoint(bundle, device="cpu").predict(image, threshold=0.0)
    bf16 = Predictor.from_checkpoint(bundle, device="cpu", precision="bf16").predict(image, threshold=0.0)
    assert predictor_mod.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert bf16.image_probability == pytest.approx(fp32.image_probability, abs=0.05)
    assert bf16.boxes.dtype == np.float32 and len(bf16.boxes) > 0


def test_a_model_with_a_max_spacing_upsamples_coarse_images(bundle: Path, tmp_path: Path) -> None:
    detector, meta = load_model(bundle)
    at_spacing = Predictor(detector, {**meta, "max_spacing_mm": 0.05}, device="cpu")
    native = Predictor.from_checkpoint(bundle, device="cpu")
    image = np.random.default_rng(1).random((100, 150), dtype=np.float32)
    pred = at_spacing.predict(image, threshold=0.05, pixel_spacing_mm=(0.1, 0.1))  # a panoramic's 0.1 mm
    # the same as the native model on the image upsampled 2x, with its boxes halved
    up = resample_image(torch.from_numpy(image), (200, 300)).numpy()
    want = native.predict(up, threshold=0.05)
    assert pred.num_tiles == want.num_tiles == len(tile_grid(200, 300, 64, 0.25).origins)
    assert len(pred.boxes) == len(want.boxes) > 0 and pred.image_size == (100, 150)
    np.testing.assert_allclose(pred.boxes, want.boxes / 2, atol=1e-3)
    np.testing.assert_allclose(pred.scores, want.scores, atol=1e-5)
    assert pred.pixel_spacing_mm == (0.1, 0.1) and not any("no usable pixel spacing" in w for w in pred.warnings)
    # without a spacing: native resolution, and the findings say so
    blind = at_spacing.predict(image, threshold=0.05)
    np.testing.assert_allclose(blind.boxes, native.predict(image, threshold=0.05).boxes, atol=1e-4)
    assert any("no usable pixel spacing" in w and "0.05 mm" in w for w in blind.to_findings()["warnings"])
    assert not any("no usable pixel spacing" in w for w in native.predict(image).warnings)  # no target: nothing to say
    # a DICOM file's own spacing is used
    path = write_dicom(tmp_path / "pan.dcm", (image * 4000).astype(np.uint16), spacing=(0.1, 0.1))
    assert at_spacing.predict(path).num_tiles == pred.num_tiles
    bundle2 = save_model_bundle(detector, tmp_path / "m.safetensors", {**meta, "max_spacing_mm": 0.05})
    assert Predictor.from_checkpoint(bundle2).max_spacing_mm == 0.05


def test_images_smaller_than_four_patches_are_padded_not_rejected(bundle: Path) -> None:
    predictor = Predictor.from_checkpoint(bundle, device="cpu")
    for shape in ((48, 48), (30, 40), (16, 16)):  # a lone 48 x 48 tile used to fail in the heads' GroupNorm
        pred = predictor.predict(np.random.default_rng(0).random(shape, dtype=np.float32))
        assert pred.num_tiles == 1 and pred.image_size == shape
        assert (pred.boxes[:, 2] <= shape[1]).all() and (pred.boxes[:, 3] <= shape[0]).all()
