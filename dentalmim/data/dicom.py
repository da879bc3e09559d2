"""Read single-frame dental radiographs (intraoral IO, panoramic PX/DX, CR) into display-ready float32 images.

Why not MONAI's ``LoadImage(reader="PydicomReader")``? It is built for volumes: by default it swaps the first
two axes (so ``array[x, y]``), applies only RescaleSlope/Intercept (no VOI LUT or window, so the rendering the
modality chose is lost, and no MONOCHROME1 inversion, so those files come out as negatives), has no pixel-count
guard before decoding (a header claiming 65535 x 65535 pixels asks for gigabytes) and raises whatever pydicom or
a decoder raises. Clinical archives are full of odd files, so this module reads with
pydicom directly:

* the bytes are checked structurally first (:mod:`dentalmim.data.dicom_layout`: truncation, files without the
  preamble, deflate bombs), then the header is validated (SOP class, pixel module, size guard, frames,
  photometric, transfer syntax and decoder availability, Pixel Data length) *before* anything is decoded;
* decoding is pydicom's (with pylibjpeg, pyjpegls, Pillow plugins), then :mod:`dentalmim.data.dicom_pixels`
  applies Modality LUT -> VOI LUT/window (or min-max) -> MONOCHROME1 inversion -> colour to grey;
* every failure is a named :class:`~dentalmim.errors.DicomReadError` subclass whose message names the file and
  the reason, never a tag value; pydicom's warnings are silenced while reading and only pixel-module, UID,
  spacing and LUT attributes are ever converted, so pydicom's validation messages cannot quote a patient's data.

:class:`DentalDicomReader` (in :mod:`dentalmim.data.dicom_monai`, importable from here lazily, so reading DICOM
does not import torch) wraps :func:`read_dicom` as a MONAI ``ImageReader`` so MONAI pipelines get the same
(H, W) arrays (no axis swap) and metadata, e.g. ``LoadImage(reader=DentalDicomReader(), image_only=True)``.
Multi-frame objects are rejected (:class:`~dentalmim.errors.MultiFrameError`): radiographs are single-frame, and
silently taking frame 0 of e.g. a tomosynthesis series would train on the wrong thing.
"""

from __future__ import annotations

import io
import mmap
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.pixels import get_decoder

from dentalmim.data.dicom_header import header_meta, parse_spacing
from dentalmim.data.dicom_layout import DicomLayout, inspect_layout
from dentalmim.data.dicom_pixels import mask_bits, to_display
from dentalmim.errors import (
    ConfigError,
    DicomReadError,
    ImageTooLargeError,
    TruncatedDicomError,
    UnsupportedTransferSyntaxError,
)

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_TYPES", "DentalDicomReader", "DicomImage", "DicomMeta", "image_type",
           "parse_spacing", "read_dicom", "read_dicom_dataset", "read_dicom_header"]

#: Largest Rows x Columns accepted (a 2900 x 1450 panoramic is 4.2 MP; cone-beam projections stay far below).
DEFAULT_MAX_PIXELS: int = 40_000_000
#: DICOM Modality -> image type (evaluation breakdowns, per-type validation support); other modalities keep their
#: code.
IMAGE_TYPES = {"PX": "panoramic", "IO": "intraoral"}


def image_type(modality: str | None) -> str:
    """``panoramic`` / ``intraoral`` from a DICOM Modality (PX / IO), another modality's code, or ``unknown``."""
    code = (modality or "").strip().upper()
    return IMAGE_TYPES.get(code, code or "unknown")


