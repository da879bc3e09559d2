"""``dentalmim evaluate``: a model on a labeled COCO set -> ``metrics.json``, ``report.html``, ``report.pdf``,
``per_image.csv``.

Every image of the COCO file is predicted with tiled inference at full resolution (:class:`Predictor`). All boxes
down to :data:`EVAL_SCORE_FLOOR` are kept, so that FROC and AP see the whole score range. The model's stored
operating thresholds give the operating-point metrics (sensitivity, specificity, PPV, NPV). ``metrics.json`` also
carries ``auroc_image_size_baseline``, the image-level AUROC of the pixel count alone, the reference a model's
AUROC has to beat (larger images hold lesions more often and give more tiles to the max). The report records
provenance: the model's version and sha256, its metadata, a dataset hash over the COCO file and every image file,
the date and the dentalmim version. ``per_image.csv`` (:mod:`dentalmim.evaluation.per_image`) has one row per image
at the operating point: its probability, outcome, lesions found and false marks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from dentalmim.data.coco import CocoDataset
from dentalmim.data.dicom import image_type, read_dicom, read_dicom_header
from dentalmim.errors import CocoValidationError, ConfigError, DicomReadError
from dentalmim.evaluation.metrics import EvalImage, auroc, compute_curves, evaluate_detections
from dentalmim.evaluation.per_image import per_image_rows, write_per_image_csv
from dentalmim.evaluation.report import ReportPaths, write_report
from dentalmim.evaluation.report_gallery import select_gallery

if TYPE_CHECKING:
    from dentalmim.inference.predictor import Predictor

log = logging.getLogger(__name__)

#: Lowest box score kept for evaluation (curves need low-scoring marks; the report's operating point does not).
EVAL_SCORE_FLOOR = 0.01


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_model` wrote and the headline numbers."""

    paths: ReportPaths
    metrics: dict[str, Any]
    per_image_csv: Path

    def format(self) -> str:
        """A line with the headline metrics and the report path, then one line per warning."""
        m = self.metrics
        parts = [f"{k}={m[k]:.3f}" for k in ("froc_fom", "sensitivity_at_1fp", "ap50", "auroc") if m.get(k) is not None]
        if m.get("auroc_image_size_baseline") is not None:
            parts.append(f"(image size alone: auroc={m['auroc_image_size_baseline']:.3f})")
        lines = [f"{', '.join(parts)}; report: {self.paths.html}"]
        return "\n".join([*lines, *(f"  warning: {w}" for w in m.get("warnings", []))])


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_sha256(coco_path: str | Path, image_paths: Sequence[str | Path]) -> str:
    """One hash over the COCO file and every image it names (order-independent)."""
    digest = hashlib.sha256(Path(coco_path).read_bytes())
    for h in sorted(sha256_file(p) for p in image_paths):
        digest.update(h.encode())
    return digest.hexdigest()


def _class_mode(class_names: Sequence[str]) -> str:
    return "depth" if len(class_names) == 2 else "caries"


def predict_eval_set(
    predictor: Predictor, coco: CocoDataset, *, progress: bool = True
) -> tuple[list[EvalImage], dict[str, str], dict[str, str]]:
    """Predict every image of ``coco`` and pair the predictions with the ground truth.

    Returns:
        The evaluation items (one per image), ``image_id -> DICOM path`` for the gallery and ``image_id ->``
        :func:`image_type` (from the Modality of the DICOM just read).
    """
    items, paths, types = [], {}, {}
    records = coco.to_records(class_mode=_class_mode(predictor.class_names))
    for rec in tqdm(records, desc="evaluate", unit="img", disable=not progress):
        image = read_dicom(rec["image"])
        pred = predictor.predict(image.pixels, threshold=EVAL_SCORE_FLOOR,
                                 pixel_spacing_mm=image.meta.pixel_spacing_mm)
        image_id = str(rec["image_id"])
        paths[image_id], types[image_id] = rec["image"], image_type(image.meta.modality)
        items.append(
            EvalImage(
                gt_boxes=rec["boxes"], gt_labels=rec["labels"], pred_boxes=pred.boxes, pred_scores=pred.scores,
                pred_labels=pred.labels, image_prob=float(np.clip(pred.image_probability, 0.0, 1.0)),
                image_id=image_id, patient_id=rec.get("patient_id"), pixel_spacing_mm=image.meta.pixel_spacing_mm,
            )
        )  # fmt: skip
    return items, paths, types


