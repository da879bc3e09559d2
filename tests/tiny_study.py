"""Shared tiny-size settings of the study-runner tests (label efficiency, paradigm benchmark).

``corpus`` is a module-scoped fixture: import it into a test module to use it there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dentalmim.data.coco import CocoDataset, split_by_patient
from dentalmim.data.synth import generate_corpus

#: A 2-block, 32-wide detector on 64 px crops, on CPU.
TINY_FINETUNE = [
    "--model.preset", "nano", "--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2",
    "--model.img_size", "64", "--model.fpn_channels", "16", "--model.head_convs", "1", "--data.crop_size", "64",
    "--data.batch_size", "4", "--data.crops_per_image", "1", "--data.num_workers", "0", "--data.cache", "memory",
    "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip
#: A 2-block, 32-wide encoder on 32 px crops (patch 8), for every pretraining objective.
TINY_PRETRAIN = [
    "--model.preset", "nano", "--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2",
    "--model.img_size", "32", "--model.patch_size", "8", "--model.decoder_embed_dim", "32",
    "--model.decoder_depth", "1", "--model.decoder_num_heads", "2", "--data.crop_size", "32",
    "--data.batch_size", "4", "--data.num_workers", "0", "--data.cache", "none", "--data.crops_per_image", "1",
    "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 small radiographs, one patient each, split by patient into train (5) and test (3) COCO files."""
    root = tmp_path_factory.mktemp("corpus")
    summary = generate_corpus(root, n=8, seed=3, n_unlabeled=0, scale=0.15, progress=False)
    labels = CocoDataset.load(summary.coco_path)
    labels.images = [dataclasses.replace(im, patient_id=f"P{im.id:03d}") for im in labels.images]
    train, _, test = split_by_patient(labels, (0.6, 0.0, 0.4), seed=0)
    return train.save(root / "labeled" / "train.json"), test.save(root / "labeled" / "test.json")
