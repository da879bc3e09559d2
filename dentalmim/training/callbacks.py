"""Training callbacks: a reconstruction preview grid saved every pretraining epoch, and the fine-tuning
best-checkpoint rule.

Pretraining checkpoints use Lightning's ``ModelCheckpoint(save_last=True, every_n_epochs=...)`` from the configs;
the non-finite loss guard lives in :func:`dentalmim.training.pretrain.check_finite` (it must run before backward,
so the weights are never updated with NaNs). Fine-tuning keeps its best checkpoint with
:class:`LatestOnTiesCheckpoint`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """(H, W) float image -> uint8 (H, W), each image min-max scaled."""
    x = img.detach().float().cpu()
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / max(hi - lo, 1e-8) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def preview_grid(imgs: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor, pad: int = 2) -> np.ndarray:
    """One row per image: input | input with removed patches grey | reconstruction pasted into the visible input.

    Args:
        imgs: (N, 1, H, W) inputs.
        mask: (N, 1, H, W), 1 on removed pixels.
        recon: (N, 1, H, W) reconstruction in the intensity scale of ``imgs``; its removed patches are pasted
            into the visible input and the tile is min-max scaled per image.
        pad: white padding between tiles, in pixels.

    Returns:
        uint8 (N * (H + pad) + pad, 3 * (W + pad) + pad) grey image.
    """
    n, _, h, w = imgs.shape
    grid = np.full((n * (h + pad) + pad, 3 * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        x, m = imgs[i, 0].float().cpu(), mask[i, 0].float().cpu()
        r = recon[i, 0].float().cpu()
        shown_input = _to_uint8(x)
        masked = np.where(m.numpy() > 0.5, 128, shown_input).astype(np.uint8)
        pasted = _to_uint8(r * m + x * (1 - m))
        top = pad + i * (h + pad)
        for j, tile in enumerate((shown_input, masked, pasted)):
            left = pad + j * (w + pad)
            grid[top : top + h, left : left + w] = tile
    return grid


class ReconstructionPreview(pl.Callback):
    """Save ``input | masked | reconstruction`` for a fixed batch and a fixed mask at the end of every epoch.

    The images are the first ``num_images`` crops of the first training batch this run sees (kept for the
    whole run, so successive grids are comparable). Files go to ``<log_dir>/previews/epoch_XXXX.png`` and, when
    a TensorBoard logger is active, to its image tab. Objectives without a decoder (contrastive) are skipped;
    only global rank 0 writes.

    Args:
        num_images: images shown (rows).
        every_n_epochs: save every n-th epoch.
        seed: seed of the fixed preview mask.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, seed: int = 0) -> None:
        super().__init__()
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(f"num_images and every_n_epochs should be >= 1, got {num_images}, {every_n_epochs}.")
        self.num_images, self.every_n_epochs, self.seed = num_images, every_n_epochs, seed
        self._images: torch.Tensor | None = None
        self.saved: list[Path] = []

    def _remember(self, batch: dict[str, torch.Tensor]) -> None:
        if self._images is None and isinstance(batch, dict) and "image" in batch:
            self._images = batch["image"][: self.num_images].detach().cpu().clone()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._remember(batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module)

    @staticmethod
    def _mae(pl_module: pl.LightningModule) -> torch.nn.Module | None:
        """The module with a ``reconstruct`` method (MAE, or the MAE inside the hybrid), else None."""
        objective = getattr(pl_module, "objective", None)
        mae = getattr(objective, "mae", objective)
        return mae if hasattr(mae, "reconstruct") else None

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mae = self._mae(pl_module)
        if mae is None or self._images is None or trainer.current_epoch % self.every_n_epochs:
            return
        log_dir = trainer.log_dir or trainer.default_root_dir  # a broadcast under DDP: every rank must ask, or hang
        if not trainer.is_global_zero:
            return
        imgs = self._images.to(pl_module.device)
        gh, gw = mae.encoder.grid_of(imgs)
        length = gh * gw
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.rand(imgs.shape[0], length, generator=gen).to(pl_module.device)
        was_training = mae.training
        mae.eval()
        recon, mask = mae.reconstruct(imgs, noise=noise)
        mae.train(was_training)
        grid = preview_grid(imgs, mask, recon)
        out = Path(log_dir) / "previews" / f"epoch_{trainer.current_epoch:04d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out)
        self.saved.append(out)
        self._log_tensorboard(trainer, grid)

    @staticmethod
    def _log_tensorboard(trainer: pl.Trainer, grid: np.ndarray) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("reconstruction", grid[None], trainer.global_step, dataformats="CHW")


class LatestOnTiesCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose top-k also takes a later validation that *equals* a kept score.

    Lightning keeps the earlier checkpoint on a tie. Validation sets of a few patients give coarse scores
    (sensitivity at 1 FP/image and AUROC move in steps of 1/lesions and 1/pairs), so ties are common; the later,
    longer-trained state is the better bet then, and its operating thresholds come from the same validation pass.
    """

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        at_least = {"min": torch.le, "max": torch.ge}[self.mode]
        keep = bool(at_least(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(keep)
