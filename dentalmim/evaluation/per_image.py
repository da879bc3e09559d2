"""Per-image results of an evaluation: one row per radiograph, written as ``per_image.csv`` beside the report.

The summary metrics say how good a model is; this table says *where* it fails: which images it called wrongly at
the operating point, which lesions it missed, where its false marks are. It also carries the image-level
probability of every image, the number an operating threshold is set on, so a user can see whether the
caries-free images sit below it.

Columns: ``image_id``, ``file_name``, ``patient_id`` (a pseudonym on de-identified data), ``width``, ``height``,
``lesions`` (ground truth), ``has_caries``, ``image_prob``, ``called_positive`` (``image_prob >=
image_threshold``), ``image_outcome`` (TP / FP / TN / FN), ``lesions_found`` and ``false_marks`` (boxes with
``score >= score_threshold``, FROC hit rule), ``max_box_score``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dentalmim.evaluation.metrics_match import FROC_CRITERION, EvalImage, match_image
from dentalmim.fileio import atomic_write_bytes

__all__ = ["PER_IMAGE_COLUMNS", "per_image_rows", "write_per_image_csv"]

PER_IMAGE_COLUMNS = ("image_id", "file_name", "patient_id", "image_type", "width", "height", "lesions", "has_caries",
                     "image_prob", "called_positive", "image_outcome", "lesions_found", "false_marks",
                     "max_box_score")


def _outcome(truth: bool, called: bool) -> str:
    return ("T" if truth == called else "F") + ("P" if called else "N")


def per_image_rows(items: Sequence[EvalImage], *, score_threshold: float, image_threshold: float,
                   image_info: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per evaluated image at the given operating thresholds.

    Args:
        items: the evaluation items (predictions paired with ground truth).
        score_threshold: box score at or above which a box is a mark.
        image_threshold: image probability at or above which an image is called positive.
        image_info: ``image_id -> {"file_name", "width", "height", "image_type"}`` (COCO ``images[]`` and
            :func:`~dentalmim.data.dicom.image_type`), optional.

    Returns:
        Rows keyed by :data:`PER_IMAGE_COLUMNS`, in the order of ``items``.
    """
    info = image_info or {}
    rows = []
    for it in items:
        keep = it.pred_scores >= score_threshold
        match = match_image(it.pred_boxes[keep], it.pred_scores[keep], it.gt_boxes, FROC_CRITERION)
        truth = bool(it.has_caries)
        prob = float(it.image_prob)  # type: ignore[arg-type]  # set by EvalImage.__post_init__
        called = bool(prob >= image_threshold)
        meta = info.get(str(it.image_id), {})
        rows.append({
            "image_id": str(it.image_id), "file_name": meta.get("file_name", ""), "patient_id": it.patient_id or "",
            "image_type": meta.get("image_type", ""), "width": meta.get("width", ""), "height": meta.get("height", ""),
            "lesions": int(len(it.gt_boxes)),
            "has_caries": truth, "image_prob": round(prob, 6), "called_positive": called,
            "image_outcome": _outcome(truth, called), "lesions_found": int((match >= 0).sum()),
            "false_marks": int((match < 0).sum()),
            "max_box_score": round(float(it.pred_scores.max()), 6) if len(it.pred_scores) else 0.0,
        })  # fmt: skip
    return rows


def write_per_image_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as CSV (header :data:`PER_IMAGE_COLUMNS`), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_IMAGE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in PER_IMAGE_COLUMNS})
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue().encode("utf-8"), private=False)
    return out
