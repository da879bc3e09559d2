"""Fixtures of the service tests: a tiny random-weight model bundle, DICOMs carrying fake patient data, and a
running app (lifespan included) with one API key per role."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient

from dentalmim.auth import create_key
from dentalmim.data.encode import image_dataset
from dentalmim.inference.predictor import save_model_bundle
from dentalmim.models.detector import CariesDetector
from dentalmim.models.vit import ViTEncoder
from service.main import create_app
from service.settings import Settings

#: Fake patient data written into the test DICOMs; none of it may leave the service.
PHI = {"PatientName": "DOE^JOHNATHAN", "PatientID": "PID-SECRET-4711", "PatientBirthDate": "19610203",
       "AccessionNumber": "ACC-998877", "InstitutionName": "St Example Dental Clinic",
       "ReferringPhysicianName": "SMITH^ALICE"}
ORIGINAL_STUDY_UID = "1.2.826.0.1.3680043.10.999.1"
ORIGINAL_SERIES_UID = "1.2.826.0.1.3680043.10.999.2"


def tiny_detector() -> CariesDetector:
    torch.manual_seed(0)
    encoder = ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)
    return CariesDetector(encoder, num_classes=1, fpn_channels=32)


def save_tiny_bundle(path: Path, score_threshold: float = 0.078) -> Path:
    """A random-weight bundle whose low score threshold makes boxes appear on any image."""
    return save_model_bundle(tiny_detector(), path, {"tile_size": 64, "score_threshold": score_threshold,
                                                     "image_threshold": 0.5, "version": "tiny-test-1",
                                                     "class_names": ["caries"]})


def dicom_bytes(rows: int = 96, columns: int = 128, seed: int = 0, sop_uid: str | None = None) -> bytes:
    """A 12-bit intraoral DICOM with textured pixels and the fake patient data of :data:`PHI`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    pixels = 1500 + 800 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + rng.normal(0, 200, (rows, columns))
    ds = image_dataset(np.clip(pixels, 0, 4095).astype(np.uint16), bits_stored=12, pixel_spacing_mm=(0.05, 0.04))
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ORIGINAL_STUDY_UID, ORIGINAL_SERIES_UID
    if sop_uid:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Keys:
    clinician: str
    clinician2: str
    trainer: str
    admin: str

    def header(self, role: str) -> dict[str, str]:
        return {"X-API-Key": getattr(self, role)}


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def make_settings(data_dir: Path, model: Path | None, **overrides) -> Settings:
    values = {"data_dir": data_dir, "database_url": None, "model_path": model, "device": "cpu",
              "load_model_in_background": False, "batch_max_wait_ms": 5.0, "tile_batch_size": 8,
              "max_upload_bytes": 2 << 20, "max_pixels": 200_000, **overrides}
    return Settings(**values)


def issue_keys(app) -> Keys:
    with app.state.services.sessions() as session:
        keys = Keys(*(create_key(session, role, name)[1] for role, name in (
            ("clinician", "dr a"), ("clinician", "dr b"), ("trainer", "t"), ("admin", "root"))))
        session.commit()
    return keys


@dataclass
class Running:
    app: object
    client: TestClient
    keys: Keys
    settings: Settings


@pytest.fixture(scope="module")
def database_url() -> str | None:
    """The ``running`` app's database: None is SQLite in its data folder (test_postgres.py gives a PostgreSQL URL)."""
    return None


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, bundle: Path, database_url: str | None) -> Iterator[Running]:
    settings = make_settings(tmp_path_factory.mktemp("data"), bundle, database_url=database_url)
    app = create_app(settings)
    with TestClient(app) as client:
        yield Running(app, client, issue_keys(app), settings)


def upload(client: TestClient, key: str, *files: bytes, name: str = "scan.dcm"):
    parts = [("files", (name, data, "application/dicom")) for data in files]
    return client.post("/v1/predictions", files=parts, headers={"X-API-Key": key})
