"""Re-encode single-frame DICOM images into any transfer syntax dental archives use, and write them safely.

The synthetic corpus and the tests need files in every transfer syntax the reader must handle. pydicom encodes
RLE, JPEG-LS and JPEG 2000 (via ``Dataset.compress`` and the installed plugins) and writes implicit, deflated and
big-endian encodings from ``file_meta.TransferSyntaxUID``; the rest is done here:

* explicit big endian: PixelData is byte-swapped per 16-bit word (pydicom writes the bytes as they are);
* JPEG baseline: 8-bit samples encoded with Pillow and encapsulated;
* JPEG lossless (Process 14 and its selection value 1 variant): :mod:`dentalmim.data.jpeg_lossless`.

Lossy encodings set the Lossy Image Compression attributes, as PS3.3 C.7.6.1.1.5 requires.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dentalmim.data.jpeg_lossless import encode_jpeg_lossless
from dentalmim.fileio import atomic_open

#: Short name -> transfer syntax UID of every syntax :func:`encode_dataset` writes.
SUPPORTED_TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit_le": "1.2.840.10008.1.2.1",
    "implicit_le": "1.2.840.10008.1.2",
    "explicit_be": "1.2.840.10008.1.2.2",
    "deflated": "1.2.840.10008.1.2.1.99",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
    "jpeg_lossless": "1.2.840.10008.1.2.4.57",
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
    "jpeg_ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000_lossless": "1.2.840.10008.1.2.4.90",
    "jpeg2000": "1.2.840.10008.1.2.4.91",
}

#: Syntaxes that lose information; the reader tests compare these within a tolerance.
LOSSY_SYNTAXES: frozenset[str] = frozenset({"jpeg_baseline", "jpeg2000"})

#: SOP classes of the radiographs dental archives hold.
IO_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.3"
DX_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"

_NATIVE = {"explicit_le", "implicit_le", "explicit_be", "deflated"}
_PYDICOM_COMPRESSED = {"rle": "pylibjpeg", "jpeg_ls": "pyjpegls", "jpeg2000_lossless": "pylibjpeg",
                       "jpeg2000": "pylibjpeg"}


def encode_dataset(ds: Dataset, syntax: str, *, quality: int = 90) -> Dataset:
    """Re-encodes the PixelData of a single-frame image in place.

    Args:
        ds: data set holding uncompressed little-endian PixelData (explicit or implicit VR) of one frame.
            ``file_meta`` is created when missing.
        syntax: a key of :data:`SUPPORTED_TRANSFER_SYNTAXES`.
        quality: 1..100 for lossy syntaxes: the Pillow JPEG quality for ``jpeg_baseline``; for ``jpeg2000``
            the compression ratio is ``1 + (100 - quality) / 5`` (90 -> 3:1, 50 -> 11:1). Ignored otherwise.

    Returns:
        ``ds`` itself, with ``file_meta.TransferSyntaxUID`` set, ready for :func:`save_dicom`.

    Raises:
        ValueError: unknown syntax, bad quality, compressed or multi-frame input, or pixel attributes the
            syntax cannot hold (JPEG baseline needs 8-bit samples; JPEG lossless one sample per pixel; JPEG 2000
            at least 32 x 32 pixels).
    """
    _check_args(ds, syntax, quality)
    uid = SUPPORTED_TRANSFER_SYNTAXES[syntax]
    if syntax in _NATIVE:
        _encode_native(ds, syntax)
    elif syntax in _PYDICOM_COMPRESSED:
        kwargs = {"j2k_cr": [1.0 + (100 - quality) / 5.0]} if syntax == "jpeg2000" else {}
        ds.compress(uid, encoding_plugin=_PYDICOM_COMPRESSED[syntax], generate_instance_uid=False, **kwargs)
    elif syntax == "jpeg_baseline":
        _set_encapsulated(ds, uid, _encode_baseline(ds, quality))
    else:
        precision = int(ds.BitsStored)
        frame = encode_jpeg_lossless(_native_array(ds), precision)
        _set_encapsulated(ds, uid, frame)
    if syntax in LOSSY_SYNTAXES:
        _mark_lossy(ds, syntax)
    return ds


def image_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    modality: str = "IO",
    sop_class_uid: str = IO_PRESENTATION_SOP_CLASS,
    pixel_spacing_mm: tuple[float, float] | None = None,
    signed: bool = False,
) -> Dataset:
    """Builds a minimal single-frame image data set (explicit VR little endian) around stored samples.

    Only the Image Pixel module, SOP common identifiers (fresh UIDs), Modality and optionally PixelSpacing are
    filled; callers add patient/study attributes they need.

    Args:
        pixels: (H, W) grey or (H, W, 3) RGB stored values (no LUT applied); must fit in ``bits_stored`` bits.
        bits_stored: 1..16; BitsAllocated becomes 8 for <= 8 bits, else 16.
        photometric: stored PhotometricInterpretation (e.g. MONOCHROME1/2, RGB, YBR_FULL).
        modality: DICOM Modality (IO, PX, DX, CR ...).
        sop_class_uid: SOP Class UID, intra-oral "for presentation" by default.
        pixel_spacing_mm: (row, column) spacing written as PixelSpacing, or None.
        signed: PixelRepresentation 1 (two's complement) instead of 0.

    Returns:
        The new data set, with ``file_meta`` (explicit VR little endian).
    """
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored should be in [1, 16], got {bits_stored}.")
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels should have shape (H, W) or (H, W, 3), got {pixels.shape}.")
    allocated = 8 if bits_stored <= 8 else 16
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class_uid), generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = [f"{float(v):.6g}" for v in pixel_spacing_mm]
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    ds.PixelData = np.ascontiguousarray(pixels).astype(dtype).tobytes()
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    _ensure_file_meta(ds)
    return ds


def save_dicom(ds: Dataset, path: str | os.PathLike) -> None:
    """Writes ``ds`` as a DICOM Part 10 file atomically (temporary file in the same folder + ``os.replace``).

    The encoding (implicit/explicit VR, byte order, deflate) follows ``ds.file_meta.TransferSyntaxUID``; big
    endian PixelData must already be byte-swapped, as :func:`encode_dataset` leaves it.

    Args:
        ds: the data set; ``file_meta`` is completed (class/instance UIDs, implementation UID) when missing.
        path: destination file; its folder must exist.
    """
    _ensure_file_meta(ds)
    with atomic_open(path, "wb") as fh:
        pydicom.dcmwrite(fh, ds, enforce_file_format=True)


def _check_args(ds: Dataset, syntax: str, quality: int) -> None:
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"syntax should be one of {sorted(SUPPORTED_TRANSFER_SYNTAXES)}, got {syntax!r}.")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality should be in [1, 100], got {quality}.")
    _ensure_file_meta(ds)
    current = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    if current not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise ValueError(f"ds should hold uncompressed little-endian PixelData, got transfer syntax {current}.")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"ds should be single-frame, got NumberOfFrames={ds.NumberOfFrames}.")
    spp = int(ds.get("SamplesPerPixel", 1))
    if syntax.startswith("jpeg_lossless") and spp != 1:
        raise ValueError(f"{syntax} needs SamplesPerPixel 1, got {spp}.")
    if syntax.startswith("jpeg2000") and min(int(ds.Rows), int(ds.Columns)) < 32:
        # openjpeg encodes with 6 wavelet resolutions, which needs at least 2**5 samples per side.
        raise ValueError(f"{syntax} needs Rows and Columns >= 32, got {ds.Rows} x {ds.Columns}.")
    if syntax == "jpeg_baseline" and int(ds.BitsAllocated) != 8:
        raise ValueError(f"jpeg_baseline needs 8-bit samples (BitsAllocated 8), got {ds.BitsAllocated}.")


def _ensure_file_meta(ds: Dataset) -> None:
    """Creates or completes the File Meta Information from the data set itself."""
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    meta.setdefault("TransferSyntaxUID", UID(ExplicitVRLittleEndian))
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.setdefault("ImplementationClassUID", UID(PYDICOM_IMPLEMENTATION_UID))


def _native_array(ds: Dataset) -> np.ndarray:
    """The stored samples as (H, W) or (H, W, S), without any LUT."""
    return ds.pixel_array


def _encode_native(ds: Dataset, syntax: str) -> None:
    """Uncompressed syntaxes: only the transfer syntax (and for big endian, the PixelData byte order) change."""
    uid = UID(SUPPORTED_TRANSFER_SYNTAXES[syntax])
    if syntax == "explicit_be" and int(ds.BitsAllocated) > 8:
        word = np.dtype(f">u{int(ds.BitsAllocated) // 8}")
        ds.PixelData = np.frombuffer(ds.PixelData, dtype=word.newbyteorder("<")).astype(word).tobytes()
        ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = uid


def _encode_baseline(ds: Dataset, quality: int) -> bytes:
    """8-bit grey (or RGB, written as YBR_FULL_422) samples -> a baseline JPEG code stream via Pillow."""
    from PIL import Image

    arr = np.ascontiguousarray(_native_array(ds).astype(np.uint8))
    buf = io.BytesIO()
    if arr.ndim == 3:
        Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality, subsampling=1)
        ds.PhotometricInterpretation = "YBR_FULL_422"
    else:
        Image.fromarray(arr, "L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _set_encapsulated(ds: Dataset, uid: str, frame: bytes) -> None:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(uid)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0


def _mark_lossy(ds: Dataset, syntax: str) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1" if syntax == "jpeg_baseline" else "ISO_15444_1"
    raw = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
    ds.LossyImageCompressionRatio = f"{raw / max(len(ds.PixelData), 1):.2f}"[:16]
