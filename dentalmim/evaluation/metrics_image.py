"""Image-level metrics: ROC / AUROC, the operating point, threshold choice and calibration.

Every metric has a plain form (``prob (n,)``, ``truth (n,)``) and a weighted core (suffix ``_w``) taking count
weights ``(B, n)`` so that bootstrap resamples evaluate in one call (see ``metrics_bootstrap``). An image is
called positive when ``prob >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OperatingPoint", "ReliabilityCurve", "auroc", "expected_calibration_error",
           "operating_point_metrics", "reliability_curve", "roc_curve", "threshold_for_sensitivity",
           "weighted_wilcoxon", "youden_threshold"]


def _check_binary(prob: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    t = np.asarray(truth).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"prob and truth should have the same length, got {p.shape} and {t.shape}.")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob should be finite.")
    if not np.all((t == 0) | (t == 1)):
        raise ValueError("truth should be binary (0/1 or bool).")
    return p, t.astype(bool)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def weighted_wilcoxon(pos: np.ndarray, pos_w: np.ndarray, neg: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney statistic P(pos > neg) + 0.5 P(pos == neg), for many weight rows at once.

    ``-inf`` is a valid rating (e.g. an unmarked lesion) and ties with ``-inf``.

    Args:
        pos: (P,) ratings of positives.
        pos_w: (B, P) weights of positives.
        neg: (N,) ratings of negatives.
        neg_w: (B, N) weights of negatives.

    Returns:
        (B,) statistic; nan where either side has zero total weight.
    """
    order = np.argsort(neg, kind="stable")
    sorted_neg = neg[order]
    cum = np.concatenate([np.zeros((neg_w.shape[0], 1)), np.cumsum(neg_w[:, order], axis=1)], axis=1)
    lo = np.searchsorted(sorted_neg, pos, side="left")
    hi = np.searchsorted(sorted_neg, pos, side="right")
    wins = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])
    num = np.sum(pos_w * wins, axis=1)
    return _safe_div(num, pos_w.sum(axis=1) * neg_w.sum(axis=1))


