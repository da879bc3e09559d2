"""``/v1/predictions``: upload DICOMs and get findings; read findings, overlay PNG and DICOM SR back."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dentalmim.auth import Principal
from service.api.deps import Clinician, Services, ServicesDep
from service.api.errors import ApiError
from service.schemas import AUTH_ERRORS, ErrorOut, PredictionBatch, PredictionOut
from service.services import predictions as logic

router = APIRouter(prefix="/v1/predictions", tags=["predictions"])

_MULTIPART = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "one or more DICOM radiographs"}}}}}}}
_UPLOAD_ERRORS = {**AUTH_ERRORS, 400: {"model": ErrorOut, "description": "malformed multipart body"},
                  413: {"model": ErrorOut, "description": "body or image too large (code too_large)"},
                  415: {"model": ErrorOut, "description": "not multipart/form-data"},
                  422: {"model": ErrorOut, "description": "no file, or not an acceptable DICOM radiograph (code: "
                                                          "not_dicom, truncated, non_image, multi_frame, ...)"},
                  429: {"model": ErrorOut, "description": "inference queue full; retry"},
                  503: {"model": ErrorOut, "description": "model not loaded yet"}}
PredictionId = Annotated[str, Path(pattern=r"^prd_[0-9a-f]{32}$", description="id returned by the upload")]


async def _read_files(request: Request, services: Services) -> list[bytes]:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with one or more `files` parts")
    limit = services.settings.max_files_per_request
    form = await request.form(max_files=limit, max_fields=limit + 8)
    parts = form.getlist("files")
    if not parts:
        raise ApiError(422, "no_files", "the form field `files` should hold at least one DICOM file")
    if not all(isinstance(p, UploadFile) for p in parts):
        raise ApiError(422, "not_a_file", "every `files` part should be a file upload")
    return [await p.read() for p in parts]


@router.post("", status_code=201, response_model=PredictionBatch, openapi_extra=_MULTIPART,
             responses=_UPLOAD_ERRORS)
async def create_predictions(request: Request, principal: Clinician, services: ServicesDep) -> dict[str, Any]:
    """Upload one or more DICOM radiographs (form field `files`) and get the caries findings of each.

    The files are checked as DICOM from their content (never from headers or names), de-identified and stored;
    the response names each image by a pseudonymous `scan_id`. `findings` are at or above the model's operating
    threshold (as in the SR); `candidates` go down to `score_floor` (for the threshold slider).
    """
    start = time.perf_counter()
    services.provider.current()  # 503 before reading the body when no model is loaded
    blobs = await _read_files(request, services)
    s = services.settings
    uploads = [await run_in_threadpool(logic.check_upload, data, i, services.store, services.deid,
                                       services.links if s.link_retention_hours > 0 else None, s.max_pixels)
               for i, data in enumerate(blobs)]
    del blobs
    outcomes = await asyncio.gather(*(_predict(services, u.pixels, u.spacing) for u in uploads))
    rows = await run_in_threadpool(_persist, services, principal, uploads, outcomes, start)
    return {"predictions": [logic.to_response(row) for row in rows]}


async def _predict(services: Services, pixels: Any, spacing: Any) -> tuple[Any, float, float]:
    """(prediction, operating threshold, milliseconds waited for the micro-batcher)."""
    start = time.perf_counter()
    pred, score_threshold = await services.batcher.submit((pixels, spacing))
    return pred, score_threshold, (time.perf_counter() - start) * 1e3


def _persist(services: Services, principal: Principal, uploads: list, outcomes: list, start: float) -> list:
    total_ms = (time.perf_counter() - start) * 1e3
    rows = []
    with services.sessions() as session:
        for upload, (pred, score_threshold, waited_ms) in zip(uploads, outcomes):
            scan = logic.store_scan(session, services.store, upload)
            pred.pixel_spacing_mm = upload.spacing
            pred.note_image_type(upload.modality)  # a warning when the model saw few validation images of its type
            inference = pred.timing_ms.get("inference", 0.0)
            timing = {"read": upload.read_ms, "queue": max(0.0, waited_ms - inference), "inference": inference,
                      "total": total_ms}
            doc = logic.result_document(pred, score_threshold=score_threshold, score_floor=services.settings.
                                        score_floor, modality=upload.modality, timing_ms=timing)
            rows.append(logic.save_prediction(session, principal, scan, doc, upload.link_token))
        session.commit()
    return rows


@router.get("/{prediction_id}", response_model=PredictionOut, responses={**AUTH_ERRORS, 404: {"model": ErrorOut}})
def get_prediction(prediction_id: PredictionId, principal: Clinician, services: ServicesDep) -> dict[str, Any]:
    """The findings of one of your predictions."""
    with services.sessions() as session:
        row, _ = logic.get_owned(session, principal, prediction_id, "read_findings")
    return logic.to_response(row)


@router.get("/{prediction_id}/overlay.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, **AUTH_ERRORS, 404: {"model": ErrorOut}})
def get_overlay(prediction_id: PredictionId, principal: Clinician, services: ServicesDep,
                threshold: Annotated[float | None, Query(ge=0.0, le=1.0, description="default: the operating "
                                                                                     "threshold")] = None,
                max_side: Annotated[int | None, Query(ge=16, le=16384, description="downsize the picture so its "
                                                                                  "longer side is this")] = None
                ) -> Response:
    """The radiograph with the findings at or above `threshold` drawn on it (PNG)."""
    with services.sessions() as session:
        row, scan = logic.get_owned(session, principal, prediction_id, "read_overlay")
    png = logic.overlay_png(services.store, scan, row.result, threshold, max_side, services.settings.max_pixels)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.get("/{prediction_id}/sr.dcm", response_class=Response,
            responses={200: {"content": {"application/dicom": {}}}, **AUTH_ERRORS, 404: {"model": ErrorOut},
                       410: {"model": ErrorOut, "description": "original identifiers no longer kept"}})
def get_sr(prediction_id: PredictionId, principal: Clinician, services: ServicesDep,
           variant: Annotated[Literal["original", "deidentified"], Query(
               description="original: same StudyInstanceUID, patient and image references as the uploaded file "
                           "(files with the study in the PACS); deidentified: those of the stored scan")] = "original"
           ) -> Response:
    """The findings as a DICOM Comprehensive 3D SR (TID 1500)."""
    with services.sessions() as session:
        row, scan = logic.get_owned(session, principal, prediction_id, f"read_sr_{variant[:5]}")
    data = logic.sr_bytes(services.store, row, scan, variant, services.links)
    return Response(data, media_type="application/dicom", headers={
        "Content-Disposition": f'attachment; filename="{prediction_id}.sr.dcm"', "Cache-Control": "private, no-store"})
