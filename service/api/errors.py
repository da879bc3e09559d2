"""Domain exceptions -> HTTP errors. Every error body is ``{"detail": {"code": ..., "message": ...}}``.

Expected failures are 4xx (401 no/invalid key, 403 wrong role, 404, 413 too large, 415 not multipart, 422
unreadable DICOM or invalid parameters, 429 queue full); 503 means the model is not loaded (see ``/readyz``).
Anything else is a bug: a 500 whose log line names the exception type and the code location only (exception
messages may quote file content, so they are never logged).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dentalmim.errors import DicomReadError
from service.batcher import BatcherStoppedError, QueueFullError
from service.model_provider import ModelNotReadyError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An expected HTTP error.

    Args:
        status: HTTP status.
        code: short machine-readable code (also the ``kind`` label of ``dentalmim_errors_total``).
        message: human-readable message without patient data.
        headers: extra response headers.
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class UploadRejectedError(ApiError):
    """One uploaded file is not an acceptable radiograph (its DicomReadError code is the error code)."""

    @classmethod
    def from_dicom_error(cls, exc: DicomReadError, index: int) -> UploadRejectedError:
        status = 413 if exc.code == "too_large" else 422
        return cls(status, exc.code, f"files[{index}]: {exc.reason}")


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"detail": {"code": code, "message": message, **extra}}


def _respond(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None,
             **extra: Any) -> JSONResponse:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code).inc()
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers described in the module docstring."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _respond(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(DicomReadError)
    async def _dicom_error(request: Request, exc: DicomReadError) -> JSONResponse:
        return _respond(request, 413 if exc.code == "too_large" else 422, exc.code, exc.reason)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return _respond(request, 429, "queue_full", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ModelNotReadyError)
    @app.exception_handler(BatcherStoppedError)
    async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
        return _respond(request, 503, "model_not_ready", str(exc), {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type",
                                                                                                               ""))}
                  for e in exc.errors()]
        message = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return _respond(request, 422, "validation_error", message, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                                     f"http_{exc.status_code}")
        return _respond(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        where = "".join(traceback.format_tb(exc.__traceback__)[-3:]).strip().replace("\n", " | ")
        log.error("internal error %s on %s %s at %s", type(exc).__name__, request.method,
                  getattr(request.scope.get("route"), "path", "?"), where)
        return _respond(request, 500, "internal_error", f"internal error ({type(exc).__name__}); this is a bug")