@dataclass(frozen=True)
class DicomMeta:
    """Header facts about one radiograph (no patient data).

    ``pixel_spacing_mm`` is (row spacing = y, column spacing = x) in DICOM order, from PixelSpacing, else
    ImagerPixelSpacing (``spacing_source`` says which), None when absent or invalid.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    photometric: str
    transfer_syntax_uid: str
    rows: int
    columns: int
    bits_stored: int
    pixel_spacing_mm: tuple[float, float] | None
    spacing_source: str | None

    def to_dict(self) -> dict:
        """JSON-serialisable dict (spacing as a list or None)."""
        out = asdict(self)
        out["pixel_spacing_mm"] = list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None
        return out


@dataclass(frozen=True)
class DicomImage:
    """A decoded radiograph.

    Attributes:
        pixels: (H, W) float32 in [0, 1], display-ready (LUTs applied, MONOCHROME1 inverted, colour -> grey).
        meta: header facts.
    """

    pixels: np.ndarray
    meta: DicomMeta


def read_dicom_header(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DicomMeta:
    """Validates a file as a single-frame radiograph without decoding its pixels.

    Args:
        path: the DICOM file.
        max_pixels: largest accepted Rows x Columns.

    Returns:
        The header facts.

    Raises:
        DicomReadError: a subclass naming the problem (see :mod:`dentalmim.errors`).
    """
    ds, layout = _load(path, max_pixels, stop_before_pixels=True)
    return _validated_meta(path, ds, layout, max_pixels)


def read_dicom(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DicomImage:
    """Reads and renders a single-frame radiograph.

    Args:
        path: the DICOM file.
        max_pixels: largest accepted Rows x Columns, checked before decoding.

    Returns:
        The (H, W) float32 image in [0, 1] and its header facts.

    Raises:
        DicomReadError: a subclass naming the problem; decoder failures become a plain DicomReadError with the
            exception type (never its message, which may quote data).
    """
    return read_dicom_dataset(path, max_pixels=max_pixels)[0]


def read_dicom_dataset(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[DicomImage, Dataset]:
    """Like :func:`read_dicom` (same checks, full decode), also returning the parsed pydicom data set.

    The data set has ``file_meta.TransferSyntaxUID`` set even when the file had no File Meta Information, so it
    can be re-written (e.g. after de-identification) without decoding again.

    Returns:
        (image, data set).
    """
    ds, layout = _load(path, max_pixels, stop_before_pixels=False)
    meta = _validated_meta(path, ds, layout, max_pixels)
    return DicomImage(pixels=_render(path, ds, meta), meta=meta), ds


def _render(path: str | os.PathLike, ds: Dataset, meta: DicomMeta) -> np.ndarray:
    """Decodes (without caching the array on ``ds``) and renders to (H, W) float32 in [0, 1]."""
    stage = "pixel data could not be decoded"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoder = get_decoder(meta.transfer_syntax_uid)  # masking is done by mask_bits, without a copy here
            stored, _ = decoder.as_array(ds, index=0, view_only=True, correct_unused_bits=False)
            stored = mask_bits(stored, meta.bits_stored, int(ds.get("PixelRepresentation", 0)) == 1)
            stage = "the Modality/VOI LUT or window of the header could not be applied"
            pixels = to_display(ds, stored)
    except DicomReadError:
        raise
    except MemoryError:
        raise ImageTooLargeError(path, "not enough memory to decode the pixel data") from None
    except Exception as exc:  # decoders raise anything; keep only the type, messages may quote data
        raise DicomReadError(path, f"{stage} ({type(exc).__name__})") from None
    if pixels.shape != (meta.rows, meta.columns):
        raise DicomReadError(path, f"decoded shape {pixels.shape} differs from Rows x Columns")
    return pixels


def _max_file_bytes(max_pixels: int) -> int:
    """Largest file accepted: 3 samples x 16 bits per allowed pixel, plus 64 MiB for the rest of the header."""
    return 6 * max_pixels + (64 << 20)


def _load(path: str | os.PathLike, max_pixels: int, *, stop_before_pixels: bool) -> tuple[Dataset, DicomLayout]:
    """Checks the file's structure (on a read-only memory map), then parses it with pydicom (warnings silenced)."""
    if max_pixels <= 0:
        raise ConfigError(f"max_pixels should be > 0, got {max_pixels}.")
    with _open(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        limit = _max_file_bytes(max_pixels)
        if size > limit:
            raise ImageTooLargeError(path, f"file is {size} bytes, more than the {limit} bytes allowed")
        if size == 0:
            raise TruncatedDicomError(path, "empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:  # walked without copying
            layout = inspect_layout(path, data, limit)
        fh.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = _parse(fh, layout, stop_before_pixels)
        except Exception as exc:  # the structure was checked; anything left is malformed content
            raise DicomReadError(path, f"malformed data set ({type(exc).__name__})") from None
    _set_transfer_syntax(path, ds, layout)
    return ds, layout


def _open(path: str | os.PathLike) -> BinaryIO:
    """The file opened for reading; a path that cannot be opened (missing, a folder, a link loop) is a read error."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DicomReadError(path, f"cannot be opened ({exc.strerror or type(exc).__name__})") from None


def _parse(fh: BinaryIO, layout: DicomLayout, stop_before_pixels: bool) -> Dataset:
    """pydicom parse; a deflated data set is parsed from the copy the layout walk already inflated."""
    if layout.inflated is None:
        return pydicom.dcmread(fh, force=True, stop_before_pixels=stop_before_pixels)
    read_preamble(fh, True)
    file_meta = _read_file_meta_info(fh)  # pydicom's own File Meta reader (always explicit little endian)
    stop = (lambda tag, vr, length: tag == 0x7FE00010) if stop_before_pixels else None
    ds = read_dataset(io.BytesIO(layout.inflated), is_implicit_VR=False, is_little_endian=True, stop_when=stop)
    ds.file_meta = file_meta
    return ds


def _set_transfer_syntax(path: str | os.PathLike, ds: Dataset, layout: DicomLayout) -> None:
    """Files without File Meta Information get the encoding the byte walk found (needed to decode)."""
    if layout.has_file_meta and ds.file_meta.get("TransferSyntaxUID"):
        return
    if layout.has_pixel_data and layout.pixel_data_length is None:
        raise UnsupportedTransferSyntaxError(path, "compressed pixel data but no transfer syntax in the file")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(layout.transfer_syntax_uid)


def _validated_meta(path: str | os.PathLike, ds: Dataset, layout: DicomLayout, max_pixels: int) -> DicomMeta:
    """Header checks in order (non-image, pixel module, size, frames, format, syntax, length) -> DicomMeta."""
    facts = header_meta(path, ds, layout, max_pixels)
    _check_decoder(path, facts["transfer_syntax_uid"])
    return DicomMeta(**facts)


def _check_decoder(path: str | os.PathLike, uid: str) -> None:
    try:
        decoder = get_decoder(uid)
    except Exception:
        raise UnsupportedTransferSyntaxError(path, f"transfer syntax {uid} is not supported") from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(path, f"no installed decoder for transfer syntax {uid}")


def __getattr__(name: str) -> Any:
    """Lazy ``DentalDicomReader``: importing MONAI (and torch) takes seconds, reading DICOM should not."""
    if name == "DentalDicomReader":
        from dentalmim.data.dicom_monai import DentalDicomReader

        return DentalDicomReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
