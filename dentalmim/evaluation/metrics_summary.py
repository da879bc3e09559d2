"""The full metrics dictionary of an evaluation run (``metrics.json``).

Layout (JSON-serialisable; nan and inf become ``null``)::

    {"froc_fom": 0.71, "afroc_fom": ..., "sensitivity_at_1fp": ..., "ap50": ..., "coco_ap": ...,
     "lesion_sensitivity": ..., "fp_per_image": ...,                      # lesion level, at score_threshold
     "auroc": ..., "sensitivity": ..., "specificity": ..., "ppv": ..., "npv": ..., "ece": ...,   # image level
     "ci": {"froc_fom": [low, high], ...},                               # percentile bootstrap, same keys
     "counts": {"images", "positive_images", "negative_images", "lesions", "predictions", "patients"},
     "operating_point": {"score_threshold", "image_threshold", "tp", "fp", "tn", "fn"},
     "per_class": {"1": {"name" (from class_names, else null), "lesions", "froc_fom", "sensitivity_at_1fp",
                          "lesion_sensitivity", "ap50", "ci": {...}}},
     "per_size_px": {"<16": {"lesions", "froc_fom", "lesion_sensitivity", "ci": {...}}, ...},
     "per_size_mm": {...},                                               # only when pixel spacing is known
     "settings": {...}}

Point estimates are flat floats at the top level so consumers read ``metrics["froc_fom"]``. Headline lesion
metrics are class-agnostic (any caries box localises any caries lesion); ``per_class`` is class-aware.
``ap50`` and ``coco_ap`` use COCO 101-point interpolation, so they equal pycocotools' AP50 and AP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dentalmim.evaluation.metrics_bootstrap import Estimate, bootstrap_weighted, bootstrap_weights
from dentalmim.evaluation.metrics_image import auroc_w, confusion_w, ece_w
from dentalmim.evaluation.metrics_lesion import (COCO_IOU_THRESHOLDS, FROC_FP_LEVELS, afroc_fom_w, ap_criterion,
                                                 average_precision_w, fp_per_image_w, froc_fom_w,
                                                 lesion_sensitivity_w, sensitivity_at_fp_w)
from dentalmim.evaluation.metrics_match import FROC_CRITERION, EvalImage, HitCriterion, LesionTable, match_table

__all__ = ["HEADLINE_KEYS", "SIZE_BUCKETS_MM", "SIZE_BUCKETS_PX", "evaluate_detections", "to_jsonable"]

#: Top-level point estimates of ``metrics.json`` (each also in ``metrics["ci"]``).
HEADLINE_KEYS: tuple[str, ...] = ("froc_fom", "afroc_fom", "sensitivity_at_1fp", "ap50", "coco_ap",
                                  "lesion_sensitivity", "fp_per_image", "auroc", "sensitivity", "specificity",
                                  "ppv", "npv", "ece")
#: Lesion size buckets (largest box side): name -> [low, high).
SIZE_BUCKETS_PX: dict[str, tuple[float, float]] = {"<16": (0, 16), "16-32": (16, 32), "32-64": (32, 64),
                                                   ">=64": (64, math.inf)}
SIZE_BUCKETS_MM: dict[str, tuple[float, float]] = {"<1": (0, 1), "1-2": (1, 2), "2-4": (2, 4), ">=4": (4, math.inf)}
Metric = Callable[[np.ndarray], np.ndarray]


def to_jsonable(obj: Any) -> Any:
    """Recursively convert to JSON types: numpy values and tuples converted, nan and inf become ``None``, any other
    object (e.g. a path) becomes its ``str``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return float(obj) if math.isfinite(obj) else None
    return obj if obj is None or isinstance(obj, str) else str(obj)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=np.asarray(den) > 0)


