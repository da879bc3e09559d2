"""Metrics against hand-computed cases and pycocotools; bootstrap determinism and the metrics dictionary."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from dentalmim.evaluation.metrics import (AP_CRITERION, FROC_CRITERION, EvalImage, HitCriterion, afroc_curve,
                                          afroc_fom, auroc, average_precision, bootstrap_ci, bootstrap_weighted,
                                          bootstrap_weights, coco_ap, compute_curves, evaluate_detections,
                                          expected_calibration_error, froc_curve, froc_fom, match_image, match_table,
                                          operating_point_metrics, precision_recall_curve, reliability_curve,
                                          roc_curve, sensitivity_at_fp, threshold_for_sensitivity, youden_threshold)
from dentalmim.evaluation.metrics_lesion import froc_fom_w

G1, G2 = [0, 0, 10, 10], [20, 20, 30, 30]
ON_G1, ON_G2, AWAY = [1, 1, 9, 9], [21, 21, 29, 29], [50, 50, 60, 60]  # IoU(ON_G1, G1) = 0.64


def _im(gt: list, pred: list, scores: list, **kw) -> EvalImage:
    return EvalImage(gt_boxes=np.array(gt, float).reshape(-1, 4), pred_boxes=np.array(pred, float).reshape(-1, 4),
                     pred_scores=np.array(scores, float), **kw)


def _hand_set() -> list[EvalImage]:
    """A: two lesions found at 0.9 and 0.3, one FP at 0.8; B: normal, FPs 0.6, 0.2; C: unmarked lesion;
    D: normal, no marks."""
    return [_im([G1, G2], [ON_G1, AWAY, ON_G2], [0.9, 0.8, 0.3]),
            _im([], [[0, 0, 5, 5], [10, 10, 20, 20]], [0.6, 0.2]),
            _im([G1], [], []),
            _im([], [], [])]


def _random_set(seed: int, n: int = 30, n_labels: int = 1) -> list[EvalImage]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 150, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 60, (k, 2))], axis=1)
        gt_labels = rng.integers(1, n_labels + 1, k)
        found = [j for j in range(k) if rng.random() < 0.7]
        pred = [gt[j] + rng.normal(0, 2.5, 4) for j in found]
        pxy = rng.uniform(0, 150, (int(rng.integers(0, 5)), 2))
        pred += list(np.concatenate([pxy, pxy + rng.uniform(6, 60, (len(pxy), 2))], axis=1))
        pred = np.array(pred).reshape(-1, 4)
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
        pred_labels = np.concatenate([gt_labels[found], rng.integers(1, n_labels + 1, len(pxy))])
        scores = np.concatenate([rng.uniform(0.3, 1, len(found)), rng.uniform(0, 0.8, len(pxy))])
        images.append(EvalImage(gt_boxes=gt, pred_boxes=pred, pred_scores=scores,
                                gt_labels=gt_labels, pred_labels=pred_labels,
                                image_prob=float(np.clip(0.3 + 0.4 * (k > 0) + rng.normal(0, 0.2), 0, 1)),
                                image_id=i, patient_id=f"p{i // 2}"))
    return images


# ----------------------------------------------------------------------------------------------------------- matching
def test_hit_rule_centre_inside_or_iou_and_duplicates_are_false_positives() -> None:
    small_centred = np.array([[4, 4, 6, 6]], float)  # IoU 0.04 with G1, centre inside
    gt = np.array([G1], float)
    assert match_image(small_centred, np.array([0.5]), gt, FROC_CRITERION).tolist() == [0]
    assert match_image(small_centred, np.array([0.5]), gt, AP_CRITERION).tolist() == [-1]
    iou_only = HitCriterion(iou_threshold=0.3, centre_inside=False)
    assert match_image(small_centred, np.array([0.5]), gt, iou_only).tolist() == [-1]
    two = np.array([ON_G1, G1], float)  # the higher score wins; the second mark on the same lesion is an FP
    assert match_image(two, np.array([0.2, 0.7]), gt, AP_CRITERION).tolist() == [-1, 0]


def test_greedy_match_takes_highest_iou_among_unmatched() -> None:
    gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], float)
    pred = np.array([[2, 0, 12, 10], [0, 0, 10, 10]], float)
    assert match_image(pred, np.array([0.9, 0.8]), gt, AP_CRITERION).tolist() == [1, 0]


def test_eval_image_validation_and_defaults() -> None:
    im = _im([G1], [ON_G1, AWAY], [0.3, 0.7])
    assert im.image_prob == pytest.approx(0.7) and im.has_caries and im.gt_labels.tolist() == [1]
    with pytest.raises(ValueError, match="gt_boxes should have shape"):
        EvalImage(gt_boxes=np.zeros((2, 3)), pred_boxes=np.zeros((0, 4)), pred_scores=[])
    with pytest.raises(ValueError, match="x2 >= x1"):
        _im([[5, 0, 1, 1]], [], [])
    with pytest.raises(ValueError, match="pred_scores should have shape"):
        _im([], [ON_G1], [0.1, 0.2])
    with pytest.raises(ValueError, match="image_prob should be in"):
        _im([], [], [], image_prob=1.5)
    with pytest.raises(ValueError, match="iou_threshold should be in"):
        HitCriterion(iou_threshold=0.0)


# --------------------------------------------------------------------------------------------------------- FROC/AFROC
def test_froc_curve_hand_computed() -> None:
    fppi, sens, thr = froc_curve(_hand_set())
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.6, 0.3, 0.2])
    np.testing.assert_allclose(fppi, [0, 0, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(sens, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])


def test_froc_fom_and_sensitivity_at_fp_hand_computed() -> None:
    images = _hand_set()
    assert sensitivity_at_fp(images, 0.125) == pytest.approx(1 / 3)
    assert sensitivity_at_fp(images, 0.25) == pytest.approx(1 / 3)
    assert sensitivity_at_fp(images, 0.5) == pytest.approx(2 / 3)
    assert sensitivity_at_fp(images, 1.0) == pytest.approx(2 / 3)
    # 1/8, 1/4 -> 1/3; 1/2 .. 8 -> 2/3: (2/3 + 5 * 2/3) / 7 = 4/7
    assert froc_fom(images) == pytest.approx(4 / 7)
    no_pred = [_im([G1], [], []), _im([], [], [])]
    assert froc_fom(no_pred) == 0.0 and np.isnan(froc_fom([_im([], [AWAY], [0.5])]))


def test_afroc_fom_hand_computed_and_equals_trapezoid() -> None:
    images = _hand_set()
    # lesions 0.9, 0.3, -inf vs normal ratings 0.6, -inf: 1 + 1 + 0 + 1 + 0 + 0.5 = 3.5 of 6 pairs
    assert afroc_fom(images) == pytest.approx(3.5 / 6)
    fpf, llf, thr = afroc_curve(images)
    assert (fpf[0], llf[0], fpf[-1], llf[-1]) == (0, 0, 1, 1) and thr[-1] == -np.inf
    assert np.trapezoid(llf, fpf) == pytest.approx(afroc_fom(images))
    rand = _random_set(5, n=25)
    fpf, llf, _ = afroc_curve(rand)
    assert np.trapezoid(llf, fpf) == pytest.approx(afroc_fom(rand))


# ---------------------------------------------------------------------------------------------------------------- AP
def test_average_precision_hand_computed() -> None:
    images = [_im([G1, G2], [ON_G1, AWAY, ON_G2], [0.9, 0.8, 0.3])]
    precision, recall, _ = precision_recall_curve(images)
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1])
    assert average_precision(images) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(images, interpolation="coco101") == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision(images, iou_threshold=0.7) == 0.0  # IoU 0.64 < 0.7: no true positive
    with pytest.raises(ValueError, match="interpolation should be"):
        average_precision(images, interpolation="voc11")


def _pycocotools_eval(images: list[EvalImage], n_labels: int):
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    gt = {"images": [{"id": i, "width": 256, "height": 256} for i in range(len(images))],
          "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_labels + 1)], "annotations": []}
    dets = []
    for i, im in enumerate(images):
        for b, c in zip(im.gt_boxes, im.gt_labels, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(c),
                                      "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(im.pred_boxes, im.pred_scores, im.pred_labels, strict=True):
            dets.append({"image_id": i, "category_id": int(c), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": float(s)})
    coco = coco_mod.COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = cocoeval_mod.COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def test_ap_matches_pycocotools_single_class() -> None:
    images = _random_set(0, n=30)
    ev = _pycocotools_eval(images, 1)
    assert average_precision(images, interpolation="coco101") == pytest.approx(ev.stats[1], abs=1e-9)
    assert coco_ap(images) == pytest.approx(ev.stats[0], abs=1e-9)


def test_ap_per_class_matches_pycocotools() -> None:
    images = _random_set(1, n=30, n_labels=2)
    ev = _pycocotools_eval(images, 2)
    for k, label in enumerate((1, 2)):
        ref = float(np.mean(ev.eval["precision"][0, :, k, 0, 2]))  # IoU 0.5, all areas, maxDets 100
        assert average_precision(images, interpolation="coco101", label=label) == pytest.approx(ref, abs=1e-9)


# ------------------------------------------------------------------------------------------------------- image level
PROB, TRUTH = np.array([0.1, 0.4, 0.35, 0.8, 0.4]), np.array([0, 0, 1, 1, 1])


def test_auroc_mann_whitney_with_ties_and_roc_area() -> None:
    assert auroc(PROB, TRUTH) == pytest.approx(4.5 / 6)
    fpr, tpr, thr = roc_curve(PROB, TRUTH)
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(PROB, TRUTH))
    assert np.isnan(auroc([0.2, 0.3], [1, 1]))
    with pytest.raises(ValueError, match="truth should be binary"):
        auroc([0.2, 0.3], [1, 2])


def test_operating_point_and_threshold_helpers() -> None:
    op = operating_point_metrics(PROB, TRUTH, 0.4)
    assert (op.tp, op.fp, op.tn, op.fn) == (2, 1, 1, 1)
    assert (op.sensitivity, op.specificity, op.ppv, op.npv) == pytest.approx((2 / 3, 0.5, 2 / 3, 0.5))
    none_called = operating_point_metrics(PROB, np.zeros(5), 0.9)
    assert np.isnan(none_called.sensitivity) and np.isnan(none_called.ppv) and none_called.specificity == 1.0
    assert threshold_for_sensitivity(PROB, TRUTH, 2 / 3) == 0.4
    assert threshold_for_sensitivity(PROB, TRUTH, 1.0) == 0.35
    assert threshold_for_sensitivity(PROB, TRUTH, 0.5) == 0.4
    assert youden_threshold(PROB, TRUTH) == 0.35  # J: 1/3 at 0.8, 1/6 at 0.4, 1/2 at 0.35


def test_expected_calibration_error_hand_computed() -> None:
    prob, truth = np.array([0.05, 0.15, 0.95, 0.85, 0.9]), np.array([0, 1, 1, 1, 0])
    assert expected_calibration_error(prob, truth) == pytest.approx((0.05 + 0.85 + 0.15 + 2 * 0.425) / 5)
    curve = reliability_curve(prob, truth)
    assert curve.counts.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 2]
    assert curve.mean_prob[9] == pytest.approx(0.925) and curve.frac_pos[9] == 0.5 and np.isnan(curve.frac_pos[4])
    assert expected_calibration_error([1.0, 0.0], [1, 0], n_bins=3) == 0.0
    with pytest.raises(ValueError, match="n_bins should be >= 1"):
        expected_calibration_error(prob, truth, n_bins=0)


# --------------------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_weights_deterministic_and_patient_grouped() -> None:
    w = bootstrap_weights(6, 50, seed=3)
    assert np.array_equal(w, bootstrap_weights(6, 50, seed=3)) and not np.array_equal(w, bootstrap_weights(6, 50, 4))
    assert np.all(w.sum(axis=1) == 6)
    g = bootstrap_weights(6, 50, seed=3, groups=["a", "a", "b", "b", "b", "c"])
    assert np.array_equal(g[:, 0], g[:, 1]) and np.array_equal(g[:, 2], g[:, 4])
    assert np.all(g[:, [0, 2, 5]].sum(axis=1) == 3)  # three patients drawn per resample


def test_bootstrap_generic_equals_vectorised_for_froc() -> None:
    images = _random_set(2, n=20)
    table = match_table(images, FROC_CRITERION)
    generic = bootstrap_ci(froc_fom, images, n_boot=40, seed=7)
    fast = bootstrap_weighted(lambda w: froc_fom_w(table, w), len(images), n_boot=40, seed=7)
    assert generic.value == pytest.approx(fast.value)
    assert (generic.ci_low, generic.ci_high) == pytest.approx((fast.ci_low, fast.ci_high))
    assert fast.ci_low <= fast.value <= fast.ci_high and fast.ci_low < fast.ci_high
    none = bootstrap_ci(froc_fom, images, n_boot=0)
    assert np.isnan(none.ci_low) and none.value == pytest.approx(fast.value)
    with pytest.raises(ValueError, match="alpha should be in"):
        bootstrap_ci(froc_fom, images, alpha=1.5)


# ------------------------------------------------------------------------------------------------ metrics dictionary
def test_evaluate_detections_layout_values_and_determinism() -> None:
    images = _random_set(3, n=40)
    m = evaluate_detections(images, score_threshold=0.5, n_boot=100, seed=1)
    json.dumps(m, allow_nan=False)
    assert m["froc_fom"] == pytest.approx(froc_fom(images))
    assert m["sensitivity_at_1fp"] == pytest.approx(sensitivity_at_fp(images, 1.0))
    assert m["ap50"] == pytest.approx(average_precision(images, interpolation="coco101"))
    assert m["afroc_fom"] == pytest.approx(afroc_fom(images))
    prob = np.array([im.image_prob for im in images])
    truth = np.array([im.has_caries for im in images])
    assert m["auroc"] == pytest.approx(auroc(prob, truth))
    assert m["sensitivity"] == pytest.approx(operating_point_metrics(prob, truth, 0.5).sensitivity)
    for key in ("froc_fom", "afroc_fom", "sensitivity_at_1fp", "ap50", "coco_ap", "auroc", "sensitivity",
                "specificity", "ppv", "npv", "ece"):
        low, high = m["ci"][key]
        assert low <= high and isinstance(m[key], float)
    assert m["counts"]["images"] == 40 and m["counts"]["patients"] == 20
    assert m["settings"]["resampling_unit"] == "patient"
    assert m == evaluate_detections(images, score_threshold=0.5, n_boot=100, seed=1)
    assert m["ci"] != evaluate_detections(images, score_threshold=0.5, n_boot=100, seed=2)["ci"]


def test_evaluate_detections_breakdowns() -> None:
    sizes = [8, 20, 40, 100]
    images = [_im([[0, 0, s, s / 2]], [[0, 0, s, s / 2]], [0.9 if s < 50 else 0.2], pixel_spacing_mm=(0.05, 0.05))
              for s in sizes]
    images.append(_im([], [AWAY], [0.4]))
    m = evaluate_detections(images, score_threshold=0.5, n_boot=20, class_names={1: "caries"})
    assert [m["per_size_px"][k]["lesions"] for k in ("<16", "16-32", "32-64", ">=64")] == [1, 1, 1, 1]
    assert m["per_size_px"]["<16"]["lesion_sensitivity"] == 1.0 and m["per_size_px"][">=64"]["lesion_sensitivity"] == 0
    # mm = 0.05 * px: 0.4, 1, 2, 5 mm
    assert [m["per_size_mm"][k]["lesions"] for k in ("<1", "1-2", "2-4", ">=4")] == [1, 1, 1, 1]
    assert m["per_class"]["1"]["name"] == "caries" and m["per_class"]["1"]["lesions"] == 4
    assert m["lesion_sensitivity"] == 0.75 and m["fp_per_image"] == 0.0
    assert "per_size_mm" not in evaluate_detections([_im([G1], [ON_G1], [0.5])], score_threshold=0.5, n_boot=0)
    with pytest.raises(ValueError, match="n_boot should be >= 0"):
        evaluate_detections(images, score_threshold=0.5, n_boot=-1)


def test_bootstrap_of_100_images_is_fast() -> None:
    images = _random_set(4, n=100)
    start = time.perf_counter()
    evaluate_detections(images, score_threshold=0.5, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 20.0  # ~1 s on one core; generous for a shared CI machine


def test_compute_curves_consistent_with_metrics() -> None:
    images = _random_set(6, n=30)
    c = compute_curves(images, score_threshold=0.5, n_boot=50)
    assert c.froc_fom == pytest.approx(froc_fom(images)) and c.afroc_fom == pytest.approx(afroc_fom(images))
    grid, low, high = c.roc_band
    assert grid.shape == low.shape == high.shape and np.all(low <= high + 1e-12)
    assert c.froc_point[1] == pytest.approx(evaluate_detections(images, score_threshold=0.5, n_boot=0)
                                            ["lesion_sensitivity"])
