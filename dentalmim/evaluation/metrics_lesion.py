"""Lesion-level metrics: FROC, AFROC (JAFROC figure of merit) and detection AP.

All of them are re-aggregations of a :class:`~dentalmim.evaluation.metrics_match.LesionTable`. Each has a
weighted core (suffix ``_w``, count weights ``(B, n_images) -> (B,)``) for vectorised bootstrap, and a plain form
taking the list of :class:`EvalImage`. Operating points are defined by score thresholds: at threshold ``t``
every prediction with ``score >= t`` is kept (tied scores enter together).

Definitions:
    * FROC: lesion sensitivity (fraction of lesions matched by a kept prediction) against mean false positives
      per image.
    * Sensitivity at ``f`` FP/image: the highest sensitivity among operating points with at most ``f`` FP/image
      (no interpolation; 0 when none).
    * FROC figure of merit: mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP/image (the CAD score used by
      ANODE09 / LUNA16).
    * AFROC FOM (JAFROC): the Wilcoxon statistic between lesion ratings (the score of the lesion's matched
      prediction, ``-inf`` if unmarked) and normal-image ratings (the highest prediction score on a caries-free
      image, ``-inf`` if unmarked), ties 0.5; equal to the trapezoid area under the AFROC curve extended to (1, 1).
    * AP: area under the precision-recall curve with the monotone precision envelope, either over all recall
      points ("all", PASCAL VOC 2010+) or sampled at 101 recall levels ("coco101", pycocotools).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from dentalmim.evaluation.metrics_image import weighted_wilcoxon
from dentalmim.evaluation.metrics_match import (AP_CRITERION, FROC_CRITERION, EvalImage, HitCriterion,
                                                LesionTable, match_table)

__all__ = ["COCO_IOU_THRESHOLDS", "FROC_FP_LEVELS", "afroc_curve", "afroc_fom", "ap_criterion", "average_precision",
           "coco_ap", "froc_curve", "froc_fom", "precision_recall_curve", "sensitivity_at_fp"]

#: FP/image levels averaged by the FROC figure of merit.
FROC_FP_LEVELS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: IoU thresholds of COCO AP (0.50:0.05:0.95).
COCO_IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
Interpolation = Literal["all", "coco101"]


def threshold_counts_w(table: LesionTable, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted true/false positive counts at every distinct score threshold.

    Args:
        table: matching result.
        weights: (B, n_images) count weights.

    Returns:
        ``(thresholds (K,) descending, tp (B, K), fp (B, K))``: matched lesions and false positives with
        ``score >= threshold``.
    """
    found = np.isfinite(table.lesion_score)
    scores = np.concatenate([table.lesion_score[found], table.fp_score])
    is_tp = np.concatenate([np.ones(found.sum(), bool), np.zeros(len(table.fp_score), bool)])
    image = np.concatenate([table.lesion_image[found], table.fp_image])
    order = np.argsort(-scores, kind="stable")
    s, is_tp, w = scores[order], is_tp[order], weights[:, image[order]]
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.zeros(0, np.int64)
    tp = np.cumsum(w * is_tp, axis=1)[:, ends]
    fp = np.cumsum(w * ~is_tp, axis=1)[:, ends]
    return s[ends], tp, fp


def _lesion_totals(table: LesionTable, weights: np.ndarray) -> np.ndarray:
    return weights @ np.bincount(table.lesion_image, minlength=table.n_images).astype(np.float64)


