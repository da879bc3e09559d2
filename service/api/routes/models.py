"""``/v1/models``: the model registry (list: trainers and admins; promote / rollback: admins)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from dentalmim.registry import RegistryError, VersionNotFoundError
from service.api.deps import Admin, Services, ServicesDep, TrainerOrAdmin
from service.api.errors import ApiError
from service.schemas import AUTH_ERRORS, ErrorOut
from service.services import audit

router = APIRouter(prefix="/v1/models", tags=["models"])
_BODY = {400: {"model": ErrorOut, "description": "malformed body"}}
Version = Annotated[str, Path(max_length=128, description="model version")]


class ReasonIn(BaseModel):
    reason: str = Field("", max_length=500)


def _registry(services: Services):
    if services.registry is None:
        raise ApiError(503, "no_registry", "the model registry is not available")
    return services.registry


def _refresh(services: Services) -> dict[str, Any]:
    refresh = getattr(services.provider, "refresh", None)
    if refresh is not None:
        refresh()
    return services.provider.status()


@router.get("", responses=AUTH_ERRORS)
def list_models(_principal: TrainerOrAdmin, services: ServicesDep) -> dict[str, Any]:
    """Every version (newest first) with config, data snapshot, parent, held-out metrics and file hash; the
    current version and the promotion history."""
    registry = _registry(services)
    return {"current": registry.current_version(), "serving": services.provider.status().get("version"),
            "versions": [v.to_dict() for v in registry.list()], "history": registry.history()}


@router.post("/rollback", responses={**AUTH_ERRORS, **_BODY, 409: {"model": ErrorOut}})
def rollback(admin: Admin, services: ServicesDep, body: ReasonIn | None = None) -> dict[str, Any]:
    """Make the previously current version current again (served at once)."""
    try:
        info = _registry(services).rollback(actor=admin.key_id, reason=body.reason if body else "")
    except RegistryError as exc:
        raise ApiError(409, "no_previous_version", str(exc)) from None
    with services.sessions() as session:
        audit.record(session, admin, "model_rollback", 200, model_version=info.version)
        session.commit()
    return {"current": info.version, "serving": _refresh(services)}


@router.get("/{version}", responses={**AUTH_ERRORS, 404: {"model": ErrorOut}})
def get_model(version: Version, _principal: TrainerOrAdmin, services: ServicesDep) -> dict[str, Any]:
    """One version."""
    try:
        return _registry(services).get(version).to_dict()
    except VersionNotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.post("/{version}/promote",
             responses={**AUTH_ERRORS, **_BODY, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}})
def promote(version: Version, admin: Admin, services: ServicesDep, body: ReasonIn | None = None) -> dict[str, Any]:
    """Make a version current (a manual promotion bypasses the gate); the service swaps to it without dropping
    in-flight requests."""
    registry = _registry(services)
    try:
        info = registry.get(version)
        if not registry.verify(info):
            raise ApiError(409, "file_mismatch", f"the file of {version} is missing or does not match its sha256")
        info = registry.promote(version, actor=admin.key_id, reason=(body.reason if body else "") or "manual")
    except VersionNotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except RegistryError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    with services.sessions() as session:
        audit.record(session, admin, "model_promote", 200, model_version=info.version)
        session.commit()
    return {"current": info.version, "serving": _refresh(services)}
