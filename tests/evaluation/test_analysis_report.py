"""``dentalmim analyze`` end to end at tiny size: crops, per-layer numbers, analysis.json, HTML report, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dentalmim.analyze import analyze_encoders, encoder_names, load_crops
from dentalmim.cli import main
from dentalmim.data.coco import CocoDataset
from dentalmim.data.synth import generate_corpus
from dentalmim.errors import ConfigError
from dentalmim.evaluation.analysis import patch_distances
from dentalmim.models.vit import ViTEncoder
from dentalmim.training.export import CheckpointError

torch.set_num_threads(1)


def write_encoder(path: Path, seed: int, *, uniform: bool = False, objective: str = "mae") -> Path:
    """An exported encoder (safetensors + JSON, as export-encoder writes); ``uniform``: zero q/k weights."""
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    if uniform:
        with torch.no_grad():
            for blk in enc.blocks:
                blk.attn.qkv.weight[:64].zero_()
                blk.attn.qkv.bias[:64].zero_()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"encoder": enc.config, "source": {"objective": objective}}))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    return generate_corpus(root, n=6, seed=5, n_unlabeled=0, scale=0.15, progress=False).coco_path


@pytest.fixture(scope="module")
def analysis(corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("analysis")
    encoders = {"uniform": write_encoder(root / "u" / "enc.safetensors", 0, uniform=True),
                "random": write_encoder(root / "r" / "enc.safetensors", 1, objective="contrastive")}
    return analyze_encoders(encoders, corpus, root / "out", crop_size=48, crops_per_image=3, batch_size=5,
                            n_attention_images=2, n_folds=3)


def test_crops_are_native_resolution_and_labelled_by_lesion_centres(corpus: Path) -> None:
    crops = load_crops(corpus, crop_size=48, crops_per_image=3, seed=0)
    coco = CocoDataset.load(corpus)
    assert crops.images.shape == (3 * len(coco.images), 48, 48) and crops.images.dtype == np.float32
    by_image = coco.annotations_by_image()
    for i, im in enumerate(coco.images):
        own = crops.labels[3 * i: 3 * i + 3]
        if not by_image.get(im.id):
            assert not own.any()  # caries-free image: no caries crop
        else:
            assert own[0] == 1  # the first crop is centred (with a shift < crop / 4) on a lesion
    assert set(crops.groups) == {im.patient_id for im in coco.images}
    assert np.isfinite(crops.spacing_mm).all()
    from dentalmim.data.dicom import read_dicom

    first = read_dicom(coco.image_path(coco.images[0])).pixels
    # crops are cut out of the image, not resized: each crop occurs verbatim in its radiograph
    win = np.lib.stride_tricks.sliding_window_view(first, (48, 48))
    assert np.any(np.all(np.isclose(win, crops.images[1]), axis=(-2, -1)))


def test_uniform_attention_encoder_has_the_known_answers(analysis) -> None:
    enc = analysis.payload["encoders"]["uniform"]
    expected = float(patch_distances((6, 6), 8).mean())
    spacing = np.nanmean(load_crops(analysis.payload["data"]["source"], crop_size=48, crops_per_image=3).spacing_mm)
    for rec in enc["layers"]:
        assert rec["attention_distance_px"] == pytest.approx(expected, rel=1e-4)
        assert rec["attention_nmi"] == pytest.approx(0.0, abs=1e-5)
        assert rec["attention_distance_mm"] == pytest.approx(expected * spacing, rel=1e-3)
        assert len(rec["attention_distance_px_per_head"]) == 2


def test_every_layer_of_every_encoder_is_measured(analysis) -> None:
    payload = analysis.payload
    assert payload["data"]["crops"] == 18 and payload["data"]["caries_crops"] > 0
    for enc in payload["encoders"].values():
        assert [r["layer"] for r in enc["layers"]] == [1, 2, 3]
        for rec in enc["layers"]:
            assert 0 <= rec["attention_nmi"] <= 1 and rec["attention_distance_px"] > 0
            assert rec["fourier_profile"][0] == 0 and len(rec["fourier_profile"]) == 4
            assert 0 <= rec["linear_probe_acc"] <= 1 and 0 <= rec["knn_acc"] <= 1 and rec["probe_folds"] >= 1
    rand = payload["encoders"]["random"]["layers"]
    assert any(r["attention_nmi"] > 1e-3 for r in rand)  # random q/k weights are query-specific
    assert payload["encoders"]["random"]["objective"] == "contrastive"


def test_json_and_self_contained_html_report(analysis) -> None:
    paths = analysis.paths
    on_disk = json.loads(paths["json"].read_text())
    assert on_disk["encoders"]["uniform"]["layers"][0]["attention_distance_px"] == pytest.approx(
        analysis.payload["encoders"]["uniform"]["layers"][0]["attention_distance_px"])
    html = paths["html"].read_text()
    assert "<script" not in html and not re.search(r'(src|href)="(?!data:)', html)
    assert html.count('src="data:image/png;base64,') == len([k for k in paths if k.startswith("plot_")])
    for needle in ("Mean attention distance", "Attention NMI", "High-frequency amplitude", "Linear probe",
                   "k-NN probe", "Attention maps", "uniform", "random"):
        assert needle in html
    assert paths["plot_attention_0"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plot_attention_1" in paths
    assert "uniform: last layer attention distance" in analysis.format()


def test_cli_analyze_on_a_folder_without_labels(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = write_encoder(tmp_path / "a" / "encoder.safetensors", 0)
    b = write_encoder(tmp_path / "b" / "encoder.safetensors", 1)
    out = tmp_path / "report"
    code = main(["analyze", "--encoder", str(a), "--encoder", str(b), "--data", str(corpus.parent / "images"),
                 "--out", str(out), "--crop-size", "32", "--crops-per-image", "1", "--max-images", "3"])
    assert code == 0 and "report:" in capsys.readouterr().out
    payload = json.loads((out / "analysis.json").read_text())
    assert set(payload["encoders"]) == {"a/encoder", "b/encoder"} and payload["data"]["images"] == 3
    assert payload["encoders"]["a/encoder"]["layers"][0]["linear_probe_acc"] is None  # no labels in a folder
    assert main(["analyze", "--encoder", str(tmp_path / "missing.safetensors"), "--data", str(corpus),
                 "--out", str(out)]) == 2
    assert "should be an existing .safetensors file" in capsys.readouterr().err


def test_bad_inputs_are_named(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="folder of DICOM files or a COCO"):
        load_crops(tmp_path / "nope")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ConfigError, match="readable DICOM radiographs"):
        load_crops(tmp_path)
    enc = write_encoder(tmp_path / "e.safetensors", 0)
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        analyze_encoders([enc], corpus, tmp_path / "out", crop_size=30, max_images=1)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("not an encoder")
    with pytest.raises(CheckpointError, match="not a dentalmim encoder"):  # found before the first one is analysed
        analyze_encoders([enc, garbage], tmp_path / "nope", tmp_path / "out", crop_size=32)
    (tmp_path / "a_file").write_text("")
    for kwargs, field in (({"n_folds": 1}, "n_folds"), ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"),
                          ({"max_images": 0}, "max_images"), ({"crop_size": 0}, "crop_size")):
        with pytest.raises(ConfigError, match=f"{field} should be an integer >= "):
            analyze_encoders([enc], tmp_path / "nope", tmp_path / "out", **kwargs)
    with pytest.raises(ConfigError, match="out should be a folder"):
        analyze_encoders([enc], corpus, tmp_path / "a_file", crop_size=32)
    assert list(encoder_names(["x/enc.safetensors", "y/enc.safetensors", "z/other.safetensors"])) == [
        "x/enc", "y/enc", "other"]
