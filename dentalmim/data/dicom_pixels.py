"""Stored DICOM pixel values -> a display-ready grey image in [0, 1].

The pipeline follows the DICOM grayscale rendering order (PS3.3 C.11 / PS3.4 N.2):

1. stored values: BitsStored respected (unused high bits masked; signed data sign-extended from BitsStored);
2. Modality LUT: ModalityLUTSequence, else RescaleSlope/RescaleIntercept;
3. VOI: VOILUTSequence (first item; output divided by the table's maximum), else the first WindowCenter /
   WindowWidth pair with VOILUTFunction LINEAR (default), LINEAR_EXACT or SIGMOID, mapped straight to [0, 1];
   without either (or with an invalid window) the *actual data* min..max is stretched to [0, 1]. We use the data
   range rather than the BitsStored range because dental sensors rarely fill their nominal range (a 12-bit
   sensor file often spans a few hundred values and would render nearly black), and rather than percentiles
   because clipping saturates metal restorations, which matter clinically next to caries;
4. MONOCHROME1 is inverted after the LUTs (so bright = dense for every file);
5. colour (RGB, or YBR_* which pydicom converts to RGB on decode) becomes grey with the Rec. 601 luma weights
   (the Y of YBR_FULL), divided by the BitsStored maximum (colour images are display-ready; no LUTs apply).

All arithmetic is float32 and in place where possible; the result is clipped to [0, 1] and finite.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

logger = logging.getLogger(__name__)

#: Photometric interpretations the reader renders.
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def mask_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keeps the low ``bits_stored`` bits of each stored value (sign-extended when ``signed``).

    Args:
        arr: (H, W) or (H, W, 3) integer stored values.
        bits_stored: DICOM BitsStored.
        signed: PixelRepresentation == 1.

    Returns:
        An integer array of the same shape (``arr`` itself when nothing needs masking).
    """
    container = arr.dtype.itemsize * 8
    if bits_stored >= container or not np.issubdtype(arr.dtype, np.integer):
        return arr
    if signed:
        half = 1 << (bits_stored - 1)
        if arr.dtype.kind == "i" and int(arr.min()) >= -half and int(arr.max()) < half:
            return arr  # already sign-extended: no copy
    elif int(arr.max()) < (1 << bits_stored):
        return arr  # no stray high bits: no copy
    unsigned = arr.view(np.dtype(f"u{arr.dtype.itemsize}")) if arr.dtype.kind == "i" else arr
    masked = unsigned & np.array((1 << bits_stored) - 1, dtype=unsigned.dtype)
    if not signed:
        return masked
    return (masked.astype(np.int32) ^ half) - half


def to_display(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Applies the rendering pipeline (module docstring) to decoded stored values.

    Args:
        ds: the data set the pixels came from (LUT and window attributes are read from it).
        stored: (H, W) grey or (H, W, 3) RGB integer stored values, BitsStored already respected.

    Returns:
        (H, W) float32 in [0, 1].
    """
    if stored.ndim == 3:
        return _colour_to_grey(stored, int(ds.BitsStored))
    values = _modality(ds, stored)
    out = _voi(ds, values)
    if out is None:
        out = _min_max(values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    np.clip(out, 0.0, 1.0, out=out)
    if not math.isfinite(float(out.sum(dtype=np.float64))):  # only NaN can survive the clip; rare, so check cheaply
        np.nan_to_num(out, copy=False, nan=0.0)
    return out


def _colour_to_grey(rgb: np.ndarray, bits_stored: int) -> np.ndarray:
    grey = rgb.astype(np.float32) @ _LUMA
    grey *= np.float32(1.0 / ((1 << bits_stored) - 1))
    return np.clip(grey, 0.0, 1.0, out=grey)


def _float_attr(ds: Dataset, keyword: str, default: float) -> float:
    """First value of a numeric (DS/IS, possibly multi-valued) attribute; ``default`` when absent or unparsable."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else default
    try:
        return float(str(value).strip().replace(",", "."))
    except (TypeError, ValueError):
        return default


def _modality(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT -> float32 (H, W)."""
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    slope = _float_attr(ds, "RescaleSlope", 1.0)
    intercept = _float_attr(ds, "RescaleIntercept", 0.0)
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0.0:
        logger.debug("ignoring invalid rescale (slope %s, intercept %s)", slope, intercept)
        slope, intercept = 1.0, 0.0
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _voi(ds: Dataset, values: np.ndarray) -> np.ndarray | None:
    """VOI LUT or window -> float32 (H, W) in [0, 1], or None when the data set has neither (or an invalid one)."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return _voi_lut(ds, values)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center = _float_attr(ds, "WindowCenter", math.nan)
    width = _float_attr(ds, "WindowWidth", math.nan)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return window(values, center, width, function)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray | None:
    """Maps values through a DICOM window (PS3.3 C.11.2.1.2) to [0, 1], in place.

    Args:
        values: (H, W) float32 modality values; overwritten.
        center, width: WindowCenter, WindowWidth.
        function: "LINEAR", "LINEAR_EXACT" or "SIGMOID" (unknown names fall back to LINEAR).

    Returns:
        ``values`` mapped to [0, 1], or None for an invalid window (non-finite, or width < 1 for LINEAR,
        width <= 0 otherwise), which the caller replaces by a min-max stretch.
    """
    if not (math.isfinite(center) and math.isfinite(width)):
        return None
    if function == "SIGMOID":
        if width <= 0:
            return None
        values -= np.float32(center)
        values *= np.float32(-4.0 / width)
        np.exp(values, out=values)
        values += np.float32(1.0)
        return np.reciprocal(values, out=values)
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        offset, scale = center - 0.5 * width, 1.0 / width
    else:
        if width < 1:
            return None
        if width == 1:  # a threshold: <= c - 0.5 -> 0, else 1
            return (values > np.float32(center - 0.5)).astype(np.float32)
        offset, scale = center - 0.5 - (width - 1) / 2.0, 1.0 / (width - 1)
    values -= np.float32(offset)
    values *= np.float32(scale)
    return np.clip(values, 0.0, 1.0, out=values)


def _voi_lut(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """First VOI LUT of the sequence, as a float32 table lookup normalised by the table maximum."""
    item = ds.VOILUTSequence[0]
    entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, index=0).astype(np.float32)
    top = float(table.max())
    table *= np.float32(1.0 / top) if top > 0 else np.float32(0.0)
    index = np.rint(values).astype(np.int64)
    index -= first
    np.clip(index, 0, entries - 1, out=index)
    return table[index]


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretches the data range to [0, 1] in place (a constant image becomes all zeros)."""
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        values.fill(0.0)
        return values
    values -= np.float32(lo)
    values *= np.float32(1.0 / (hi - lo))
    return values
