"""MONAI ``ImageReader`` for dental radiographs, wrapping :func:`dentalmim.data.dicom.read_dicom`.

Kept apart from :mod:`dentalmim.data.dicom` because importing MONAI imports torch; ``from dentalmim.data.dicom
import DentalDicomReader`` still works (lazily).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, ensure_tuple

from dentalmim.data.dicom import DEFAULT_MAX_PIXELS, DicomImage, DicomMeta, read_dicom


class DentalDicomReader(ImageReader):
    """MONAI ``ImageReader`` around :func:`read_dicom`: (H, W) float32 in [0, 1], no axis swap.

    Any file name is accepted (content decides; non-DICOM files raise NotDicomError). The meta dict has
    ``spatial_shape`` (H, W), ``original_channel_dim`` NaN (no channel), an ``affine`` scaling array axes by the
    pixel spacing (row, column; identity when unknown), ``spacing`` ((2,) mm, NaN when unknown) and the
    :class:`DicomMeta` string fields. Several files are stacked on a new first axis.

    Args:
        max_pixels: passed to :func:`read_dicom`.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self.max_pixels = max_pixels

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Accepts every name: many dental archives store DICOM without a .dcm suffix."""
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Reads one file (-> DicomImage) or several (-> list of DicomImage)."""
        images = [read_dicom(p, max_pixels=self.max_pixels) for p in ensure_tuple(data)]
        return images[0] if len(images) == 1 else images

    def get_data(self, img: DicomImage | Sequence[DicomImage]) -> tuple[np.ndarray, dict]:
        """Returns ((H, W) or (N, H, W) float32, meta dict of the first image)."""
        images = [img] if isinstance(img, DicomImage) else list(img)
        if len({i.pixels.shape for i in images}) > 1:
            raise ValueError(f"images should share one shape to be stacked, got {[i.pixels.shape for i in images]}.")
        meta = _monai_meta(images[0].meta)
        if len(images) == 1:
            return images[0].pixels, meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack([i.pixels for i in images], axis=0), meta


def _monai_meta(meta: DicomMeta) -> dict:
    spacing = meta.pixel_spacing_mm
    affine = np.diag([spacing[0], spacing[1], 1.0] if spacing else [1.0, 1.0, 1.0])
    out: dict[str, Any] = {k: v for k, v in meta.to_dict().items() if isinstance(v, (str, int))}
    out["spacing_source"] = meta.spacing_source or ""
    out["spacing"] = np.array(spacing if spacing else (np.nan, np.nan), dtype=np.float64)
    out[MetaKeys.SPATIAL_SHAPE] = np.array((meta.rows, meta.columns))
    out[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
    out[MetaKeys.AFFINE] = affine
    out[MetaKeys.ORIGINAL_AFFINE] = affine.copy()
    return out
