"""The registry through the service: hot-swap on promotion with requests in flight, polling for promotions made
elsewhere (a worker), a damaged model file never served, job API checks and cancellation, roles."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from dentalmim.inference.predictor import save_model_bundle
from dentalmim.models.detector import CariesDetector
from dentalmim.models.vit import ViTEncoder
from dentalmim.registry import ModelRegistry
from service.main import create_app
from service.worker import Worker
from tests.service.conftest import Keys, dicom_bytes, issue_keys, upload
from tests.service.retrain_helpers import add_scans, corpus, retrain_settings, subset


def _other_bundle(path: Path, version: str) -> Path:
    torch.manual_seed(1)
    encoder = ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)
    detector = CariesDetector(encoder, 1, fpn_channels=32)
    return save_model_bundle(detector, path, {"tile_size": 64, "score_threshold": 0.078, "version": version})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Iterator[tuple[TestClient, Keys, object]]:
    settings = retrain_settings(tmp_path_factory.mktemp("data"), bundle, model_poll_seconds=0.2)
    app = create_app(settings)
    with TestClient(app) as client:
        yield client, issue_keys(app), app


def _registry(app) -> ModelRegistry:
    return app.state.services.registry


def test_promotion_hot_swaps_without_failing_in_flight_requests(service, tmp_path: Path) -> None:
    client, keys, app = service
    registry = _registry(app)
    start = registry.current_version()
    new = registry.register(_other_bundle(tmp_path / "b.safetensors", "ignored"), created_by="test").version
    seen: list[tuple[int, str]] = []
    errors: list[int] = []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        while not stop.is_set():
            response = upload(client, keys.clinician, dicom_bytes(seed=seed))
            if response.status_code != 201:
                errors.append(response.status_code)
            else:
                seen.append((seed, response.json()["predictions"][0]["model_version"]))

    threads = [threading.Thread(target=hammer, args=(500 + i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    response = client.post(f"/v1/models/{new}/promote", headers=keys.header("admin"), json={"reason": "test"})
    assert response.status_code == 200 and response.json()["serving"]["version"] == new
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and {v for _, v in seen} == {start, new}
    for seed in (500, 501, 502):  # per client: the old version, then only the new one
        versions = [v for s, v in seen if s == seed]
        assert versions == sorted(versions, key=lambda v: v == new)
    (pred,) = upload(client, keys.clinician, dicom_bytes(seed=9)).json()["predictions"]
    assert pred["model_version"] == new
    assert client.post("/v1/models/rollback", headers=keys.header("admin")).json()["current"] == start


def test_promotion_by_another_process_is_picked_up_by_polling(service, tmp_path: Path) -> None:
    client, keys, app = service
    registry = ModelRegistry(app.state.services.sessions, app.state.settings.data_dir)  # as a worker would
    info = registry.register(_other_bundle(tmp_path / "c.safetensors", "x"), created_by="worker")
    registry.promote(info.version, actor="worker:test")
    deadline = time.monotonic() + 10
    while app.state.provider.status()["version"] != info.version and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/v1/models/current", headers=keys.header("clinician")).json()["version"] == info.version


def test_a_damaged_model_file_is_never_served(service, tmp_path: Path) -> None:
    client, keys, app = service
    registry = _registry(app)
    serving = app.state.provider.status()["version"]
    info = registry.register(_other_bundle(tmp_path / "d.safetensors", "x"))
    path = registry.file_path(info)
    path.write_bytes(path.read_bytes()[:100])  # half-written
    response = client.post(f"/v1/models/{info.version}/promote", headers=keys.header("admin"))
    assert response.status_code == 409 and response.json()["detail"]["code"] == "file_mismatch"
    registry.promote(info.version)  # forced behind the API's back: the provider refuses to load it
    assert app.state.provider.refresh() is False
    status = app.state.provider.status()
    assert status["version"] == serving and "does not match its sha256" in status["error"]
    (pred,) = upload(client, keys.clinician, dicom_bytes(seed=11)).json()["predictions"]
    assert pred["model_version"] == serving
    registry.rollback()


def test_model_endpoints_roles_and_listing(service) -> None:
    client, keys, app = service
    listing = client.get("/v1/models", headers=keys.header("trainer")).json()
    assert listing["current"] == _registry(app).current_version()
    fields = {"version", "sha256", "parent", "config", "data_snapshot", "metrics", "status"}
    assert fields <= set(listing["versions"][0])
    assert client.get("/v1/models", headers=keys.header("clinician")).status_code == 403
    assert client.get("/v1/models").status_code == 401
    version = listing["versions"][-1]["version"]
    assert client.get(f"/v1/models/{version}", headers=keys.header("admin")).json()["version"] == version
    assert client.get("/v1/models/nope", headers=keys.header("admin")).status_code == 404
    for role in ("trainer", "clinician"):
        assert client.post(f"/v1/models/{version}/promote", headers=keys.header(role)).status_code == 403
        assert client.post("/v1/models/rollback", headers=keys.header(role)).status_code == 403
    assert client.post("/v1/models/nope/promote", headers=keys.header("admin")).status_code == 404


def test_job_api_checks_roles_and_cancellation(service, tmp_path_factory: pytest.TempPathFactory) -> None:
    client, keys, app = service
    files, coco = corpus(tmp_path_factory.mktemp("corpus"), n=3, seed=5)
    assert add_scans(client, keys.trainer, "jobs-ds", files, coco).status_code == 201
    post = lambda body, role="trainer": client.post("/v1/jobs", json=body, headers=keys.header(role))
    assert post({"kind": "retrain", "dataset": "missing"}).json()["detail"]["code"] == "unknown_dataset"
    assert add_scans(client, keys.trainer, "holdout", files[:1], subset(coco, {files[0][0]})).status_code == 201
    assert post({"kind": "retrain", "dataset": "holdout"}).json()["detail"]["code"] == "holdout_dataset"
    assert post({"kind": "retrain", "dataset": "jobs-ds", "init": "encoder", "encoder": "../x.ckpt"}).json()[
        "detail"]["code"] == "invalid_encoder"
    assert post({"kind": "retrain", "dataset": "jobs-ds", "steps": 10**9}).json()["detail"]["code"] == "too_many_steps"
    assert post({"kind": "evaluate", "dataset": "jobs-ds", "version": "v999"}).json()["detail"]["code"] == \
        "unknown_version"
    assert post({"kind": "train", "dataset": "jobs-ds"}).status_code == 422
    for body in ({"steps": True}, {"seed": "3"}, {"stpes": 100}, {"version": "v1\u0000"}):  # no coercion, no typo
        assert post({"kind": "retrain", "dataset": "jobs-ds", **body}).status_code == 422, body
    for role in ("clinician", "admin"):
        assert post({"kind": "evaluate", "dataset": "jobs-ds"}, role).status_code == 403
    queued = post({"kind": "evaluate", "dataset": "jobs-ds"}).json()
    assert client.get(f"/v1/jobs/{queued['job_id']}", headers=keys.header("clinician")).status_code == 403
    cancelled = client.delete(f"/v1/jobs/{queued['job_id']}", headers=keys.header("trainer")).json()
    assert cancelled["state"] == "cancelled"
    assert client.get("/v1/jobs/job_" + "0" * 24, headers=keys.header("admin")).status_code == 404
    # a running retrain is stopped by its worker (the fine-tuning subprocess is terminated)
    job = post({"kind": "retrain", "dataset": "jobs-ds", "steps": 500}).json()
    worker = Worker(app.state.settings)
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1, "idle_exit": True})
    thread.start()
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job['job_id']}", headers=keys.header("trainer")).json()["stage"] != "finetune":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.delete(f"/v1/jobs/{job['job_id']}", headers=keys.header("trainer")).json()["cancel_requested"]
    thread.join(timeout=30)
    done = client.get(f"/v1/jobs/{job['job_id']}", headers=keys.header("trainer")).json()
    assert done["state"] == "cancelled" and done["finished_at"] is not None
    assert [v for v in _registry(app).list() if v.config.get("job_id") == job["job_id"]] == []


ENDPOINTS = [
    ("post", "/v1/datasets/d/scans", ("trainer",)), ("get", "/v1/datasets/d/scans", ("trainer",)),
    ("get", "/v1/datasets", ("trainer",)), ("post", "/v1/jobs", ("trainer",)),
    ("get", "/v1/jobs", ("trainer", "admin")),
    ("get", "/v1/jobs/job_" + "0" * 24, ("trainer", "admin")), ("delete", "/v1/jobs/job_" + "0" * 24, ("trainer",)),
    ("get", "/v1/models", ("trainer", "admin")), ("get", "/v1/models/v1", ("trainer", "admin")),
    ("post", "/v1/models/v1/promote", ("admin",)), ("post", "/v1/models/rollback", ("admin",)),
    ("get", "/v1/reports", ("trainer", "admin")), ("get", "/v1/reports/rpt_" + "0" * 24, ("trainer", "admin")),
    ("get", "/v1/reports/rpt_" + "0" * 24 + "/report.pdf", ("trainer", "admin")),
    ("get", "/v1/reports/rpt_" + "0" * 24 + "/metrics.json", ("trainer", "admin")),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "allowed"), ENDPOINTS)
def test_every_retraining_endpoint_checks_the_key_and_role(service, method: str, path: str, allowed: tuple) -> None:
    client, keys, _app = service
    assert getattr(client, method)(path).status_code == 401
    for role in ("clinician", "trainer", "admin"):
        status = getattr(client, method)(path, headers=keys.header(role)).status_code
        assert (status == 403) == (role not in allowed), (role, status)
