"""The clinical API end to end (TestClient, lifespan included): uploads, findings, overlay, SR, errors, audit."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dentalmim.data.deid import Deidentifier, load_or_create_salt
from dentalmim.db.models import AuditEvent, Scan
from dentalmim.inference.predictor import save_model_bundle
from dentalmim.inference.sr import read_findings_sr
from service.main import create_app
from tests.service.conftest import (
    ORIGINAL_SERIES_UID,
    ORIGINAL_STUDY_UID,
    PHI,
    Running,
    dicom_bytes,
    issue_keys,
    make_settings,
    tiny_detector,
    upload,
)

SECRETS = [*PHI.values(), ORIGINAL_STUDY_UID, ORIGINAL_SERIES_UID, "DOE_JOHNATHAN"]


def _predict(running: Running, *files: bytes) -> list[dict]:
    response = upload(running.client, running.keys.clinician, *files, name="DOE_JOHNATHAN.dcm")
    assert response.status_code == 201, response.text
    return response.json()["predictions"]


def test_upload_gives_findings_in_px_and_mm_with_pseudonymous_ids(running: Running) -> None:
    response = upload(running.client, running.keys.clinician, dicom_bytes(), dicom_bytes(80, 100, seed=1),
                      name="DOE_JOHNATHAN.dcm")
    assert response.status_code == 201
    assert not any(secret in response.text for secret in SECRETS)
    first, second = response.json()["predictions"]
    assert first["image"] == {"rows": 96, "columns": 128, "pixel_spacing_mm": [0.05, 0.04], "modality": "IO"}
    assert second["image"]["rows"] == 80 and second["image"]["columns"] == 100
    assert first["model_version"] == "tiny-test-1" and first["scan_id"].startswith("scn_")
    assert first["prediction_id"] != second["prediction_id"] and first["scan_id"] != second["scan_id"]
    assert first["score_threshold"] == pytest.approx(0.078) and first["score_floor"] == pytest.approx(0.05)
    assert len(first["findings"]) > 0 and all(f["score"] >= 0.078 for f in first["findings"])
    assert all(0.05 <= f["score"] < 0.078 for f in first["candidates"])
    for finding in first["findings"] + first["candidates"]:
        px, mm = finding["box_px"], finding["box_mm"]
        assert 0 <= px["x1"] < px["x2"] <= 128 and 0 <= px["y1"] < px["y2"] <= 96
        assert mm["x1"] == pytest.approx(px["x1"] * 0.04, abs=1e-3)  # columns: 0.04 mm
        assert mm["y2"] == pytest.approx(px["y2"] * 0.05, abs=1e-3)  # rows: 0.05 mm
    assert set(first["timing_ms"]) == {"read", "queue", "inference", "total"}
    assert len(first["warnings"]) == 1 and "is the default" in first["warnings"][0]  # test bundle: no validation
    assert first["links"]["sr"] == f"/v1/predictions/{first['prediction_id']}/sr.dcm"


def test_an_image_type_the_model_barely_validated_is_flagged_on_its_uploads(tmp_path) -> None:
    model = save_model_bundle(tiny_detector(), tmp_path / "typed.safetensors", {
        "tile_size": 64, "score_threshold": 0.078, "image_threshold": 0.5, "version": "typed-1",
        "threshold_rule": "validated", "threshold_val_caries_images": 7, "threshold_val_caries_free_images": 6,
        "threshold_val_image_types": {"intraoral": [6, 5], "panoramic": [1, 1]}})
    app = create_app(make_settings(tmp_path / "data", model))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(seed=3)))
    ds.Modality = "PX"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with TestClient(app) as client:
        keys = issue_keys(app)
        response = upload(client, keys.clinician, dicom_bytes(seed=2), buffer.getvalue())
        assert response.status_code == 201, response.text
        intraoral, panoramic = response.json()["predictions"]
        assert intraoral["warnings"] == []  # 6 and 5 intraoral validation images: enough
        (warning,) = panoramic["warnings"]
        assert warning.startswith("panoramic image:") and "only 1 panoramic validation image(s)" in warning
        stored = client.get(f"/v1/predictions/{panoramic['prediction_id']}", headers=keys.header("clinician"))
        assert stored.json()["warnings"] == [warning]


def test_uploads_reach_a_max_spacing_model_with_their_spacing(tmp_path) -> None:
    model = save_model_bundle(tiny_detector(), tmp_path / "fine.safetensors", {
        "tile_size": 64, "score_threshold": 0.01, "image_threshold": 0.5, "version": "fine-1",
        "threshold_rule": "validated", "threshold_val_caries_images": 7, "threshold_val_caries_free_images": 6,
        "threshold_val_image_types": {"intraoral": [6, 5]}, "max_spacing_mm": 0.02})
    app = create_app(make_settings(tmp_path / "data", model))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(seed=3)))
    del ds.PixelSpacing
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with TestClient(app) as client:
        response = upload(client, issue_keys(app).clinician, dicom_bytes(seed=2), buffer.getvalue())
        assert response.status_code == 201, response.text
        known, unknown = response.json()["predictions"]
        assert known["warnings"] == []  # (0.05, 0.04) mm: upsampled 2.5 x 2 to 0.02 mm, nothing to say
        assert known["findings"] and all(f["box_px"]["x2"] <= 128 and f["box_px"]["y2"] <= 96
                                         for f in known["findings"])  # boxes back in original pixels
        (warning,) = unknown["warnings"]
        assert "no usable pixel spacing" in warning and "0.02 mm" in warning


def test_scans_are_stored_deidentified_and_content_addressed(running: Running) -> None:
    data_in = dicom_bytes(seed=7)
    (pred,) = _predict(running, data_in)
    with running.app.state.services.sessions() as session:
        scan = session.get(Scan, pred["scan_id"])
    path = running.settings.data_dir / scan.path
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert scan.path == f"scans/{digest[:2]}/{digest}.dcm" and scan.sha256 == digest
    assert pred["scan_id"] == f"scn_{digest[:24]}"
    assert not any(secret.encode() in data for secret in SECRETS)
    ds = pydicom.dcmread(path)
    deid = Deidentifier(load_or_create_salt(running.settings.deid_salt_file))
    assert ds.StudyInstanceUID == deid.map_uid(ORIGINAL_STUDY_UID) == scan.study_uid
    assert ds.PatientID == deid.pseudonym(PHI["PatientID"]) == scan.patient_pseudonym
    assert ds.PatientIdentityRemoved == "YES"
    assert list((running.settings.data_dir / "tmp").iterdir()) == []  # uploads are not kept in clear
    (again,) = _predict(running, data_in)  # same content: same scan, new prediction
    assert again["scan_id"] == pred["scan_id"] and again["prediction_id"] != pred["prediction_id"]


def test_reading_back_findings_is_owner_only_and_audited(running: Running) -> None:
    (pred,) = _predict(running, dicom_bytes(seed=2))
    pid, client, keys = pred["prediction_id"], running.client, running.keys
    mine = client.get(f"/v1/predictions/{pid}", headers=keys.header("clinician"))
    assert mine.status_code == 200 and mine.json()["findings"] == pred["findings"]
    other = client.get(f"/v1/predictions/{pid}", headers=keys.header("clinician2"))
    assert other.status_code == 404 and other.json()["detail"]["code"] == "not_found"
    assert client.get("/v1/predictions/prd_" + "0" * 32, headers=keys.header("clinician")).status_code == 404
    with running.app.state.services.sessions() as session:
        events = session.query(AuditEvent).filter(AuditEvent.prediction_id == pid).order_by(AuditEvent.id).all()
    assert [(e.action, e.status) for e in events] == [("predict", 201), ("read_findings", 200),
                                                      ("read_findings", 404)]
    assert events[0].model_version == "tiny-test-1" and events[0].scan_id == pred["scan_id"]
    assert events[2].key_id != events[0].key_id and events[0].role == "clinician"
    listed = client.get("/v1/audit", params={"limit": 1000}, headers=keys.header("admin")).json()
    assert {(e["action"], e["prediction_id"]) for e in listed} >= {("predict", pid), ("read_findings", pid)}


def test_overlay_png_follows_the_threshold(running: Running) -> None:
    (pred,) = _predict(running, dicom_bytes(seed=3))
    url, headers = pred["links"]["overlay"], running.keys.header("clinician")
    default = running.client.get(url, headers=headers)
    assert default.status_code == 200 and default.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(default.content)).convert("RGB"))
    assert image.shape == (96, 128, 3)
    coloured = (image[..., 0].astype(int) - image[..., 2]) > 80  # orange box bands, the radiograph is grey
    none = np.asarray(Image.open(io.BytesIO(running.client.get(url, params={"threshold": 1.0},
                                                                headers=headers).content)).convert("RGB"))
    assert coloured.sum() > ((none[..., 0].astype(int) - none[..., 2]) > 80).sum()
    small = running.client.get(url, params={"max_side": 64}, headers=headers)
    assert Image.open(io.BytesIO(small.content)).size == (64, 48)
    assert running.client.get(url, params={"threshold": 2}, headers=headers).status_code == 422


def test_sr_carries_the_original_study_or_the_deidentified_one(running: Running) -> None:
    original_sop = "1.2.826.0.1.3680043.10.999.3"
    (pred,) = _predict(running, dicom_bytes(seed=4, sop_uid=original_sop))
    headers = running.keys.header("clinician")
    response = running.client.get(pred["links"]["sr"], headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(response.content))
    assert sr.StudyInstanceUID == ORIGINAL_STUDY_UID and sr.PatientID == PHI["PatientID"]
    records = read_findings_sr(sr)
    assert records[0]["kind"] == "image" and records[0]["source_sop_instance_uid"] == original_sop
    assert records[0]["algorithm_version"] == "tiny-test-1"
    boxes = sorted(tuple(round(v, 2) for v in r["box"]) for r in records if r["kind"] == "finding")
    expected = sorted(tuple(f["box_px"][k] for k in ("x1", "y1", "x2", "y2")) for f in pred["findings"])
    np.testing.assert_allclose(np.array(boxes), np.array(expected), atol=0.02)
    again = pydicom.dcmread(io.BytesIO(running.client.get(pred["links"]["sr"], headers=headers).content))
    assert again.SOPInstanceUID == sr.SOPInstanceUID  # re-downloads are the same object
    deid = running.client.get(pred["links"]["sr"], params={"variant": "deidentified"}, headers=headers)
    deid_sr = pydicom.dcmread(io.BytesIO(deid.content))
    mapper = Deidentifier(load_or_create_salt(running.settings.deid_salt_file))
    assert deid_sr.StudyInstanceUID == mapper.map_uid(ORIGINAL_STUDY_UID)
    assert deid_sr.PatientID == mapper.pseudonym(PHI["PatientID"])
    assert not any(secret.encode() in deid.content for secret in SECRETS)
    assert deid_sr.SOPInstanceUID != sr.SOPInstanceUID
    assert read_findings_sr(deid_sr)[0]["source_sop_instance_uid"] == mapper.map_uid(original_sop)


def test_without_link_retention_only_the_deidentified_sr_exists(tmp_path, bundle) -> None:
    app = create_app(make_settings(tmp_path, bundle, link_retention_hours=0))
    with TestClient(app) as client:
        from tests.service.conftest import issue_keys

        key = issue_keys(app).clinician
        (pred,) = upload(client, key, dicom_bytes()).json()["predictions"]
        gone = client.get(pred["links"]["sr"], headers={"X-API-Key": key})
        assert gone.status_code == 410 and gone.json()["detail"]["code"] == "link_expired"
        ok = client.get(pred["links"]["sr"], params={"variant": "deidentified"}, headers={"X-API-Key": key})
        assert ok.status_code == 200


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"this is not a DICOM file at all" * 10, 422, "not_dicom"),
    (dicom_bytes()[:600], 422, "truncated"),
    (b"", 422, "truncated"),
    (dicom_bytes(500, 500), 413, "too_large"),  # 250 000 pixels > max_pixels 200 000
])
def test_bad_uploads_are_4xx_with_the_dicom_error_code(running: Running, body: bytes, status: int,
                                                       code: str) -> None:
    before = sorted((running.settings.data_dir / "scans").rglob("*.dcm"))
    response = upload(running.client, running.keys.clinician, dicom_bytes(seed=9), body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]["code"] == code
    assert response.json()["detail"]["message"].startswith("files[1]: ")
    assert sorted((running.settings.data_dir / "scans").rglob("*.dcm")) == before  # all or nothing


def test_request_shape_errors(running: Running) -> None:
    client, headers = running.client, running.keys.header("clinician")
    too_big = client.post("/v1/predictions", headers=headers,
                          files=[("files", ("a.dcm", b"\0" * (3 << 20), "application/dicom"))])
    assert too_big.status_code == 413 and too_big.json()["detail"]["code"] == "too_large"
    chunks = (b'{"kind": "evaluate", "dataset": "' + b"x" * (1 << 20) for _ in range(4))  # chunked: no length
    streamed = client.post("/v1/jobs", headers={**running.keys.header("trainer"), "Content-Type": "application/json"},
                           content=chunks)
    assert streamed.status_code == 413 and streamed.json()["detail"]["code"] == "too_large"  # was a 400
    as_json = client.post("/v1/predictions", headers=headers, json={"files": ["x"]})
    assert as_json.status_code == 415 and as_json.json()["detail"]["code"] == "unsupported_media_type"
    no_files = client.post("/v1/predictions", headers=headers, files=[("other", ("a.dcm", b"x", "text/plain"))])
    assert no_files.status_code == 422 and no_files.json()["detail"]["code"] == "no_files"
    not_a_file = client.post("/v1/predictions", headers=headers, data={"files": "abc"},
                             files=[("x", ("a", b"1", "text/plain"))])
    assert not_a_file.status_code == 422 and not_a_file.json()["detail"]["code"] == "not_a_file"
    many = [("files", (f"{i}.dcm", b"x", "application/dicom")) for i in range(running.settings.max_files_per_request
                                                                               + 1)]
    assert client.post("/v1/predictions", headers=headers, files=many).status_code == 400


def test_keys_and_roles(running: Running) -> None:
    client, keys = running.client, running.keys
    protected = [("post", "/v1/predictions"), ("get", "/v1/predictions/prd_" + "0" * 32),
                 ("get", "/v1/predictions/prd_" + "0" * 32 + "/overlay.png"), ("get", "/v1/keys"),
                 ("get", "/v1/audit"), ("get", "/v1/models/current"), ("get", "/metrics")]
    for method, path in protected:
        for headers in ({}, {"X-API-Key": "nope"}, {"X-API-Key": keys.clinician[:-2] + "xx"}):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json()["detail"]["code"] == "unauthorized"
    assert upload(client, keys.trainer, dicom_bytes()).status_code == 403
    assert upload(client, keys.admin, dicom_bytes()).status_code == 403
    assert client.get("/v1/keys", headers=keys.header("clinician")).status_code == 403
    assert client.get("/v1/models/current", headers=keys.header("trainer")).json()["version"] == "tiny-test-1"
    created = client.post("/v1/keys", json={"role": "clinician", "name": "temp"}, headers=keys.header("admin"))
    assert created.status_code == 201
    new_key, key_id = created.json()["key"], created.json()["key_id"]
    assert new_key.startswith(f"dmk_{key_id}_")
    listed = client.get("/v1/keys", headers=keys.header("admin")).json()
    assert key_id in {k["key_id"] for k in listed} and all("key" not in k for k in listed)
    assert client.get("/v1/models/current", headers={"X-API-Key": new_key}).status_code == 200
    assert client.delete(f"/v1/keys/{key_id}", headers=keys.header("admin")).json()["revoked_at"]
    assert client.get("/v1/models/current", headers={"X-API-Key": new_key}).status_code == 401
    assert client.delete("/v1/keys/unknown", headers=keys.header("admin")).status_code == 404
    bad_role = client.post("/v1/keys", json={"role": "root"}, headers=keys.header("admin"))
    assert bad_role.status_code == 422 and bad_role.json()["detail"]["code"] == "validation_error"


def test_probes_metrics_and_docs(running: Running) -> None:
    client = running.client
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["version"] == "tiny-test-1"
    _predict(running, dicom_bytes(seed=5))
    client.get("/v1/keys")  # a 401
    text = client.get("/metrics", headers=running.keys.header("clinician")).text
    assert 'dentalmim_request_duration_seconds_count{method="POST",route="/v1/predictions",status="201"}' in text
    assert 'route="/v1/predictions/{prediction_id}"' in text or "overlay" not in text
    assert "dentalmim_batch_size_count" in text and "dentalmim_queue_depth 0.0" in text
    assert 'dentalmim_errors_total{kind="unauthorized"}' in text
    assert 'dentalmim_model_info{device="cpu",precision="fp32",version="tiny-test-1"} 1.0' in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predictions", "/v1/predictions/{prediction_id}/sr.dcm", "/healthz", "/readyz"} <= set(paths)
    assert "text/html" in client.get("/").headers["content-type"]


def test_without_a_model_the_service_is_alive_but_not_ready(tmp_path) -> None:
    app = create_app(make_settings(tmp_path, None))
    with TestClient(app) as client:
        from tests.service.conftest import issue_keys

        key = issue_keys(app).clinician
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "DENTALMIM_MODEL_PATH" in ready.json()["model"]["error"]
        refused = upload(client, key, dicom_bytes())
        assert refused.status_code == 503 and refused.json()["detail"]["code"] == "model_not_ready"


def test_no_patient_data_in_logs(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    (pred,) = _predict(running, dicom_bytes(seed=6))
    headers = running.keys.header("clinician")
    for suffix in ("", "/overlay.png", "/sr.dcm"):
        assert running.client.get(pred["links"]["self"] + suffix, headers=headers).status_code == 200
    upload(running.client, running.keys.clinician, dicom_bytes()[:700], name="DOE_JOHNATHAN.dcm")
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert caplog.records  # something was logged (httpx, the service)
    assert not [s for s in SECRETS if s in logged]


def _edited(seed: int, edit) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(seed=seed)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of invalid values as they are set
        edit(ds)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_an_sr_that_cannot_be_made_is_422_and_no_header_value_is_logged(running: Running,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    headers = running.keys.header("clinician")
    no_modality = _edited(9, lambda ds: delattr(ds, "Modality"))  # findings yes, but an SR cannot reference it
    bad_date = _edited(10, lambda ds: setattr(ds, "PatientBirthDate", "JANE DOE 1970"))  # an invalid DA value
    first, second = _predict(running, no_modality, bad_date)
    for pred, variant, status in ((first, "original", 422), (first, "deidentified", 422),
                                  (second, "original", 422), (second, "deidentified", 200)):
        response = running.client.get(pred["links"]["sr"], params={"variant": variant}, headers=headers)
        assert response.status_code == status, (variant, response.text)
        if status == 422:
            assert response.json()["detail"]["code"] == "sr_unavailable" and "JANE" not in response.text
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "JANE DOE" not in logged and ORIGINAL_STUDY_UID not in logged
