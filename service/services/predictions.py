"""The logic behind ``/v1/predictions``: check and de-identify uploads, store them, predict, persist, read back.

Upload path (per file): the bytes go to a private temporary file, :func:`dentalmim.data.dicom.read_dicom_dataset`
validates them as a single-frame radiograph (size guard before decoding; typed errors become 4xx with their code),
the data set is de-identified (:class:`dentalmim.data.deid.Deidentifier`, salted, the same salt as ``dentalmim
ingest`` when configured alike) and stored content-addressed; the original identifiers needed for the
original-study SR are sealed (:mod:`service.services.links`); the temporary file is deleted. The decoded pixels go
to the micro-batcher. Nothing here logs or returns a patient identifier.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dentalmim.auth import Principal
from dentalmim.data.deid import Deidentifier
from dentalmim.data.dicom import read_dicom, read_dicom_dataset
from dentalmim.db.models import Prediction as PredictionRow
from dentalmim.db.models import Scan, utcnow
from dentalmim.errors import DicomReadError
from dentalmim.inference.overlay import overlay_png_bytes
from dentalmim.inference.predictor import Prediction
from dentalmim.inference.sr import SRWriteError, write_findings_sr
from service.api.errors import ApiError, UploadRejectedError
from service.services import audit
from service.services.links import LinkError, LinkVault, reidentify
from service.storage import ScanStore

log = logging.getLogger(__name__)


@dataclass
class CheckedUpload:
    """One accepted upload: pixels for the model, de-identified bytes and facts, sealed original identifiers."""

    pixels: np.ndarray
    clean_bytes: bytes
    patient_pseudonym: str
    study_uid: str
    sop_instance_uid: str
    modality: str
    spacing: tuple[float, float] | None
    link_token: str | None
    read_ms: float


def check_upload(data: bytes, index: int, store: ScanStore, deid: Deidentifier, links: LinkVault | None,
                 max_pixels: int) -> CheckedUpload:
    """Validates, decodes and de-identifies one uploaded file (blocking: run it in a worker thread).

    Raises:
        UploadRejectedError: not an acceptable DICOM radiograph (code from its DicomReadError).
    """
    start = time.perf_counter()
    tmp = store.temp_file(data)
    try:
        image, ds = read_dicom_dataset(tmp, max_pixels=max_pixels)
    except DicomReadError as exc:
        raise UploadRejectedError.from_dicom_error(exc, index) from None
    finally:
        tmp.unlink(missing_ok=True)
    link = links.seal(ds) if links is not None else None
    clean = deid.apply(ds)
    if "SOPInstanceUID" not in clean:
        clean.SOPInstanceUID = deid.map_uid(f"dentalmim.upload.{secrets.token_hex(16)}")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, clean, enforce_file_format=True)
    return CheckedUpload(
        pixels=image.pixels, clean_bytes=buffer.getvalue(), patient_pseudonym=deid.patient_pseudonym(ds),
        study_uid=str(clean.get("StudyInstanceUID", "")), sop_instance_uid=str(clean.SOPInstanceUID),
        modality=str(image.meta.modality or ""), spacing=image.meta.pixel_spacing_mm, link_token=link,
        read_ms=(time.perf_counter() - start) * 1e3)


def store_scan(session: Session, store: ScanStore, upload: CheckedUpload) -> Scan:
    """Writes the de-identified bytes (content-addressed) and returns the scan row (created when new)."""
    digest, relative = store.put(upload.clean_bytes)
    existing = session.scalar(select(Scan).where(Scan.sha256 == digest))
    if existing is not None:
        return existing
    rows, columns = upload.pixels.shape
    scan = Scan(id=f"scn_{digest[:24]}", sha256=digest, path=relative, size_bytes=len(upload.clean_bytes),
                patient_pseudonym=upload.patient_pseudonym, study_uid=upload.study_uid[:64],
                sop_instance_uid=upload.sop_instance_uid[:64], modality=upload.modality[:16], rows=int(rows),
                columns=int(columns), pixel_spacing_mm=list(upload.spacing) if upload.spacing else None,
                created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(scan)
    except IntegrityError:  # the same scan, stored concurrently
        return session.scalars(select(Scan).where(Scan.sha256 == digest)).one()
    return scan


def result_document(pred: Prediction, *, score_threshold: float, score_floor: float, modality: str,
                    timing_ms: dict[str, float]) -> dict[str, Any]:
    """The stored findings of one prediction (``findings`` at or above the operating threshold, ``candidates``
    between ``score_floor`` and it)."""
    doc = pred.to_findings()
    findings = [f for f in doc["findings"] if f["score"] >= score_threshold]
    candidates = [f for f in doc["findings"] if f["score"] < score_threshold]
    return {"model_version": pred.model_version, "image": {**doc["image"], "modality": modality},
            "image_probability": doc["image_probability"], "image_threshold": pred.image_threshold,
            "caries_present": bool(pred.caries_present), "score_threshold": score_threshold,
            "score_floor": score_floor, "findings": findings, "candidates": candidates, "warnings": doc["warnings"],
            "timing_ms": {k: round(v, 1) for k, v in timing_ms.items()}}


def save_prediction(session: Session, principal: Principal, scan: Scan, document: dict[str, Any],
                    link_token: str | None) -> PredictionRow:
    """Inserts the prediction and its audit row (the caller commits)."""
    row = PredictionRow(id=f"prd_{secrets.token_hex(16)}", scan_id=scan.id, owner_key_id=principal.key_id,
                        model_version=document["model_version"], created_at=utcnow(), result=document,
                        link_token=link_token)
    session.add(row)
    audit.record(session, principal, "predict", 201, prediction_id=row.id, scan_id=scan.id,
                 model_version=row.model_version)
    return row


def to_response(row: PredictionRow) -> dict[str, Any]:
    """API body of one prediction."""
    base = f"/v1/predictions/{row.id}"
    return {"prediction_id": row.id, "scan_id": row.scan_id, "created_at": row.created_at, **row.result,
            "links": {"self": base, "overlay": f"{base}/overlay.png", "sr": f"{base}/sr.dcm"}}


def get_owned(session: Session, principal: Principal, prediction_id: str, action: str) -> tuple[PredictionRow, Scan]:
    """The caller's prediction and its scan; 404 (audited) when it does not exist or belongs to another key."""
    row = session.get(PredictionRow, prediction_id)
    if row is None or row.owner_key_id != principal.key_id:
        audit.record(session, principal, action, 404, prediction_id=prediction_id[:40])
        session.commit()
        raise ApiError(404, "not_found", "no such prediction for this key")
    audit.record(session, principal, action, 200, prediction_id=row.id, scan_id=row.scan_id,
                 model_version=row.model_version)
    session.commit()
    return row, session.get(Scan, row.scan_id)


