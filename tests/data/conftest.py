"""Reusable DICOM fixtures: small data sets built in memory with :mod:`dentalmim.data.encode`.

Other test modules may import the plain functions (``from tests.data.conftest import make_dataset``) or use the
fixtures (``dicom_file``: a factory writing a data set into ``tmp_path``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dentalmim.data.encode import IO_PRESENTATION_SOP_CLASS, encode_dataset, image_dataset, save_dicom

#: Every syntax the reader must handle, as names of ``SUPPORTED_TRANSFER_SYNTAXES``.
ALL_SYNTAXES = ("explicit_le", "implicit_le", "explicit_be", "deflated", "rle", "jpeg_baseline", "jpeg_lossless",
                "jpeg_lossless_sv1", "jpeg_ls", "jpeg2000_lossless", "jpeg2000")

#: Identity values planted by ``add_phi``; no de-identified output may contain any of them.
PHI_VALUES = {
    "PatientName": "Doe^Jane^Q", "PatientID": "PID-0047113", "PatientBirthDate": "19710412",
    "OtherPatientIDs": "ALT-99812", "InstitutionName": "Smile Dental Clinic Springfield",
    "InstitutionAddress": "742 Evergreen Terrace", "ReferringPhysicianName": "Hibbert^Julius",
    "PerformingPhysicianName": "Molar^Marvin", "OperatorsName": "Nurse^Nancy", "AccessionNumber": "ACC778899",
    "StudyID": "STUDY4242", "StudyDate": "20230301", "StudyTime": "101530.25", "SeriesDate": "20230301",
    "ContentDate": "20230302", "AcquisitionDateTime": "20230301101533", "DeviceSerialNumber": "SN-XR-5551234",
    "StationName": "OPG-ROOM-3", "ImageComments": "patient anxious, call mother Jane",
    "PatientAddress": "1 Main Street Springfield", "PatientTelephoneNumbers": "555-0100",
}


def smooth_image(rows: int, cols: int, bits: int, seed: int = 0) -> np.ndarray:
    """A smooth radiograph-like test image using most of the ``bits`` range.

    Returns:
        (rows, cols) int64 stored values in [0, 2**bits - 1].
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    img = 0.5 + 0.35 * np.sin(xx / max(cols, 1) * 5.0 + rng.random()) * np.cos(yy / max(rows, 1) * 3.0)
    img += 0.1 * np.exp(-(((xx - cols / 2) ** 2 + (yy - rows / 3) ** 2) / (0.05 * rows * cols + 1)))
    top = (1 << bits) - 1
    return np.clip(np.round(img * top), 0, top).astype(np.int64)


def make_dataset(
    rows: int = 64,
    cols: int = 80,
    *,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    syntax: str = "explicit_le",
    spacing: tuple[float, float] | None = (0.1, 0.1),
    spacing_tag: str = "PixelSpacing",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    modality: str = "IO",
    sop_class: str = IO_PRESENTATION_SOP_CLASS,
    signed: bool = False,
    pixels: np.ndarray | None = None,
    seed: int = 0,
    phi: bool = False,
    quality: int = 95,
) -> Dataset:
    """A single-frame radiograph data set, encoded in ``syntax``.

    Args:
        rows, cols: image size (ignored when ``pixels`` is given).
        bits: BitsStored.
        photometric: MONOCHROME1/2, or RGB / YBR_FULL (then a grey image is stored in 3 equal channels).
        syntax: a name of ``SUPPORTED_TRANSFER_SYNTAXES``.
        spacing: (row, col) mm, written to ``spacing_tag`` (PixelSpacing or ImagerPixelSpacing); None: none.
        window: (center, width) written as WindowCenter/WindowWidth.
        rescale: (slope, intercept) written as RescaleSlope/RescaleIntercept.
        signed: PixelRepresentation 1; the default image is then shifted to be centred on 0.
        pixels: explicit stored values, (H, W) or (H, W, 3).
        phi: add identity attributes (``PHI_VALUES``), a private block and a nested sequence with UIDs.
        quality: for lossy syntaxes.
    """
    if pixels is None:
        pixels = smooth_image(rows, cols, bits, seed)
        if signed:
            pixels = pixels - (1 << (bits - 1))
        if photometric in ("RGB", "YBR_FULL"):
            pixels = np.repeat(pixels[..., None], 3, axis=2)
    ds = image_dataset(pixels, bits_stored=bits, photometric=photometric, modality=modality,
                       sop_class_uid=sop_class, signed=signed)
    if spacing is not None:
        setattr(ds, spacing_tag, [f"{v:.6g}" for v in spacing])
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:.6g}", f"{window[1]:.6g}"
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:.6g}", f"{rescale[1]:.6g}"
    if phi:
        add_phi(ds)
    return encode_dataset(ds, syntax, quality=quality)


def add_phi(ds: Dataset) -> Dataset:
    """Plants identity attributes, a private block and a nested sequence of references (in place)."""
    for keyword, value in PHI_VALUES.items():
        setattr(ds, keyword, value)
    ds.PatientSex, ds.PatientAge = "F", "052Y"
    ds.BodyPartExamined, ds.ImageLaterality, ds.PatientOrientation = "JAW", "R", ["A", "F"]
    block = ds.private_block(0x0009, "ACME DENTAL 1.0", create=True)
    block.add_new(0x01, "LO", "private note Doe Jane")
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.999.1"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.2.1125.999.2"
    return ds


@pytest.fixture
def dicom_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``dicom_file(name="x.dcm", ds=None, **make_dataset_kwargs) -> Path`` written into tmp_path."""

    def _write(name: str = "image.dcm", ds: Dataset | None = None, **kwargs: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_dicom(ds if ds is not None else make_dataset(**kwargs), path)
        return path

    return _write
