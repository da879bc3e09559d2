"""Sliding-window (tiled) detection over whole radiographs.

The detector is trained on native-resolution crops, so a full image is cut into tiles of the training crop size
with some overlap, the tiles run in batches, and the tile detections are shifted back to original pixels and
merged:

* **grid**: along each axis of length ``L`` with tile side ``t``: one tile at 0 when ``L <= t`` (the image is
  zero-padded at the bottom / right up to ``t``, rounded up to a multiple of the patch size and to at least 4
  patches, so small images make small tiles), otherwise ``n = ceil((L - t) / (t (1 - overlap))) + 1`` tiles
  spread evenly from 0 to ``L - t`` (the first touches the top/left border, the last the bottom/right one; the
  overlap is at least ``overlap``);
* **merge**: class-wise greedy clustering of all tile boxes (overlap metric ``ios`` = intersection over the
  smaller box by default, so a lesion cut by a tile border, whose box lies inside the full one from the
  neighbouring tile, joins it). Boxes touching an inner tile edge (not an image border) rank after the others, so
  the uncut box represents the cluster; the cluster's score is its best score (the lesion was seen that
  confidently in some tile); ``method="wbf"`` instead averages the cluster's boxes weighted by score;
* **spacing**: with ``factors`` (from the model's ``max_spacing_mm``, :mod:`dentalmim.data.spacing`) the image is
  resampled first and the merged boxes are mapped back to original pixels;
* **image-level probability**: the maximum over tiles of the tile probabilities (an image has a lesion when some
  tile has one; noisy-OR ``1 - prod(1 - p)`` would grow with the tile count of large images, so it is not used).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dentalmim.data.spacing import resample_image, resampled_size
from dentalmim.models.det_boxes import OverlapMetric, clip_boxes, cluster_reduce, greedy_clusters, offset_by_class
from dentalmim.models.detector import Detections

#: A batch of tiles (n, 1, th, tw) -> (detections per tile in tile pixels, tile probabilities (n,)).
DetectFn = Callable[[torch.Tensor], tuple[list[Detections], torch.Tensor]]
MergeMethod = Literal["nms", "wbf"]
#: Smallest tile side in patches (when the tile size allows): a lone tile of at most 3 x 3 patches leaves the
#: detector's stride-32 level 1 x 1, which its GroupNorm rejects in a batch of one.
MIN_TILE_PATCHES = 4


@dataclass(frozen=True)
class TileGrid:
    """Tile layout of one image.

    Attributes:
        image_size: (H, W) of the original image.
        tile_size: (th, tw) of every tile.
        origins: ``(y0, x0)`` of each tile, row-major.
    """

    image_size: tuple[int, int]
    tile_size: tuple[int, int]
    origins: list[tuple[int, int]]

    @property
    def padded_size(self) -> tuple[int, int]:
        """(H, W) after zero-padding so every tile lies inside."""
        return max(self.image_size[0], self.tile_size[0]), max(self.image_size[1], self.tile_size[1])


@dataclass
class TiledResult:
    """Merged detections of a whole image: boxes (K, 4) xyxy original pixels, scores (K,), labels (K,),
    image-level probability and the number of tiles run."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    image_prob: float
    num_tiles: int


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along one axis (see the module docstring)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile * (1.0 - overlap))) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(height: int, width: int, tile_size: int, overlap: float = 0.25, multiple: int = 16) -> TileGrid:
    """Tile layout covering an image.

    Args:
        height: image rows H.
        width: image columns W.
        tile_size: tile side (the training crop size); a multiple of ``multiple``.
        overlap: minimum overlap of neighbouring tiles as a fraction of the tile, in [0, 1).
        multiple: the detector's input-size multiple (patch size).

    Returns:
        The :class:`TileGrid`.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size should be positive, got {height}x{width}.")
    if tile_size < multiple or tile_size % multiple:
        raise ValueError(f"tile_size should be a positive multiple of {multiple}, got {tile_size}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap should be in [0, 1), got {overlap}.")
    least = min(tile_size, MIN_TILE_PATCHES * multiple)
    th = min(tile_size, max(least, math.ceil(height / multiple) * multiple))
    tw = min(tile_size, max(least, math.ceil(width / multiple) * multiple))
    origins = [(y, x) for y in tile_origins(height, th, overlap) for x in tile_origins(width, tw, overlap)]
    return TileGrid((height, width), (th, tw), origins)


def extract_tiles(image: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """image: (H, W) -> tiles (N, 1, th, tw), zero-padded at the bottom / right where the image is smaller."""
    ph, pw = grid.padded_size
    padded = F.pad(image, (0, pw - image.shape[1], 0, ph - image.shape[0])) if (ph, pw) != image.shape else image
    th, tw = grid.tile_size
    return torch.stack([padded[y:y + th, x:x + tw] for y, x in grid.origins])[:, None].contiguous()


def _edge_flags(boxes: torch.Tensor, origin: tuple[int, int], grid: TileGrid, margin: float) -> torch.Tensor:
    """(N,) True for tile-local boxes within ``margin`` px of a tile side that is not an image border."""
    (y0, x0), (th, tw), (h, w) = origin, grid.tile_size, grid.image_size
    flags = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for inner, touch in ((x0 > 0, boxes[:, 0] <= margin), (y0 > 0, boxes[:, 1] <= margin),
                         (x0 + tw < w, boxes[:, 2] >= tw - margin), (y0 + th < h, boxes[:, 3] >= th - margin)):
        if inner:
            flags |= touch
    return flags


def _gather(dets: Sequence[Detections], grid: TileGrid, margin: float) -> tuple[torch.Tensor, ...]:
    """Shift tile detections to image pixels, clip, drop empty boxes; returns boxes, scores, labels, edge flags."""
    parts = []
    for d, (y0, x0) in zip(dets, grid.origins):
        edge = _edge_flags(d.boxes, (y0, x0), grid, margin)
        shifted = clip_boxes(d.boxes.float() + d.boxes.new_tensor([x0, y0, x0, y0]).float(), *grid.image_size)
        parts.append((shifted, d.scores.float(), d.labels.long(), edge))
    boxes, scores, labels, edge = (torch.cat(x) for x in zip(*parts))
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[ok], scores[ok], labels[ok], edge[ok]


def merge_tile_detections(dets: Sequence[Detections], grid: TileGrid, *, iou_threshold: float = 0.5,
                          metric: OverlapMetric = "ios", method: MergeMethod = "nms", edge_margin: float = 2.0,
                          max_detections: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-tile detections into one image's detections (see the module docstring).

    Args:
        dets: one :class:`Detections` per tile of ``grid``, in tile pixels.
        grid: the tile layout.
        iou_threshold: clustering overlap threshold.
        metric: ``ios`` or ``iou``.
        method: ``nms`` (keep the representative box) or ``wbf`` (score-weighted mean box of the cluster).
        edge_margin: distance in px to an inner tile edge below which a box counts as cut by the tile.
        max_detections: most boxes returned.

    Returns:
        ``(boxes (K, 4), scores (K,), labels (K,))`` in original pixels, by descending score.
    """
    if method not in ("nms", "wbf"):
        raise ValueError(f"method should be one of ('nms', 'wbf'), got {method!r}.")
    boxes, scores, labels, edge = _gather(dets, grid, edge_margin)
    if len(boxes) == 0:
        return boxes.reshape(0, 4), scores, labels
    keep, owner = greedy_clusters(offset_by_class(boxes, labels), scores - edge.float(), iou_threshold, metric,
                                  max_keep=max_detections)
    fused, best = cluster_reduce(boxes, scores, keep, owner)
    out_boxes = fused if method == "wbf" else boxes[keep]
    order = best.argsort(descending=True, stable=True)
    return out_boxes[order], best[order], labels[keep][order]


