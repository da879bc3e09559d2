"""Tiled prediction of several radiographs at once: the tiles of every image in a micro-batch share forward
passes (grouped by tile shape), then each image's tile detections are merged on their own.

The result equals :meth:`dentalmim.inference.predictor.Predictor.predict` on each image (same resampling to the
model's ``max_spacing_mm``, grid, detector call, merge and image probability; tested), but a GPU sees
``tile_batch_size`` tiles per pass however small each image.

CPU threads: by default torch runs each operation on as many threads as there are cores, and every parallel step
waits for its slowest thread. When anything else needs a core (the service's own upload decoding and database
writes, or another process), the descheduled thread stalls every step: on a shared 2-core machine, next to another
torch job, the forward passes ran up to 15x slower with 2 threads than with 1 (and equally fast when the machine was
idle). :func:`inference_threads` therefore leaves one core free by default, and :func:`use_threads` applies it on
the inference thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from dentalmim.data.spacing import resample_image, resampled_size
from dentalmim.inference.predictor import Prediction, Predictor
from dentalmim.inference.tiling import boxes_to_original, extract_tiles, merge_tile_detections, tile_grid

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def inference_threads(requested: int = 0) -> int:
    """CPU threads per forward pass: ``requested``, or with 0 every usable core but one (at least 1)."""
    if requested < 0:
        raise ValueError(f"requested threads should be >= 0, got {requested}.")
    return requested or max(1, usable_cores() - 1)


def use_threads(threads: int) -> None:
    """Makes the calling thread's torch operations use ``threads`` CPU threads.

    torch keeps this setting per thread once a thread has run an operation (and uses the last value set for threads
    started later), so the inference thread sets it itself.
    """
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _autocast(predictor: Predictor) -> contextlib.AbstractContextManager:
    if predictor.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(predictor.device.type, dtype=_DTYPES[predictor.precision])


@torch.inference_mode()
def predict_images(predictor: Predictor, images: Sequence[np.ndarray], *, threshold: float,
                   spacings: Sequence[Sequence[float] | None] | None = None) -> list[Prediction]:
    """Detects caries on several (H, W) float images in [0, 1], sharing forward passes between them.

    Args:
        predictor: the loaded model.
        images: (H, W) float32 arrays in [0, 1].
        threshold: box score threshold (the floor below which boxes are dropped).
        spacings: (row, column) pixel spacing of each image, or None where unknown: a model with
            ``max_spacing_mm`` upsamples coarser images to it before tiling (as :meth:`Predictor.predict` does).

    Returns:
        One :class:`Prediction` per image; ``timing_ms["inference"]`` is the whole batch's time.
    """
    start = time.perf_counter()
    meta = predictor.metadata
    spacings = list(spacings) if spacings is not None else [None] * len(images)
    if len(spacings) != len(images):
        raise ValueError(f"spacings should match images, got {len(spacings)} and {len(images)}.")
    tile, overlap, multiple = int(meta["tile_size"]), float(meta["tile_overlap"]), predictor.detector.patch_size
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    work_sizes = [resampled_size(size, predictor.spacing_factors(sp)) for size, sp in zip(sizes, spacings)]
    grids = [tile_grid(h, w, tile, overlap, multiple) for h, w in work_sizes]
    tiles = [extract_tiles(resample_image(torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))
                                          .to(predictor.device), ws), g)
             for im, ws, g in zip(images, work_sizes, grids)]
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
    for im, grid, d, p, sp in zip(images, grids, dets, probs, spacings):
        boxes, scores, labels = merge_tile_detections(d, grid, max_detections=int(meta["max_detections"]))
        boxes = boxes_to_original(boxes, grid.image_size, (int(im.shape[0]), int(im.shape[1])))
        out.append(Prediction(
            boxes=boxes.float().cpu().numpy(), scores=scores.float().cpu().numpy(),
            labels=labels.cpu().numpy().astype(np.int64), class_names=predictor.class_names,
            image_probability=float(torch.stack(p).max()), threshold=threshold,
            image_threshold=predictor.image_threshold, model_version=predictor.version,
            image_size=(int(im.shape[0]), int(im.shape[1])), num_tiles=len(grid.origins),
            warnings=predictor.warnings + predictor.spacing_warnings(sp), type_support=predictor.type_support,
            timing_ms={"inference": elapsed}))
    return out
