"""Curve data for plots and reports (ROC with bootstrap band, FROC, AFROC, PR, reliability)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dentalmim.evaluation.metrics_bootstrap import bootstrap_weights
from dentalmim.evaluation.metrics_image import (ReliabilityCurve, auroc, expected_calibration_error,
                                                operating_point_metrics, reliability_curve, roc_curve)
from dentalmim.evaluation.metrics_lesion import (FROC_FP_LEVELS, afroc_curve, afroc_fom_w, average_precision,
                                                 froc_fom_w, froc_points_w, precision_recall_curve,
                                                 sensitivity_at_fp_w)
from dentalmim.evaluation.metrics_match import FROC_CRITERION, EvalImage, HitCriterion, match_table

__all__ = ["CurveSet", "compute_curves", "roc_band_w"]


@dataclass(frozen=True)
class CurveSet:
    """Everything the plots need; arrays are 1-D and aligned per curve.

    Attributes:
        roc: ``(fpr, tpr)`` image-level ROC.
        roc_band: ``(fpr_grid, tpr_low, tpr_high)`` pointwise bootstrap band, or ``None``.
        roc_point: ``(fpr, tpr)`` at the image threshold.
        auroc: area under ``roc``.
        froc: ``(fp_per_image, sensitivity)``.
        froc_fom_points: ``(fp_levels, sensitivity at each level)``.
        froc_point: ``(fp_per_image, sensitivity)`` at the score threshold.
        froc_fom: FROC figure of merit.
        afroc: ``(fpf, llf)`` including the (1, 1) extension.
        afroc_fom: AFROC figure of merit.
        pr: ``(recall, precision)`` at IoU 0.5.
        ap50: AP at IoU 0.5, COCO 101-point interpolation (as ``metrics["ap50"]``).
        reliability: reliability-diagram data.
        ece: expected calibration error over the same bins.
    """

    roc: tuple[np.ndarray, np.ndarray]
    roc_band: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    roc_point: tuple[float, float]
    auroc: float
    froc: tuple[np.ndarray, np.ndarray]
    froc_fom_points: tuple[np.ndarray, np.ndarray]
    froc_point: tuple[float, float]
    froc_fom: float
    afroc: tuple[np.ndarray, np.ndarray]
    afroc_fom: float
    pr: tuple[np.ndarray, np.ndarray]
    ap50: float
    reliability: ReliabilityCurve
    ece: float


def roc_band_w(prob: np.ndarray, truth: np.ndarray, weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Weighted step ROC evaluated on an FPR grid (vertical averaging).

    Args:
        prob: (n,) scores.
        truth: (n,) bool labels.
        weights: (B, n) count weights.
        grid: (G,) false-positive rates.

    Returns:
        (B, G) highest TPR with FPR <= grid value; nan rows where a resample lacks a class.
    """
    order = np.argsort(-prob, kind="stable")
    p, t, w = prob[order], truth[order], weights[:, order]
    ends = np.flatnonzero(np.append(p[1:] != p[:-1], True))
    zero = np.zeros((len(w), 1))
    tp = np.concatenate([zero, np.cumsum(w * t, axis=1)[:, ends]], axis=1)
    fp = np.concatenate([zero, np.cumsum(w * ~t, axis=1)[:, ends]], axis=1)
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tp / n_pos, fp / n_neg
    last = np.stack([np.sum(fpr <= g + 1e-9, axis=1) - 1 for g in grid], axis=1)
    out = np.take_along_axis(tpr, np.maximum(last, 0), axis=1)
    out[((n_pos == 0) | (n_neg == 0))[:, 0]] = np.nan
    return out


def _roc_band(prob: np.ndarray, truth: np.ndarray, n_boot: int, seed: int,
              alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if n_boot == 0 or truth.all() or not truth.any():
        return None
    grid = np.linspace(0.0, 1.0, 51)
    weights = bootstrap_weights(len(prob), n_boot, seed)
    vals = np.concatenate([roc_band_w(prob, truth, weights[s:s + 64], grid) for s in range(0, n_boot, 64)])
    vals = vals[np.isfinite(vals).all(axis=1)]
    if len(vals) == 0:
        return None
    low, high = np.quantile(vals, [alpha / 2, 1 - alpha / 2], axis=0)
    return grid, low, high


def compute_curves(images: Sequence[EvalImage], *, score_threshold: float, image_threshold: float | None = None,
                   criterion: HitCriterion = FROC_CRITERION, n_bins: int = 10, n_boot: int = 200, seed: int = 0,
                   alpha: float = 0.05) -> CurveSet:
    """Curve data of an evaluation set for :mod:`dentalmim.evaluation.plots` and the report.

    Args:
        images: the evaluation set.
        score_threshold: lesion operating threshold (marked on the FROC curve).
        image_threshold: image-level threshold (marked on the ROC curve); ``None`` = ``score_threshold``.
        criterion: lesion hit rule of FROC / AFROC.
        n_bins: reliability bins.
        n_boot: resamples of the ROC band (0 = no band).
        seed: resampling seed.
        alpha: 1 - coverage of the band.

    Returns:
        The :class:`CurveSet`.
    """
    image_threshold = score_threshold if image_threshold is None else image_threshold
    prob = np.array([im.image_prob for im in images], dtype=np.float64)
    truth = np.array([im.has_caries for im in images], dtype=bool)
    fpr, tpr, _ = roc_curve(prob, truth)
    op = operating_point_metrics(prob, truth, image_threshold)
    table = match_table(images, criterion)
    ones = np.ones((1, len(images)))
    thr, fppi, sens = froc_points_w(table, ones)
    fppi, sens = np.concatenate([[0.0], fppi[0]]), np.concatenate([[0.0], sens[0]])
    at = int(np.sum(thr >= score_threshold))  # index of the last operating point kept by score_threshold
    levels = np.array(FROC_FP_LEVELS)
    fpf, llf, _ = afroc_curve(images, criterion=criterion)
    precision, recall, _ = precision_recall_curve(images, iou_threshold=0.5)
    return CurveSet(
        roc=(fpr, tpr), roc_band=_roc_band(prob, truth, n_boot, seed, alpha),
        roc_point=(1.0 - op.specificity, op.sensitivity), auroc=auroc(prob, truth),
        froc=(fppi, sens), froc_point=(float(fppi[at]), float(sens[at])),
        froc_fom_points=(levels, sensitivity_at_fp_w(table, ones, levels)[0]),
        froc_fom=float(froc_fom_w(table, ones)[0]), afroc=(fpf, llf), afroc_fom=float(afroc_fom_w(table, ones)[0]),
        pr=(recall, precision), ap50=average_precision(images, iou_threshold=0.5, interpolation="coco101"),
        reliability=reliability_curve(prob, truth, n_bins), ece=expected_calibration_error(prob, truth, n_bins))
