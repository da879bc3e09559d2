"""Labeled-scan intake (``/v1/datasets``): label parsing and validation, storage, listing, and the COCO export the
worker trains and evaluates on.

Labels come in one form field ``labels`` (JSON text or a JSON file part), in one of three shapes:

* a COCO object (``images``, ``annotations``, ``categories``) for the batch: ``images[].file_name`` names an
  uploaded part's file name; an image without annotations is labeled caries-free; an uploaded file the COCO file
  does not list is stored unlabeled;
* a list with one entry per uploaded file, in order, or an object keyed by file name, each entry ``null``
  (unlabeled), ``{"boxes": [[x, y, w, h], ...]}`` (boxes in pixels; an entry may also be ``{"bbox": [...],
  "category": "caries", "attributes": {"depth": "enamel"}}``; ``[]`` means labeled, no lesion) or
  ``{"caries": true | false}`` (an image-level label only);
* absent: every file is stored unlabeled (it feeds pretraining).

Every problem (boxes out of the image, unknown images, malformed entries) is collected and the request is refused
with 422 ``invalid_labels`` naming them; nothing is stored then. File names only match labels to parts: they are
never stored or logged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dentalmim.auth import Principal
from dentalmim.data.coco_schema import BBOX_TOLERANCE, parse_coco
from dentalmim.db.models import DatasetScan, Scan, utcnow
from service.api.errors import ApiError
from service.services import audit
from service.services.predictions import CheckedUpload, store_scan
from service.storage import ScanStore

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Label = dict[str, Any] | None


@dataclass
class IntakeFile:
    """One uploaded part: its (request-only) file name and the checked, de-identified upload."""

    name: str
    upload: CheckedUpload


def check_dataset_name(name: str) -> str:
    if not DATASET_NAME.match(name):
        raise ApiError(422, "invalid_dataset", "dataset names are 1-64 characters: letters, digits, '_', '.', '-'")
    return name


def _invalid(problems: list[str]) -> ApiError:
    shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
    return ApiError(422, "invalid_labels", shown)


def parse_labels_json(text: str | bytes | None) -> Any:
    """The decoded ``labels`` field (None when absent or empty)."""
    if text is None or not str(text if isinstance(text, str) else text.decode("utf-8", "replace")).strip():
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_labels", f"labels: not valid JSON ({type(exc).__name__})") from None
    except RecursionError:
        raise ApiError(422, "invalid_labels", "labels: JSON nested too deeply") from None


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser accepts them; PostgreSQL's JSON columns do not)."""
    raise ValueError(f"{name} is not a JSON number")


def _box(entry: Any, where: str, rows: int, cols: int, problems: list[str]) -> dict[str, Any] | None:
    category, attributes = "caries", {}
    if isinstance(entry, dict):
        category, attributes = entry.get("category", "caries"), entry.get("attributes") or {}
        entry = entry.get("bbox")
        if not isinstance(category, str) or not 0 < len(category) <= 32:
            problems.append(f"{where}: category should be a name of 1-32 characters, got {category!r}")
            return None
        if not isinstance(attributes, dict):
            problems.append(f"{where}: attributes should be an object")
            return None
    if (not isinstance(entry, (list, tuple)) or len(entry) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in entry)):
        problems.append(f"{where}: a box should be 4 finite numbers [x, y, w, h], got {entry!r}")
        return None
    x, y, w, h = (float(v) for v in entry)
    tol = BBOX_TOLERANCE
    if w <= 0 or h <= 0:
        problems.append(f"{where}: box [x, y, w, h] = {[x, y, w, h]} has a non-positive width or height")
    elif x < -tol or y < -tol or x + w > cols + tol or y + h > rows + tol:
        problems.append(f"{where}: box [x, y, w, h] = {[x, y, w, h]} is out of the image bounds ({cols}x{rows})")
    else:
        return {"bbox": [x, y, w, h], "category": category, "attributes": attributes}
    return None


