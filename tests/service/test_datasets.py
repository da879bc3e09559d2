"""``/v1/datasets``: labeled-scan intake (COCO, per-image boxes, image-level labels, unlabeled), deduplication,
clear 4xx for bad labels with nothing stored, listings with counts, roles."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dentalmim.db.models import DatasetScan, Scan
from service.main import create_app
from tests.service.conftest import PHI, Running, dicom_bytes, issue_keys, make_settings
from tests.service.retrain_helpers import add_scans


def _coco(names: list[str], boxes: dict[str, list[list[float]]]) -> dict:
    images = [{"id": i + 1, "file_name": n, "width": 128, "height": 96, "patient_id": "p"} for i, n in enumerate(names)]
    anns = [{"id": k + 1, "image_id": names.index(n) + 1, "category_id": 1, "bbox": b}
            for k, (n, b) in enumerate((n, b) for n in names for b in boxes.get(n, []))]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "caries"}]}


def _count(running: Running, dataset: str) -> int:
    with running.app.state.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(DatasetScan).where(DatasetScan.dataset == dataset))


def test_coco_batch_is_stored_deidentified_with_labels_and_counted(running: Running) -> None:
    files = [("a.dcm", dicom_bytes(seed=101)), ("b.dcm", dicom_bytes(seed=102)), ("c.dcm", dicom_bytes(seed=103))]
    labels = _coco(["a.dcm", "b.dcm"], {"a.dcm": [[10, 20, 8, 6], [50, 40, 12, 10]]})
    response = add_scans(running.client, running.keys.trainer, "ds1", files, labels)
    assert response.status_code == 201, response.text
    body = response.json()
    assert [s["status"] for s in body["scans"]] == ["added"] * 3
    assert [s["label_kind"] for s in body["scans"]] == ["boxes", "boxes", "none"]  # c.dcm: not in the COCO file
    assert body["counts"] == {"total": 3, "boxes": 2, "image": 0, "unlabeled": 1, "lesions": 2}
    listing = running.client.get("/v1/datasets/ds1/scans", headers=running.keys.header("trainer")).json()
    assert listing["counts"]["total"] == 3 and {s["uploaded_by"] for s in listing["scans"]} == {
        running.keys.trainer.split("_")[1]}
    assert all(s["created_at"] for s in listing["scans"])
    with running.app.state.services.sessions() as session:
        scan = session.get(Scan, body["scans"][0]["scan_id"])
        row = session.scalar(select(DatasetScan).where(DatasetScan.scan_id == scan.id))
    stored = (running.settings.data_dir / scan.path).read_bytes()
    assert not any(v.encode() in stored for v in PHI.values())  # de-identified
    assert row.labels["boxes"][1]["bbox"] == [50.0, 40.0, 12.0, 10.0] and row.labels["caries"] is True
    assert "a.dcm" not in json.dumps(listing)  # file names only match labels to parts


def test_per_image_boxes_image_level_labels_dedup_and_relabel(running: Running) -> None:
    key, one, two = running.keys.trainer, dicom_bytes(seed=201), dicom_bytes(seed=202)
    labels = [{"boxes": [[1, 2, 3, 4]]}, {"caries": False}]
    body = add_scans(running.client, key, "ds2", [("x.dcm", one), ("y.dcm", two)], labels).json()
    assert [s["label_kind"] for s in body["scans"]] == ["boxes", "image"]
    again = add_scans(running.client, key, "ds2", [("x.dcm", one)]).json()  # same scan, no labels: duplicate
    assert again["scans"][0]["status"] == "duplicate" and again["counts"]["total"] == 2
    relabel = add_scans(running.client, key, "ds2", [("y.dcm", two)], {"y.dcm": {"boxes": []}}).json()
    assert relabel["scans"][0]["status"] == "relabeled" and relabel["counts"]["boxes"] == 2
    names = [d["dataset"] for d in running.client.get("/v1/datasets", headers=running.keys.header("trainer")).json()]
    assert "ds2" in names


def test_bad_labels_are_refused_naming_the_problem_and_store_nothing(running: Running) -> None:
    key, files = running.keys.trainer, [("a.dcm", dicom_bytes(seed=301))]
    cases = [
        ([{"boxes": [[120, 10, 20, 5]]}], "out of the image bounds (128x96)"),
        (_coco(["zzz.dcm"], {}), "unknown image, no uploaded file has that name"),
        ({"images": [], "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2]}],
          "categories": [{"id": 1, "name": "caries"}]}, "unknown image_id 7"),
        ([{"boxes": [[1, 1, 0, 3]]}], "non-positive width or height"),
        ([None, None], "2 entries for 1 files"),
        ([{"caries": "yes"}], "caries should be true or false"),
        ({"other.dcm": {"caries": True}}, "unknown image"),
        ([{"caries": False, "boxes": [[1, 1, 2, 2]]}], "caries is false but boxes are given"),
    ]
    for labels, message in cases:
        response = add_scans(running.client, key, "bad", files, labels)
        assert response.status_code == 422, (labels, response.text)
        detail = response.json()["detail"]
        assert detail["code"] == "invalid_labels" and message in detail["message"], (message, detail)
    response = running.client.post("/v1/datasets/bad/scans", files=[("files", ("a.dcm", files[0][1]))],
                                   data={"labels": "{not json"}, headers=running.keys.header("trainer"))
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"]["message"]
    for text, message in (('[{"boxes": [[1, 1, 2, 2]], "attributes": {"depth": NaN}}]', "not valid JSON"),
                          ("[" * 100_000 + "]" * 100_000, "nested too deeply")):  # both used to answer 500
        response = running.client.post("/v1/datasets/bad/scans", files=[("files", ("a.dcm", files[0][1]))],
                                       data={"labels": text}, headers=running.keys.header("trainer"))
        assert response.status_code == 422 and message in response.json()["detail"]["message"], response.text
    listing = running.client.get("/v1/datasets/bad/scans", params={"offset": 2**63},
                                 headers=running.keys.header("trainer"))
    assert listing.status_code == 422  # an offset beyond any database integer
    bad_dicom = add_scans(running.client, key, "bad", [("n.dcm", b"not a dicom" * 20)])
    assert bad_dicom.status_code == 422 and bad_dicom.json()["detail"]["code"] == "not_dicom"
    assert _count(running, "bad") == 0


def test_dataset_endpoints_need_a_trainer_key(running: Running) -> None:
    files = [("a.dcm", dicom_bytes(seed=401))]
    for role in ("clinician", "admin"):
        assert add_scans(running.client, getattr(running.keys, role), "r", files).status_code == 403
        assert running.client.get("/v1/datasets/r/scans", headers=running.keys.header(role)).status_code == 403
    assert running.client.get("/v1/datasets").status_code == 401
    assert add_scans(running.client, "dmk_000000000000_" + "x" * 30, "r", files).status_code == 401
    assert _count(running, "r") == 0
    bad_name = add_scans(running.client, running.keys.trainer, "..", files)
    assert bad_name.status_code in (404, 422)


def test_an_intake_over_the_file_limit_is_refused(tmp_path, bundle) -> None:
    app = create_app(make_settings(tmp_path, bundle, max_files_per_intake=2))
    with TestClient(app) as client:
        key = issue_keys(app).trainer
        files = [(f"{i}.dcm", dicom_bytes(seed=500 + i)) for i in range(3)]
        assert add_scans(client, key, "many", files).status_code == 400  # 3 files, the limit is 2
        assert add_scans(client, key, "many", files[:2]).status_code == 201
