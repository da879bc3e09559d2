"""COCO annotations: load with full validation, save atomically, convert to training records, split by patient.

COCO JSON is the canonical label format (see ``DESIGN.md``): ``images[].file_name`` is the DICOM path relative to
the COCO file's folder (:attr:`CocoDataset.root`), ``bbox`` is ``[x, y, w, h]`` in original-image pixels.

Example::

    ds = CocoDataset.load("labeled/annotations.json")          # raises CocoValidationError listing every problem
    train, val, test = split_by_patient(ds, (0.7, 0.15, 0.15), seed=0)
    records = train.fraction(0.25, seed=0).to_records("caries")  # boxes float32 (N, 4) xyxy, labels int64 (N,)
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dentalmim.data.coco_schema import (
    ICCMS_DEPTH,
    CocoAnnotation,
    CocoCategory,
    CocoImage,
    parse_coco,
)
from dentalmim.data.coco_split import patient_fraction, split_by_patient
from dentalmim.errors import CocoValidationError, ConfigError
from dentalmim.fileio import atomic_write_text

__all__ = ["CLASS_MODES", "SIZE_BUCKETS", "ClassMode", "CocoAnnotation", "CocoCategory", "CocoDataset", "CocoImage",
           "CocoStats", "predictions_to_coco", "split_by_patient"]

#: ``category``: one class per COCO category (index in category-id order); ``caries``: every lesion is class 0;
#: ``depth``: enamel (0) / dentin (1) from ``attributes.depth``, else ``attributes.iccms``, else the category name.
ClassMode = Literal["category", "caries", "depth"]
CLASS_MODES: tuple[str, ...] = ("category", "caries", "depth")
#: Lesion size buckets of :meth:`CocoDataset.summary`, by equivalent side ``sqrt(w * h)`` in pixels.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<16", 0.0, 16.0), ("16-32", 16.0, 32.0), ("32-64", 32.0, 64.0), (">64", 64.0, math.inf))
_DEPTH_NAMES = ("enamel_caries", "dentin_caries")


def _default_categories() -> list[CocoCategory]:
    return [CocoCategory(1, "caries")]


@dataclass(frozen=True)
class CocoStats:
    """Counts of a dataset (:meth:`CocoDataset.summary`)."""

    images: int
    patients: int
    positive_images: int
    lesions: int
    lesions_by_size: dict[str, int]
    images_by_kind: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"images": self.images, "patients": self.patients, "positive_images": self.positive_images,
                "lesions": self.lesions, "lesions_by_size": dict(self.lesions_by_size),
                "images_by_kind": dict(self.images_by_kind)}


@dataclass
class CocoDataset:
    """Images, lesion annotations and categories of one COCO file.

    Args:
        images: the radiographs; ``file_name`` relative to ``root``.
        annotations: lesion boxes.
        categories: label classes; default ``[{"id": 1, "name": "caries"}]``.
        root: folder the file names are relative to (the COCO file's folder).
        info: the optional COCO ``info`` object, kept on round trips.
    """

    images: list[CocoImage]
    annotations: list[CocoAnnotation] = field(default_factory=list)
    categories: list[CocoCategory] = field(default_factory=_default_categories)
    root: Path = Path(".")
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check_files: bool = True) -> CocoDataset:
        """Read and validate a COCO file.

        Args:
            path: the JSON file; its folder becomes :attr:`root`.
            check_files: also require every ``file_name`` to exist on disk.

        Raises:
            CocoValidationError: listing every problem (malformed JSON, missing keys, duplicate ids, unknown
                image/category ids, invalid or out-of-bounds boxes, missing files, non-positive sizes).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CocoValidationError(path, [f"COCO file not found: {exc.strerror}"]) from exc
        except OSError as exc:  # a folder, a link loop, ...
            raise CocoValidationError(path, [f"COCO file cannot be read: {exc.strerror or type(exc).__name__}"]) \
                from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CocoValidationError(path, [f"malformed JSON: {exc}"]) from exc
        except RecursionError:
            raise CocoValidationError(path, ["malformed JSON: nested too deeply"]) from None
        return cls.from_json(data, path.parent, source=path, check_files=check_files)

    @classmethod
    def from_json(cls, data: object, root: str | os.PathLike[str], *, source: object = "<memory>",
                  check_files: bool = False) -> CocoDataset:
        """Validate a decoded COCO object (see :meth:`load`); ``source`` names it in the error."""
        root = Path(root)
        parsed = parse_coco(data, file_root=root if check_files else None)
        if parsed.problems:
            raise CocoValidationError(source, parsed.problems)
        return cls(parsed.images, parsed.annotations, parsed.categories, root, parsed.info)

    def to_json(self) -> dict[str, Any]:
        """The COCO object (``info`` if any, ``images``, ``annotations``, ``categories``), file names as stored."""
        out: dict[str, Any] = {"info": dict(self.info)} if self.info else {}
        out["images"] = [im.to_json() for im in self.images]
        out["annotations"] = [a.to_json() for a in self.annotations]
        out["categories"] = [c.to_json() for c in self.categories]
        return out

    to_coco_json = to_json

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the dataset atomically; file names are rewritten relative to the new file's folder.

        Returns:
            The written path.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        moved = self.with_root(path.parent) if path.parent.resolve() != self.root.resolve() else self
        text = json.dumps(moved.to_json(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        return atomic_write_text(path, text, fsync=True)

    # ------------------------------------------------------------------ lookups
    def image_path(self, image: CocoImage) -> Path:
        """Absolute, normalised path of an image's DICOM file."""
        return Path(os.path.normpath(os.path.abspath(self.root / image.file_name)))

    def annotations_by_image(self) -> dict[int, list[CocoAnnotation]]:
        """Image id -> its annotations (every image present, possibly with an empty list)."""
        out: dict[int, list[CocoAnnotation]] = {im.id: [] for im in self.images}
        for ann in self.annotations:
            out.setdefault(ann.image_id, []).append(ann)
        return out

    def patients(self) -> dict[str, list[int]]:
        """Patient id -> image ids, in image order."""
        out: dict[str, list[int]] = {}
        for im in self.images:
            out.setdefault(im.patient_id, []).append(im.id)
        return out

    # ------------------------------------------------------------------ records
    def class_names(self, class_mode: ClassMode = "category") -> list[str]:
        """Names of the label indices ``0..C-1`` that :meth:`to_records` produces for ``class_mode``."""
        _check_class_mode(class_mode)
        if class_mode == "caries":
            return ["caries"]
        if class_mode == "depth":
            return list(_DEPTH_NAMES)
        return [c.name for c in sorted(self.categories, key=lambda c: c.id)]

    def _labels(self, class_mode: ClassMode) -> dict[int, int]:
        """Annotation id -> label index; raises CocoValidationError for depth-less lesions in depth mode."""
        if class_mode == "caries":
            self._check_all_caries()
            return {a.id: 0 for a in self.annotations}
        if class_mode == "category":
            index = {c.id: i for i, c in enumerate(sorted(self.categories, key=lambda c: c.id))}
            return {a.id: index[a.category_id] for a in self.annotations}
        names = {c.id: c.name for c in self.categories}
        labels, problems = {}, []
        for ann in self.annotations:
            depth = _depth_of(ann, names[ann.category_id])
            if depth is None:
                problems.append(f"annotation {ann.id}: no depth (attributes.depth, attributes.iccms or an "
                                f"enamel_caries/dentin_caries category) for class_mode='depth'")
            else:
                labels[ann.id] = ("enamel", "dentin").index(depth)
        if problems:
            raise CocoValidationError(self.root, problems)
        return labels

    def _check_all_caries(self) -> None:
        """class_mode 'caries' makes every box a lesion: refuse boxes of categories that are not caries (e.g. a
        ``restoration``) rather than count them."""
        used = Counter(a.category_id for a in self.annotations)
        problems = [f"category {c.name!r} (id {c.id}) is not a caries category, yet {used[c.id]} boxes use it: "
                    f"class_mode 'caries' would count them as lesions (remove them, or use class_mode 'category')"
                    for c in self.categories if used[c.id] and "caries" not in c.name.lower()]
        if problems:
            raise CocoValidationError(self.root, problems)

    def to_records(self, class_mode: ClassMode = "category") -> list[dict[str, Any]]:
        """One training record per image, in image order.

        Returns:
            Dicts with ``image`` (absolute path str), ``boxes`` float32 (N, 4) ``x1, y1, x2, y2`` in original
            pixels, ``labels`` int64 (N,) in ``0..C-1`` (see :meth:`class_names`), ``image_id``, ``patient_id``,
            ``kind`` (str or None), ``width``, ``height``.
        """
        _check_class_mode(class_mode)
        labels = self._labels(class_mode)
        by_image = self.annotations_by_image()
        records = []
        for im in self.images:
            anns = by_image[im.id]
            boxes = np.asarray([a.xyxy for a in anns], dtype=np.float32).reshape(-1, 4)
            records.append({"image": str(self.image_path(im)), "boxes": boxes,
                            "labels": np.asarray([labels[a.id] for a in anns], dtype=np.int64),
                            "image_id": im.id, "patient_id": im.patient_id, "kind": im.kind,
                            "width": im.width, "height": im.height})
        return records

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], *, root: str | os.PathLike[str],
                     class_names: Sequence[str] = ("caries",)) -> CocoDataset:
        """Build a dataset from :meth:`to_records`-style dicts (label ``i`` -> category id ``i + 1``).

        Args:
            records: dicts with ``image`` (path), ``boxes`` (N, 4) xyxy, ``labels`` (N,), ``image_id``,
                ``patient_id``, ``width``, ``height`` and optionally ``kind``.
            root: folder the file names are made relative to.
            class_names: category names, index = label.
        """
        root = Path(root)
        images, annotations = [], []
        for rec in records:
            rel = os.path.relpath(os.path.abspath(rec["image"]), os.path.abspath(root))
            images.append(CocoImage(int(rec["image_id"]), Path(rel).as_posix(), int(rec["width"]),
                                    int(rec["height"]), str(rec["patient_id"]), rec.get("kind")))
            for box, label in zip(np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4),
                                  np.asarray(rec["labels"]).reshape(-1)):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(CocoAnnotation(len(annotations) + 1, images[-1].id, int(label) + 1,
                                                  (x1, y1, x2 - x1, y2 - y1)))
        categories = [CocoCategory(i + 1, name) for i, name in enumerate(class_names)]
        return cls.from_json(cls(images, annotations, categories, root).to_json(), root, source="records")

    # ------------------------------------------------------------------ selections
    def subset(self, image_ids: Iterable[int]) -> CocoDataset:
        """The images with these ids (kept in dataset order) and their annotations.

        Raises:
            ValueError: if an id is not in the dataset.
        """
        wanted = set(image_ids)
        unknown = wanted - {im.id for im in self.images}
        if unknown:
            raise ValueError(f"image_ids should all be in the dataset, unknown: {sorted(unknown)[:10]}.")
        return replace(self, images=[im for im in self.images if im.id in wanted],
                       annotations=[a for a in self.annotations if a.image_id in wanted])

    def fraction(self, frac: float, seed: int = 0) -> CocoDataset:
        """A patient-level subset with about ``frac`` of the patients, for label-efficiency experiments.

        Subsets are nested for a fixed seed (``fraction(0.25) ⊆ fraction(0.5)``) and keep positives and
        negatives in proportion (at least one positive patient when any exists and ``frac > 0``).
        """
        return self.subset(patient_fraction(self, frac, seed))

    def merge(self, *others: CocoDataset) -> CocoDataset:
        """This dataset followed by ``others``; ids of the others are renumbered after the current maximum,
        file names rewritten relative to :attr:`root`, categories matched by name (the same pseudonymous
        patient id in two datasets is the same patient).

        Raises:
            ConfigError: if the category names differ.
        """
        images, annotations = list(self.images), list(self.annotations)
        by_name = {c.name: c.id for c in self.categories}
        for other in others:
            if {c.name for c in other.categories} != set(by_name):
                raise ConfigError(f"categories should have the same names to merge, got {sorted(by_name)} and "
                                  f"{sorted(c.name for c in other.categories)}.")
            other = other.with_root(self.root)
            im_off = _id_offset([im.id for im in images], [im.id for im in other.images])
            an_off = _id_offset([a.id for a in annotations], [a.id for a in other.annotations])
            cat = {c.id: by_name[c.name] for c in other.categories}
            images += [replace(im, id=im.id + im_off) for im in other.images]
            annotations += [replace(a, id=a.id + an_off, image_id=a.image_id + im_off, category_id=cat[a.category_id])
                            for a in other.annotations]
        return replace(self, images=images, annotations=annotations)

    def with_root(self, new_root: str | os.PathLike[str]) -> CocoDataset:
        """The same files, with file names rewritten relative to ``new_root``."""
        new_root = Path(new_root)
        base = os.path.abspath(new_root)
        images = [replace(im, file_name=Path(os.path.relpath(self.image_path(im), base)).as_posix())
                  for im in self.images]
        return replace(self, images=images, root=new_root)

    def remap_files(self, mapping: Mapping[str, str], new_root: str | os.PathLike[str], *,
                    missing: Literal["error", "drop"] = "error") -> CocoDataset:
        """Point images at moved files, e.g. de-identified copies written by ingest.

        Args:
            mapping: old ``file_name`` (as stored, relative to :attr:`root`) -> new path relative to
                ``new_root``; for an ingest manifest ``{r["source"]: r["file"] for r in records}`` when the COCO
                file sits in the ingest source folder.
            new_root: the folder the new paths are relative to.
            missing: what to do with images absent from ``mapping``: ``error`` or ``drop`` them (and their
                annotations), e.g. files ingest rejected.

        Raises:
            ConfigError: for unmapped images when ``missing="error"``.
        """
        if missing not in ("error", "drop"):
            raise ValueError(f"missing should be 'error' or 'drop', got {missing!r}.")
        norm = {posixpath.normpath(Path(k).as_posix()): posixpath.normpath(Path(v).as_posix())
                for k, v in mapping.items()}
        unmapped = [im.file_name for im in self.images if posixpath.normpath(im.file_name) not in norm]
        if unmapped and missing == "error":
            raise ConfigError(f"mapping should cover every image, {len(unmapped)} unmapped, e.g. {unmapped[:3]}.")
        kept = [replace(im, file_name=norm[posixpath.normpath(im.file_name)]) for im in self.images
                if posixpath.normpath(im.file_name) in norm]
        ids = {im.id for im in kept}
        return replace(self, images=kept, annotations=[a for a in self.annotations if a.image_id in ids],
                       root=Path(new_root))

    def summary(self) -> CocoStats:
        """Image, patient, positive-image and lesion counts; lesions by size bucket (:data:`SIZE_BUCKETS`)."""
        sizes = {name: 0 for name, _, _ in SIZE_BUCKETS}
        for ann in self.annotations:
            side = math.sqrt(ann.area)
            sizes[next(name for name, lo, hi in SIZE_BUCKETS if lo <= side < hi)] += 1
        kinds: dict[str, int] = {}
        for im in self.images:
            kinds[im.kind or "unknown"] = kinds.get(im.kind or "unknown", 0) + 1
        return CocoStats(len(self.images), len(self.patients()), len({a.image_id for a in self.annotations}),
                         len(self.annotations), sizes, kinds)


