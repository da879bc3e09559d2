"""FastAPI application factory: ``create_app(settings=None, provider=None)``.

Start it with ``dentalmim serve`` (or ``uvicorn service.main:create_app --factory``). At start-up (the lifespan)
the app migrates the database, opens the scan store, the de-identification salt and the link key, starts the
micro-batching inference thread and loads the model (in the background by default: ``/healthz`` answers at once,
``/readyz`` turns 200 when the model is loaded and warmed). Routes: ``/v1/predictions`` (clinicians), ``/v1/keys``,
``/v1/audit`` (admins), ``/v1/models/current`` and ``/metrics`` (any key), ``/healthz`` and ``/readyz`` (no key),
the clinician web page at ``/`` and OpenAPI docs at ``/docs``; retraining: ``/v1/datasets``, ``/v1/jobs``,
``/v1/reports`` (trainers) and ``/v1/models`` (the registry; promote / rollback: admins). Jobs run in
``dentalmim worker`` (:mod:`service.worker`), never in this process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from dentalmim import __version__
from dentalmim.auth import KeyVerifier
from dentalmim.data.deid import Deidentifier, load_or_create_salt, quiet_identifying_loggers
from dentalmim.db import make_engine, session_factory, upgrade
from dentalmim.registry import ModelRegistry
from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.limits import BodySizeLimitMiddleware
from service.api.routes import (
    admin,
    datasets,
    health,
    jobs,
    models,
    predictions,
    reports,
)
from service.batcher import MicroBatcher
from service.inference import inference_threads, predict_images, use_threads
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.model_provider import ModelProvider, RegistryModelProvider
from service.services.links import LinkVault
from service.services.predictions import purge_links
from service.settings import Settings, get_settings
from service.storage import ScanStore

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def make_batch_runner(provider: ModelProvider, score_floor: float, threads: int = 0):
    """The micro-batcher's ``run_batch``: one model snapshot per batch, tiles of all images batched together.

    Args:
        provider: the model source.
        score_floor: lowest box score kept (candidates).
        threads: CPU threads per forward pass (0: :func:`service.inference.inference_threads`' default); set on
            the thread that runs the batches.

    Returns:
        ``items -> [(Prediction, operating score threshold), ...]``; an item is an (H, W) image or a
        ``(image, (row, column) pixel spacing or None)`` pair.
    """
    threads = inference_threads(threads)

    def run_batch(items: Sequence[Any]) -> list[tuple[Any, float]]:
        use_threads(threads)
        predictor, _version = provider.current()
        floor = min(score_floor, predictor.score_threshold)
        pairs = [item if isinstance(item, tuple) else (item, None) for item in items]
        preds = predict_images(predictor, [p[0] for p in pairs], threshold=floor, spacings=[p[1] for p in pairs])
        return [(p, predictor.score_threshold) for p in preds]

    return run_batch


def _build_services(app: FastAPI, settings: Settings) -> Services:
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        upgrade(engine)
    sessions = session_factory(engine)
    metrics, provider = app.state.metrics, app.state.provider
    registry = ModelRegistry(sessions, settings.data_dir)
    if hasattr(provider, "attach"):
        provider.attach(registry)
    threads = inference_threads(settings.torch_threads)
    log.info("inference uses %d CPU thread(s) per forward pass", threads)
    batcher = MicroBatcher(make_batch_runner(provider, settings.score_floor, threads),
                           max_batch_size=settings.batch_max_size,
                           max_wait_ms=settings.batch_max_wait_ms, max_queue=settings.queue_max,
                           on_batch=metrics.observe_batch)
    metrics.track_queue(lambda: batcher.depth)
    services = Services(
        settings=settings, metrics=metrics, provider=provider, engine=engine, sessions=sessions,
        verifier=KeyVerifier(sessions, settings.key_cache_seconds), store=ScanStore(settings.data_dir),
        deid=Deidentifier(load_or_create_salt(settings.deid_salt_file)),
        links=LinkVault.from_file(settings.link_key_file), batcher=batcher, registry=registry)
    with sessions() as session:
        purge_links(session, settings.link_retention_hours)
    return services


def _load_model(app: FastAPI) -> None:
    app.state.provider.load()
    app.state.metrics.set_model(app.state.provider.status())


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    services = await run_in_threadpool(_build_services, app, settings)
    services.batcher.start()
    if settings.load_model_in_background:
        threading.Thread(target=_load_model, args=(app,), name="dentalmim-model-load", daemon=True).start()
    else:
        await run_in_threadpool(_load_model, app)
    app.state.services = services
    log.info("dentalmim %s service started (data in %s)", __version__, settings.data_dir)
    try:
        yield
    finally:
        app.state.services = None
        if hasattr(services.provider, "stop"):
            services.provider.stop()
        services.batcher.stop()
        services.engine.dispose()


def create_app(settings: Settings | None = None, provider: ModelProvider | None = None) -> FastAPI:
    """Builds the application (nothing is loaded or written until its lifespan starts).

    Args:
        settings: configuration; default :func:`service.settings.get_settings` (the environment).
        provider: model source; default a :class:`RegistryModelProvider`: the registry's current model, else
            ``settings.model_path`` registered as the first version; hot-swapped on promotion.
    """
    settings = settings or get_settings()
    quiet_identifying_loggers()
    docs = settings.public_docs
    app = FastAPI(title="dentalmim", version=__version__, lifespan=_lifespan,
                  description="Caries detection on dental radiographs (DICOM in, findings / overlay / SR out). "
                              "Send your API key in the `X-API-Key` header.",
                  docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None)
    app.state.settings = settings
    app.state.services = None
    app.state.metrics = ServiceMetrics()
    app.state.provider = provider or RegistryModelProvider(
        settings.model_path, device=settings.device, precision=settings.precision,
        tile_batch_size=settings.tile_batch_size, warmup=settings.warmup, poll_seconds=settings.model_poll_seconds)
    install_error_handlers(app)
    for router in (health.router, predictions.router, admin.router, models.router, datasets.router, jobs.router,
                   reports.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        """The clinician web page."""
        return FileResponse(STATIC_DIR / "index.html")

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