def froc_points_w(table: LesionTable, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted FROC operating points: ``(thresholds (K,), fp_per_image (B, K), sensitivity (B, K))``."""
    thr, tp, fp = threshold_counts_w(table, weights)
    n_les = _lesion_totals(table, weights)[:, None]
    sens = np.divide(tp, n_les, out=np.full(tp.shape, np.nan), where=n_les > 0)
    return thr, fp / weights.sum(axis=1, keepdims=True), sens


def sensitivity_at_fp_w(table: LesionTable, weights: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Weighted sensitivity at each FP/image level: (B, n_levels); nan without lesions."""
    if any(f < 0 for f in levels):
        raise ValueError(f"FP/image levels should be >= 0, got {list(levels)}.")
    _, fppi, sens = froc_points_w(table, weights)
    zero = np.zeros((len(weights), 1))
    fppi, sens = np.concatenate([zero, fppi], axis=1), np.concatenate([zero, sens], axis=1)  # the +inf point
    rows = np.arange(len(weights))
    out = np.empty((len(weights), len(levels)))
    for j, f in enumerate(levels):
        last = np.sum(fppi <= f + 1e-9, axis=1) - 1  # fppi is non-decreasing along K: a prefix qualifies
        out[:, j] = sens[rows, last]
    out[_lesion_totals(table, weights) == 0] = np.nan
    return out


def froc_fom_w(table: LesionTable, weights: np.ndarray,
               levels: Sequence[float] = FROC_FP_LEVELS) -> np.ndarray:
    """Weighted FROC figure of merit: (B,)."""
    return sensitivity_at_fp_w(table, weights, levels).mean(axis=1)


def lesion_sensitivity_w(table: LesionTable, weights: np.ndarray, threshold: float) -> np.ndarray:
    """Weighted fraction of lesions matched by a prediction with ``score >= threshold``: (B,)."""
    found = weights[:, table.lesion_image] @ (table.lesion_score >= threshold).astype(np.float64)
    n_les = _lesion_totals(table, weights)
    return np.divide(found, n_les, out=np.full(len(weights), np.nan), where=n_les > 0)


def fp_per_image_w(table: LesionTable, weights: np.ndarray, threshold: float) -> np.ndarray:
    """Weighted mean number of false positives with ``score >= threshold`` per image: (B,)."""
    fps = weights[:, table.fp_image] @ (table.fp_score >= threshold).astype(np.float64)
    return fps / weights.sum(axis=1)


def afroc_fom_w(table: LesionTable, weights: np.ndarray) -> np.ndarray:
    """Weighted AFROC figure of merit (JAFROC Wilcoxon form): (B,); nan without lesions or normal images."""
    normal = np.flatnonzero(table.normal)
    rating = np.full(table.n_images, -np.inf)
    np.maximum.at(rating, table.fp_image, table.fp_score)
    return weighted_wilcoxon(table.lesion_score, weights[:, table.lesion_image], rating[normal],
                             weights[:, normal])


def average_precision_w(table: LesionTable, weights: np.ndarray,
                        interpolation: Interpolation = "all") -> np.ndarray:
    """Weighted average precision: (B,); nan without lesions, 0 without predictions."""
    if interpolation not in ("all", "coco101"):
        raise ValueError(f"interpolation should be 'all' or 'coco101', got {interpolation!r}.")
    _, tp, fp = threshold_counts_w(table, weights)
    n_les = _lesion_totals(table, weights)
    recall = np.divide(tp, n_les[:, None], out=np.zeros(tp.shape), where=n_les[:, None] > 0)
    precision = np.divide(tp, tp + fp, out=np.zeros(tp.shape), where=(tp + fp) > 0)
    env = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    if interpolation == "all":
        step = np.diff(np.concatenate([np.zeros((len(tp), 1)), recall], axis=1), axis=1)
        ap = np.sum(step * env, axis=1)
    else:
        ap = _coco101(recall, env)
    return np.where(n_les > 0, ap, np.nan)


def _coco101(recall: np.ndarray, env: np.ndarray) -> np.ndarray:
    """Mean enveloped precision at recall 0, 0.01, ..., 1 (0 beyond the highest recall), row by row."""
    levels = np.linspace(0.0, 1.0, 101)
    b, k = recall.shape
    if k == 0:
        return np.zeros(b)
    offset = 2.0 * np.arange(b)[:, None]  # recall is in [0, 1] and non-decreasing per row
    idx = np.searchsorted((recall + offset).ravel(), (levels[None, :] + offset).ravel(), side="left")
    idx = idx.reshape(b, -1) - k * np.arange(b)[:, None]
    valid = idx < k
    vals = np.where(valid, env[np.arange(b)[:, None], np.minimum(idx, k - 1)], 0.0)
    return vals.mean(axis=1)


def _ones(images: Sequence[EvalImage]) -> np.ndarray:
    if len(images) == 0:
        raise ValueError("images should not be empty.")
    return np.ones((1, len(images)))


def froc_curve(images: Sequence[EvalImage], *, criterion: HitCriterion = FROC_CRITERION,
               label: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FROC curve, one point per distinct prediction score.

    Args:
        images: the evaluation set.
        criterion: lesion hit rule (default: centre inside or IoU >= 0.3).
        label: class-aware evaluation of one class (``None`` = all classes pooled).

    Returns:
        ``(fp_per_image (K+1,), sensitivity (K+1,), thresholds (K+1,))``, starting at ``(0, 0, +inf)``.
    """
    table = match_table(images, criterion, label)
    thr, fppi, sens = froc_points_w(table, _ones(images))
    return (np.concatenate([[0.0], fppi[0]]), np.concatenate([[0.0], sens[0]]), np.concatenate([[np.inf], thr]))


def sensitivity_at_fp(images: Sequence[EvalImage], fp: float = 1.0, *, criterion: HitCriterion = FROC_CRITERION,
                      label: int | None = None) -> float:
    """Highest lesion sensitivity reachable with at most ``fp`` false positives per image (nan without lesions)."""
    return float(sensitivity_at_fp_w(match_table(images, criterion, label), _ones(images), [fp])[0, 0])


def froc_fom(images: Sequence[EvalImage], *, fp_levels: Sequence[float] = FROC_FP_LEVELS,
             criterion: HitCriterion = FROC_CRITERION, label: int | None = None) -> float:
    """FROC figure of merit: mean sensitivity at ``fp_levels`` FP/image (nan without lesions)."""
    return float(froc_fom_w(match_table(images, criterion, label), _ones(images), fp_levels)[0])


def afroc_curve(images: Sequence[EvalImage], *, criterion: HitCriterion = FROC_CRITERION,
                label: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AFROC curve: lesion localisation fraction against false-positive fraction of normal images.

    Args:
        images: the evaluation set (needs lesions and caries-free images).
        criterion: lesion hit rule.
        label: class-aware evaluation of one class.

    Returns:
        ``(fpf, llf, thresholds)``, from ``(0, 0)`` at ``+inf`` through every distinct finite rating to the
        extension point ``(1, 1)`` at ``-inf``. Its trapezoid area equals :func:`afroc_fom`.
    """
    table = match_table(images, criterion, label)
    rating = np.full(table.n_images, -np.inf)
    np.maximum.at(rating, table.fp_image, table.fp_score)
    normal_r, lesion_r = rating[table.normal], table.lesion_score
    finite = np.concatenate([normal_r, lesion_r])
    thr = np.concatenate([[np.inf], np.unique(finite[np.isfinite(finite)])[::-1], [-np.inf]])
    fpf = np.array([np.mean(normal_r >= t) if len(normal_r) else np.nan for t in thr])
    llf = np.array([np.mean(lesion_r >= t) if len(lesion_r) else np.nan for t in thr])
    return fpf, llf, thr


def afroc_fom(images: Sequence[EvalImage], *, criterion: HitCriterion = FROC_CRITERION,
              label: int | None = None) -> float:
    """AFROC figure of merit (JAFROC, Wilcoxon form; nan without lesions or caries-free images)."""
    return float(afroc_fom_w(match_table(images, criterion, label), _ones(images))[0])


def ap_criterion(iou_threshold: float = 0.5) -> HitCriterion:
    """The AP hit rule at an IoU threshold (IoU only, no centre rule)."""
    return AP_CRITERION if iou_threshold == 0.5 else HitCriterion(iou_threshold=iou_threshold, centre_inside=False)


def precision_recall_curve(images: Sequence[EvalImage], *, iou_threshold: float = 0.5,
                           label: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection precision-recall curve at an IoU threshold.

    Returns:
        ``(precision (K,), recall (K,), thresholds (K,))``, thresholds descending (raw precision, no envelope).
    """
    table = match_table(images, ap_criterion(iou_threshold), label)
    thr, tp, fp = threshold_counts_w(table, _ones(images))
    n_les = len(table.lesion_score)
    recall = tp[0] / n_les if n_les else np.full(len(thr), np.nan)
    return tp[0] / np.maximum(tp[0] + fp[0], 1e-12), recall, thr


def average_precision(images: Sequence[EvalImage], *, iou_threshold: float = 0.5,
                      interpolation: Interpolation = "all", label: int | None = None) -> float:
    """Detection AP at one IoU threshold (greedy matching by score, IoU >= threshold).

    Args:
        images: the evaluation set.
        iou_threshold: IoU needed for a true positive.
        interpolation: "all" (area under the precision envelope) or "coco101" (101 recall levels).
        label: class-aware AP of one class (``None`` = class-agnostic).

    Returns:
        AP in [0, 1]; nan without lesions.
    """
    table = match_table(images, ap_criterion(iou_threshold), label)
    return float(average_precision_w(table, _ones(images), interpolation)[0])


def coco_ap(images: Sequence[EvalImage], *, label: int | None = None,
            interpolation: Interpolation = "coco101") -> float:
    """COCO AP: mean AP over IoU thresholds 0.50:0.05:0.95 (101-point interpolation by default)."""
    return float(np.mean([average_precision(images, iou_threshold=float(t), interpolation=interpolation,
                                            label=label) for t in COCO_IOU_THRESHOLDS]))