def boxes_to_original(boxes: torch.Tensor, work_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """xyxy boxes (K, 4) in a resampled image of (H, W) ``work_size`` -> pixels of the original ``size``, clipped."""
    if tuple(work_size) == tuple(size):
        return boxes
    sx, sy = size[1] / work_size[1], size[0] / work_size[0]
    return clip_boxes(boxes * boxes.new_tensor([sx, sy, sx, sy]), *size)


def tiled_detect(detect_fn: DetectFn, image: torch.Tensor, *, tile_size: int, overlap: float = 0.25,
                 multiple: int = 16, batch_size: int = 8, factors: tuple[float, float] = (1.0, 1.0),
                 **merge_kwargs: object) -> TiledResult:
    """Run a tile detector over a whole image.

    Args:
        detect_fn: batch of tiles -> (detections per tile, tile probabilities); e.g.
            ``functools.partial(detector.detect, score_threshold=0.05)``.
        image: (H, W) float image (on the device ``detect_fn`` expects).
        tile_size: tile side (the training crop size).
        overlap: minimum tile overlap fraction.
        multiple: the detector's input-size multiple (patch size).
        batch_size: tiles per ``detect_fn`` call.
        factors: ``(fy, fx)`` resize factors applied before tiling (:func:`dentalmim.data.spacing.spacing_factors`).
        **merge_kwargs: :func:`merge_tile_detections` options.

    Returns:
        :class:`TiledResult` in original pixels; image probability = max over tiles.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size should be >= 1, got {batch_size}.")
    size = (int(image.shape[0]), int(image.shape[1]))
    work_size = resampled_size(size, factors)
    grid = tile_grid(*work_size, tile_size, overlap, multiple)
    tiles = extract_tiles(resample_image(image, work_size), grid)
    dets: list[Detections] = []
    probs = []
    for start in range(0, len(tiles), batch_size):
        d, p = detect_fn(tiles[start:start + batch_size])
        dets.extend(d)
        probs.append(p.float().reshape(-1))
    boxes, scores, labels = merge_tile_detections(dets, grid, **merge_kwargs)
    return TiledResult(boxes_to_original(boxes, work_size, size), scores, labels, float(torch.cat(probs).max()),
                       len(tiles))
