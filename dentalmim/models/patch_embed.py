"""Patch embeddings of the ViT: image (B, C, H, W) -> patch tokens (B, L, D), optionally for selected patches only.

* :class:`PatchEmbed`: one Linear per ``p x p`` patch (the classic ViT, equivalent to a stride-p convolution).
* :class:`ConvPatchEmbed`: a small per-patch CNN ("early convolutions"), still one token per patch.

Patches are in row-major order and flattened as (p, p, C), the layout of :func:`dentalmim.models.mim_losses.patchify`.
Both take ``ids: (B, K)`` to embed only those patches (MAE's visible patches), which equals embedding all and
gathering (:func:`gather_rows`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def gather_rows(x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """x: (B, N, ...) -> rows ``ids: (B, K)`` of each sample, (B, K, ...); ``x`` itself when ``ids`` is None."""
    if ids is None:
        return x
    index = ids.reshape(*ids.shape, *(1,) * (x.ndim - 2)).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


def check_patchable(height: int, width: int, patch_size: int) -> None:
    """Raise :class:`ValueError` unless both sides are multiples of ``patch_size``."""
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size should be a multiple of patch_size={patch_size}, got {height}x{width}.")


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches -> tokens through one Linear (equivalent to a stride-p convolution).

    Args:
        patch_size: patch side p in pixels.
        in_chans: image channels C.
        embed_dim: token width D.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size * patch_size, embed_dim)

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, L, D) with L = (H / p) * (W / p), patches in row-major order.

        With ``ids: (B, K)`` (row-major patch indices), only those patches are embedded: (B, K, D).
        """
        b, c, h, w = x.shape
        p = self.patch_size
        check_patchable(h, w, p)
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
        return self.proj(gather_rows(x, ids))


class ConvPatchEmbed(nn.Module):
    """Each ``p x p`` patch -> one token through a small shared CNN (``log2 p`` stride-2 3x3 conv-BN-ReLU layers).

    An "early convolutions" stem (Xiao et al. 2021) applied patch by patch: no pixel of one patch reaches another
    patch's token, so MAE's visible-only encoding stays exact (masked pixels do not reach visible tokens), and
    the token grid, positional embeddings and every consumer of :class:`PatchEmbed` are unchanged (in training
    mode the BatchNorm batch statistics are the one quantity shared across patches). On the synthetic
    caries task it is what lets a ViT-Tiny learn lesions in a CPU-sized budget (see the README).

    Args:
        patch_size: patch side p, a power of 2 >= 4.
        in_chans: image channels C.
        embed_dim: token width D; the conv widths grow ``D / 2^(n-1) ... D`` (at least 16).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        n = int(math.log2(patch_size))
        layers: list[nn.Module] = []
        width = in_chans
        for i in range(n):
            out = max(embed_dim // 2 ** (n - 1 - i), 16)
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            width = out
        layers.append(nn.Conv2d(width, embed_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, L, D) with L = (H / p) * (W / p), patches in row-major order.

        With ``ids: (B, K)`` (row-major patch indices), only those patches are embedded: (B, K, D) (in training
        mode the BatchNorm statistics are then those of the selected patches).
        """
        b, c, h, w = x.shape
        p = self.patch_size
        check_patchable(h, w, p)
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        x = gather_rows(x, ids)
        return self.net(x.reshape(-1, c, p, p)).reshape(b, x.shape[1], -1)