def _entry(entry: Any, where: str, rows: int, cols: int, problems: list[str]) -> Label:
    """One per-image label -> ``{"boxes": [...] | None, "caries": bool | None}`` (None = unlabeled)."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or not set(entry) <= {"boxes", "caries"} or not entry:
        problems.append(f"{where}: should be null, {{'boxes': [...]}} or {{'caries': true|false}}, got {entry!r}"[:300])
        return None
    caries = entry.get("caries")
    if caries is not None and not isinstance(caries, bool):
        problems.append(f"{where}: caries should be true or false, got {caries!r}")
        return None
    if "boxes" not in entry:
        return {"boxes": None, "caries": caries} if caries is not None else None
    raw = entry["boxes"]
    if not isinstance(raw, list):
        problems.append(f"{where}: boxes should be a list of [x, y, w, h]")
        return None
    boxes = [_box(b, f"{where}.boxes[{i}]", rows, cols, problems) for i, b in enumerate(raw)]
    if caries is False and raw:
        problems.append(f"{where}: caries is false but boxes are given")
    return {"boxes": [b for b in boxes if b is not None], "caries": bool(raw)}


def _from_coco(data: dict[str, Any], files: list[IntakeFile], problems: list[str]) -> list[Label]:
    parsed = parse_coco(data)
    problems.extend(f"labels (COCO): {p}" for p in parsed.problems)
    by_name = {f.name: i for i, f in enumerate(files)}
    if len(by_name) != len(files):
        problems.append("labels (COCO): the uploaded files should have distinct file names")
    labels: list[Label] = [None] * len(files)
    names = {c.id: c.name for c in parsed.categories}
    anns = {im.id: [] for im in parsed.images}
    for ann in parsed.annotations:
        anns.setdefault(ann.image_id, []).append(ann)
    for im in parsed.images:
        where = f"labels (COCO): image {im.id} ({im.file_name!r})"
        index = by_name.get(im.file_name, by_name.get(Path(im.file_name).name))
        if index is None:
            problems.append(f"{where}: unknown image, no uploaded file has that name")
            continue
        rows, cols = files[index].upload.pixels.shape
        if (im.height, im.width) != (rows, cols):
            problems.append(f"{where}: size {im.width}x{im.height} differs from the DICOM's {cols}x{rows}")
            continue
        boxes = [{"bbox": list(a.bbox), "category": names.get(a.category_id, "caries"),
                  "attributes": dict(a.attributes)} for a in anns[im.id]]
        labels[index] = _entry({"boxes": [b for b in boxes]}, where, rows, cols, problems)
    return labels


def resolve_labels(data: Any, files: list[IntakeFile]) -> list[Label]:
    """Per-file labels from the decoded ``labels`` field (see the module docstring); 422 naming every problem."""
    problems: list[str] = []
    if data is None:
        return [None] * len(files)
    if isinstance(data, dict) and "images" in data:
        labels = _from_coco(data, files, problems)
    elif isinstance(data, list):
        if len(data) != len(files):
            raise _invalid([f"labels: {len(data)} entries for {len(files)} files (one entry per file, in order)"])
        labels = [_entry(e, f"labels[{i}]", *f.upload.pixels.shape, problems) for i, (e, f) in
                  enumerate(zip(data, files))]
    elif isinstance(data, dict):
        by_name = {f.name: i for i, f in enumerate(files)}
        unknown = sorted(set(data) - set(by_name))
        problems.extend(f"labels[{name!r}]: unknown image, no uploaded file has that name" for name in unknown[:20])
        labels = [_entry(data.get(f.name), f"labels[{f.name!r}]", *f.upload.pixels.shape, problems) for f in files]
    else:
        raise _invalid([("labels: should be a COCO object, a list (one entry per file) or an object keyed by "
                         "file name")])
    if problems:
        raise _invalid(problems)
    return labels


def label_kind(label: Label) -> str:
    if label is None:
        return "none"
    return "boxes" if label.get("boxes") is not None else "image"


def add_scans(session: Session, store: ScanStore, principal: Principal, dataset: str, files: list[IntakeFile],
              labels: list[Label]) -> list[dict[str, Any]]:
    """Stores the scans (content-addressed, durable) and their dataset rows; the caller commits."""
    out = []
    for item, label in zip(files, labels):
        scan = store_scan(session, store, item.upload)
        row = session.scalar(select(DatasetScan).where(DatasetScan.dataset == dataset,
                                                       DatasetScan.scan_id == scan.id))
        kind = label_kind(label)
        if row is None:
            now = utcnow()
            session.add(DatasetScan(dataset=dataset, scan_id=scan.id, label_kind=kind, labels=label,
                                    uploaded_by=principal.key_id, created_at=now, updated_at=now))
            status = "added"
        elif label is not None and row.labels != label:
            row.labels, row.label_kind, row.uploaded_by, row.updated_at = label, kind, principal.key_id, utcnow()
            status = "relabeled"
        else:
            status = "duplicate"
        session.flush()
        audit.record(session, principal, f"dataset_{status}", 201, scan_id=scan.id)
        out.append({"scan_id": scan.id, "status": status, "label_kind": kind if status != "duplicate"
                    else row.label_kind, "boxes": len((label or {}).get("boxes") or [])})
    return out


def _row_view(row: DatasetScan) -> dict[str, Any]:
    labels = row.labels or {}
    return {"scan_id": row.scan_id, "label_kind": row.label_kind, "boxes": len(labels.get("boxes") or []),
            "caries": labels.get("caries"), "uploaded_by": row.uploaded_by,
            "created_at": row.created_at.isoformat(timespec="seconds"),
            "updated_at": row.updated_at.isoformat(timespec="seconds")}


def counts(session: Session, dataset: str) -> dict[str, int]:
    """``total``, ``boxes``, ``image`` (image-level only), ``unlabeled`` scans and ``lesions``."""
    rows = list(session.scalars(select(DatasetScan).where(DatasetScan.dataset == dataset)))
    kinds = [r.label_kind for r in rows]
    return {"total": len(rows), "boxes": kinds.count("boxes"), "image": kinds.count("image"),
            "unlabeled": kinds.count("none"), "lesions": sum(len((r.labels or {}).get("boxes") or []) for r in rows)}


def list_scans(session: Session, dataset: str, limit: int, offset: int) -> dict[str, Any]:
    rows = session.scalars(select(DatasetScan).where(DatasetScan.dataset == dataset)
                           .order_by(DatasetScan.id).limit(limit).offset(offset))
    return {"dataset": dataset, "counts": counts(session, dataset), "scans": [_row_view(r) for r in rows]}


def list_datasets(session: Session) -> list[dict[str, Any]]:
    names = session.scalars(select(DatasetScan.dataset).group_by(DatasetScan.dataset)
                            .order_by(func.min(DatasetScan.id)))
    return [{"dataset": n, "counts": counts(session, n)} for n in names]


# -- export for the worker ---------------------------------------------------------------------------------------

@dataclass
class Materialized:
    """A dataset written for training / evaluation."""

    coco_path: Path | None
    labeled_scans: list[str]
    unlabeled_paths: list[Path]
    skipped_positive_without_boxes: int
    snapshot: dict[str, Any]


def dataset_rows(session: Session, dataset: str, exclude: Iterable[str] = ()) -> list[tuple[DatasetScan, Scan]]:
    excluded = set(exclude)
    rows = session.execute(select(DatasetScan, Scan).join(Scan, Scan.id == DatasetScan.scan_id)
                           .where(DatasetScan.dataset == dataset).order_by(DatasetScan.scan_id)).all()
    return [(d, s) for d, s in rows if s.id not in excluded]


def snapshot(dataset: str, rows: list[tuple[DatasetScan, Scan]]) -> dict[str, Any]:
    """Ids and one hash over every scan's content hash and labels (the training data of a model version)."""
    digest = hashlib.sha256()
    for d, s in sorted(rows, key=lambda r: r[1].id):
        digest.update(f"{s.sha256}:{json.dumps(d.labels, sort_keys=True)}\n".encode())
    return {"dataset": dataset, "scan_ids": sorted(s.id for _, s in rows), "n": len(rows),
            "sha256": digest.hexdigest()}


