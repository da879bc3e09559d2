"""benchmarks/independent_test.py: synthesise a fresh labeled set, evaluate a model on it, write the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import independent_test as bench  # noqa: E402

from dentalmim.inference.predictor import save_model_bundle  # noqa: E402
from dentalmim.models.detector import CariesDetector  # noqa: E402
from dentalmim.models.vit import ViTEncoder  # noqa: E402


def test_independent_test_evaluates_a_fresh_corpus_and_records_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    detector = CariesDetector(ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2),
                              num_classes=1, fpn_channels=32)
    model = save_model_bundle(detector, tmp_path / "m.safetensors", {"tile_size": 64, "version": "t-1"})
    code = bench.main(["--model", str(model), "--n", "3", "--seed", "5", "--scale", "0.12", "--n-boot", "20",
                       "--out", str(tmp_path / "run"), "--results", str(tmp_path), "--tag", "t"])
    assert code == 0
    result = json.loads((tmp_path / "independent_test_t.json").read_text())
    coco = json.loads((tmp_path / "run" / "corpus" / "labeled" / "annotations.json").read_text())
    assert result["counts"]["images"] == len(coco["images"]) == 3
    assert result["counts"]["lesions"] == len(coco["annotations"])
    assert result["corpus"]["seed"] == 5 and result["corpus"]["lesion_contrast"] == 3.0
    assert set(result["metrics"]) == set(bench.HEADLINE) and 0.0 <= result["metrics"]["froc_fom"] <= 1.0
    assert any("is the default" in w for w in result["warnings"])  # an unvalidated model says so
    assert (tmp_path / "run" / "report" / "report.html").exists()
    assert result["model"]["sha256"] and len(result["model"]["sha256"]) == 64
    rows = result["per_image_type"]  # the seed-5 corpus: a bitewing, a panoramic and a periapical
    assert {k: r["images"] for k, r in rows.items()} == {"intraoral": 2, "panoramic": 1}
