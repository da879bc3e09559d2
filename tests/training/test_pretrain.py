"""PretrainModule: optimiser groups, lr schedule, loss decrease, guard rails, reconstruction previews."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from dentalmim.errors import ConfigError
from dentalmim.training.callbacks import ReconstructionPreview, preview_grid
from dentalmim.training.optim import param_groups_weight_decay, scaled_lr, warmup_cosine_factor
from dentalmim.training.pretrain import NonFiniteLossError, PretrainModule, check_finite

TINY = {
    "preset": "nano", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "proj_hidden_dim": 32, "proj_dim": 16,
}  # fmt: skip


class StripesDataset(Dataset):
    """Structured 32 px images (oriented stripes + a bright square) as {"image", "image_2"} dicts."""

    def __init__(self, n: int = 32) -> None:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:32, 0:32]
        self.images = []
        for _ in range(n):
            angle, freq = rng.uniform(0, np.pi), rng.uniform(0.3, 0.8)
            img = 0.5 + 0.4 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
            y, x = rng.integers(0, 24, size=2)
            img[y : y + 8, x : x + 8] = 1.0
            self.images.append(torch.tensor(img, dtype=torch.float32)[None])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "image_2": self.images[i].flip(-1)}


class TinyDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8, two_views: bool = True) -> None:
        super().__init__()
        self.batch_size, self.two_views = batch_size, two_views

    def train_dataloader(self) -> DataLoader:
        return DataLoader(StripesDataset(), batch_size=self.batch_size, shuffle=True, drop_last=True)


def make_trainer(tmp_path, max_steps: int, **kw) -> pl.Trainer:
    args = {"max_steps": max_steps, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": tmp_path}  # fmt: skip
    return pl.Trainer(**{**args, **kw})


def test_param_groups_exclude_norms_biases_and_tokens() -> None:
    module = PretrainModule(objective="hybrid", **TINY)
    decay, no_decay = param_groups_weight_decay(module.objective, 0.05, ("cls_token", "pos_embed", "mask_token"))
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "mae.encoder.cls_token" in no_decay["names"]
    assert "mae.decoder.mask_token" in no_decay["names"]
    assert "mae.encoder.norm.weight" in no_decay["names"]
    assert "mae.encoder.blocks.0.attn.qkv.bias" in no_decay["names"]
    assert "mae.encoder.blocks.0.attn.qkv.weight" in decay["names"]
    assert all(p.ndim == 2 for p in decay["params"])
    n_params = sum(1 for p in module.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_learnable_pos_embed_has_no_decay() -> None:
    module = PretrainModule(pos_embed="learnable", **TINY)
    _, no_decay = param_groups_weight_decay(module.objective, 0.05, ("pos_embed",))
    assert "encoder.pos_embed" in no_decay["names"]


def test_warmup_cosine_values() -> None:
    factors = [warmup_cosine_factor(s, warmup_steps=4, total_steps=14, min_ratio=0.1) for s in range(14)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert 0.1 < factors[-1] < 0.15
    assert warmup_cosine_factor(14, 4, 14, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(7, 4, 14, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 10)))
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert warmup_cosine_factor(0, 0, 10) == pytest.approx(1.0)
    assert scaled_lr(1.5e-4, 512) == pytest.approx(3e-4)


def test_optimizer_lr_scales_with_batch_and_follows_schedule(tmp_path) -> None:
    module = PretrainModule(**TINY, base_lr=1e-3, warmup_steps=2)
    trainer = make_trainer(tmp_path, max_steps=6)
    trainer.fit(module, datamodule=TinyDataModule(batch_size=8))
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-3 * 8 / 256)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.05, 0.0}
    assert trainer.lr_scheduler_configs[0].interval == "step"


@pytest.mark.parametrize("objective", ["mae", "hybrid", "contrastive"])
def test_loss_decreases_on_structured_images(tmp_path, objective: str) -> None:
    torch.manual_seed(0)
    module = PretrainModule(objective=objective, **TINY, lr=3e-3, warmup_steps=3, norm_pix_loss=False)
    batch = next(iter(TinyDataModule().train_dataloader()))
    with torch.no_grad():
        first = float(module(batch["image"], batch["image_2"]).loss)
    trainer = make_trainer(tmp_path, max_steps=25)
    trainer.fit(module, datamodule=TinyDataModule())
    module.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        last = float(module(batch["image"], batch["image_2"]).loss)
    assert trainer.global_step == 25
    assert last < 0.8 * first, (first, last)


def test_non_finite_loss_stops_training_with_a_clear_message(tmp_path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"step 7 .*mae=nan"):
        check_finite({"loss": torch.tensor(float("nan")), "mae": torch.tensor(float("nan"))}, step=7)
    check_finite({"loss": torch.tensor(1.0)}, step=0)

    module = PretrainModule(**TINY, lr=1e-3)
    with torch.no_grad():
        module.encoder.blocks[0].mlp.fc1.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 0"):
        make_trainer(tmp_path, max_steps=2).fit(module, datamodule=TinyDataModule())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mask_ratio": 1.2}, "model.mask_ratio"),
        ({"mask_ratio": 0.0}, "model.mask_ratio"),
        ({"embed_dim": 30}, "model.embed_dim"),
        ({"img_size": 36}, "model.img_size"),
        ({"objective": "byol"}, "model.objective"),
        ({"temperature": 0.0}, "model.temperature"),
        ({"decoder_embed_dim": 30}, "model.decoder_embed_dim"),
        ({"warmup_fraction": 1.0}, "model.warmup_fraction"),
        ({"lr": -1.0}, "model.lr"),
        ({"preset": "huge"}, "model.preset"),
    ],
)
def test_invalid_arguments_raise_config_error_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        PretrainModule(**{**TINY, **kwargs})


def test_two_view_objective_without_two_views_fails_before_training(tmp_path) -> None:
    module = PretrainModule(objective="contrastive", **TINY, lr=1e-3)
    with pytest.raises(ConfigError, match="data.two_views"):
        make_trainer(tmp_path, max_steps=1).fit(module, datamodule=TinyDataModule(two_views=False))


@pytest.mark.parametrize(
    ("objective", "data", "kwargs", "field"),
    [
        ("mae", {"crop_size": 36}, {}, "data.crop_size"),  # 36 px crops do not tile into 8 px patches
        ("mae", {"crop_size": 32}, {"mask_ratio": 1e-20}, "model.mask_ratio"),  # nothing removed: loss 0
        ("contrastive", {"batch_size": 1}, {}, "data.batch_size"),  # no negatives: InfoNCE is 0
        ("hybrid", {"batch_size": 1}, {}, "data.batch_size"),
    ],
)
def test_data_that_cannot_train_the_objective_fails_before_training(tmp_path, objective: str, data: dict,
                                                                    kwargs: dict, field: str) -> None:
    module = PretrainModule(objective=objective, **{**TINY, **kwargs}, lr=1e-3)
    datamodule = TinyDataModule(batch_size=data.get("batch_size", 8))
    datamodule.crop_size = data.get("crop_size", 32)
    module.training_step = lambda *a: pytest.fail("trained")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule)


def test_lr_needed_when_data_module_has_no_batch_size(tmp_path) -> None:
    class NoBatchSize(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(StripesDataset(8), batch_size=4)

    with pytest.raises(ConfigError, match="model.lr"):
        make_trainer(tmp_path, max_steps=1).fit(PretrainModule(**TINY), datamodule=NoBatchSize())


def test_preview_grid_layout() -> None:
    imgs = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    grid = preview_grid(imgs, mask, torch.zeros(2, 1, 8, 8), pad=2)
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2) and grid.dtype == np.uint8
    masked_tile = grid[2:10, 12:20]
    assert (masked_tile[:4] == 128).all()
    assert grid[0].min() == 255  # padding


def test_reconstruction_preview_writes_a_png_each_epoch(tmp_path) -> None:
    preview = ReconstructionPreview(num_images=2)
    module = PretrainModule(**TINY, lr=1e-3)
    trainer = make_trainer(tmp_path, max_steps=8, callbacks=[preview], limit_train_batches=4)
    trainer.fit(module, datamodule=TinyDataModule())
    assert [p.name for p in preview.saved] == ["epoch_0000.png", "epoch_0001.png"]
    from PIL import Image

    assert Image.open(preview.saved[0]).size == (3 * 34 + 2, 2 * 34 + 2)


def test_reconstruction_preview_skips_contrastive(tmp_path) -> None:
    preview = ReconstructionPreview()
    module = PretrainModule(objective="contrastive", **TINY, lr=1e-3)
    make_trainer(tmp_path, max_steps=2, callbacks=[preview], limit_train_batches=2).fit(
        module, datamodule=TinyDataModule()
    )
    assert preview.saved == []
