"""Torch box operations for the detector: areas, IoU / GIoU, ltrb encoding, NMS and box fusion.

Boxes follow the library convention: float (N, 4) ``x1, y1, x2, y2`` in pixels, x along image columns and y along
rows (no axis swap anywhere). Everything here is plain torch (no torchvision), works on any device, and is
vectorised except the greedy suppression loop of :func:`nms`, whose iterations read one row of an overlap
matrix computed a block of rows at a time.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

OverlapMetric = Literal["iou", "ios"]
OVERLAP_METRICS = ("iou", "ios")


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """boxes: (..., 4) xyxy -> (...) areas (0 for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection areas of a: (N, 4) and b: (M, 4) -> (N, M)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Pairwise intersection over union.

    Args:
        a: (N, 4) boxes xyxy.
        b: (M, 4) boxes xyxy.
        eps: added to the union (degenerate boxes give 0, not nan).

    Returns:
        (N, M) IoU in [0, 1].
    """
    inter = _intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / (union + eps)


def box_ios(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Pairwise intersection over the smaller box's area (1 when one box contains the other).

    Args:
        a: (N, 4) boxes xyxy.
        b: (M, 4) boxes xyxy.
        eps: added to the denominator.

    Returns:
        (N, M) values in [0, 1].
    """
    inter = _intersection(a, b)
    smaller = torch.minimum(box_area(a)[:, None], box_area(b)[None, :])
    return inter / (smaller + eps)


def generalized_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise generalised IoU (Rezatofighi et al. 2019): ``IoU - (|C| - |A u B|) / |C|``.

    Args:
        pred: (N, 4) boxes xyxy.
        target: (N, 4) boxes xyxy, paired with ``pred`` row by row.
        eps: added to denominators.

    Returns:
        (N,) GIoU in [-1, 1]; 1 for identical boxes.
    """
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = box_area(pred) + box_area(target) - inter
    iou = inter / (union + eps)
    enclose_wh = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0)
    enclose = enclose_wh.prod(dim=1)
    return iou - (enclose - union) / (enclose + eps)


def encode_ltrb(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances from points to the four sides of boxes (FCOS regression targets).

    Args:
        points: (..., 2) ``x, y`` locations.
        boxes: (..., 4) xyxy boxes, broadcastable with ``points``.

    Returns:
        (..., 4) ``left, top, right, bottom`` = ``x - x1, y - y1, x2 - x, y2 - y`` (all > 0 iff the point is
        strictly inside the box).
    """
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], dim=-1)


