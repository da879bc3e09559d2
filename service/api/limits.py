"""Request-body size limit, enforced while the body streams in (``Content-Length`` is checked first, chunked
bodies are counted), so an oversize upload is refused with 413 before it is buffered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from service.api.errors import ApiError, error_body


class BodyTooLargeError(ApiError, HTTPException):
    """Raised while a chunked body streams in. It is also an ``HTTPException`` because FastAPI turns any other
    exception met while it reads a JSON body into a 400; the ``ApiError`` handler still writes the response."""

    def __init__(self, limit: int) -> None:
        ApiError.__init__(self, 413, "too_large", f"request body larger than {limit} bytes")
        self.status_code, self.detail = 413, self.message


class BodySizeLimitMiddleware:
    """ASGI middleware refusing bodies over ``max_bytes``.

    Args:
        app: the wrapped app.
        max_bytes: largest accepted body.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            app = scope.get("app")
            metrics = getattr(getattr(app, "state", None), "metrics", None)
            if metrics is not None:
                metrics.errors.labels("too_large").inc()
            response = JSONResponse(error_body("too_large", f"request body larger than {self.max_bytes} bytes"),
                                    status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
