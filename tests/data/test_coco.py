"""COCO loading/validation, records, patient splits, label fractions, merge/remap and export."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dentalmim.data.coco import CocoDataset, predictions_to_coco, split_by_patient
from dentalmim.data.coco_split import allocate
from dentalmim.errors import CocoValidationError, ConfigError
from tests.data._helpers_d import coco_dict, image_spec, patient_specs, write_coco


def _small_specs() -> list[dict[str, Any]]:
    return [image_spec(1, "A", (60, 80), [(10, 12, 30, 22), (40, 5, 45, 50)], kind="bitewing"),
            image_spec(2, "B", (60, 80), [], kind="periapical"),
            image_spec(3, "B", (300, 200), [(0, 0, 200, 300)], kind="panoramic")]


def _problems(data: object, tmp_path: Path, check_files: bool = False) -> list[str]:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoValidationError) as exc:
        CocoDataset.load(path, check_files=check_files)
    assert exc.value.path == str(path)
    return exc.value.problems


def test_load_and_records(tmp_path: Path) -> None:
    ds = CocoDataset.load(write_coco(tmp_path, _small_specs()))
    assert ds.root == tmp_path
    recs = ds.to_records()
    assert [r["image_id"] for r in recs] == [1, 2, 3]
    assert recs[0]["image"] == str((tmp_path / "images/1.dcm").resolve())
    np.testing.assert_array_equal(recs[0]["boxes"], [[10, 12, 30, 22], [40, 5, 45, 50]])
    assert recs[0]["boxes"].dtype == np.float32 and recs[0]["labels"].dtype == np.int64
    assert recs[1]["boxes"].shape == (0, 4) and recs[1]["labels"].shape == (0,)
    assert (recs[2]["kind"], recs[2]["width"], recs[2]["height"], recs[2]["patient_id"]) == ("panoramic", 200, 300, "B")


BAD_CASES = [
    (lambda d: d["images"][0].pop("width"), "missing key 'width'"),
    (lambda d: d.pop("categories"), "missing key 'categories'"),
    (lambda d: d["images"][1].update(id=1), "duplicate image id 1"),
    (lambda d: d["annotations"][1].update(id=1), "duplicate annotation id 1"),
    (lambda d: d["annotations"][0].update(image_id=99), "unknown image_id 99"),
    (lambda d: d["annotations"][0].update(category_id=7), "unknown category_id 7"),
    (lambda d: d["annotations"][0].update(image_id=[1]), "image_id should be an integer, got [1]"),
    (lambda d: d["annotations"][0].update(category_id={"id": 1}), "category_id should be an integer"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox should be 4 finite numbers"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4]), "bbox should be 4 finite numbers"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 4]), "non-positive width/height"),
    (lambda d: d["annotations"][0].update(bbox=[70, 2, 20, 4]), "out of image bounds"),
    (lambda d: d["annotations"][0].update(bbox=[-1, 2, 5, 4]), "out of image bounds"),
    (lambda d: d["images"][0].update(height=0), "height should be a positive integer"),
    (lambda d: d["images"][0].update(width=-5), "width should be a positive integer"),
    (lambda d: d["images"][0].update(patient_id=""), "patient_id should be a non-empty string"),
    (lambda d: d["images"][0].update(kind="cephalometric"), "kind should be one of"),
    (lambda d: d["annotations"][0].update(iscrowd=1), "iscrowd should be 0"),
    (lambda d: d["annotations"][0].update(attributes={"depth": "pulp"}), "attributes.depth should be one of"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_CASES)
def test_each_problem_is_named(tmp_path: Path, mutate: Any, message: str) -> None:
    data = coco_dict(_small_specs())
    mutate(data)
    problems = _problems(data, tmp_path)
    assert any(message in p for p in problems), problems


def test_all_problems_are_collected(tmp_path: Path) -> None:
    specs = [image_spec(i, f"P{i}", (60, 80), [(1, 1, 5, 5)] * 3) for i in range(1, 4)]
    data = coco_dict(specs)
    anns = data["annotations"]
    data["images"][0].pop("file_name")
    data["images"][2]["height"] = 0
    anns[0]["image_id"], anns[1]["category_id"], anns[2]["bbox"] = 99, 7, [1, 2, 3]
    anns[3]["bbox"], anns[4]["bbox"], anns[5]["id"] = [1, 2, 0, 4], [70, 2, 20, 4], 1
    problems = _problems(data, tmp_path)
    expected = ["missing key 'file_name'", "height should be a positive integer", "unknown image_id 99",
                "unknown category_id 7", "bbox should be 4 finite numbers", "non-positive width/height",
                "out of image bounds", "duplicate annotation id 1"]
    for message in expected:
        assert any(message in p for p in problems), (message, problems)
    assert len(problems) == len(expected)


def test_float_tolerance_and_edge_touching_boxes_are_valid(tmp_path: Path) -> None:
    data = coco_dict(_small_specs())
    data["annotations"][0]["bbox"] = [60.0, 0.0, 20.000001, 60.000001]  # touches the right/bottom border
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(data))
    assert len(CocoDataset.load(path, check_files=False).annotations) == 3


def test_malformed_json_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(CocoValidationError, match="malformed JSON"):
        CocoDataset.load(path)
    assert any("top level should be an object" in p for p in _problems([1, 2], tmp_path))
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CocoValidationError, match="nested too deeply"):
        CocoDataset.load(path)
    problems = _problems(coco_dict(_small_specs()), tmp_path, check_files=True)
    assert sum("not found" in p for p in problems) == 3
    CocoDataset.load(write_coco(tmp_path / "real", _small_specs(), write_images=False), check_files=False)


def test_save_round_trip_is_stable_and_atomic(tmp_path: Path) -> None:
    src = write_coco(tmp_path, _small_specs())
    ds = CocoDataset.load(src)
    out = ds.save(tmp_path / "copy.json")
    again = CocoDataset.load(out)
    assert again.images == ds.images and again.annotations == ds.annotations and again.categories == ds.categories
    text = out.read_text()
    again.save(out)
    assert out.read_text() == text
    assert list(json.loads(text)["images"][0]) == ["id", "file_name", "width", "height", "patient_id", "kind"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["annotations.json", "copy.json"]
    moved = CocoDataset.load(ds.save(tmp_path / "sub" / "dir" / "a.json"))  # file names follow the new folder
    assert moved.images[0].file_name == "../../images/1.dcm"
    assert [r["image"] for r in moved.to_records()] == [r["image"] for r in ds.to_records()]


def test_class_modes(tmp_path: Path) -> None:
    specs = [image_spec(1, "A", (60, 80), [(1, 1, 5, 5), (10, 10, 20, 20)], depths=["dentin", "enamel"], cats=[1, 0])]
    path = write_coco(tmp_path, specs, write_images=False, categories=("enamel_caries", "dentin_caries"))
    ds = CocoDataset.load(path, check_files=False)
    assert ds.class_names("category") == ["enamel_caries", "dentin_caries"]
    assert ds.to_records("category")[0]["labels"].tolist() == [1, 0]
    assert ds.to_records("caries")[0]["labels"].tolist() == [0, 0]
    assert ds.to_records("depth")[0]["labels"].tolist() == [1, 0]
    data = coco_dict([{**specs[0], "cats": [0, 0]}])
    data["annotations"][0]["attributes"] = {"iccms": "RB"}
    assert CocoDataset.from_json(data, tmp_path).to_records("depth")[0]["labels"].tolist() == [1, 0]
    del data["annotations"][1]["attributes"]
    plain = CocoDataset.from_json(data, tmp_path)
    with pytest.raises(CocoValidationError, match="no depth"):
        plain.to_records("depth")
    other = write_coco(tmp_path / "other", specs, write_images=False, categories=("caries", "restoration"))
    mixed = CocoDataset.load(other, check_files=False)  # one caries box, one restoration box
    assert mixed.to_records("category")[0]["labels"].tolist() == [1, 0]
    with pytest.raises(CocoValidationError, match="'restoration' .* is not a caries category, yet 1 boxes use it"):
        mixed.to_records("caries")  # would count the restoration as a lesion
    with pytest.raises(ValueError, match="class_mode should be one of"):
        plain.to_records("teeth")  # type: ignore[arg-type]


def test_split_by_patient(tmp_path: Path) -> None:
    ds = CocoDataset.from_json(coco_dict(patient_specs(40, positive_every=4)), tmp_path)
    splits = split_by_patient(ds, (0.7, 0.15, 0.15), seed=3)
    patient_sets = [set(s.patients()) for s in splits]
    assert sum(len(s) for s in patient_sets) == 40 and len(set.union(*patient_sets)) == 40  # no leakage
    assert [len(s) for s in patient_sets] == pytest.approx([28, 6, 6], abs=1)
    assert all(s.summary().positive_images > 0 for s in splits)
    assert sum(len(s.annotations) for s in splits) == len(ds.annotations)
    again = split_by_patient(ds, (0.7, 0.15, 0.15), seed=3)
    assert [s.images for s in again] == [s.images for s in splits]
    other = split_by_patient(ds, (0.7, 0.15, 0.15), seed=4)
    assert [s.images for s in other] != [s.images for s in splits]
    few_pos = CocoDataset.from_json(coco_dict(patient_specs(10, positive_every=4)), tmp_path)  # 3 positive patients
    assert all(s.summary().positive_images > 0 for s in split_by_patient(few_pos, seed=0))
    with pytest.raises(ValueError, match="fractions should be"):
        split_by_patient(ds, (0.5, 0.2))


def test_allocate() -> None:
    assert allocate(10, (0.7, 0.15, 0.15)) == [7, 2, 1]
    assert allocate(3, (0.9, 0.05, 0.05), ensure_each=True) == [1, 1, 1]
    assert allocate(2, (0.9, 0.05, 0.05), ensure_each=True) == [2, 0, 0]
    assert allocate(5, (1.0, 0.0)) == [5, 0]


def test_fraction_is_nested_deterministic_and_patient_level(tmp_path: Path) -> None:
    ds = CocoDataset.from_json(coco_dict(patient_specs(20, positive_every=3)), tmp_path)
    parts = [ds.fraction(f, seed=1) for f in (0.1, 0.25, 0.5, 1.0)]
    ids = [{im.id for im in p.images} for p in parts]
    assert all(a <= b for a, b in zip(ids, ids[1:]))
    assert ids[-1] == {im.id for im in ds.images}
    assert [len(p.patients()) for p in parts] == pytest.approx([2, 5, 10, 20], abs=1)
    assert all(p.summary().positive_images > 0 for p in parts)
    for p in parts:  # whole patients only
        assert all(len(v) == 2 for v in p.patients().values())
    assert ds.fraction(0.25, seed=1).images == parts[1].images
    assert ds.fraction(0.25, seed=2).images != parts[1].images
    with pytest.raises(ValueError, match="frac should be in"):
        ds.fraction(0.0)


def test_subset_merge_remap_summary(tmp_path: Path) -> None:
    ds = CocoDataset.load(write_coco(tmp_path / "a", _small_specs()))
    with pytest.raises(ValueError, match="image_ids"):
        ds.subset([1, 42])
    other = CocoDataset.load(write_coco(tmp_path / "b", _small_specs()))
    merged = ds.merge(other)
    assert len({im.id for im in merged.images}) == 6 and len({a.id for a in merged.annotations}) == 6
    paths = [r["image"] for r in merged.to_records()]
    assert paths[3] == str((tmp_path / "b/images/1.dcm").resolve())
    np.testing.assert_array_equal(merged.to_records()[3]["boxes"], ds.to_records()[0]["boxes"])
    mapping = {"images/1.dcm": "deid/x1.dcm", "./images/3.dcm": "deid/x3.dcm"}
    with pytest.raises(ConfigError, match="1 unmapped"):
        ds.remap_files(mapping, tmp_path / "out")
    moved = ds.remap_files(mapping, tmp_path / "out", missing="drop")
    assert [im.file_name for im in moved.images] == ["deid/x1.dcm", "deid/x3.dcm"]
    assert moved.to_records()[0]["image"] == str((tmp_path / "out/deid/x1.dcm").resolve())
    assert len(moved.annotations) == 3
    stats = ds.summary().to_dict()
    assert stats == {"images": 3, "patients": 2, "positive_images": 2, "lesions": 3,
                     "lesions_by_size": {"<16": 2, "16-32": 0, "32-64": 0, ">64": 1},
                     "images_by_kind": {"bitewing": 1, "periapical": 1, "panoramic": 1}}
    renamed = copy.deepcopy(coco_dict(_small_specs()))
    renamed["categories"][0]["name"] = "lesion"
    with pytest.raises(ConfigError, match="same names"):
        ds.merge(CocoDataset.from_json(renamed, tmp_path))


def test_from_records_and_predictions_export(tmp_path: Path) -> None:
    ds = CocoDataset.load(write_coco(tmp_path, _small_specs()))
    rebuilt = CocoDataset.from_records(ds.to_records(), root=tmp_path)
    assert rebuilt.images == [type(im)(**{**im.__dict__, "extra": {}}) for im in ds.images]
    assert [a.bbox for a in rebuilt.annotations] == [a.bbox for a in ds.annotations]
    preds = [{"image_id": 1, "boxes": np.array([[10, 12, 30, 22]], np.float32), "scores": np.array([0.9])},
             {"image_id": 2, "boxes": np.zeros((0, 4)), "scores": np.zeros(0)}]
    assert predictions_to_coco(preds) == [{"image_id": 1, "category_id": 1, "bbox": [10.0, 12.0, 20.0, 10.0],
                                           "score": pytest.approx(0.9)}]
    assert predictions_to_coco(preds, category_ids=[5])[0]["category_id"] == 5
    with pytest.raises(ValueError, match="same length"):
        predictions_to_coco([{"image_id": 1, "boxes": np.zeros((2, 4)), "scores": np.zeros(1)}])
