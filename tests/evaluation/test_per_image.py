"""Per-image evaluation table: outcomes, lesions found and false marks at the operating thresholds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dentalmim.evaluation.metrics_match import EvalImage
from dentalmim.evaluation.per_image import PER_IMAGE_COLUMNS, per_image_rows, write_per_image_csv


def _items() -> list[EvalImage]:
    lesion = np.array([[10.0, 10.0, 30.0, 30.0]])
    return [
        # caries image: one hit at 0.9, one false mark at 0.6, one box below the score threshold
        EvalImage(gt_boxes=lesion, pred_boxes=[[12, 12, 28, 28], [100, 100, 120, 120], [200, 200, 210, 210]],
                  pred_scores=[0.9, 0.6, 0.2], image_prob=0.8, image_id="a", patient_id="P1"),
        # caries image missed: its only box lies elsewhere and the image probability is low
        EvalImage(gt_boxes=lesion, pred_boxes=[[300, 300, 320, 320]], pred_scores=[0.7], image_prob=0.3,
                  image_id="b"),
        # caries-free image called positive (a false-positive image)
        EvalImage(gt_boxes=np.zeros((0, 4)), pred_boxes=np.zeros((0, 4)), pred_scores=[], image_prob=0.55,
                  image_id="c"),
        # caries-free image called negative
        EvalImage(gt_boxes=np.zeros((0, 4)), pred_boxes=[[5, 5, 9, 9]], pred_scores=[0.4], image_prob=0.1,
                  image_id="d"),
    ]


def test_rows_known_answer() -> None:
    info = {"a": {"file_name": "images/a.dcm", "width": 640, "height": 480}}
    rows = per_image_rows(_items(), score_threshold=0.5, image_threshold=0.5, image_info=info)
    got = {r["image_id"]: (r["image_outcome"], r["lesions_found"], r["false_marks"]) for r in rows}
    assert got == {"a": ("TP", 1, 1), "b": ("FN", 0, 1), "c": ("FP", 0, 0), "d": ("TN", 0, 0)}
    assert rows[0]["file_name"] == "images/a.dcm" and rows[0]["width"] == 640 and rows[0]["patient_id"] == "P1"
    assert rows[1]["file_name"] == "" and rows[2]["max_box_score"] == 0.0 and rows[3]["max_box_score"] == 0.4


def test_threshold_moves_outcomes() -> None:
    rows = per_image_rows(_items(), score_threshold=0.95, image_threshold=0.25)
    got = {r["image_id"]: (r["image_outcome"], r["lesions_found"], r["false_marks"]) for r in rows}
    assert got == {"a": ("TP", 0, 0), "b": ("TP", 0, 0), "c": ("FP", 0, 0), "d": ("TN", 0, 0)}


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = per_image_rows(_items(), score_threshold=0.5, image_threshold=0.5)
    path = write_per_image_csv(tmp_path / "per_image.csv", rows)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == PER_IMAGE_COLUMNS
        back = list(reader)
    assert [r["image_outcome"] for r in back] == ["TP", "FN", "FP", "TN"]
    assert float(back[0]["image_prob"]) == 0.8 and not list(tmp_path.glob("*.tmp"))