def _id_offset(existing: Sequence[int], incoming: Sequence[int]) -> int:
    """Offset that moves ``incoming`` ids just past ``existing`` ones (0 when either is empty)."""
    return max(existing) + 1 - min(incoming) if existing and incoming else 0


def _check_class_mode(class_mode: str) -> None:
    if class_mode not in CLASS_MODES:
        raise ValueError(f"class_mode should be one of {CLASS_MODES}, got {class_mode!r}.")


def _depth_of(ann: CocoAnnotation, category_name: str) -> str | None:
    """``enamel`` / ``dentin`` from the attributes or the category name, else None."""
    if ann.attributes.get("depth") is not None:
        return str(ann.attributes["depth"])
    if ann.attributes.get("iccms") is not None:
        return ICCMS_DEPTH[str(ann.attributes["iccms"])]
    if category_name in _DEPTH_NAMES:
        return category_name.split("_")[0]
    return None


def predictions_to_coco(predictions: Iterable[Mapping[str, Any]],
                        category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Detections in the COCO results format (what ``pycocotools`` ``loadRes`` reads).

    Args:
        predictions: dicts with ``image_id``, ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,) and optional
            ``labels`` (N,) label indices (default 0).
        category_ids: category id of each label index; default ``label + 1``.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
    """
    results = []
    for pred in predictions:
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(pred.get("labels", np.zeros(len(boxes))), dtype=np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"boxes, scores and labels should have the same length, got {len(boxes)}, "
                             f"{len(scores)} and {len(labels)}.")
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            category = int(category_ids[label]) if category_ids is not None else int(label) + 1
            results.append({"image_id": int(pred["image_id"]), "category_id": category,
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)})
    return results
