"""Dependencies: the app's services, API-key authentication with roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dentalmim.auth import KeyVerifier, Principal
from dentalmim.data.deid import Deidentifier
from dentalmim.registry import ModelRegistry
from service.api.errors import ApiError
from service.batcher import MicroBatcher
from service.metrics import ServiceMetrics
from service.model_provider import ModelProvider
from service.services.links import LinkVault
from service.settings import Settings
from service.storage import ScanStore


@dataclass
class Services:
    """Everything the routes use, built once at start-up (see ``service.main``)."""

    settings: Settings
    metrics: ServiceMetrics
    provider: ModelProvider
    engine: Engine
    sessions: sessionmaker[Session]
    verifier: KeyVerifier
    store: ScanStore
    deid: Deidentifier
    links: LinkVault
    batcher: MicroBatcher
    registry: ModelRegistry | None = None


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(503, "starting", "the service is starting (run it with its lifespan, e.g. uvicorn)")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="API key (`dentalmim keys create --role clinician`)")


def require(*roles: str):
    """A dependency returning the caller's :class:`Principal`: 401 without a valid key, 403 for another role.

    Args:
        roles: accepted roles; none = any valid key.
    """

    def dependency(services: ServicesDep, key: Annotated[str | None, Security(api_key_header)] = None
                   ) -> Principal:
        principal = services.verifier.verify(key)
        if principal is None:
            raise ApiError(401, "unauthorized", "missing or invalid API key (header X-API-Key)")
        if roles and principal.role not in roles:
            raise ApiError(403, "forbidden", f"a {principal.role} key may not do this (needs: {', '.join(roles)})")
        return principal

    return dependency


Clinician = Annotated[Principal, Depends(require("clinician"))]
Admin = Annotated[Principal, Depends(require("admin"))]
AnyKey = Annotated[Principal, Depends(require())]
Trainer = Annotated[Principal, Depends(require("trainer"))]
TrainerOrAdmin = Annotated[Principal, Depends(require("trainer", "admin"))]
