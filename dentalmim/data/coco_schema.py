"""COCO records (images, annotations, categories) and their validation.

:func:`parse_coco` turns a decoded COCO JSON object into typed records and collects *every* problem it finds
instead of stopping at the first, so a curator fixes a file in one pass. :class:`dentalmim.data.coco.CocoDataset`
builds on it; this module has no I/O except the optional ``file_name`` existence check.

Coordinates follow the project convention: pixel (row i, col j) covers ``[j, j+1) x [i, i+1)``, a COCO bbox is
``[x, y, w, h]`` in those continuous coordinates, so a box may touch ``x + w == width`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Radiograph kinds an image may declare.
KINDS: tuple[str, ...] = ("bitewing", "periapical", "panoramic")
#: Lesion depth classes (``attributes.depth``).
DEPTHS: tuple[str, ...] = ("enamel", "dentin")
#: ICCMS radiographic score -> depth class (RA: enamel / outer dentin third, RB and RC: dentin).
ICCMS_DEPTH: dict[str, str] = {"RA": "enamel", "RB": "dentin", "RC": "dentin"}
#: How far (pixels) a box may reach past the image border before it counts as out of bounds (float round-off).
BBOX_TOLERANCE: float = 0.01

_IMAGE_KEYS = ("id", "file_name", "width", "height", "patient_id")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")
_CATEGORY_KEYS = ("id", "name")


@dataclass(frozen=True)
class CocoImage:
    """One radiograph. ``file_name`` is relative to the COCO file's folder; ``extra`` keeps unknown keys."""

    id: int
    file_name: str
    width: int
    height: int
    patient_id: str
    kind: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The COCO ``images[]`` entry (stable key order)."""
        out: dict[str, Any] = {"id": self.id, "file_name": self.file_name, "width": self.width,
                               "height": self.height, "patient_id": self.patient_id}
        if self.kind is not None:
            out["kind"] = self.kind
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


@dataclass(frozen=True)
class CocoAnnotation:
    """One lesion box. ``bbox`` is COCO ``(x, y, w, h)`` in original-image pixels."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0
    tooth: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """The box as ``(x1, y1, x2, y2)``."""
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)

    @property
    def area(self) -> float:
        """Box area ``w * h`` in square pixels."""
        return self.bbox[2] * self.bbox[3]

    def to_json(self) -> dict[str, Any]:
        """The COCO ``annotations[]`` entry (stable key order)."""
        out: dict[str, Any] = {"id": self.id, "image_id": self.image_id, "category_id": self.category_id,
                               "bbox": [float(v) for v in self.bbox], "area": float(self.area),
                               "iscrowd": self.iscrowd}
        if self.tooth is not None:
            out["tooth"] = self.tooth
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


@dataclass(frozen=True)
class CocoCategory:
    """A label class (``caries``, or ``enamel_caries`` / ``dentin_caries``)."""

    id: int
    name: str
    supercategory: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The COCO ``categories[]`` entry."""
        out: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.supercategory is not None:
            out["supercategory"] = self.supercategory
        return out


@dataclass
class ParsedCoco:
    """Typed content of a COCO file plus every problem found while reading it."""

    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]
    info: dict[str, Any]
    problems: list[str]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_int_id(entry: object) -> bool:
    return isinstance(entry, Mapping) and _is_int(entry.get("id"))


def _missing(entry: object, keys: tuple[str, ...], where: str, problems: list[str]) -> bool:
    """Append a problem for each required key absent from ``entry``; True if the entry is unusable."""
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: should be an object, got {type(entry).__name__}")
        return True
    absent = [k for k in keys if k not in entry]
    for key in absent:
        problems.append(f"{where}: missing key '{key}'")
    return bool(absent)


def _check_ids(entries: list[Mapping[str, Any]], where: str, problems: list[str]) -> set[int]:
    """Problems for non-integer and duplicate ids; returns the set of valid ids."""
    seen: set[int] = set()
    for i, entry in enumerate(entries):
        ident = entry["id"]
        if not _is_int(ident):
            problems.append(f"{where}[{i}]: id should be an integer, got {ident!r}")
        elif ident in seen:
            problems.append(f"{where}[{i}]: duplicate {where[:-1]} id {ident}")
        else:
            seen.add(ident)
    return seen


def _parse_image(entry: Mapping[str, Any], where: str, root: Path | None, problems: list[str]) -> CocoImage | None:
    before = len(problems)
    for key in ("width", "height"):
        if not _is_int(entry[key]) or entry[key] <= 0:
            problems.append(f"{where}: {key} should be a positive integer, got {entry[key]!r}")
    name, patient, kind = entry["file_name"], entry["patient_id"], entry.get("kind")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: file_name should be a non-empty string, got {name!r}")
    elif root is not None and not (root / name).is_file():
        problems.append(f"{where}: file_name '{name}' not found (file missing on disk under {root})")
    if not (isinstance(patient, str) and patient) and not _is_int(patient):
        problems.append(f"{where}: patient_id should be a non-empty string, got {patient!r}")
    if kind is not None and kind not in KINDS:
        problems.append(f"{where}: kind should be one of {KINDS}, got {kind!r}")
    if len(problems) > before or not _is_int(entry["id"]):
        return None
    extra = {k: v for k, v in entry.items() if k not in (*_IMAGE_KEYS, "kind")}
    return CocoImage(entry["id"], name, entry["width"], entry["height"], str(patient), kind, extra)


def _bbox_problem(bbox: object, image: CocoImage | None) -> str | None:
    """Why ``bbox`` is invalid (None if it is fine); bounds are checked only against a valid image."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox should be 4 finite numbers [x, y, w, h], got {bbox!r}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return f"bbox should be 4 finite numbers [x, y, w, h], got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return f"bbox has non-positive width/height (w={w}, h={h})"
    tol = BBOX_TOLERANCE
    if image is not None and (x < -tol or y < -tol or x + w > image.width + tol or y + h > image.height + tol):
        return f"bbox {[x, y, w, h]} is out of image bounds ({image.width}x{image.height})"
    return None


