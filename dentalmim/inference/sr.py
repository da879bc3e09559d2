"""Caries findings as a DICOM Comprehensive 3D SR (TID 1500 "Imaging Measurement Report"), made with highdicom.

Document layout (one SR per source radiograph, same StudyInstanceUID, new series and instance UIDs):

* observation context: a device observer (the algorithm: name, version, manufacturer); procedure reported
  SCT 1290849002 "Dental radiography";
* one TID 1501 image-level group (tracking identifier ``"image"``): finding type SCT 80967001 "Dental caries",
  qualitative evaluation "Dental caries" = SCT 52101004 "Present" / SCT 272519000 "Absent" (present when at
  least one region scored >= ``threshold``), the image caries probability as NUM DCM 122157 "Probability"
  (UCUM ``1``, no units), the source image as "Source";
* one TID 1410 planar ROI group per region with score >= ``threshold`` (tracking identifier ``"finding N"``,
  N from 1, and a fresh tracking UID): the box as a closed 5-point POLYLINE SCOORD referencing the source image,
  finding category SCT 49755003 "Morphologically abnormal structure", finding type SCT 80967001 "Dental caries",
  the detection score as NUM DCM 111012 "Certainty of Finding" (UCUM ``1``) and, for depth classes, a
  qualitative evaluation in the private scheme ``99DENTALMIM`` (:data:`DEPTH_CONCEPT`, :data:`DEPTH_CODES`;
  ICCMS radiographic RA = enamel, RB/RC = dentin);
* every group carries TID 4019 algorithm identification: name, version, parameter ``threshold=<t>``.

Coordinates: SCOORD graphic data are (column, row) pairs where (0, 0) is the top-left corner of the top-left
pixel and (Columns, Rows) the bottom-right corner of the bottom-right pixel, i.e. exactly the library's
continuous ``x, y`` box coordinates, so boxes are written without any offset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from dentalmim.errors import DentalMimError
from dentalmim.fileio import atomic_open

#: Comprehensive 3D SR Storage SOP Class UID.
COMPREHENSIVE_3D_SR_UID = "1.2.840.10008.5.1.4.1.1.88.34"
#: Default Series Number of the SR series.
DEFAULT_SERIES_NUMBER = 900
#: Detector class names accepted per box, and the depth class each one reports.
CLASS_DEPTHS: dict[str, str | None] = {"caries": None, "enamel_caries": "enamel", "dentin_caries": "dentin"}

DENTAL_CARIES = hd.sr.CodedConcept(value="80967001", scheme_designator="SCT", meaning="Dental caries")
DENTAL_RADIOGRAPHY = hd.sr.CodedConcept(value="1290849002", scheme_designator="SCT", meaning="Dental radiography")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept(value="49755003", scheme_designator="SCT",
                                        meaning="Morphologically abnormal structure")
PRESENT = hd.sr.CodedConcept(value="52101004", scheme_designator="SCT", meaning="Present")
ABSENT = hd.sr.CodedConcept(value="272519000", scheme_designator="SCT", meaning="Absent")
SCORE_CONCEPT = hd.sr.CodedConcept(value="111012", scheme_designator="DCM", meaning="Certainty of Finding")
PROBABILITY_CONCEPT = hd.sr.CodedConcept(value="122157", scheme_designator="DCM", meaning="Probability")
NO_UNITS = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
#: Private coding scheme for caries depth (no standard code for "caries limited to enamel" is used here).
DEPTH_CONCEPT = hd.sr.CodedConcept(value="DEPTH", scheme_designator="99DENTALMIM", meaning="Caries depth class")
DEPTH_CODES = {
    "enamel": hd.sr.CodedConcept(value="ENAMEL", scheme_designator="99DENTALMIM",
                                 meaning="Caries limited to enamel (ICCMS RA)"),
    "dentin": hd.sr.CodedConcept(value="DENTIN", scheme_designator="99DENTALMIM",
                                 meaning="Caries extending into dentin (ICCMS RB/RC)"),
}
_ALGORITHM_NAME, _ALGORITHM_VERSION, _ALGORITHM_PARAMETERS = "111001", "111003", "111002"
#: Patient / study attributes highdicom reads from the evidence; absent ones are written empty (Type 2).
_TYPE2_FROM_SOURCE = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                      "StudyDate", "StudyTime", "ReferringPhysicianName")
#: Source attributes an SR reference needs (highdicom also checks that Modality names an image).
_REQUIRED_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")


class SRWriteError(DentalMimError):
    """A findings SR could not be built or written (unusable source header, highdicom rejection, I/O)."""


class SRReadError(DentalMimError):
    """A data set is not a dentalmim findings SR (wrong SOP class or content layout)."""


def write_findings_sr(
    source: Dataset,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    image_probability: float,
    *,
    algorithm_name: str = "dentalmim",
    algorithm_version: str,
    threshold: float,
    out_path: str | os.PathLike | None = None,
    manufacturer: str = "dentalmim",
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
) -> Dataset:
    """Builds (and optionally writes) the findings SR of one radiograph.

    Args:
        source: the analysed image's data set; only its header is used (pixel data may be absent).
        boxes: (K, 4) x1, y1, x2, y2 in original pixels (x along Columns); clipped to the image.
        scores: (K,) detection scores in [0, 1]; only regions with score >= ``threshold`` are reported.
        class_names: K class names; "enamel_caries" / "dentin_caries" add a depth evaluation, any other name is
            written as a dental caries finding without depth.
        image_probability: image-level caries probability in [0, 1].
        algorithm_name: algorithm name (TID 4019).
        algorithm_version: algorithm (model) version, non-empty.
        threshold: reporting threshold in [0, 1], recorded as algorithm parameter ``threshold=<t>``.
        out_path: when given, the SR is written there (DICOM file format, atomic replace).
        manufacturer: Manufacturer of the SR and of the device observer.
        series_number: Series Number of the new SR series.
        instance_number: Instance Number of the SR.

    Returns:
        The SR (a :class:`highdicom.sr.Comprehensive3DSR`, a pydicom ``Dataset``).

    Raises:
        ValueError: invalid arguments (the message names the argument).
        SRWriteError: the source lacks identifying attributes, highdicom rejects the content, or writing fails.
    """
    boxes, scores = _check_findings(boxes, scores, class_names, image_probability, threshold)
    if not algorithm_version or not isinstance(algorithm_version, str):
        raise ValueError(f"algorithm_version should be a non-empty string, got {algorithm_version!r}.")
    evidence = _evidence_header(source)
    keep = np.flatnonzero(scores >= threshold)
    # a fresh TID 4019 item set per group: content items must not be shared between parents
    algorithm = partial(hd.sr.AlgorithmIdentification, name=algorithm_name, version=algorithm_version,
                        parameters=[f"threshold={threshold:.6g}"])
    try:
        groups = [_image_group(evidence, image_probability, keep.size > 0, algorithm())]
        boxes = _clip_to_image(boxes, evidence)
        groups += [_region_group(evidence, boxes[i], float(scores[i]), class_names[i], n + 1, algorithm())
                   for n, i in enumerate(keep)]
        sr = _build_document(evidence, groups, algorithm_name, algorithm_version, manufacturer,
                             series_number, instance_number)
    except (ValueError, TypeError, AttributeError) as exc:
        # highdicom's messages may quote header values (patient data): keep only the type
        raise SRWriteError(f"highdicom could not build the findings SR ({type(exc).__name__}): a header value of "
                           f"the source image is probably invalid") from None
    if out_path is not None:
        _save_atomic(sr, Path(out_path))
    return sr


def _check_findings(boxes: np.ndarray, scores: np.ndarray, class_names: Sequence[str], image_probability: float,
                    threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Validates the findings; returns boxes (K, 4) and scores (K,) as float64."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes should have shape (K, 4), got {boxes.shape}.")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(boxes),):
        raise ValueError(f"scores should have shape ({len(boxes)},) (one per box), got {scores.shape}.")
    if len(class_names) != len(boxes):
        raise ValueError(f"class_names should have {len(boxes)} entries (one per box), got {len(class_names)}.")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"boxes should be finite with x1 <= x2 and y1 <= y2, got boxes[{i}] = {boxes[i].tolist()}.")
    if not np.all((scores >= 0.0) & (scores <= 1.0)):
        raise ValueError(f"scores should be in [0, 1], got {scores.tolist()}.")
    for name, value in (("image_probability", image_probability), ("threshold", threshold)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} should be in [0, 1], got {value}.")
    return boxes, scores


def _evidence_header(source: Dataset) -> Dataset:
    """A pixel-free shallow copy of ``source`` with the Type 2 attributes highdicom reads filled in."""
    missing = [k for k in _REQUIRED_KEYWORDS if not source.get(k)]
    if missing:
        raise SRWriteError(f"the source image lacks {', '.join(missing)}; it cannot be referenced by an SR.")
    header = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:  # Pixel Data and friends
            header.add(elem)
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _clip_to_image(boxes: np.ndarray, header: Dataset) -> np.ndarray:
    """Clips (K, 4) boxes to [0, Columns] x [0, Rows] (SCOORD values must lie inside the image)."""
    if "Rows" not in header or "Columns" not in header:
        return boxes
    limits = np.array([header.Columns, header.Rows, header.Columns, header.Rows], dtype=np.float64)
    return np.clip(boxes, 0.0, limits)


def _image_group(evidence: Dataset, probability: float, present: bool,
                 algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group: image caries probability and presence of any region above the threshold."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="image"),
        finding_type=DENTAL_CARIES,
        algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=PROBABILITY_CONCEPT, value=float(probability), unit=NO_UNITS)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(DENTAL_CARIES, PRESENT if present else ABSENT)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(evidence)],
    )


def _region_group(evidence: Dataset, box: np.ndarray, score: float, class_name: str, number: int,
                  algorithm: hd.sr.AlgorithmIdentification
                  ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group of one region: box (4,) xyxy as a closed polyline, score, depth class."""
    x1, y1, x2, y2 = (float(v) for v in box)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]),  # (column, row)
        source_image=hd.sr.SourceImageForRegion.from_source_image(evidence),
    )
    depth = CLASS_DEPTHS.get(class_name)  # other label sets: a dental caries finding without depth
    evaluations = [hd.sr.QualitativeEvaluation(DEPTH_CONCEPT, DEPTH_CODES[depth])] if depth else None
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"finding {number}"),
        referenced_region=region,
        finding_category=ABNORMAL_STRUCTURE,
        finding_type=DENTAL_CARIES,
        algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=SCORE_CONCEPT, value=score, unit=NO_UNITS)],
        qualitative_evaluations=evaluations,
    )


