"""Positional embeddings of patch grids: fixed 2-D sin-cos (as in MAE) and bicubic resizing to other grids."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1-D positions.

    Args:
        dim: even embedding width.
        positions: (M,) positions (float).

    Returns:
        (M, dim) as ``[sin(pos * w_i), cos(pos * w_i)]`` with ``w_i = 10000^(-2i / dim)``.
    """
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of a ``(gh, gw)`` patch grid in row-major order.

    Half of the channels encode the row, the other half the column.

    Args:
        dim: embedding width, a multiple of 4.
        grid: (rows, columns) of patches.

    Returns:
        (gh * gw, dim) float32.
    """
    if dim % 4:
        raise ValueError(f"dim should be a multiple of 4, got {dim}.")
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    return torch.cat([sincos_pos_embed_1d(dim // 2, rows), sincos_pos_embed_1d(dim // 2, cols)], dim=1)


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a grid embedding (no cls entry) to another grid.

    Args:
        pos_embed: (1, gh * gw, D).
        old_grid: (gh, gw) of ``pos_embed``.
        new_grid: target (gh', gw').

    Returns:
        (1, gh' * gw', D); the input itself when the grids are equal.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    d = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos_embed.dtype)
