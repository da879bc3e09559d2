"""``/v1/jobs``: background retraining and evaluation jobs, run by ``dentalmim worker`` (never the web process)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from dentalmim import jobs
from dentalmim.db.models import Job
from dentalmim.registry import VersionNotFoundError
from service.api.deps import ServicesDep, Trainer, TrainerOrAdmin
from service.api.errors import ApiError
from service.schemas import AUTH_ERRORS, ErrorOut
from service.services import audit
from service.services import datasets as dataset_logic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[str, Path(pattern=r"^job_[0-9a-f]{24}$")]
_ENCODER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.(safetensors|ckpt)$")


class JobCreate(BaseModel):
    """A retraining or evaluation job."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored

    kind: Literal["retrain", "evaluate"]
    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                         description="retrain: training data; evaluate: the labeled set to report on")
    init: Literal["current", "encoder", "scratch"] | None = Field(
        None, description="retrain: start from the current model (default when there is one), from a pretrained "
                          "encoder (`encoder`) or from scratch")
    encoder: str | None = Field(None, description="retrain: file name of an encoder in DATA_DIR/encoders/")
    steps: int | None = Field(None, ge=1, strict=True,
                              description="retrain: fine-tuning steps (default DENTALMIM_RETRAIN_STEPS)")
    pretrain_steps: int = Field(0, ge=0, strict=True,
                                description="retrain: MAE pretraining steps on the dataset's scans first")
    seed: int = Field(0, ge=0, le=2**31 - 1, strict=True)
    promote: Literal["auto", "never"] = Field("auto", description="retrain: promote when the gate accepts")
    version: str | None = Field(None, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
                                description="evaluate: model version (default: current)")


def _check(body: JobCreate, services: Any) -> dict[str, Any]:
    s = services.settings
    with services.sessions() as session:
        counts = dataset_logic.counts(session, body.dataset)
    if counts["total"] == 0:
        raise ApiError(422, "unknown_dataset", f"dataset {body.dataset!r} has no scans")
    params = body.model_dump(exclude_none=True)
    if body.kind == "retrain":
        if body.dataset == s.holdout_dataset:
            raise ApiError(422, "holdout_dataset", f"{body.dataset!r} is the held-out evaluation set; it is never "
                                                   "used for training")
        steps = body.steps or s.retrain_steps
        if steps > s.retrain_max_steps or body.pretrain_steps > s.retrain_max_steps:
            raise ApiError(422, "too_many_steps", f"steps should be <= {s.retrain_max_steps}")
        if body.init == "encoder" or body.encoder:
            if not body.encoder or not _ENCODER_NAME.match(body.encoder):
                raise ApiError(422, "invalid_encoder", "init 'encoder' needs `encoder`: a .safetensors or .ckpt file "
                                                       "name in DATA_DIR/encoders/")
            if not (s.data_dir / "encoders" / body.encoder).is_file():
                raise ApiError(422, "invalid_encoder", f"no encoder {body.encoder!r} in DATA_DIR/encoders/")
            params["init"] = "encoder"
        params["steps"] = steps
    elif body.version is not None:
        try:
            services.registry.get(body.version)
        except VersionNotFoundError as exc:
            raise ApiError(422, "unknown_version", str(exc)) from None
    return params


@router.post("", status_code=201, responses={**AUTH_ERRORS, 400: {"model": ErrorOut, "description": "malformed body"},
                                             422: {"model": ErrorOut}})
def create_job(body: JobCreate, principal: Trainer, services: ServicesDep) -> dict[str, Any]:
    """Queue a `retrain` or `evaluate` job; a worker (`dentalmim worker`) runs it."""
    params = _check(body, services)
    with services.sessions() as session:
        job = jobs.enqueue(session, body.kind, params, principal.key_id)
        audit.record(session, principal, f"job_{body.kind}", 201)
        session.commit()
        return jobs.to_dict(job)


@router.get("", responses=AUTH_ERRORS)
def list_jobs(_principal: TrainerOrAdmin, services: ServicesDep) -> list[dict[str, Any]]:
    """The newest 100 jobs."""
    with services.sessions() as session:
        rows = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(100))
        return [jobs.to_dict(j) for j in rows]


@router.get("/{job_id}", responses={**AUTH_ERRORS, 404: {"model": ErrorOut}})
def get_job(job_id: JobId, _principal: TrainerOrAdmin, services: ServicesDep) -> dict[str, Any]:
    """State, stage, progress, metrics so far, log tail and (when done) the result or the reason it failed."""
    with services.sessions() as session:
        try:
            return jobs.to_dict(jobs.get(session, job_id))
        except jobs.JobNotFoundError as exc:
            raise ApiError(404, "not_found", str(exc)) from None


@router.delete("/{job_id}", responses={**AUTH_ERRORS, 404: {"model": ErrorOut}})
def cancel_job(job_id: JobId, principal: Trainer, services: ServicesDep) -> dict[str, Any]:
    """Cancel: a queued job at once, a running one by its worker (within a heartbeat)."""
    with services.sessions() as session:
        try:
            job = jobs.cancel(session, job_id)
        except jobs.JobNotFoundError as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        audit.record(session, principal, "job_cancel", 200)
        session.commit()
        return jobs.to_dict(job)