def _image_metrics(prob: np.ndarray, truth: np.ndarray, threshold: float, n_bins: int) -> dict[str, Metric]:
    def rate(num: int, den: tuple[int, int]) -> Metric:
        def fn(w: np.ndarray) -> np.ndarray:
            c = confusion_w(prob, truth, threshold, w)  # tp, fp, tn, fn
            return _ratio(c[num], c[den[0]] + c[den[1]])
        return fn

    return {"auroc": lambda w: auroc_w(prob, truth, w), "sensitivity": rate(0, (0, 3)),
            "specificity": rate(2, (2, 1)), "ppv": rate(0, (0, 1)), "npv": rate(2, (2, 3)),
            "ece": lambda w: ece_w(prob, truth, n_bins, w)}


def _lesion_metrics(froc: LesionTable, ap_tables: Sequence[LesionTable], threshold: float,
                    fp_levels: Sequence[float]) -> dict[str, Metric]:
    return {"froc_fom": lambda w: froc_fom_w(froc, w, fp_levels), "afroc_fom": lambda w: afroc_fom_w(froc, w),
            "sensitivity_at_1fp": lambda w: sensitivity_at_fp_w(froc, w, [1.0])[:, 0],
            "ap50": lambda w: average_precision_w(ap_tables[0], w, "coco101"),
            "coco_ap": lambda w: np.mean([average_precision_w(t, w, "coco101") for t in ap_tables], axis=0),
            "lesion_sensitivity": lambda w: lesion_sensitivity_w(froc, w, threshold),
            "fp_per_image": lambda w: fp_per_image_w(froc, w, threshold)}


def _estimate_all(fns: Mapping[str, Metric], n_images: int, weights: np.ndarray, alpha: float) -> dict[str, Any]:
    """Point estimates (flat) plus a ``ci`` dict, every metric on the same resamples."""
    est: dict[str, Estimate] = {k: bootstrap_weighted(fn, n_images, weights=weights, alpha=alpha)
                                for k, fn in fns.items()}
    out: dict[str, Any] = {k: e.value for k, e in est.items()}
    out["ci"] = {k: [e.ci_low, e.ci_high] for k, e in est.items()}
    return out


def _per_class(images: Sequence[EvalImage], labels: Sequence[int], names: Mapping[int, str], criterion: HitCriterion,
               threshold: float, weights: np.ndarray, alpha: float) -> dict[str, Any]:
    out = {}
    for c in labels:
        froc = match_table(images, criterion, label=c)
        ap = match_table(images, ap_criterion(0.5), label=c)
        fns = {"froc_fom": lambda w, t=froc: froc_fom_w(t, w),
               "sensitivity_at_1fp": lambda w, t=froc: sensitivity_at_fp_w(t, w, [1.0])[:, 0],
               "lesion_sensitivity": lambda w, t=froc: lesion_sensitivity_w(t, w, threshold),
               "ap50": lambda w, t=ap: average_precision_w(t, w, "coco101")}
        out[str(c)] = {"name": names.get(c), "lesions": len(froc.lesion_score),
                       **_estimate_all(fns, len(images), weights, alpha)}
    return out


def _per_size(table: LesionTable, sizes: np.ndarray, buckets: Mapping[str, tuple[float, float]], threshold: float,
              weights: np.ndarray, alpha: float) -> dict[str, Any]:
    """Sensitivity and FROC FOM per lesion size bucket (false positives of all images count in every bucket)."""
    out = {}
    for name, (lo, hi) in buckets.items():
        sub = table.select_lesions((sizes >= lo) & (sizes < hi))
        fns = {"froc_fom": lambda w, t=sub: froc_fom_w(t, w),
               "lesion_sensitivity": lambda w, t=sub: lesion_sensitivity_w(t, w, threshold)}
        out[name] = {"lesions": len(sub.lesion_score), **_estimate_all(fns, table.n_images, weights, alpha)}
    return out


def _counts(images: Sequence[EvalImage], truth: np.ndarray) -> dict[str, int]:
    patients = {im.patient_id for im in images if im.patient_id is not None}
    return {"images": len(images), "positive_images": int(truth.sum()), "negative_images": int((~truth).sum()),
            "lesions": sum(len(im.gt_boxes) for im in images),
            "predictions": sum(len(im.pred_boxes) for im in images), "patients": len(patients)}


