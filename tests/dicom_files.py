"""Tiny DICOM files for tests, written through the library's own encoder (``dentalmim.data.encode``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dentalmim.data.encode import image_dataset, save_dicom


def write_dicom(
    path: Path, pixels: np.ndarray, *, bits: int = 12, spacing: tuple[float, float] | None = (0.05, 0.05)
) -> Path:
    """Write (H, W) unsigned stored values as an uncompressed MONOCHROME2 intraoral DICOM file.

    Args:
        path: destination (parent folders are created).
        pixels: (H, W) stored values, fitting in ``bits`` bits.
        bits: BitsStored.
        spacing: (row, column) PixelSpacing in mm, or None for none.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = image_dataset(np.asarray(pixels), bits_stored=bits, pixel_spacing_mm=spacing)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.2"
    ds.PatientID = "ANON"
    save_dicom(ds, path)
    return path