def auroc_w(prob: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted core of :func:`auroc`: weights (B, n) -> (B,)."""
    return weighted_wilcoxon(prob[truth], weights[:, truth], prob[~truth], weights[:, ~truth])


def auroc(prob: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count 0.5).

    Args:
        prob: (n,) scores.
        truth: (n,) binary labels.

    Returns:
        AUROC in [0, 1]; nan without positives or negatives.
    """
    p, t = _check_binary(prob, truth)
    return float(auroc_w(p, t, np.ones((1, len(p))))[0])


def roc_curve(prob: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one point per distinct score.

    Args:
        prob: (n,) scores.
        truth: (n,) binary labels.

    Returns:
        ``(fpr (K+1,), tpr (K+1,), thresholds (K+1,))``, thresholds descending, starting at ``+inf`` (0, 0) and
        ending at the lowest score (1, 1); a threshold ``t`` calls ``prob >= t`` positive. Its trapezoid area
        equals :func:`auroc`.
    """
    p, t = _check_binary(prob, truth)
    thr = np.unique(p)[::-1]
    pos, neg = np.sort(p[t]), np.sort(p[~t])
    tp = len(pos) - np.searchsorted(pos, thr, side="left")
    fp = len(neg) - np.searchsorted(neg, thr, side="left")
    tpr = np.concatenate([[0.0], _safe_div(tp, len(pos))])
    fpr = np.concatenate([[0.0], _safe_div(fp, len(neg))])
    return fpr, tpr, np.concatenate([[np.inf], thr])


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts and rates at one threshold (rates nan when their denominator is 0)."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    specificity: float
    ppv: float
    npv: float


def confusion_w(prob: np.ndarray, truth: np.ndarray, threshold: float,
                weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted confusion counts: weights (B, n) -> (tp, fp, tn, fn), each (B,)."""
    called = prob >= threshold
    tp = weights @ (called & truth)
    fp = weights @ (called & ~truth)
    tn = weights @ (~called & ~truth)
    fn = weights @ (~called & truth)
    return tp, fp, tn, fn


def operating_point_metrics(prob: np.ndarray, truth: np.ndarray, threshold: float) -> OperatingPoint:
    """Sensitivity, specificity, PPV and NPV at a threshold (``prob >= threshold`` is positive).

    Args:
        prob: (n,) scores.
        truth: (n,) binary labels.
        threshold: the operating threshold.

    Returns:
        The :class:`OperatingPoint` with counts; undefined rates (0/0) are nan.
    """
    p, t = _check_binary(prob, truth)
    tp, fp, tn, fn = (float(c[0]) for c in confusion_w(p, t, threshold, np.ones((1, len(p)))))
    return OperatingPoint(threshold=float(threshold), tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn),
                          sensitivity=float(_safe_div(tp, tp + fn)), specificity=float(_safe_div(tn, tn + fp)),
                          ppv=float(_safe_div(tp, tp + fp)), npv=float(_safe_div(tn, tn + fn)))


def threshold_for_sensitivity(prob: np.ndarray, truth: np.ndarray, target: float = 0.9) -> float:
    """The highest threshold whose sensitivity reaches ``target`` (best specificity under that constraint).

    Args:
        prob: (n,) scores (validation data).
        truth: (n,) binary labels.
        target: required sensitivity in (0, 1].

    Returns:
        A threshold among the observed scores; nan without positives.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target should be in (0, 1], got {target}.")
    p, t = _check_binary(prob, truth)
    if not t.any():
        return float("nan")
    pos = np.sort(p[t])[::-1]
    return float(pos[int(np.ceil(target * len(pos) - 1e-9)) - 1])


def youden_threshold(prob: np.ndarray, truth: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (the highest such threshold on ties).

    Args:
        prob: (n,) scores (validation data).
        truth: (n,) binary labels.

    Returns:
        A threshold among the observed scores; nan without positives or negatives.
    """
    p, t = _check_binary(prob, truth)
    if t.all() or not t.any():
        return float("nan")
    fpr, tpr, thr = roc_curve(p, t)
    return float(thr[1:][int(np.argmax((tpr - fpr)[1:]))])


@dataclass(frozen=True)
class ReliabilityCurve:
    """Reliability-diagram data over equal-width probability bins.

    Attributes:
        edges: (n_bins + 1,) bin edges on [0, 1].
        mean_prob: (n_bins,) mean predicted probability per bin (nan for empty bins).
        frac_pos: (n_bins,) observed fraction of positives per bin (nan for empty bins).
        counts: (n_bins,) number of images per bin.
    """

    edges: np.ndarray
    mean_prob: np.ndarray
    frac_pos: np.ndarray
    counts: np.ndarray


def _bin_index(prob: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins should be >= 1, got {n_bins}.")
    if np.any((prob < 0) | (prob > 1)):
        raise ValueError("prob should be in [0, 1] for calibration.")
    return np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)


def _binned_w(prob: np.ndarray, truth: np.ndarray, n_bins: int,
              weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, sum of prob, sum of truth), each (B, n_bins)."""
    onehot = np.eye(n_bins)[_bin_index(prob, n_bins)]  # (n, n_bins)
    return weights @ onehot, weights @ (onehot * prob[:, None]), weights @ (onehot * truth[:, None])


def ece_w(prob: np.ndarray, truth: np.ndarray, n_bins: int, weights: np.ndarray) -> np.ndarray:
    """Weighted core of :func:`expected_calibration_error`: weights (B, n) -> (B,)."""
    counts, sum_p, sum_t = _binned_w(prob, truth.astype(np.float64), n_bins, weights)
    gap = np.abs(sum_p - sum_t)  # = counts * |mean_prob - frac_pos|
    return _safe_div(gap.sum(axis=1), counts.sum(axis=1))


def expected_calibration_error(prob: np.ndarray, truth: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width bins of (bin share) * |mean prob - fraction positive|.

    Bins are ``[k/n, (k+1)/n)``, the last one closed at 1.

    Args:
        prob: (n,) probabilities in [0, 1].
        truth: (n,) binary labels.
        n_bins: number of bins.

    Returns:
        ECE in [0, 1]; nan for an empty input.
    """
    p, t = _check_binary(prob, truth)
    return float(ece_w(p, t, n_bins, np.ones((1, len(p))))[0])


def reliability_curve(prob: np.ndarray, truth: np.ndarray, n_bins: int = 10) -> ReliabilityCurve:
    """Reliability-diagram data (same bins as :func:`expected_calibration_error`).

    Args:
        prob: (n,) probabilities in [0, 1].
        truth: (n,) binary labels.
        n_bins: number of bins.

    Returns:
        The :class:`ReliabilityCurve`.
    """
    p, t = _check_binary(prob, truth)
    counts, sum_p, sum_t = (a[0] for a in _binned_w(p, t.astype(np.float64), n_bins, np.ones((1, len(p)))))
    return ReliabilityCurve(edges=np.linspace(0.0, 1.0, n_bins + 1), mean_prob=_safe_div(sum_p, counts),
                            frac_pos=_safe_div(sum_t, counts), counts=counts.astype(np.int64))
