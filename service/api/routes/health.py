"""Probes (no key needed) and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from dentalmim import __version__
from service.api.deps import AnyKey, ServicesDep
from service.schemas import AUTH_ERRORS

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz", responses={503: {"description": "not ready (model loading or failed, or starting)"}})
def readyz(request: Request) -> Any:
    """Readiness: database migrated, model loaded and warmed, inference worker running."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"status": "starting", "model": None}, status_code=503)
    model = services.provider.status()
    ready = services.provider.ready and services.batcher.running
    return JSONResponse({"status": "ready" if ready else "not ready", "model": model},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}, **AUTH_ERRORS})
def metrics(services: ServicesDep, _principal: AnyKey) -> Response:
    """Prometheus metrics (any valid key)."""
    services.metrics.set_model(services.provider.status())
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
