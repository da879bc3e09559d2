"""``/v1/datasets``: labeled (or unlabeled) scan intake for retraining, and listings with counts (role trainer)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dentalmim.auth import Principal
from service.api.deps import Services, ServicesDep, Trainer
from service.api.errors import ApiError
from service.schemas import AUTH_ERRORS, ErrorOut
from service.services import datasets as logic
from service.services.predictions import check_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

DatasetName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="dataset name")]
_MULTIPART = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "DICOM radiographs"},
                   "labels": {"type": "string", "description": "JSON: a COCO object for the batch, a list with one "
                              "entry per file, or an object keyed by file name (see the README)"}}}}}}}
_ERRORS = {**AUTH_ERRORS, 413: {"model": ErrorOut, "description": "body or image too large"},
           415: {"model": ErrorOut, "description": "not multipart/form-data"},
           422: {"model": ErrorOut, "description": "unreadable DICOM (its code) or invalid_labels naming the problem"}}


async def _read_form(request: Request, services: Services) -> tuple[list[tuple[str, bytes]], Any]:
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with `files` and optional `labels`")
    limit = services.settings.max_files_per_intake
    form = await request.form(max_files=limit, max_fields=16)
    parts = form.getlist("files")
    if not parts:
        raise ApiError(422, "no_files", "the form field `files` should hold at least one DICOM file")
    if not all(isinstance(p, UploadFile) for p in parts):
        raise ApiError(422, "not_a_file", "every `files` part should be a file upload")
    raw = form.get("labels")
    labels_text = await raw.read() if isinstance(raw, UploadFile) else raw
    files = [(p.filename or f"file{i}", await p.read()) for i, p in enumerate(parts)]
    return files, logic.parse_labels_json(labels_text)


@router.post("/{dataset}/scans", status_code=201, openapi_extra=_MULTIPART, responses=_ERRORS)
async def add_scans(dataset: DatasetName, request: Request, principal: Trainer, services: ServicesDep
                    ) -> dict[str, Any]:
    """Add DICOM scans, with labels or without (unlabeled scans feed pretraining), to a dataset.

    Scans are de-identified and stored content-addressed; the same scan twice is stored once (`duplicate`, or
    `relabeled` when its labels changed). Nothing is stored when any file or label is refused.
    """
    logic.check_dataset_name(dataset)
    files, labels_data = await _read_form(request, services)
    s = services.settings
    checked = [logic.IntakeFile(name, await run_in_threadpool(check_upload, data, i, services.store, services.deid,
                                                              None, s.max_pixels))
               for i, (name, data) in enumerate(files)]
    del files
    labels = logic.resolve_labels(labels_data, checked)
    return await run_in_threadpool(_persist, services, principal, dataset, checked, labels)


def _persist(services: Services, principal: Principal, dataset: str, checked: list, labels: list) -> dict[str, Any]:
    with services.sessions() as session:
        results = logic.add_scans(session, services.store, principal, dataset, checked, labels)
        session.commit()
        counts = logic.counts(session, dataset)
    return {"dataset": dataset, "scans": results, "counts": counts,
            "added": sum(r["status"] == "added" for r in results),
            "duplicates": sum(r["status"] == "duplicate" for r in results),
            "relabeled": sum(r["status"] == "relabeled" for r in results)}


@router.get("/{dataset}/scans", responses=AUTH_ERRORS)
def list_scans(dataset: DatasetName, _principal: Trainer, services: ServicesDep,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
               offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0) -> dict[str, Any]:
    """The scans of a dataset (pseudonymous ids, label kind, box count, who and when) with counts."""
    with services.sessions() as session:
        return logic.list_scans(session, dataset, limit, offset)


@router.get("", responses=AUTH_ERRORS)
def list_datasets(_principal: Trainer, services: ServicesDep) -> list[dict[str, Any]]:
    """Every dataset with its counts."""
    with services.sessions() as session:
        return logic.list_datasets(session)
