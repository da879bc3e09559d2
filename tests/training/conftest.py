"""Fixtures of the pretraining tests: a folder of tiny DICOM radiographs and tiny-model CLI overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.dicom_files import write_dicom

#: Overrides that shrink any configs/pretrain model to a 2-block, 32-wide ViT on 32 px crops.
TINY_MODEL_ARGS = [
    "--model.preset", "nano", "--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2",
    "--model.img_size", "32", "--model.patch_size", "8", "--model.decoder_embed_dim", "32",
    "--model.decoder_depth", "1", "--model.decoder_num_heads", "2", "--model.proj_hidden_dim", "32",
    "--model.proj_dim", "16",
]  # fmt: skip


def write_tiny_dicom(path: Path, pixels: np.ndarray) -> Path:
    """Write (H, W) uint16 stored values (12 bits) as an uncompressed MONOCHROME2 DICOM file."""
    return write_dicom(path, pixels)


def structured_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth bands plus a bright disc: (H, W) uint16 in [0, 4095]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 0.5 + 0.3 * np.sin(xx / rng.uniform(3, 8) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(4, 9))
    cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(6, 14)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.95
    return np.clip(img * 4095, 0, 4095).astype(np.uint16)


@pytest.fixture(scope="session")
def dicom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 8 tiny (64 x 72) DICOM radiographs."""
    root = tmp_path_factory.mktemp("unlabeled")
    rng = np.random.default_rng(0)
    for i in range(8):
        write_tiny_dicom(root / f"img_{i}.dcm", structured_image(rng, 64, 72))
    return root


@pytest.fixture
def tiny_run_args(dicom_dir: Path, tmp_path: Path) -> list[str]:
    """CLI overrides: tiny model, tiny CPU data module, a run folder under ``tmp_path``."""
    return [
        *TINY_MODEL_ARGS,
        "--data.data_dir", str(dicom_dir), "--data.crop_size", "32", "--data.batch_size", "4",
        "--data.num_workers", "0", "--data.cache", "none", "--data.crops_per_image", "1",
        "--data.val_fraction", "0.25",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