def check_eval_images(coco: CocoDataset, source: str | Path) -> None:
    """Before any prediction: the set has images, and every image's DICOM header is readable and has the size
    the COCO file gives it (boxes are in those pixels).

    Raises:
        CocoValidationError: listing every unreadable image and every size mismatch.
    """
    problems = [] if coco.images else ["images should not be empty"]
    for im in coco.images:
        try:
            meta = read_dicom_header(coco.image_path(im))
        except DicomReadError as exc:
            problems.append(f"image {im.id} ({im.file_name}): {exc.reason}")
            continue
        if (meta.columns, meta.rows) != (im.width, im.height):
            problems.append(f"image {im.id} ({im.file_name}): the COCO file gives {im.width}x{im.height}, the DICOM "
                            f"is {meta.columns}x{meta.rows} (width x height)")
    if problems:
        raise CocoValidationError(source, problems)


def image_size_baseline_auroc(coco: CocoDataset, items: Sequence[EvalImage]) -> float | None:
    """Image-level AUROC of the pixel count alone (a reference, not a model).

    A larger radiograph shows more teeth, so it is more likely to hold a lesion, and a max-over-tiles image
    probability also grows with the number of tiles. A model's ``auroc`` means something about lesions only where
    it beats this number. None when the set lacks images with or without caries.
    """
    area = {str(im.id): float(im.width * im.height) for im in coco.images}
    truth = np.array([len(it.gt_boxes) > 0 for it in items])
    if truth.all() or not truth.any():
        return None
    return auroc(np.array([area[it.image_id] for it in items]), truth)


#: Image-type AUROC at or below which the image probability is said not to rank that type's images.
CHANCE_AUROC = 0.6


def per_image_type(items: Sequence[EvalImage], types: dict[str, str], *, score_threshold: float,
                   image_threshold: float) -> dict[str, dict[str, Any]]:
    """Headline metrics per image type (panoramic vs intraoral), without intervals; empty with a single type.

    Image types differ in size, anatomy and tile count, so an image probability can rank the types apart rather
    than the images with and without caries within each type; this breakdown shows it.
    """
    groups: dict[str, list[EvalImage]] = {}
    for it in items:
        groups.setdefault(types.get(str(it.image_id), "unknown"), []).append(it)
    if len(groups) < 2:
        return {}
    out = {}
    for name, members in sorted(groups.items()):
        m = evaluate_detections(members, score_threshold=score_threshold, image_threshold=image_threshold, n_boot=0)
        c = m["counts"]
        out[name] = {"name": f"{c['images']} images: {c['positive_images']} caries, {c['negative_images']} caries-free",
                     "images": c["images"], "caries_images": c["positive_images"],
                     "caries_free_images": c["negative_images"], "lesions": c["lesions"],
                     **{k: m.get(k) for k in ("froc_fom", "sensitivity_at_1fp", "auroc", "sensitivity", "specificity")}}
    return out