def _build_document(evidence: Dataset, groups: list, algorithm_name: str, algorithm_version: str,
                    manufacturer: str, series_number: int, instance_number: int) -> hd.sr.Comprehensive3DSR:
    """Wraps the measurement groups into a TID 1500 report and a Comprehensive 3D SR instance."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[algorithm_name, algorithm_version]),  # stable per algorithm version
        name=algorithm_name, manufacturer_name=manufacturer, model_name=algorithm_version,
    )
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept(value="121007", scheme_designator="DCM", meaning="Device"),
        observer_identifying_attributes=device,
    ))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=DENTAL_RADIOGRAPHY,
                                     imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[evidence], content=report[0], series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer=manufacturer,
        is_complete=True, series_description=f"{algorithm_name} caries findings",
    )


def _save_atomic(sr: Dataset, path: Path) -> None:
    """Writes ``sr`` in DICOM file format to ``path`` through a temporary file in the same folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            sr.save_as(fh, enforce_file_format=True)
    except OSError as exc:
        raise SRWriteError(f"{path}: could not write the findings SR: {exc}") from exc


def read_findings_sr(path_or_ds: str | os.PathLike | Dataset) -> list[dict]:
    """Parses a findings SR written by :func:`write_findings_sr`.

    Args:
        path_or_ds: SR file path, or an already read data set.

    Returns:
        One record per measurement group, the image-level one first::

            {"kind": "image", "probability": float, "caries_present": bool, ...common}
            {"kind": "finding", "box": [x1, y1, x2, y2], "score": float, "class_name": str,
             "depth": "enamel" | "dentin" | None, ...common}

        where ``common`` = ``tracking_id`` ("image" / "finding N"), ``tracking_uid``, ``source_sop_instance_uid``,
        ``algorithm_name``, ``algorithm_version``, ``threshold`` (float or None).

    Raises:
        SRReadError: not a Comprehensive 3D SR, or not laid out as written by this module.
    """
    ds = path_or_ds if isinstance(path_or_ds, Dataset) else _read_file(Path(path_or_ds))
    if ds.get("SOPClassUID") != COMPREHENSIVE_3D_SR_UID:
        raise SRReadError(f"expected a Comprehensive 3D SR ({COMPREHENSIVE_3D_SR_UID}), got {ds.get('SOPClassUID')}.")
    try:
        report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
        images = report.get_image_measurement_groups()
        regions = report.get_planar_roi_measurement_groups()
        records = [_parse_image_group(g) for g in images] + [_parse_region_group(g) for g in regions]
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise SRReadError(f"unexpected SR content: {exc}") from exc
    if len(images) != 1:
        raise SRReadError(f"expected exactly 1 image-level measurement group, got {len(images)}.")
    return records


