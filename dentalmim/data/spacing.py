"""Reading coarse radiographs at a finer pixel spacing.

Intraoral sensors have pixels of about 0.02-0.04 mm and panoramics of about 0.1 mm, so a lesion of 2 mm spans
some 80 px on a bitewing and 20 px on a panoramic. With a maximum spacing (``data.max_spacing_mm`` when
fine-tuning, stored in the model), every image whose DICOM gives a coarser spacing is upsampled to it: training
crops cut a window of ``crop / factor`` native pixels and resize it to the crop
(:class:`~dentalmim.data.transforms.RandCropWithBoxesd`), and tiled inference resamples the whole image before
tiling and maps the boxes back to original pixels (:func:`dentalmim.inference.tiling.tiled_detect`). Images with
finer pixels, or without a spacing, keep their native resolution: nothing is ever downsampled, so the smallest
lesions of a fine intraoral image keep every pixel.

Off by default. Upsampling costs time: a 0.1 mm panoramic read at 0.05 mm has 4x the pixels, so 4x the tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dentalmim.data.dicom_header import SPACING_LIMIT_MM  # also the largest accepted maximum spacing
from dentalmim.errors import ConfigError

#: Largest upsampling factor per axis (a 0.2 mm image read at 0.05 mm), so that no header value, however odd, can
#: blow an image up beyond 16 times its pixels.
MAX_FACTOR = 4.0

__all__ = ["MAX_FACTOR", "SPACING_LIMIT_MM", "check_max_spacing", "resample_image", "resampled_size",
           "spacing_factors", "valid_spacing"]


def check_max_spacing(value: float | None, name: str = "max_spacing_mm") -> float | None:
    """``value`` as a float, or None; ConfigError naming ``name`` unless it is in (0, SPACING_LIMIT_MM]."""
    if value is None:
        return None
    v = float(value)
    if not (math.isfinite(v) and 0.0 < v <= SPACING_LIMIT_MM):
        raise ConfigError(f"{name} should be null or in (0, {SPACING_LIMIT_MM}] mm, got {value!r}.")
    return v


def valid_spacing(spacing_mm: Sequence[float] | None) -> tuple[float, float] | None:
    """(row, column) spacing as two floats in (0, SPACING_LIMIT_MM], or None when missing, malformed or
    implausible."""
    if spacing_mm is None:
        return None
    try:
        sy, sx = (float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        return None
    return (sy, sx) if all(math.isfinite(v) and 0.0 < v <= SPACING_LIMIT_MM for v in (sy, sx)) else None


def spacing_factors(spacing_mm: Sequence[float] | None, max_spacing_mm: float | None) -> tuple[float, float]:
    """Upsampling factors ``(fy, fx)`` >= 1 that bring each axis of an image of (row, column) ``spacing_mm`` down
    to at most ``max_spacing_mm``, capped at :data:`MAX_FACTOR`.

    ``(1.0, 1.0)`` when there is no maximum, no valid spacing (:func:`valid_spacing`), or the pixels are already
    that fine.
    """
    spacing = valid_spacing(spacing_mm)
    if max_spacing_mm is None or spacing is None:
        return 1.0, 1.0
    fy, fx = (min(MAX_FACTOR, max(1.0, s / max_spacing_mm)) for s in spacing)
    return fy, fx


def resampled_size(size: tuple[int, int], factors: tuple[float, float]) -> tuple[int, int]:
    """(H, W) scaled by ``factors`` (rounded, at least 1)."""
    return max(1, round(size[0] * factors[0])), max(1, round(size[1] * factors[1]))


def resample_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float image -> (h, w): bilinear, antialiased when shrinking; the input itself when sizes agree."""
    if tuple(image.shape) == tuple(size):
        return image
    shrink = size[0] < image.shape[0] or size[1] < image.shape[1]
    out = F.interpolate(image[None, None].float(), size=size, mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out[0, 0].to(image.dtype)