def evaluation_warnings(metrics: dict[str, Any], model_metadata: dict[str, Any],
                        image_types: Sequence[str] = ()) -> list[str]:
    """What a reader of the report must know before trusting it (shown at the top of the report and by the CLI).

    Args:
        metrics: the :func:`evaluate_detections` dictionary with ``auroc_image_size_baseline`` (and ``counts``:
            fewer than :data:`~dentalmim.inference.predictor.MIN_THRESHOLD_SUPPORT` test images of a class warn).
        model_metadata: the model's metadata (its operating thresholds and their validation support).
        image_types: the types of the test images: each one the image threshold saw too few validation images of
            warns (:func:`~dentalmim.inference.predictor.image_type_warnings`).
    """
    from dentalmim.inference.predictor import (MIN_THRESHOLD_SUPPORT, TYPE_SUPPORT_KEY, image_type_warnings,
                                               threshold_warnings)

    out = threshold_warnings(model_metadata)
    for kind in sorted(set(image_types)):
        out += image_type_warnings(model_metadata.get(TYPE_SUPPORT_KEY) or {}, kind)
    counts = metrics.get("counts") or {}
    pos, neg = counts.get("positive_images"), counts.get("negative_images")
    if pos is not None and neg is not None and min(pos, neg) < MIN_THRESHOLD_SUPPORT:
        out.append(f"the image-level metrics (AUROC, sensitivity, specificity, PPV, NPV, calibration) rest on only "
                   f"{pos} caries and {neg} caries-free test image(s) (fewer than {MIN_THRESHOLD_SUPPORT} of a "
                   "class): one image more or less of a kind can swing them, whatever their intervals say.")
    model_auc, size_auc = metrics.get("auroc"), metrics.get("auroc_image_size_baseline")
    if model_auc is not None and size_auc is not None and np.isfinite(model_auc) and model_auc <= size_auc:
        out.append(f"image-level AUROC {model_auc:.3f} does not beat image size alone ({size_auc:.3f}): the image "
                   "probability may be reading image size, not lesions.")
    for name, g in (metrics.get("per_image_type") or {}).items():
        auc = g.get("auroc")
        if auc is not None and min(g["caries_images"], g["caries_free_images"]) >= 2 and auc <= CHANCE_AUROC:
            out.append(f"within the {name} images ({g['caries_images']} caries, {g['caries_free_images']} "
                       f"caries-free) the image-level AUROC is only {auc:.3f}: the image probability hardly ranks "
                       "them, and the overall AUROC may be separating image types rather than caries (per image "
                       "type table).")
    return out


def evaluate_model(
    predictor: Predictor,
    coco_path: str | Path,
    out_dir: str | Path,
    *,
    model_path: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    gallery_size: int = 6,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate ``predictor`` on a labeled COCO set and write the report.

    Args:
        predictor: the loaded model.
        coco_path: COCO JSON whose images are DICOM files.
        out_dir: report folder (created when missing).
        model_path: the model file, hashed for provenance.
        n_boot: bootstrap resamples of the confidence intervals.
        seed: bootstrap seed.
        gallery_size: worst false negatives and false positives shown (each).
        progress: show a progress bar.
    """
    if n_boot < 0:
        raise ConfigError(f"n_boot should be >= 0, got {n_boot}.")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"out should be a folder, got the file {out_dir}.")
    coco = CocoDataset.load(coco_path)
    check_eval_images(coco, coco_path)
    items, paths, types = predict_eval_set(predictor, coco, progress=progress)
    names = dict(enumerate(predictor.class_names))
    thresholds = {"score_threshold": predictor.score_threshold, "image_threshold": predictor.image_threshold}
    metrics = evaluate_detections(items, n_boot=n_boot, seed=seed, class_names=names, **thresholds)
    metrics["auroc_image_size_baseline"] = image_size_baseline_auroc(coco, items)
    metrics["per_image_type"] = per_image_type(items, types, **thresholds)
    metrics["warnings"] = evaluation_warnings(metrics, predictor.metadata, list(types.values()))
    curves = compute_curves(items, seed=seed, **thresholds)
    gallery = select_gallery(
        items, gallery_size, lambda im: read_dicom(paths[im.image_id]).pixels,
        score_threshold=predictor.score_threshold,
    )  # fmt: skip
    provenance = {
        "model_version": predictor.version,
        "model_sha256": sha256_file(model_path) if model_path else None,
        "model_metadata": predictor.metadata,
        "dataset": str(coco_path),
        "dataset_sha256": dataset_sha256(coco_path, list(paths.values())),
    }
    report = write_report(out_dir, metrics, curves, gallery=gallery, provenance=provenance,
                          title=f"Caries detection: {Path(coco_path).name}")  # fmt: skip
    info = {str(im.id): {"file_name": im.file_name, "width": im.width, "height": im.height,
                         "image_type": types.get(str(im.id), "")} for im in coco.images}
    rows = per_image_rows(items, image_info=info, **thresholds)
    return EvaluationResult(report, metrics, write_per_image_csv(Path(out_dir) / "per_image.csv", rows))
