"""Tiled prediction of several radiographs at once: the tiles of every image in a micro-batch share forward
passes (grouped by tile shape), then each image's tile detections are merged on their own.

The result equals :meth:`dentalmim.inference.predictor.Predictor.predict` on each image (same grid, detector call,
merge and image probability; tested), but a GPU sees ``tile_batch_size`` tiles per pass however small each image.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence

import numpy as np
import torch

from dentalmim.inference.predictor import Prediction, Predictor
from dentalmim.inference.tiling import extract_tiles, merge_tile_detections, tile_grid

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(predictor: Predictor) -> contextlib.AbstractContextManager:
    if predictor.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(predictor.device.type, dtype=_DTYPES[predictor.precision])


@torch.inference_mode()
def predict_images(predictor: Predictor, images: Sequence[np.ndarray], *, threshold: float) -> list[Prediction]:
    """Detects caries on several (H, W) float images in [0, 1], sharing forward passes between them.

    Args:
        predictor: the loaded model.
        images: (H, W) float32 arrays in [0, 1].
        threshold: box score threshold (the floor below which boxes are dropped).

    Returns:
        One :class:`Prediction` per image; ``timing_ms["inference"]`` is the whole batch's time.
    """
    start = time.perf_counter()
    meta = predictor.metadata
    tile, overlap, multiple = int(meta["tile_size"]), float(meta["tile_overlap"]), predictor.detector.patch_size
    grids = [tile_grid(im.shape[0], im.shape[1], tile, overlap, multiple) for im in images]
    tiles = [extract_tiles(torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)).to(predictor.device), g)
             for im, g in zip(images, grids)]
    detect = functools.partial(predictor.detector.detect, score_threshold=threshold, nms_iou=meta["nms_iou"],
                               max_detections=meta["max_detections"])
    dets: list[list] = [[] for _ in images]
    probs: list[list[torch.Tensor]] = [[] for _ in images]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, grid in enumerate(grids):
        by_shape.setdefault(grid.tile_size, []).append(i)
    with _autocast(predictor):
        for members in by_shape.values():
            stack = torch.cat([tiles[i] for i in members])
            owners = [i for i in members for _ in range(len(tiles[i]))]
            for s in range(0, len(stack), predictor.tile_batch_size):
                d, p = detect(stack[s:s + predictor.tile_batch_size])
                for owner, det, prob in zip(owners[s:s + predictor.tile_batch_size], d, p.float().reshape(-1)):
                    dets[owner].append(det)
                    probs[owner].append(prob)
    elapsed = (time.perf_counter() - start) * 1e3
    out = []
    for im, grid, d, p in zip(images, grids, dets, probs):
        boxes, scores, labels = merge_tile_detections(d, grid, max_detections=int(meta["max_detections"]))
        out.append(Prediction(
            boxes=boxes.float().cpu().numpy(), scores=scores.float().cpu().numpy(),
            labels=labels.cpu().numpy().astype(np.int64), class_names=predictor.class_names,
            image_probability=float(torch.stack(p).max()), threshold=threshold,
            image_threshold=predictor.image_threshold, model_version=predictor.version,
            image_size=(int(im.shape[0]), int(im.shape[1])), num_tiles=len(grid.origins),
            timing_ms={"inference": elapsed}))
    return out
