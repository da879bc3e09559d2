"""Losses of masked image modeling: plain tensor functions (tested on their own) and thin ``nn.Module`` wrappers.

Patch layout everywhere: row-major patches, each flattened as (p, p, C) — the same order as
:class:`dentalmim.models.patch_embed.PatchEmbed`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened non-overlapping patches.

    Args:
        imgs: (B, C, H, W), H and W multiples of ``patch_size``.
        patch_size: patch side p.

    Returns:
        (B, L, p * p * C) with L = (H / p) * (W / p).
    """
    b, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 1) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: (B, L, p * p * C) with L = gh * gw.
        patch_size: patch side p.
        grid: (gh, gw) patch grid.
        channels: C.

    Returns:
        (B, C, gh * p, gw * p).
    """
    b = patches.shape[0]
    p, (gh, gw) = patch_size, grid
    x = patches.reshape(b, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * p, gw * p)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardisation of MAE targets: (x - mean) / sqrt(var + eps) over the last axis."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the removed patches only.

    Args:
        pred: (B, L, P) predicted patches.
        target: (B, L, P) target patches.
        mask: (B, L), 1 = removed (scored), 0 = visible (ignored).

    Returns:
        Scalar: per-patch MSE averaged over removed patches.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, positive_offset: int = 0) -> torch.Tensor:
    """InfoNCE of queries against keys by cosine similarity (MoCo v3 / SimCLR cross-view form).

    Query ``i``'s positive is key ``i + positive_offset``; every other key is a negative.

    Args:
        q: (N, E) queries.
        k: (M, E) keys, M >= N + positive_offset (M > N when keys are gathered from other ranks).
        temperature: softmax temperature tau > 0.
        positive_offset: index of query 0's positive among the keys.

    Returns:
        Scalar mean cross-entropy of ``cos(q, k) / tau`` against the positives.
    """
    logits = F.normalize(q.float(), dim=1) @ F.normalize(k.float(), dim=1).T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + positive_offset
    return F.cross_entropy(logits, labels)


def gather_keys(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather keys across DDP ranks (differentiable) so every rank sees the global batch of negatives.

    Args:
        k: (N, E) local keys.

    Returns:
        (keys (world * N, E), offset of this rank's keys); ``(k, 0)`` outside distributed training.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return k, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(k), dim=0), dist.get_rank() * k.shape[0]


class MAELoss(nn.Module):
    """Reconstruction loss of MAE on removed patches.

    Args:
        patch_size: patch side p.
        norm_pix_loss: standardise each target patch (MAE's better-representation option).
    """

    def __init__(self, patch_size: int, norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W) -> targets (B, L, p * p * C), standardised per patch if ``norm_pix_loss``."""
        patches = patchify(imgs, self.patch_size)
        return normalize_patches(patches) if self.norm_pix_loss else patches

    def forward(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W); pred: (B, L, p * p * C); mask: (B, L), 1 = removed -> scalar loss."""
        return masked_mse(pred, self.target(imgs), mask)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE between two views: ``(nce(z1, z2) + nce(z2, z1)) / 2``, negatives from all ranks.

    Args:
        temperature: softmax temperature tau.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature should be > 0, got {temperature}.")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """z1, z2: (N, E) embeddings of the two views (row i of each from the same image) -> scalar."""
        k2, offset = gather_keys(z2)
        k1, _ = gather_keys(z1)
        return 0.5 * (info_nce(z1, k2, self.temperature, offset) + info_nce(z2, k1, self.temperature, offset))