def _read_file(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise SRReadError(f"{path}: cannot read DICOM: {exc}") from exc


def _common(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict:
    """Tracking identifiers and TID 4019 algorithm identification of a measurement group."""
    items = [(item.ConceptNameCodeSequence[0].CodeValue, str(item.TextValue))
             for item in find_content_items(group[0], value_type=hd.sr.ValueTypeValues.TEXT)]
    texts = dict(items)
    params = [text for code, text in items if code == _ALGORITHM_PARAMETERS]
    threshold = next((float(p.split("=", 1)[1]) for p in params if p.startswith("threshold=")), None)
    return {"tracking_id": group.tracking_identifier, "tracking_uid": str(group.tracking_uid),
            "algorithm_name": texts.get(_ALGORITHM_NAME), "algorithm_version": texts.get(_ALGORITHM_VERSION),
            "threshold": threshold}


def _parse_image_group(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict:
    (probability,) = group.get_measurements(name=PROBABILITY_CONCEPT)
    (presence,) = group.get_qualitative_evaluations(name=DENTAL_CARIES)
    sources = group.source_images
    return {"kind": "image", "probability": float(probability.value), "caries_present": presence.value == PRESENT,
            "source_sop_instance_uid": sources[0].referenced_sop_instance_uid if sources else None,
            **_common(group)}


def _parse_region_group(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> dict:
    points = np.asarray(group.roi.value, dtype=np.float64)  # (5, 2) (column, row)
    (score,) = group.get_measurements(name=SCORE_CONCEPT)
    depths = [e.value for e in group.get_qualitative_evaluations(name=DEPTH_CONCEPT)]
    depth = next((k for k, code in DEPTH_CODES.items() if depths and depths[0] == code), None)
    class_name = next(name for name, d in CLASS_DEPTHS.items() if d == depth)
    source = group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return {"kind": "finding", "box": [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()],
            "score": float(score.value), "class_name": class_name, "depth": depth,
            "source_sop_instance_uid": str(source), **_common(group)}
