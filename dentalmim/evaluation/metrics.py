"""Detection and classification metrics of a caries detector, with bootstrap confidence intervals.

This module is the public entry point; the implementation is split by concern:

* ``metrics_match``: inputs (:class:`EvalImage`), the lesion hit rule (:class:`HitCriterion`), greedy matching.
* ``metrics_lesion``: FROC, FROC figure of merit, AFROC (JAFROC FOM), detection AP and COCO AP.
* ``metrics_image``: ROC / AUROC, operating point (sensitivity, specificity, PPV, NPV), threshold choice,
  calibration (ECE, reliability curve).
* ``metrics_bootstrap``: percentile bootstrap over images (or patients), vectorised through count weights.
* ``metrics_summary``: :func:`evaluate_detections`, the ``metrics.json`` dictionary with breakdowns.
* ``metrics_curves``: :func:`compute_curves`, the data behind the report's plots.

Typical use::

    images = [EvalImage(gt_boxes=..., pred_boxes=..., pred_scores=..., image_prob=...), ...]
    metrics = evaluate_detections(images, score_threshold=0.5, n_boot=1000, seed=0)
    metrics["froc_fom"], metrics["ci"]["froc_fom"]
"""

from __future__ import annotations

from dentalmim.evaluation.metrics_bootstrap import (Estimate, WeightedMetric, bootstrap_ci, bootstrap_weighted,
                                                    bootstrap_weights, percentile_interval)
from dentalmim.evaluation.metrics_curves import CurveSet, compute_curves
from dentalmim.evaluation.metrics_image import (OperatingPoint, ReliabilityCurve, auroc,
                                                expected_calibration_error, operating_point_metrics,
                                                reliability_curve, roc_curve, threshold_for_sensitivity,
                                                youden_threshold)
from dentalmim.evaluation.metrics_lesion import (COCO_IOU_THRESHOLDS, FROC_FP_LEVELS, afroc_curve, afroc_fom,
                                                 ap_criterion, average_precision, coco_ap, froc_curve, froc_fom,
                                                 precision_recall_curve, sensitivity_at_fp)
from dentalmim.evaluation.metrics_match import (AP_CRITERION, FROC_CRITERION, EvalImage, HitCriterion, LesionTable,
                                                box_iou, match_image, match_table)
from dentalmim.evaluation.metrics_summary import (HEADLINE_KEYS, SIZE_BUCKETS_MM, SIZE_BUCKETS_PX,
                                                  evaluate_detections, to_jsonable)

__all__ = ["AP_CRITERION", "COCO_IOU_THRESHOLDS", "FROC_CRITERION", "FROC_FP_LEVELS", "HEADLINE_KEYS",
           "SIZE_BUCKETS_MM", "SIZE_BUCKETS_PX", "CurveSet", "Estimate", "EvalImage", "HitCriterion", "LesionTable",
           "OperatingPoint", "ReliabilityCurve", "WeightedMetric", "afroc_curve", "afroc_fom", "ap_criterion",
           "auroc", "average_precision", "bootstrap_ci", "bootstrap_weighted", "bootstrap_weights", "box_iou",
           "coco_ap", "compute_curves", "evaluate_detections", "expected_calibration_error", "froc_curve",
           "froc_fom", "match_image", "match_table", "operating_point_metrics", "percentile_interval",
           "precision_recall_curve", "reliability_curve", "roc_curve", "sensitivity_at_fp",
           "threshold_for_sensitivity", "to_jsonable", "youden_threshold"]