def decode_ltrb(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_ltrb`: points (..., 2) and distances (..., 4) -> boxes (..., 4) xyxy."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]], dim=-1)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clamp boxes (..., 4) xyxy to the image ``[0, width] x [0, height]``."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _overlap(a: torch.Tensor, b: torch.Tensor, metric: OverlapMetric) -> torch.Tensor:
    if metric not in OVERLAP_METRICS:
        raise ValueError(f"metric should be one of {OVERLAP_METRICS}, got {metric!r}.")
    return box_iou(a, b) if metric == "iou" else box_ios(a, b)


_BLOCK_ROWS = 64  # most overlap rows per tensor call in greedy_clusters (larger blocks run slower per row on CPU)
_BLOCK_ELEMENTS = 1 << 20  # most overlaps held at once (bounds memory for tens of thousands of boxes)


def greedy_clusters(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, metric: OverlapMetric = "iou",
                    max_keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy clustering by descending score: the best unclaimed box is kept and absorbs every unclaimed box
    overlapping it by more than ``threshold``.

    Overlap rows are computed in blocks: when the sweep reaches a kept box without a row, one tensor operation
    computes the rows of that box and of the next still-unclaimed boxes (up to ``_BLOCK_ROWS``, and at most about
    ``_BLOCK_ELEMENTS`` overlaps in memory) against every box ranked at or below it; the sweep then reads one row
    per kept box. So a tile's thousand candidates cost a few tensor calls rather than one per kept box, and tens
    of thousands of tile boxes still merge in bounded memory. With ``max_keep`` the sweep stops after that many
    kept boxes.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) ranking scores.
        threshold: overlap above which a box is absorbed.
        metric: ``iou`` or ``ios``.
        max_keep: stop after this many kept boxes (None: all).

    Returns:
        ``(keep (K,) indices into boxes, by descending score; owner (N,) index of the kept box that absorbed each
        box (itself for kept boxes, -1 for boxes left unclaimed by an early stop))``.
    """
    if metric not in OVERLAP_METRICS:
        raise ValueError(f"metric should be one of {OVERLAP_METRICS}, got {metric!r}.")
    order = scores.argsort(descending=True, stable=True)
    ranked = boxes[order]
    n = len(order)
    owner = np.full(n, -1, dtype=np.int64)
    kept: list[int] = []
    rows = max(1, min(_BLOCK_ROWS, _BLOCK_ELEMENTS // max(n, 1)))
    start, block, row_of = 0, None, {}  # block[row_of[j], c]: ranked box j absorbs ranked box start + c
    for i in range(n):
        if max_keep is not None and len(kept) >= max_keep:
            break
        if owner[i] >= 0:
            continue
        kept.append(i)
        if i not in row_of:  # the next block: rows for i and the boxes after it that are still unclaimed
            start = i
            pending = np.flatnonzero(owner[i:] < 0)[:rows] + i
            index = torch.as_tensor(pending, device=boxes.device)
            block = (_overlap(ranked[index], ranked[i:], metric) > threshold).cpu().numpy()
            row_of = {int(j): r for r, j in enumerate(pending)}
        hit = block[row_of[i], i - start:].copy()
        hit[0] = True
        tail = owner[i:]  # a view: assignments below write into owner
        tail[hit & (tail < 0)] = i
    order_np = order.cpu().numpy()
    owner_orig = np.full(n, -1, dtype=np.int64)
    claimed = owner >= 0
    owner_orig[order_np[claimed]] = order_np[owner[claimed]]
    keep = torch.as_tensor(order_np[kept], dtype=torch.long, device=boxes.device)
    return keep, torch.as_tensor(owner_orig, device=boxes.device)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5, metric: OverlapMetric = "iou",
        max_keep: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) higher is better.
        iou_threshold: a box is suppressed when its overlap with a kept, higher-scoring box exceeds this.
        metric: ``iou``, or ``ios`` (intersection over the smaller box: also removes boxes mostly inside a
            better one, e.g. lesions cut by a tile border).
        max_keep: return at most this many boxes (and stop early).

    Returns:
        (K,) int64 indices of kept boxes, by descending score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return greedy_clusters(boxes.float(), scores, iou_threshold, metric, max_keep)[0]


def offset_by_class(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """boxes (N, 4), labels (N,) -> boxes shifted so each class lies in its own region (one NMS pass over the
    result never mixes classes)."""
    span = (boxes.max() - boxes.min()).clamp(min=0) + 1.0
    return boxes - boxes.min() + (labels.to(boxes.dtype) * (span + 1.0))[:, None]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float = 0.5,
                metric: OverlapMetric = "iou", max_keep: int | None = None) -> torch.Tensor:
    """Class-wise NMS: boxes of different ``labels`` never suppress each other.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,).
        labels: (N,) int class of each box.
        iou_threshold: see :func:`nms`.
        metric: see :func:`nms`.
        max_keep: see :func:`nms`.

    Returns:
        (K,) int64 indices of kept boxes, by descending score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return nms(offset_by_class(boxes.float(), labels), scores, iou_threshold, metric, max_keep)


def cluster_reduce(boxes: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor,
                   owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-weighted mean box and best score of each cluster found by :func:`greedy_clusters`.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) non-negative weights.
        keep: (K,) kept indices (one per cluster).
        owner: (N,) kept index owning each box, -1 for unclaimed boxes (ignored).

    Returns:
        ``(fused (K, 4), best (K,))`` in the order of ``keep``.
    """
    slot = torch.full((len(boxes),), -1, dtype=torch.long, device=boxes.device)
    slot[keep] = torch.arange(len(keep), device=boxes.device)
    member = owner >= 0
    cluster = slot[owner[member]]
    w = scores[member].float().clamp(min=1e-12)
    total = torch.zeros(len(keep), device=boxes.device).index_add_(0, cluster, w)
    fused = torch.zeros(len(keep), 4, device=boxes.device).index_add_(0, cluster, boxes[member].float() * w[:, None])
    best = torch.zeros(len(keep), device=boxes.device).scatter_reduce(0, cluster, scores[member].float(), "amax",
                                                                      include_self=False)
    return fused / total[:, None], best


def weighted_box_fusion(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float = 0.5,
                        metric: OverlapMetric = "iou",
                        max_keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-wise greedy clustering like :func:`batched_nms`, but each kept box becomes the score-weighted mean of
    its cluster (a simple weighted box fusion; the cluster keeps its best score).

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) non-negative.
        labels: (N,) int classes.
        iou_threshold: clustering overlap threshold.
        metric: ``iou`` or ``ios``.
        max_keep: most clusters returned.

    Returns:
        ``(boxes (K, 4), scores (K,), labels (K,))`` by descending score.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores.reshape(0), labels.reshape(0)
    keep, owner = greedy_clusters(offset_by_class(boxes.float(), labels), scores, iou_threshold, metric, max_keep)
    fused, best = cluster_reduce(boxes, scores, keep, owner)
    return fused.to(boxes.dtype), best.to(scores.dtype), labels[keep]