def _boxes(findings: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    boxes = np.array([[f["box_px"][k] for k in ("x1", "y1", "x2", "y2")] for f in findings],
                     dtype=np.float64).reshape(-1, 4)
    return boxes, np.array([f["score"] for f in findings], dtype=np.float64), [f["class"] for f in findings]


def overlay_png(store: ScanStore, scan: Scan, result: dict[str, Any], threshold: float | None,
                max_side: int | None, max_pixels: int) -> bytes:
    """The stored scan with the findings at or above ``threshold`` (default: the operating threshold)."""
    pixels = read_dicom(store.path(scan.path), max_pixels=max_pixels).pixels
    boxes, scores, names = _boxes(result["findings"] + result["candidates"])
    thr = result["score_threshold"] if threshold is None else threshold
    return overlay_png_bytes(pixels, boxes, scores, names, threshold=thr, max_side=max_side,
                             image_probability=result["image_probability"], model_version=result["model_version"])


def sr_bytes(store: ScanStore, row: PredictionRow, scan: Scan, variant: str, links: LinkVault | None) -> bytes:
    """The findings SR (see :mod:`service.services.links` for the two variants); UIDs are stable per variant."""
    header = pydicom.dcmread(store.path(scan.path), stop_before_pixels=True)
    if variant == "original":
        if row.link_token is None or links is None:
            raise ApiError(410, "link_expired", "the original identifiers are no longer kept; use "
                                                "?variant=deidentified")
        try:
            header = reidentify(header, links.open(row.link_token))
        except LinkError as exc:
            raise ApiError(410, "link_expired", str(exc)) from None
    result = row.result
    boxes, scores, names = _boxes(result["findings"])
    try:
        with warnings.catch_warnings():  # highdicom warns about odd names, quoting them
            warnings.simplefilter("ignore")
            sr = write_findings_sr(header, boxes, scores, names, result["image_probability"],
                                   algorithm_version=row.model_version, threshold=result["score_threshold"])
    except SRWriteError as exc:  # e.g. the scan's header lacks the UIDs an SR must reference
        raise ApiError(422, "sr_unavailable", f"no findings SR can be made for this scan: {exc}") from None
    _stable_uids(sr, row.id, variant)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    return buffer.getvalue()


def _stable_uids(sr: Dataset, prediction_id: str, variant: str) -> None:
    """The same prediction and variant always give the same SR series and instance UIDs (re-downloads do not
    create new objects in the PACS)."""
    sr.SeriesInstanceUID = generate_uid(entropy_srcs=["dentalmim-sr-series", prediction_id, variant])
    sr.SOPInstanceUID = generate_uid(entropy_srcs=["dentalmim-sr-instance", prediction_id, variant])
    if getattr(sr, "file_meta", None) is not None:
        sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID


def purge_links(session: Session, retention_hours: float) -> int:
    """Deletes sealed links older than the retention period; returns how many."""
    cutoff = utcnow() - dt.timedelta(hours=retention_hours)
    result = session.execute(update(PredictionRow).where(PredictionRow.link_token.is_not(None),
                                                         PredictionRow.created_at < cutoff)
                             .values(link_token=None))
    session.commit()
    return int(result.rowcount or 0)