def materialize(session: Session, store: ScanStore, dataset: str, out_dir: Path,
                exclude: Iterable[str] = ()) -> Materialized:
    """Writes ``out_dir/<dataset>.json`` (COCO over the stored files: scans with boxes, and image-level "no
    caries" scans as negatives) and lists the unlabeled scans; scans in ``exclude`` are left out."""
    rows = dataset_rows(session, dataset, exclude)
    images, annotations, categories = [], [], {"caries": 1}
    labeled, unlabeled, skipped = [], [], 0
    for d, s in rows:
        labels = d.labels or {}
        if d.label_kind == "none":
            unlabeled.append(store.path(s.path))
            continue
        if labels.get("boxes") is None and labels.get("caries"):
            skipped += 1  # image-level "caries" without boxes: no box supervision
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": str(store.path(s.path)), "width": s.columns, "height": s.rows,
                       "patient_id": s.patient_pseudonym, "scan_id": s.id})
        for box in labels.get("boxes") or []:
            cat = categories.setdefault(box["category"], len(categories) + 1)
            x, y, w, h = box["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                "attributes": box.get("attributes") or {}})
        labeled.append(s.id)
    coco_path = None
    if images:
        out_dir.mkdir(parents=True, exist_ok=True)
        coco_path = out_dir / f"{dataset}.json"
        coco_path.write_text(json.dumps({"images": images, "annotations": annotations,
                                         "categories": [{"id": i, "name": n} for n, i in categories.items()]}))
    return Materialized(coco_path, labeled, unlabeled, skipped, snapshot(dataset, rows))
