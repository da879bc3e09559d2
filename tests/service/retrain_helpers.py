"""Shared pieces of the retraining tests: a tiny synthetic corpus, tiny retraining settings, upload helpers."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from dentalmim.data.synth import generate_corpus
from service.settings import Settings
from tests.service.conftest import make_settings

#: A 2-block, 32-wide detector on 64 px crops, a few steps on CPU (the conftest bundle's architecture is different:
#: retraining "from the current model" keeps the current model's own architecture).
TINY_RETRAIN = [
    "--model.preset", "nano", "--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2",
    "--model.img_size", "64", "--model.fpn_channels", "16", "--model.head_convs", "1", "--data.crop_size", "64",
    "--data.batch_size", "2", "--data.crops_per_image", "1", "--data.num_workers", "0", "--data.cache", "none",
    "--data.val_fraction", "0.3", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
    "--trainer.num_sanity_val_steps", "0", "--trainer.enable_model_summary", "false",
    "--trainer.log_every_n_steps", "1",
]  # fmt: skip


def corpus(root: Path, n: int = 6, seed: int = 3) -> tuple[list[tuple[str, bytes]], dict]:
    """Synthetic labeled radiographs: ``[(file name, bytes)]`` and their COCO object."""
    summary = generate_corpus(root, n=n, seed=seed, n_unlabeled=0, scale=0.15, progress=False)
    coco = json.loads(Path(summary.coco_path).read_text())
    files = [(Path(im["file_name"]).name, (Path(summary.coco_path).parent / im["file_name"]).read_bytes())
             for im in coco["images"]]
    return files, coco


def subset(coco: dict, names: set[str]) -> dict:
    images = [im for im in coco["images"] if Path(im["file_name"]).name in names]
    ids = {im["id"] for im in images}
    return {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def retrain_settings(data_dir: Path, model: Path | None, **overrides) -> Settings:
    values = {"retrain_overrides": TINY_RETRAIN, "retrain_steps": 2, "eval_bootstrap": 10, "model_poll_seconds": 0.0,
              "worker_heartbeat_seconds": 0.3, "worker_poll_seconds": 0.2, "gate_tolerance": 1.0,
              "max_pixels": 400_000, "max_upload_bytes": 16 << 20, **overrides}
    return make_settings(data_dir, model, **values)


def add_scans(client: TestClient, key: str, dataset: str, files: list[tuple[str, bytes]], labels=None):
    parts = [("files", (name, data, "application/dicom")) for name, data in files]
    data = {"labels": json.dumps(labels)} if labels is not None else None
    return client.post(f"/v1/datasets/{dataset}/scans", files=parts, data=data, headers={"X-API-Key": key})
