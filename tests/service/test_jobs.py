"""The retraining loop at tiny size: labeled scans -> retrain job (worker) -> gated candidate -> promoted ->
predictions from the new version; a worse candidate refused by the gate; rollback; an evaluation report."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dentalmim.registry import ModelRegistry
from service.main import create_app
from service.services import datasets as data_logic
from service.worker import Worker
from tests.service.conftest import Keys, dicom_bytes, issue_keys, upload
from tests.service.retrain_helpers import add_scans, corpus, retrain_settings, subset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Iterator[tuple[TestClient, Keys, object]]:
    settings = retrain_settings(tmp_path_factory.mktemp("data"), bundle)
    app = create_app(settings)
    with TestClient(app) as client:
        keys = issue_keys(app)
        files, coco = corpus(tmp_path_factory.mktemp("corpus"))
        train, held = files[:4], files[4:]
        assert add_scans(client, keys.trainer, "clinic", train, subset(coco, {n for n, _ in train})).status_code == 201
        assert add_scans(client, keys.trainer, "holdout", held, subset(coco, {n for n, _ in held})).status_code == 201
        yield client, keys, app


def _run_worker(app, **overrides) -> None:
    settings = app.state.settings.model_copy(update=overrides)
    assert Worker(settings).run(max_jobs=1, idle_exit=True) == 1


def _job(client: TestClient, keys: Keys, **body) -> dict:
    response = client.post("/v1/jobs", json=body, headers=keys.header("trainer"))
    assert response.status_code == 201, response.text
    return response.json()


def _get(client: TestClient, keys: Keys, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}", headers=keys.header("trainer")).json()


def test_full_loop_retrain_gate_promote_refuse_rollback_evaluate(loop) -> None:
    client, keys, app = loop
    assert app.state.provider.status()["version"] == "tiny-test-1"
    # retrain from the current model: the gate accepts (tolerance 1.0), the candidate is promoted and served
    job = _job(client, keys, kind="retrain", dataset="clinic", steps=2)
    assert job["state"] == "queued" and job["params"]["steps"] == 2
    _run_worker(app)
    done = _get(client, keys, job["job_id"])
    assert done["state"] == "succeeded", (done["error"], done["log_tail"][-3000:])
    result = done["result"]
    assert result["promoted"] is True and result["version"] == "v2" and result["parent"] == "tiny-test-1"
    assert result["init"] == "current" and result["gate"]["accepted"] is True
    assert done["progress"] == 1.0 and "candidate v2 registered" in done["log_tail"]
    assert "train/loss" in done["metrics"] and done["metrics"]["holdout_froc_fom"] is not None
    models = client.get("/v1/models", headers=keys.header("admin")).json()
    assert models["current"] == "v2"
    v2 = next(v for v in models["versions"] if v["version"] == "v2")
    assert v2["data_snapshot"]["n"] == 4 and len(v2["data_snapshot"]["scan_ids"]) == 4
    assert v2["metrics"] is not None and v2["holdout_sha256"] and v2["config"]["init"] == "current"
    registry = ModelRegistry(app.state.services.sessions, app.state.settings.data_dir)
    assert registry.verify(registry.get("v2"))
    assert app.state.provider.refresh() is True  # the poll thread does this in production
    (pred,) = upload(client, keys.clinician, dicom_bytes(seed=3)).json()["predictions"]
    assert pred["model_version"] == "v2"

    # a deliberately worse candidate: the current's cached held-out metric is made unbeatable, tolerance 0
    with app.state.services.sessions() as session:
        sha = data_logic.snapshot("holdout", data_logic.dataset_rows(session, "holdout"))["sha256"]
    registry.set_metrics("v2", {"froc_fom": 2.0}, sha)
    job = _job(client, keys, kind="retrain", dataset="clinic", steps=1, init="scratch")
    _run_worker(app, gate_tolerance=0.0)
    done = _get(client, keys, job["job_id"])
    assert done["state"] == "succeeded", (done["error"], done["log_tail"][-3000:])
    assert done["result"]["promoted"] is False and done["result"]["version"] == "v3"
    assert "worse than the current model" in done["result"]["reason"]
    assert registry.current_version() == "v2" and registry.get("v3").status == "rejected"

    # rollback (admin) goes back to the version current before v2, and predictions follow
    assert client.post("/v1/models/rollback", headers=keys.header("trainer")).status_code == 403
    response = client.post("/v1/models/rollback", headers=keys.header("admin"))
    assert response.status_code == 200 and response.json()["current"] == "tiny-test-1"
    assert response.json()["serving"]["version"] == "tiny-test-1"
    (pred,) = upload(client, keys.clinician, dicom_bytes(seed=4)).json()["predictions"]
    assert pred["model_version"] == "tiny-test-1"
    assert client.post("/v1/models/rollback", headers=keys.header("admin")).status_code == 409

    # an evaluation job writes the same report as `dentalmim evaluate`
    job = _job(client, keys, kind="evaluate", dataset="holdout", version="v3")
    _run_worker(app)
    done = _get(client, keys, job["job_id"])
    assert done["state"] == "succeeded", (done["error"], done["log_tail"][-3000:])
    report_id = done["result"]["report_id"]
    html = client.get(f"/v1/reports/{report_id}", headers=keys.header("trainer"))
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html") and "v3" in html.text
    pdf = client.get(f"/v1/reports/{report_id}/report.pdf", headers=keys.header("admin"))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert client.get(f"/v1/reports/{report_id}", headers=keys.header("clinician")).status_code == 403


#: Tiny MAE settings of the retrain job's pretraining; the encoder architecture comes from the model it continues.
TINY_PRETRAIN = [
    "--model.decoder_embed_dim", "32", "--model.decoder_depth", "1", "--model.decoder_num_heads", "2",
    "--data.crop_size", "64", "--data.batch_size", "2", "--data.num_workers", "0", "--data.cache", "none",
    "--data.crops_per_image", "1", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
    "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
]  # fmt: skip


def test_retrain_with_pretraining_continues_from_the_current_models_encoder(loop, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from dentalmim.inference.predictor import load_model

    client, keys, app = loop
    files, coco = corpus(tmp_path)  # the same seeded corpus as the fixture's: files[4:] are the held-out scans
    assert add_scans(client, keys.trainer, "clinic", files[4:5], subset(coco, {files[4][0]})).status_code == 201
    registry = ModelRegistry(app.state.services.sessions, app.state.settings.data_dir)
    current = registry.current()
    job = _job(client, keys, kind="retrain", dataset="clinic", steps=1, pretrain_steps=1, seed=5, promote="never")
    _run_worker(app, pretrain_overrides=TINY_PRETRAIN)
    done = _get(client, keys, job["job_id"])
    assert done["state"] == "succeeded", (done["error"], done["log_tail"][-3000:])
    result = done["result"]
    assert result["init"] == "current" and result["parent"] == current.version
    assert result["pretrain"] == {"mode": "continued", "init_encoder": f"model {current.version}", "steps": 1}
    assert f"continuing from the encoder of model {current.version}" in done["log_tail"]
    assert "encoder replaced by the continued encoder" in done["log_tail"]
    assert registry.get(result["version"]).config["pretrain"]["mode"] == "continued"
    job_dir = app.state.settings.data_dir / "jobs" / job["job_id"]
    with app.state.services.sessions() as session:  # a held-out scan also in the dataset is not pretrained on
        held = {str(app.state.services.store.path(scan.path))
                for _, scan in data_logic.dataset_rows(session, "holdout")}
    pretrained_on = {os.readlink(p) for p in (job_dir / "pretrain_data").iterdir()}
    assert pretrained_on and not pretrained_on & held
    run = torch.load(job_dir / "pretrain" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert run["hyper_parameters"]["init_encoder"] == str(registry.file_path(current))
    # one small MAE step (lr ~1e-4) away from the current model's encoder: it started from those weights (an
    # independently initialised encoder differs by ~0.1), and it did train
    detector, _ = load_model(registry.file_path(current))
    start = {f"encoder.{k}": v for k, v in detector.encoder.state_dict().items()}
    continued = {f"encoder.{k}": v for k, v in load_file(str(job_dir / "encoder.safetensors")).items()}
    assert continued.keys() == start.keys()
    assert max(float((continued[k] - v).abs().max()) for k, v in start.items()) < 1e-3
    assert any(not torch.equal(continued[k], v) for k, v in start.items())
    # fine-tuning started from the current model with exactly the continued encoder swapped in
    init_model = load_file(str(job_dir / "init_model.safetensors"))
    for key, value in detector.state_dict().items():
        assert torch.equal(init_model[key], continued[key] if key.startswith("encoder.") else value), key