def _parse_annotation(entry: Mapping[str, Any], where: str, images: Mapping[int, CocoImage | None],
                      category_ids: set[int], problems: list[str]) -> CocoAnnotation | None:
    before = len(problems)
    image_id, category_id = entry["image_id"], entry["category_id"]
    for key, value in (("image_id", image_id), ("category_id", category_id)):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: {key} should be an integer, got {value!r}")
    if len(problems) > before:
        return None
    if image_id not in images:
        problems.append(f"{where}: unknown image_id {image_id!r}")
    if category_id not in category_ids:
        problems.append(f"{where}: unknown category_id {category_id!r}")
    bbox_problem = _bbox_problem(entry["bbox"], images.get(image_id))
    if bbox_problem:
        problems.append(f"{where}: {bbox_problem}")
    if entry.get("iscrowd", 0) != 0:
        problems.append(f"{where}: iscrowd should be 0 (crowd regions are not supported), got {entry['iscrowd']!r}")
    attributes = entry.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        problems.append(f"{where}: attributes should be an object, got {attributes!r}")
    elif attributes.get("depth") not in (None, *DEPTHS):
        problems.append(f"{where}: attributes.depth should be one of {DEPTHS}, got {attributes['depth']!r}")
    elif attributes.get("iccms") not in (None, *ICCMS_DEPTH):
        problems.append(f"{where}: attributes.iccms should be one of {tuple(ICCMS_DEPTH)}, got {attributes['iccms']!r}")
    if len(problems) > before or not _is_int(entry["id"]):
        return None
    tooth = entry.get("tooth")
    extra = {k: v for k, v in entry.items()
             if k not in (*_ANNOTATION_KEYS, "area", "iscrowd", "tooth", "attributes")}
    bbox = tuple(float(v) for v in entry["bbox"])
    return CocoAnnotation(entry["id"], image_id, category_id, bbox, 0,  # type: ignore[arg-type]
                          None if tooth is None else str(tooth), dict(attributes), extra)


def _section(data: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key)
    if value is None:
        problems.append(f"missing key '{key}' (top level)")
        return []
    if not isinstance(value, list):
        problems.append(f"'{key}' should be a list, got {type(value).__name__}")
        return []
    return value


def parse_coco(data: object, *, file_root: Path | None = None) -> ParsedCoco:
    """Validate a decoded COCO object and convert it to typed records.

    Args:
        data: the result of ``json.load``.
        file_root: when given, every ``file_name`` must exist under this folder.

    Returns:
        The valid records and the list of all problems (empty when the file is sound). Invalid entries are
        left out of the records.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        return ParsedCoco([], [], [], {}, [f"top level should be an object, got {type(data).__name__}"])
    sections = {key: _section(data, key, problems) for key in ("images", "annotations", "categories")}
    usable = {key: [e for i, e in enumerate(entries) if not _missing(e, keys, f"{key}[{i}]", problems)]
              for (key, entries), keys in zip(sections.items(), (_IMAGE_KEYS, _ANNOTATION_KEYS, _CATEGORY_KEYS))}
    for key in usable:
        _check_ids(usable[key], key, problems)
    for i, c in enumerate(usable["categories"]):
        if not isinstance(c["name"], str) or not c["name"]:
            problems.append(f"categories[{i}]: name should be a non-empty string, got {c['name']!r}")
    categories = [CocoCategory(c["id"], str(c["name"]), c.get("supercategory")) for c in usable["categories"]
                  if _is_int(c["id"])]
    # ids of incomplete entries still count as known, so their annotations do not report cascading problems
    images: dict[int, CocoImage | None] = {e["id"]: None for e in sections["images"] if _has_int_id(e)}
    for i, entry in enumerate(usable["images"]):
        parsed = _parse_image(entry, f"images[{i}] (id={entry['id']!r})", file_root, problems)
        if _is_int(entry["id"]) and images.get(entry["id"]) is None:
            images[entry["id"]] = parsed
    category_ids = {e["id"] for e in sections["categories"] if _has_int_id(e)}
    annotations = [_parse_annotation(e, f"annotations[{i}] (id={e['id']!r})", images, category_ids, problems)
                   for i, e in enumerate(usable["annotations"])]
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    return ParsedCoco([im for im in images.values() if im is not None], [a for a in annotations if a is not None],
                      categories, dict(info), problems)
