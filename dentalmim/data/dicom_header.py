"""Header validation for :mod:`dentalmim.data.dicom`: is this a single-frame radiograph we can decode?

Checks run in a fixed order, each raising its own :class:`~dentalmim.errors.DicomReadError` subclass: not an
image (SOP class, modality or a missing Image Pixel module), missing Pixel Data, size (the decompression-bomb
guard, before any decoding), frames, pixel format, then Pixel Data length for uncompressed syntaxes. Messages
never quote identity attributes.
"""

from __future__ import annotations

import math
import os
from typing import Any

from pydicom.dataset import Dataset

from dentalmim.data.dicom_layout import DicomLayout
from dentalmim.data.dicom_pixels import COLOUR, MONOCHROME
from dentalmim.errors import (
    ImageTooLargeError,
    MissingPixelDataError,
    MultiFrameError,
    NonImageObjectError,
    NotDicomError,
    UnsupportedPixelFormatError,
)

#: SOP class UID prefixes of objects that are never images (SR, presentation states, encapsulated documents,
#: waveforms, raw data, DICOMDIR).
NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.",
                          "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.9.",
                          "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.1.3.10")
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "ECG", "AU", "RWV", "PLAN"})
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def header_meta(path: str | os.PathLike, ds: Dataset, layout: DicomLayout, max_pixels: int) -> dict[str, Any]:
    """Validates the header of a parsed data set.

    Args:
        path: for messages.
        ds: parsed data set (Pixel Data may have been skipped; ``layout`` knows about it).
        layout: result of the byte-level walk.
        max_pixels: largest accepted Rows x Columns.

    Returns:
        Keyword arguments of :class:`dentalmim.data.dicom.DicomMeta`.
    """
    _check_is_image(path, ds, layout)
    rows, cols = _int(path, ds, "Rows"), _int(path, ds, "Columns")
    if rows <= 0 or cols <= 0:
        raise UnsupportedPixelFormatError(path, f"image has {rows} x {cols} pixels")
    if rows * cols > max_pixels:
        raise ImageTooLargeError(path, f"{rows} x {cols} pixels exceed the limit of {max_pixels}")
    frames = _int(path, ds, "NumberOfFrames", 1)
    if frames > 1:
        raise MultiFrameError(path, f"{frames} frames; only single-frame radiographs are supported")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    bits_stored = _check_pixel_format(path, ds, photometric)
    ts = str(ds.file_meta.get("TransferSyntaxUID", layout.transfer_syntax_uid))
    _check_length(path, ds, layout, ts, rows * cols)
    spacing, source = parse_spacing(ds)
    return {"sop_class_uid": _str(ds, "SOPClassUID"), "sop_instance_uid": _str(ds, "SOPInstanceUID"),
            "study_instance_uid": _str(ds, "StudyInstanceUID"), "series_instance_uid": _str(ds, "SeriesInstanceUID"),
            "modality": _str(ds, "Modality"), "photometric": photometric, "transfer_syntax_uid": ts,
            "rows": rows, "columns": cols, "bits_stored": bits_stored, "pixel_spacing_mm": spacing,
            "spacing_source": source}


#: Largest plausible pixel spacing (mm): dental radiographs have pixels of 0.01-0.2 mm, so a larger value is an
#: error (e.g. micrometres written as millimetres) and counts as absent.
SPACING_LIMIT_MM = 5.0


def parse_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing.

    A single value is used for both axes; non-numeric, non-finite, non-positive or implausible (above
    :data:`SPACING_LIMIT_MM`) values make that attribute count as absent.

    Returns:
        ((row_mm, col_mm), source keyword) or (None, None).
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            raw = ds.get(keyword)
        except Exception:  # unparsable value in the file
            continue
        values = _floats(raw)
        if values and all(math.isfinite(v) and 0 < v <= SPACING_LIMIT_MM for v in values):
            return (values[0], values[1] if len(values) > 1 else values[0]), keyword
    return None, None