def _resampling(images: Sequence[EvalImage], n_boot: int, seed: int) -> tuple[np.ndarray, str]:
    """Shared resample weights: by patient when every image has a patient id, else by image."""
    ids = [im.patient_id for im in images]
    groups = ids if all(p is not None for p in ids) else None
    if n_boot == 0:
        return np.zeros((0, len(images))), "none"
    return bootstrap_weights(len(images), n_boot, seed, groups), "image" if groups is None else "patient"


def _check_args(images: Sequence[EvalImage], score_threshold: float, n_boot: int, alpha: float, n_bins: int) -> None:
    if len(images) == 0:
        raise ValueError("images should not be empty.")
    if not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold should be finite, got {score_threshold}.")
    if n_boot < 0:
        raise ValueError(f"n_boot should be >= 0, got {n_boot}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha should be in (0, 1), got {alpha}.")
    if n_bins < 1:
        raise ValueError(f"n_bins should be >= 1, got {n_bins}.")


def evaluate_detections(images: Sequence[EvalImage], *, score_threshold: float, image_threshold: float | None = None,
                        n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                        criterion: HitCriterion = FROC_CRITERION, fp_levels: Sequence[float] = FROC_FP_LEVELS,
                        n_bins: int = 10, class_names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Every metric of an evaluation set with bootstrap confidence intervals (layout: module docstring).

    Args:
        images: the evaluation set, one :class:`EvalImage` per image.
        score_threshold: lesion operating threshold (a prediction with ``score >= score_threshold`` is reported).
        image_threshold: image-level operating threshold on ``image_prob``; ``None`` = ``score_threshold``.
        n_boot: bootstrap resamples (0 = no intervals); images are resampled, or patients when every image has a
            ``patient_id``.
        seed: resampling seed (results are deterministic per seed).
        alpha: 1 - coverage of the percentile intervals.
        criterion: lesion hit rule of FROC / AFROC / sensitivity (AP always uses IoU thresholds).
        fp_levels: FP/image levels averaged by the FROC figure of merit.
        n_bins: calibration bins.
        class_names: optional class id -> name for ``per_class``.

    Returns:
        The JSON-serialisable metrics dictionary.
    """
    _check_args(images, score_threshold, n_boot, alpha, n_bins)
    image_threshold = score_threshold if image_threshold is None else float(image_threshold)
    prob = np.array([im.image_prob for im in images], dtype=np.float64)
    truth = np.array([im.has_caries for im in images], dtype=bool)
    weights, unit = _resampling(images, n_boot, seed)
    froc = match_table(images, criterion)
    ap_tables = [match_table(images, ap_criterion(float(t))) for t in COCO_IOU_THRESHOLDS]
    fns = {**_lesion_metrics(froc, ap_tables, score_threshold, fp_levels),
           **_image_metrics(prob, truth, image_threshold, n_bins)}
    out = _estimate_all({k: fns[k] for k in HEADLINE_KEYS}, len(images), weights, alpha)
    tp, fp, tn, fn = (int(c[0]) for c in confusion_w(prob, truth, image_threshold, np.ones((1, len(images)))))
    out["counts"] = _counts(images, truth)
    out["operating_point"] = {"score_threshold": score_threshold, "image_threshold": image_threshold,
                              "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    labels = sorted({int(c) for im in images for c in im.gt_labels})
    out["per_class"] = _per_class(images, labels, class_names or {}, criterion, score_threshold, weights, alpha)
    out["per_size_px"] = _per_size(froc, froc.lesion_size_px, SIZE_BUCKETS_PX, score_threshold, weights, alpha)
    if np.isfinite(froc.lesion_size_mm).any():
        out["per_size_mm"] = _per_size(froc, froc.lesion_size_mm, SIZE_BUCKETS_MM, score_threshold, weights, alpha)
    out["settings"] = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "resampling_unit": unit,
                       "froc_criterion": {"iou_threshold": criterion.iou_threshold,
                                          "centre_inside": criterion.centre_inside},
                       "froc_fp_levels": list(fp_levels), "ap_interpolation": "coco101", "ece_bins": n_bins,
                       "size_buckets_px": SIZE_BUCKETS_PX, "size_buckets_mm": SIZE_BUCKETS_MM}
    return to_jsonable(out)
