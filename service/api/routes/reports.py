"""``/v1/reports``: evaluation reports written by jobs (the same report as ``dentalmim evaluate``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import FileResponse
from sqlalchemy import select

from dentalmim.db.models import Report
from service.api.deps import Services, ServicesDep, TrainerOrAdmin
from service.api.errors import ApiError
from service.schemas import AUTH_ERRORS, ErrorOut

router = APIRouter(prefix="/v1/reports", tags=["reports"])
ReportId = Annotated[str, Path(pattern=r"^rpt_[0-9a-f]{24}$")]
_404 = {**AUTH_ERRORS, 404: {"model": ErrorOut}}


def _view(row: Report) -> dict[str, Any]:
    base = f"/v1/reports/{row.id}"
    return {"report_id": row.id, "job_id": row.job_id, "model_version": row.model_version, "dataset": row.dataset,
            "dataset_sha256": row.dataset_sha256, "metrics": row.metrics,
            "created_at": row.created_at.isoformat(timespec="seconds"),
            "links": {"html": base, "pdf": f"{base}/report.pdf", "metrics": f"{base}/metrics.json"}}


def _file(services: Services, report_id: str, name: str) -> str:
    with services.sessions() as session:
        row = session.get(Report, report_id)
    path = services.settings.data_dir / row.path / name if row is not None else None
    if path is None or not path.is_file():
        raise ApiError(404, "not_found", "no such report")
    return str(path)


@router.get("", responses=AUTH_ERRORS)
def list_reports(_principal: TrainerOrAdmin, services: ServicesDep) -> list[dict[str, Any]]:
    """The newest 100 reports."""
    with services.sessions() as session:
        return [_view(r) for r in session.scalars(select(Report).order_by(Report.created_at.desc()).limit(100))]


@router.get("/{report_id}", response_class=Response, responses={200: {"content": {"text/html": {}}}, **_404})
def report_html(report_id: ReportId, _principal: TrainerOrAdmin, services: ServicesDep) -> FileResponse:
    """The self-contained HTML report."""
    return FileResponse(_file(services, report_id, "report.html"), media_type="text/html")


@router.get("/{report_id}/report.pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {}}}, **_404})
def report_pdf(report_id: ReportId, _principal: TrainerOrAdmin, services: ServicesDep) -> FileResponse:
    """The same report as PDF."""
    return FileResponse(_file(services, report_id, "report.pdf"), media_type="application/pdf")


@router.get("/{report_id}/metrics.json", responses=_404)
def report_metrics(report_id: ReportId, _principal: TrainerOrAdmin, services: ServicesDep) -> dict[str, Any]:
    """The report's summary (metrics and provenance)."""
    with services.sessions() as session:
        row = session.get(Report, report_id)
        if row is None:
            raise ApiError(404, "not_found", "no such report")
        return _view(row)
