"""Admin routes: API keys, the audit trail and the current model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from dentalmim import auth
from service.api.deps import Admin, AnyKey, ServicesDep
from service.api.errors import ApiError
from service.schemas import (
    AUTH_ERRORS,
    AuditOut,
    ErrorOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    ModelStatus,
)
from service.services import audit

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get("/keys", response_model=list[KeyOut], responses=AUTH_ERRORS)
def list_keys(_admin: Admin, services: ServicesDep) -> list[Any]:
    """Every API key (never the secrets)."""
    with services.sessions() as session:
        return [vars(k) for k in auth.list_keys(session)]


@router.post("/keys", status_code=201, response_model=KeyCreated,
             responses={**AUTH_ERRORS, 400: {"model": ErrorOut, "description": "malformed body"}})
def create_key(body: KeyCreate, admin: Admin, services: ServicesDep) -> dict[str, Any]:
    """Creates a key; the response is the only time the key is shown."""
    with services.sessions() as session:
        info, plain = auth.create_key(session, body.role, body.name)
        audit.record(session, admin, "create_key", 201)
        session.commit()
    return {**vars(info), "key": plain}


@router.delete("/keys/{key_id}", response_model=KeyOut, responses={**AUTH_ERRORS, 404: {"model": ErrorOut}})
def revoke_key(key_id: str, admin: Admin, services: ServicesDep) -> dict[str, Any]:
    """Revokes a key (at once in this process)."""
    with services.sessions() as session:
        try:
            info = auth.revoke_key(session, key_id)
        except auth.KeyNotFoundError as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        audit.record(session, admin, "revoke_key", 200)
        session.commit()
    services.verifier.forget(key_id)
    return vars(info)


@router.get("/audit", response_model=list[AuditOut], responses=AUTH_ERRORS)
def list_audit(_admin: Admin, services: ServicesDep,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               key_id: Annotated[str | None, Query(max_length=32)] = None) -> list[Any]:
    """The newest audit events (who asked for which prediction, when, with which model)."""
    with services.sessions() as session:
        return [AuditOut.model_validate(e, from_attributes=True) for e in audit.recent(session, limit, key_id)]


@router.get("/models/current", response_model=ModelStatus, responses=AUTH_ERRORS)
def current_model(_principal: AnyKey, services: ServicesDep) -> dict[str, Any]:
    """The served model: state, version, device and precision."""
    return services.provider.status()
