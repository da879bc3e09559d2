"""FastAPI application factory.

Only the liveness probe exists so far; the clinical API (uploads, findings, DICOM SR, jobs) is built on top of
this factory by the service issue. Start it with ``uvicorn service.main:create_app --factory``.
"""

from __future__ import annotations

from fastapi import FastAPI

from dentalmim import __version__


def create_app() -> FastAPI:
    """Build the application (no model is loaded yet)."""
    app = FastAPI(title="dentalmim", version=__version__)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    return app
