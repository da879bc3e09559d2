"""Crash tests with real processes: SIGKILL the web process during an upload and the worker during a retraining
job, restart, and check that acknowledged scans are intact, the interrupted job is failed with a reason, and the
registry and the served model are consistent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dentalmim.auth import create_key
from dentalmim.db import make_engine, session_factory, upgrade
from dentalmim.db.models import DatasetScan, Job, Scan
from dentalmim.registry import ModelRegistry
from tests.service.conftest import dicom_bytes
from tests.service.retrain_helpers import TINY_RETRAIN, corpus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path, model: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "DENTALMIM_DATA_DIR": str(data_dir),
            "DENTALMIM_MODEL_PATH": str(model), "DENTALMIM_DEVICE": "cpu", "DENTALMIM_MAX_PIXELS": "400000",
            "DENTALMIM_MAX_UPLOAD_BYTES": str(64 << 20), "DENTALMIM_MAX_FILES_PER_INTAKE": "64",
            "DENTALMIM_KEY_CACHE_SECONDS": "0", "DENTALMIM_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys(data_dir: Path) -> dict[str, str]:
    engine = make_engine(f"sqlite:///{data_dir.resolve() / 'dentalmim.db'}")
    upgrade(engine)
    with session_factory(engine)() as session:
        keys = {role: create_key(session, role)[1] for role in ("trainer", "clinician")}
        session.commit()
    engine.dispose()
    return keys


class Server:
    def __init__(self, data_dir: Path, model: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory",
                                      "--port", str(self.port), "--log-level", "warning"], cwd=ROOT,
                                     env=_env(data_dir, model))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, "the server exited"
            time.sleep(0.2)
        raise AssertionError("the server did not get ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def model(bundle: Path) -> Path:
    return bundle


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request("POST", "http://x/", files=[("files", (n, d, "application/dicom")) for n, d in files])
    return request.read(), {"content-type": request.headers["content-type"]}


def test_killing_the_web_process_mid_upload_loses_no_acknowledged_scan(tmp_path: Path, model: Path) -> None:
    data_dir = tmp_path / "data"
    keys = _keys(data_dir)
    server = Server(data_dir, model)
    acknowledged = {}
    try:
        for seed in range(3):
            body, headers = _multipart([(f"{seed}.dcm", dicom_bytes(seed=700 + seed))])
            response = httpx.post(f"{server.url}/v1/datasets/crash/scans", content=body, timeout=30,
                                  headers={**headers, "X-API-Key": keys["trainer"]})
            assert response.status_code == 201
            acknowledged[response.json()["scans"][0]["scan_id"]] = seed
        body, headers = _multipart([(f"big{i}.dcm", dicom_bytes(seed=800 + i)) for i in range(20)])

        def slow() -> Iterator[bytes]:
            for start in range(0, len(body), 4096):
                yield body[start:start + 4096]
                if start > len(body) // 2:
                    server.kill()  # mid-body: the request is never acknowledged
                time.sleep(0.001)

        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{server.url}/v1/datasets/crash/scans", content=slow(), timeout=30,
                       headers={**headers, "X-API-Key": keys["trainer"]})
    finally:
        if server.proc.poll() is None:
            server.kill()
    server = Server(data_dir, model)
    try:
        listing = httpx.get(f"{server.url}/v1/datasets/crash/scans", headers={"X-API-Key": keys["trainer"]}).json()
        assert set(acknowledged) <= {s["scan_id"] for s in listing["scans"]}
        response = httpx.post(f"{server.url}/v1/predictions", headers={"X-API-Key": keys["clinician"]},
                              files=[("files", ("a.dcm", dicom_bytes(seed=1), "application/dicom"))], timeout=30)
        assert response.status_code == 201  # the restarted service serves the registry's current model
    finally:
        server.kill()
    engine = make_engine(f"sqlite:///{data_dir.resolve() / 'dentalmim.db'}")
    with session_factory(engine)() as session:
        for row in session.query(DatasetScan).all():
            scan = session.get(Scan, row.scan_id)
            data = (data_dir / scan.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == scan.sha256 and len(data) == scan.size_bytes  # intact
    engine.dispose()
    for path in (data_dir / "scans").rglob("*.dcm"):  # nothing half-written under a final name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem


def test_killing_the_worker_mid_retraining_fails_the_job_with_a_reason(tmp_path: Path, model: Path) -> None:
    data_dir = tmp_path / "data"
    _keys(data_dir)
    engine = make_engine(f"sqlite:///{data_dir.resolve() / 'dentalmim.db'}")
    sessions = session_factory(engine)
    # the web process is not needed to queue work: the scans and the job go straight into the database
    from dentalmim.auth import Principal
    from dentalmim.data.deid import Deidentifier, load_or_create_salt
    from dentalmim.jobs import enqueue
    from service.services.datasets import IntakeFile, add_scans, resolve_labels
    from service.services.predictions import check_upload
    from service.storage import ScanStore

    files, coco = corpus(tmp_path / "corpus", n=3, seed=7)
    store, deid = ScanStore(data_dir), Deidentifier(load_or_create_salt(data_dir / ".deid_salt"))
    checked = [IntakeFile(n, check_upload(d, i, store, deid, None, 400_000)) for i, (n, d) in enumerate(files)]
    with sessions() as session:
        add_scans(session, store, Principal("k", "trainer"), "clinic", checked, resolve_labels(coco, checked))
        job_id = enqueue(session, "retrain", {"dataset": "clinic", "steps": 5000, "init": "current"}, "k").id
        session.commit()
    env = _env(data_dir, model, DENTALMIM_RETRAIN_OVERRIDES=json.dumps(TINY_RETRAIN),
               DENTALMIM_WORKER_HEARTBEAT_SECONDS="0.3", DENTALMIM_WORKER_LEASE_SECONDS="2",
               DENTALMIM_WORKER_POLL_SECONDS="0.2")
    # the worker has no web process to import the initial model: register it as the service would
    registry = ModelRegistry(sessions, data_dir)
    registry.promote(registry.register(model, version="tiny-test-1").version)
    worker = subprocess.Popen([sys.executable, "-m", "dentalmim.cli", "worker"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            with sessions() as session:
                job = session.get(Job, job_id)
                if job.stage == "finetune":
                    break
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    with sessions() as session:
        assert session.get(Job, job_id).state == "running"  # nobody knows yet
    time.sleep(2.2)  # the lease expires
    restarted = subprocess.run([sys.executable, "-m", "dentalmim.cli", "worker", "--once"], check=False, cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=60)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    with sessions() as session:
        job = session.get(Job, job_id)
    assert job.state == "failed" and "no heartbeat" in job.error and "finetune" in job.error
    assert registry.current_version() == "tiny-test-1" and [v.version for v in registry.list()] == ["tiny-test-1"]
    assert registry.verify(registry.current())
    assert not list((data_dir / "models").glob(".register-*"))
    engine.dispose()
