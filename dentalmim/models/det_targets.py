"""FCOS target assignment (Tian et al. 2019), vectorised over points x boxes for one image.

A feature-map location ``(i, j)`` at stride ``s`` is the image point ``((j + 0.5) s, (i + 0.5) s)`` (x along
columns, y along rows). A point is a positive sample of a ground-truth box when

1. it lies strictly inside the box, and inside the box's central region of radius ``center_radius * s`` (FCOS
   "center sampling"; the region is clipped to the box), and
2. the box's largest regression distance ``max(l, t, r, b)`` falls in the point's level range
   ``(lo, hi]``; by default level ``k`` of stride ``s_k`` covers ``(size_factor * s_{k-1}, size_factor * s_k]``,
   the first level starting at 0 and the last one open-ended (FCOS's 64/128/256/... with ``size_factor = 8``).

A point claimed by several boxes takes the one with the smallest area. Tiny lesions (smaller than a stride) may
contain no point centre at all; with ``force_small`` every box left without a positive gets the point nearest its
centre on the level its size maps to, so no lesion is invisible to the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dentalmim.models.det_boxes import box_area, encode_ltrb

INF = float("inf")


def level_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Point centres of every feature-map location.

    Args:
        sizes: (H_k, W_k) of each level's feature map.
        strides: stride of each level in pixels.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        One (H_k * W_k, 2) tensor of ``x, y`` per level, row-major (matching ``feature.flatten(2)``).
    """
    points = []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], dim=1))
    return points


def level_size_ranges(strides: Sequence[int], size_factor: float = 8.0) -> list[tuple[float, float]]:
    """Regression-size range ``(lo, hi]`` of each level (see the module docstring).

    Args:
        strides: increasing level strides.
        size_factor: upper bound of level ``k`` = ``size_factor * strides[k]``.

    Returns:
        One ``(lo, hi)`` per level; the first ``lo`` is 0 and the last ``hi`` is ``inf``.
    """
    if list(strides) != sorted(strides):
        raise ValueError(f"strides should be increasing, got {list(strides)}.")
    bounds = [0.0] + [size_factor * s for s in strides[:-1]] + [INF]
    return [(bounds[k], bounds[k + 1]) for k in range(len(strides))]


@dataclass
class FCOSTargets:
    """Targets of the flattened points of one image (P = sum of H_k * W_k).

    Attributes:
        labels: (P,) int64 class index of the assigned box, ``-1`` for background.
        ltrb: (P, 4) regression distances to the assigned box (0 rows for background).
        boxes: (P, 4) the assigned box (0 rows for background).
        box_index: (P,) int64 index of the assigned ground-truth box, ``-1`` for background.
        centerness: (P,) centerness target (:func:`centerness_target`) of positives; 1 for a forced point outside
            its tiny box; 0 for background.
    """

    labels: torch.Tensor
    ltrb: torch.Tensor
    boxes: torch.Tensor
    box_index: torch.Tensor
    centerness: torch.Tensor


def _candidate_mask(points: torch.Tensor, point_strides: torch.Tensor, boxes: torch.Tensor,
                    center_radius: float) -> torch.Tensor:
    """(P, N) points inside the box and inside its (clipped) central region."""
    ltrb = encode_ltrb(points[:, None, :], boxes[None, :, :])
    inside = ltrb.min(dim=-1).values > 0
    if center_radius <= 0:
        return inside
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    radius = point_strides[:, None, None] * center_radius
    region = torch.cat([torch.maximum(centre - radius, boxes[None, :, :2]),
                        torch.minimum(centre + radius, boxes[None, :, 2:])], dim=-1)
    return inside & (encode_ltrb(points[:, None, :], region).min(dim=-1).values > 0)


def _size_level(boxes: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """(N,) level whose size range holds half the box's longest side (the max ltrb from its centre)."""
    half = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    return ((half[:, None] > ranges[None, :, 0]) & (half[:, None] <= ranges[None, :, 1])).float().argmax(dim=1)


def _force_small(assign: torch.Tensor, points: torch.Tensor, point_level: torch.Tensor, boxes: torch.Tensor,
                 ranges: torch.Tensor) -> None:
    """Give every box without a positive the nearest point (same level as its size) in place, if unclaimed."""
    missing = torch.nonzero(~(assign[:, None] == torch.arange(len(boxes), device=assign.device)).any(0)).flatten()
    if len(missing) == 0:
        return
    centre = (boxes[missing, :2] + boxes[missing, 2:]) / 2
    dist = (points[None, :, :] - centre[:, None, :]).abs().amax(dim=-1)
    level = _size_level(boxes[missing], ranges)
    dist = dist.masked_fill(point_level[None, :] != level[:, None], INF)
    nearest = dist.argmin(dim=1)
    free = assign[nearest] < 0
    assign[nearest[free]] = missing[free]


def fcos_targets(points: torch.Tensor, point_level: torch.Tensor, strides: Sequence[int], boxes: torch.Tensor,
                 labels: torch.Tensor, *, size_ranges: Sequence[tuple[float, float]] | None = None,
                 center_radius: float = 1.5, force_small: bool = True) -> FCOSTargets:
    """Assign ground-truth boxes to the points of one image.

    Args:
        points: (P, 2) ``x, y`` of all levels, concatenated (see :func:`level_points`).
        point_level: (P,) int64 level index of each point.
        strides: stride of each level.
        boxes: (N, 4) ground-truth boxes xyxy in the same pixel frame as the points.
        labels: (N,) int64 class of each box.
        size_ranges: ``(lo, hi]`` per level; default :func:`level_size_ranges`.
        center_radius: center-sampling radius in strides (``<= 0``: the whole box).
        force_small: give boxes without any positive their nearest point (see the module docstring).

    Returns:
        :class:`FCOSTargets`; ambiguous points take the smallest box.
    """
    p = points.shape[0]
    if boxes.numel() == 0:
        zeros = points.new_zeros(p, 4)
        neg = torch.full((p,), -1, dtype=torch.long, device=points.device)
        return FCOSTargets(neg, zeros, zeros.clone(), neg.clone(), points.new_zeros(p))
    boxes = boxes.to(points.dtype)
    ranges = points.new_tensor(size_ranges if size_ranges is not None else level_size_ranges(strides))
    point_strides = points.new_tensor(list(strides))[point_level]
    max_dist = encode_ltrb(points[:, None, :], boxes[None, :, :]).amax(dim=-1)
    lo, hi = ranges[point_level, 0:1], ranges[point_level, 1:2]
    ok = _candidate_mask(points, point_strides, boxes, center_radius) & (max_dist > lo) & (max_dist <= hi)
    area = box_area(boxes)[None, :].expand(p, -1).masked_fill(~ok, INF)
    min_area, assign = area.min(dim=1)
    assign = assign.masked_fill(~torch.isfinite(min_area), -1)
    if force_small:
        _force_small(assign, points, point_level, boxes, ranges)
    fg = assign >= 0
    idx = assign.clamp(min=0)
    matched = boxes[idx] * fg[:, None]
    ltrb = encode_ltrb(points, boxes[idx]) * fg[:, None]
    inside = ltrb.min(dim=1).values > 0
    centerness = torch.where(inside, centerness_target(ltrb), fg.to(ltrb.dtype))
    return FCOSTargets(torch.where(fg, labels.to(torch.long)[idx], -1), ltrb, matched, assign, centerness)


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.

    Args:
        ltrb: (P, 4) positive distances.

    Returns:
        (P,) values in (0, 1]; 1 at the box centre.
    """
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) * (
        tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6))
    return ratio.clamp(min=0).sqrt()