def _floats(raw: Any) -> list[float]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, (bytes, str)):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        items: list[Any] = text.split("\\")
    else:
        items = list(raw) if hasattr(raw, "__iter__") else [raw]
    try:
        return [float(str(v).strip().replace(",", ".")) for v in items[:2]]
    except ValueError:
        return []


def _check_is_image(path: str | os.PathLike, ds: Dataset, layout: DicomLayout) -> None:
    sop_class = _str(ds, "SOPClassUID")
    has_pixel_module = "Rows" in ds and "Columns" in ds
    if not (sop_class or has_pixel_module or layout.has_pixel_data or "Modality" in ds):
        raise NotDicomError(path, "no SOP class, image or modality attributes")
    if sop_class.startswith(NON_IMAGE_SOP_PREFIXES) or _str(ds, "Modality").upper() in NON_IMAGE_MODALITIES:
        raise NonImageObjectError(path, f"SOP class {sop_class or 'unknown'} is not an image")
    if not has_pixel_module and not layout.has_pixel_data:
        raise NonImageObjectError(path, "no Image Pixel module (Rows, Columns, Pixel Data)")
    if not layout.has_pixel_data:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedPixelFormatError(path, "float pixel data is not supported")
        raise MissingPixelDataError(path, "no Pixel Data element")
    if not has_pixel_module:
        raise UnsupportedPixelFormatError(path, "Pixel Data without Rows/Columns")


def _check_pixel_format(path: str | os.PathLike, ds: Dataset, photometric: str) -> int:
    """Photometric, samples and bit depths; returns BitsStored."""
    if photometric not in MONOCHROME | COLOUR:
        raise UnsupportedPixelFormatError(path, f"photometric interpretation {photometric or '(missing)'}")
    samples = _int(path, ds, "SamplesPerPixel", 1)
    if samples != (1 if photometric in MONOCHROME else 3):
        raise UnsupportedPixelFormatError(path, f"{samples} samples per pixel for {photometric}")
    allocated = _int(path, ds, "BitsAllocated", 0)
    stored = _int(path, ds, "BitsStored", allocated)
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated:
        raise UnsupportedPixelFormatError(path, f"BitsAllocated {allocated} / BitsStored {stored}")
    if _int(path, ds, "PixelRepresentation", 0) not in (0, 1):
        raise UnsupportedPixelFormatError(path, "PixelRepresentation should be 0 or 1")
    return stored


def _check_length(path: str | os.PathLike, ds: Dataset, layout: DicomLayout, ts: str, pixels: int) -> None:
    """Uncompressed Pixel Data must hold exactly Rows x Columns x samples x BitsAllocated bits (padded to an even
    length): fewer bytes are missing data, more mean the header's image size is wrong (read as declared, the
    image would come out sheared)."""
    if ts not in _NATIVE:
        if layout.pixel_data_length is not None and layout.pixel_data_length == 0:
            raise MissingPixelDataError(path, "Pixel Data is empty")
        return
    expected = pixels * _int(path, ds, "SamplesPerPixel", 1) * _int(path, ds, "BitsAllocated", 0) // 8
    actual = layout.pixel_data_length
    if actual is None:
        raise MissingPixelDataError(path, "encapsulated Pixel Data in an uncompressed transfer syntax")
    if actual < expected:
        raise MissingPixelDataError(path, f"Pixel Data has {actual} bytes, expected {expected}")
    if actual > expected + expected % 2:
        raise UnsupportedPixelFormatError(path, f"Pixel Data has {actual} bytes, more than the {expected} that Rows "
                                                f"x Columns x samples x BitsAllocated declare: the image size in the "
                                                f"header does not match the pixel data")


def _int(path: str | os.PathLike, ds: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            if default is None:
                raise UnsupportedPixelFormatError(path, f"{keyword} is missing")
            return default
        return int(value)
    except (TypeError, ValueError):
        raise UnsupportedPixelFormatError(path, f"{keyword} is not an integer") from None


def _str(ds: Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:
        return ""
