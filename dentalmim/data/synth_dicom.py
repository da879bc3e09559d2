"""Synthetic radiographs as DICOM: file formats, identifiers and the data set around the pixels.

Files vary the way real archives do: Intraoral (IO) and Digital X-Ray (PX) "for presentation" SOP classes,
8-16 stored bits, MONOCHROME1 as well as MONOCHROME2, PixelSpacing or ImagerPixelSpacing, optional VOI windows
and rescale, and every transfer syntax of :data:`dentalmim.data.encode.SUPPORTED_TRANSFER_SYNTAXES`. Whatever the
format, a conforming reader displays the same image. Identifiers are fake but look real (``SYNTH^PATIENT^0007``)
so that de-identification has something to remove; UIDs derive from the corpus seed, so output is reproducible.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dentalmim import __version__
from dentalmim.data.encode import (
    DX_PRESENTATION_SOP_CLASS,
    IO_PRESENTATION_SOP_CLASS,
    LOSSY_SYNTAXES,
    SUPPORTED_TRANSFER_SYNTAXES,
    encode_dataset,
)

#: One cycle of the default transfer-syntax mix (lossy syntaxes are a small minority).
SYNTAX_CYCLE: tuple[str, ...] = (
    ("explicit_le",) * 5 + ("implicit_le",) * 2 + ("explicit_be", "deflated") + ("rle",) * 2
    + ("jpeg_lossless", "jpeg_lossless_sv1", "jpeg_ls", "jpeg_ls", "jpeg2000_lossless", "jpeg2000_lossless")
    + ("jpeg_baseline", "jpeg2000")
)
#: Stored bit depths and their probabilities.
BITS_STORED = (8, 10, 12, 14, 16)
BITS_WEIGHTS = (0.15, 0.15, 0.4, 0.15, 0.15)
#: Fraction of files stored as MONOCHROME1 (inverted values), with a VOI window, with a rescale.
MONOCHROME1_FRACTION = 0.18
WINDOW_FRACTION = 0.5
RESCALE_FRACTION = 0.12
#: Rescale (slope, intercept) pairs used when a file has one.
RESCALES = ((1.0, -1024.0), (0.5, 0.0), (2.0, 100.0))
#: Quality of lossy encodings (high: lesions survive).
LOSSY_QUALITY = 95
#: Native syntaxes, where 8 stored bits may sit in 16 allocated bits.
_NATIVE = ("explicit_le", "implicit_le", "explicit_be", "deflated")
#: Namespace of the synthetic UIDs (a fixed random UUID).
_UID_NAMESPACE = uuid.UUID("5c0e4a8e-3b1d-4f6a-9a51-6d2f1e0c7b93")


@dataclass(frozen=True)
class FileFormat:
    """How one image is stored.

    Attributes:
        syntax: transfer syntax name (key of ``SUPPORTED_TRANSFER_SYNTAXES``).
        bits_stored: BitsStored (8-16).
        bits_allocated: BitsAllocated (8 or 16).
        photometric: "MONOCHROME2" or "MONOCHROME1".
        spacing_attribute: "PixelSpacing" or "ImagerPixelSpacing".
        window: write WindowCenter/WindowWidth.
        rescale: (RescaleSlope, RescaleIntercept) or None.
    """

    syntax: str
    bits_stored: int
    bits_allocated: int
    photometric: str
    spacing_attribute: str
    window: bool
    rescale: tuple[float, float] | None


def choose_format(rng: np.random.Generator, syntax: str) -> FileFormat:
    """Draws bit depth, photometric interpretation, spacing attribute, window and rescale for ``syntax``."""
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"syntax should be one of {sorted(SUPPORTED_TRANSFER_SYNTAXES)}, got {syntax!r}.")
    bits = 8 if syntax == "jpeg_baseline" else int(rng.choice(BITS_STORED, p=BITS_WEIGHTS))
    allocated = 16 if bits > 8 or (syntax in _NATIVE and rng.random() < 0.3) else 8
    rescale = RESCALES[int(rng.integers(len(RESCALES)))] if rng.random() < RESCALE_FRACTION else None
    return FileFormat(
        syntax=syntax, bits_stored=bits, bits_allocated=allocated,
        photometric="MONOCHROME1" if rng.random() < MONOCHROME1_FRACTION else "MONOCHROME2",
        spacing_attribute=str(rng.choice(["PixelSpacing", "ImagerPixelSpacing"])),
        window=bool(rng.random() < WINDOW_FRACTION), rescale=rescale,
    )


def stored_values(pixels: np.ndarray, fmt: FileFormat) -> np.ndarray:
    """Display image (H, W) in [0, 1] -> stored samples over the full BitsStored range (inverted for MONOCHROME1).

    Returns:
        (H, W) uint8 or uint16 array (dtype per BitsAllocated).
    """
    top = (1 << fmt.bits_stored) - 1
    dtype = np.uint16 if fmt.bits_allocated == 16 else np.uint8
    values = np.rint(np.clip(pixels, 0.0, 1.0) * np.float32(top)).astype(dtype)
    if fmt.photometric == "MONOCHROME1":
        values = (top - values).astype(values.dtype)
    return values


@dataclass(frozen=True)
class DicomIds:
    """Identifiers of one instance (all fake)."""

    patient_number: int
    patient_birth_date: str
    patient_sex: str
    study_uid: str
    study_date: str
    study_number: int
    series_uid: str
    series_number: int
    sop_uid: str
    instance_number: int


def synth_uid(seed: int, *parts: object) -> str:
    """Deterministic UUID-derived UID (``2.25.<uuid5 as integer>``, PS3.5 B.2) from the seed and identifying parts."""
    name = "/".join([str(seed), *(str(p) for p in parts)])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def patient_name(number: int) -> str:
    """Fake patient name, e.g. ``SYNTH^PATIENT^0007``."""
    return f"SYNTH^PATIENT^{number:04d}"


def patient_id(number: int) -> str:
    """Fake patient ID, e.g. ``SYNTH-0007`` (also the COCO ``patient_id``)."""
    return f"SYNTH-{number:04d}"


def _patient_module(ds: Dataset, ids: DicomIds) -> None:
    ds.PatientName = patient_name(ids.patient_number)
    ds.PatientID = patient_id(ids.patient_number)
    ds.PatientBirthDate = ids.patient_birth_date
    ds.PatientSex = ids.patient_sex
    ds.OtherPatientIDs = f"MRN{ids.patient_number:07d}"


def _study_series_modules(ds: Dataset, ids: DicomIds, kind: str) -> None:
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = ids.study_uid, ids.study_date, "101500"
    ds.StudyID = f"S{ids.study_number:05d}"
    ds.AccessionNumber = f"ACC{ids.patient_number:04d}{ids.study_number:03d}"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.StudyDescription = "Dental radiographs (synthetic)"
    ds.InstitutionName = "Synthetic Dental Clinic"
    ds.InstitutionAddress = "1 Example Street, Nowhere"
    ds.OperatorsName = "SYNTH^OPERATOR"
    ds.SeriesInstanceUID, ds.SeriesNumber = ids.series_uid, ids.series_number
    ds.Modality = "PX" if kind == "panoramic" else "IO"
    ds.SeriesDescription = kind
    ds.Manufacturer, ds.ManufacturerModelName = "dentalmim", "synthetic radiograph generator"
    ds.DeviceSerialNumber, ds.SoftwareVersions = f"SYN{ids.patient_number % 97:04d}", __version__


def _image_module(ds: Dataset, ids: DicomIds, kind: str, fmt: FileFormat) -> None:
    pano = kind == "panoramic"
    ds.SOPClassUID = DX_PRESENTATION_SOP_CLASS if pano else IO_PRESENTATION_SOP_CLASS
    ds.SOPInstanceUID, ds.InstanceNumber = ids.sop_uid, ids.instance_number
    ds.ContentDate, ds.ContentTime = ids.study_date, f"1016{ids.instance_number % 60:02d}"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if fmt.photometric == "MONOCHROME2" else 1
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.ImageLaterality = "B" if pano else "U"
    ds.DetectorType = "SCINTILLATOR"
    ds.KVP = "70" if pano else "65"
    ds.ImageComments = f"synthetic {kind}"


def _pixel_module(ds: Dataset, values: np.ndarray, spacing_mm: float, fmt: FileFormat) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, fmt.photometric
    ds.Rows, ds.Columns = int(values.shape[0]), int(values.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = fmt.bits_allocated, fmt.bits_stored, fmt.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(values).astype(f"<u{fmt.bits_allocated // 8}").tobytes()
    ds["PixelData"].VR = "OB" if fmt.bits_allocated == 8 else "OW"
    setattr(ds, fmt.spacing_attribute, [f"{spacing_mm:.6g}", f"{spacing_mm:.6g}"])
    slope, intercept = fmt.rescale or (1.0, 0.0)
    if fmt.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    if fmt.window:  # exactly the full stored range, so the window changes nothing on display
        lo, hi = intercept, slope * ((1 << fmt.bits_stored) - 1) + intercept
        ds.WindowCenter, ds.WindowWidth = f"{(lo + hi + 1) / 2:g}", f"{hi - lo + 1:g}"


def build_dataset(pixels: np.ndarray, spacing_mm: float, kind: str, fmt: FileFormat, ids: DicomIds) -> Dataset:
    """Wraps a display image into a complete, encoded DICOM data set.

    Args:
        pixels: (H, W) float32 display image in [0, 1], bright = dense.
        spacing_mm: pixel spacing (mm).
        kind: "bitewing" | "periapical" | "panoramic" (IO or DX/PX objects).
        fmt: storage format.
        ids: identifiers.

    Returns:
        The data set, encoded in ``fmt.syntax`` and ready for :func:`dentalmim.data.encode.save_dicom`.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    _patient_module(ds, ids)
    _study_series_modules(ds, ids, kind)
    _image_module(ds, ids, kind, fmt)
    _pixel_module(ds, stored_values(pixels, fmt), spacing_mm, fmt)
    quality = LOSSY_QUALITY if fmt.syntax in LOSSY_SYNTAXES else 90
    return encode_dataset(ds, fmt.syntax, quality=quality)


def study_date(rng: np.random.Generator) -> str:
    """A fixed-seed date between 2018 and 2024 as DICOM DA."""
    day = dt.date(2018, 1, 1) + dt.timedelta(days=int(rng.integers(0, 7 * 365)))
    return day.strftime("%Y%m%d")
