"""Prometheus metrics, one registry per app (so several apps in one process, as in tests, do not clash).

* ``dentalmim_request_duration_seconds{method, route, status}``: request latency histogram (``route`` is the
  route template, e.g. ``/v1/predictions/{prediction_id}``, never a concrete id or file name);
* ``dentalmim_batch_size`` and ``dentalmim_batch_duration_seconds``: micro-batch histograms;
* ``dentalmim_queue_depth``: images waiting for the inference thread;
* ``dentalmim_model_info{version, device, precision}``: 1 for the loaded model;
* ``dentalmim_errors_total{kind}``: error responses by code (``unauthorized``, ``not_dicom``, ``too_large`` ...);
* ``dentalmim_images_total``: images predicted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The service's metrics in their own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("dentalmim_request_duration_seconds", "HTTP request latency",
                                 ("method", "route", "status"), buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("dentalmim_batch_size", "images per micro-batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("dentalmim_batch_duration_seconds", "inference time per micro-batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("dentalmim_queue_depth", "images waiting for the inference thread", registry=r)
        self.model_info = Gauge("dentalmim_model_info", "the loaded model (value 1)",
                                ("version", "device", "precision"), registry=r)
        self.errors = Counter("dentalmim_errors_total", "error responses by kind", ("kind",), registry=r)
        self.images = Counter("dentalmim_images_total", "images predicted", registry=r)

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Reads the queue depth at scrape time."""
        self.queue_depth.set_function(depth)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def set_model(self, status: dict[str, Any]) -> None:
        self.model_info.clear()
        if status.get("version"):
            self.model_info.labels(status["version"], status["device"], status["precision"]).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request by route template."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], template, str(status[0])).observe(
                time.perf_counter() - start)
