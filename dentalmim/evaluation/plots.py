"""Evaluation plots: ROC, FROC, precision-recall, reliability diagram, AFROC.

Figures are built with the object-oriented matplotlib API (``matplotlib.figure.Figure``, Agg canvas, no pyplot
state), sized to stay readable when shown 600 px wide. Each ``plot_*`` returns a ``Figure``;
:func:`figure_to_png` turns one into PNG bytes.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dentalmim.evaluation.metrics_curves import CurveSet
from dentalmim.evaluation.metrics_image import ReliabilityCurve
from dentalmim.evaluation.metrics_lesion import FROC_FP_LEVELS

__all__ = ["FIGSIZE", "figure_to_png", "plot_afroc", "plot_all", "plot_froc", "plot_pr", "plot_reliability",
           "plot_roc"]

#: Figure size in inches; at the default 150 dpi a PNG is 900 x 675 px.
FIGSIZE: tuple[float, float] = (6.0, 4.5)
_CURVE, _POINT, _CHANCE = "#1f5fa8", "#d9480f", "#9a9a9a"


def _new_figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _style(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(True, alpha=0.35)
    ax.tick_params(labelsize=9)


def _unavailable(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot available for this data set", ha="center", va="center", fontsize=11,
            transform=ax.transAxes, color="#555555")


def _legend(ax: Axes, loc: str) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=9)


def figure_to_png(fig: Figure, dpi: int = 150) -> bytes:
    """Render a figure to PNG bytes.

    Args:
        fig: the figure.
        dpi: resolution.

    Returns:
        PNG file content.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, *, auroc: float, operating_point: tuple[float, float] | None = None,
             band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Figure:
    """Image-level ROC curve.

    Args:
        fpr: (K,) false-positive rates.
        tpr: (K,) true-positive rates.
        auroc: area shown in the title.
        operating_point: ``(fpr, tpr)`` marked on the curve.
        band: ``(fpr_grid (G,), tpr_low (G,), tpr_high (G,))`` bootstrap band.

    Returns:
        The figure.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color=_CHANCE, lw=1, label="chance")
    if len(fpr) == 0 or not np.all(np.isfinite(tpr)) or not np.all(np.isfinite(fpr)):
        _unavailable(ax, "ROC (needs images with and without caries)")
    else:
        if band is not None:
            ax.fill_between(band[0], band[1], band[2], step="post", color=_CURVE, alpha=0.18, label="95% CI")
        ax.plot(fpr, tpr, color=_CURVE, lw=2, label="ROC")
    if operating_point is not None and all(math.isfinite(v) for v in operating_point):
        ax.plot(*operating_point, "o", color=_POINT, ms=9, label="operating point")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    _style(ax, f"Image-level ROC (AUROC {_fmt(auroc)})", "False-positive rate (1 - specificity)",
           "Sensitivity")
    _legend(ax, "lower right")
    return fig


def plot_froc(fp_per_image: np.ndarray, sensitivity: np.ndarray, *, fom: float,
              fom_points: tuple[np.ndarray, np.ndarray] | None = None,
              operating_point: tuple[float, float] | None = None) -> Figure:
    """Lesion-level FROC curve on a log FP/image axis from 1/8 to 8.

    Args:
        fp_per_image: (K,) mean false positives per image, non-decreasing.
        sensitivity: (K,) lesion sensitivity.
        fom: FROC figure of merit shown in the title.
        fom_points: ``(fp_levels, sensitivity)`` averaged by the figure of merit, marked.
        operating_point: ``(fp_per_image, sensitivity)`` at the score threshold.

    Returns:
        The figure.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    lo, hi = FROC_FP_LEVELS[0] / 1.5, FROC_FP_LEVELS[-1] * 1.5
    if len(sensitivity) == 0 or not np.all(np.isfinite(sensitivity)):
        _unavailable(ax, "FROC (needs lesions)")
    else:
        x = np.concatenate([np.clip(fp_per_image, lo, None), [hi]])  # FP/image 0 drawn at the left edge
        ax.plot(x, np.append(sensitivity, sensitivity[-1]), drawstyle="steps-post", color=_CURVE, lw=2,
                label="FROC")
        if fom_points is not None:
            ax.plot(fom_points[0], fom_points[1], "s", color=_CURVE, mfc="white", ms=7, label="FOM points")
    if operating_point is not None and all(math.isfinite(v) for v in operating_point):
        ax.plot(max(operating_point[0], lo), operating_point[1], "o", color=_POINT, ms=9, label="operating point")
    ax.set_xscale("log")
    ax.set(xlim=(lo, hi), ylim=(-0.01, 1.01))
    ax.set_xticks(FROC_FP_LEVELS, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.minorticks_off()
    _style(ax, f"Lesion-level FROC (FOM {_fmt(fom)})", "False positives per image", "Lesion sensitivity")
    _legend(ax, "lower right")
    return fig


def plot_pr(recall: np.ndarray, precision: np.ndarray, *, ap: float, iou: float = 0.5) -> Figure:
    """Detection precision-recall curve (raw points and the monotone envelope used by AP).

    Args:
        recall: (K,) recall per threshold (non-decreasing).
        precision: (K,) precision per threshold.
        ap: average precision shown in the title.
        iou: IoU threshold of the matching, for the title.

    Returns:
        The figure.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    if len(recall) == 0 or not np.all(np.isfinite(recall)):
        _unavailable(ax, "Precision-recall (needs lesions and predictions)")
    else:
        env = np.maximum.accumulate(precision[::-1])[::-1]
        ax.plot(recall, precision, color=_CHANCE, lw=1, label="precision")
        ax.plot(np.concatenate([[0], recall]), np.concatenate([env[:1], env]), drawstyle="steps-pre",
                color=_CURVE, lw=2, label="interpolated")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    _style(ax, f"Detection precision-recall, IoU {iou:g} (AP {_fmt(ap)})", "Recall (lesion sensitivity)",
           "Precision")
    _legend(ax, "lower left")
    return fig


def plot_reliability(curve: ReliabilityCurve, *, ece: float) -> Figure:
    """Reliability diagram with the number of images per bin underneath.

    Args:
        curve: binned calibration data.
        ece: expected calibration error shown in the title.

    Returns:
        The figure.
    """
    fig = _new_figure((6.0, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centres = (curve.edges[:-1] + curve.edges[1:]) / 2
    width = np.diff(curve.edges)
    top.plot([0, 1], [0, 1], ls="--", color=_CHANCE, lw=1, label="perfect calibration")
    top.bar(centres, np.nan_to_num(curve.frac_pos), width=width * 0.9, color=_CURVE, alpha=0.35,
            label="fraction with caries")
    ok = curve.counts > 0
    top.plot(curve.mean_prob[ok], curve.frac_pos[ok], "o-", color=_CURVE, lw=2,
             label="per bin: mean predicted vs observed")
    top.set(xlim=(0, 1), ylim=(0, 1.01))
    _style(top, f"Calibration (ECE {_fmt(ece)})", "", "Observed fraction")
    _legend(top, "upper left")
    bottom.bar(centres, curve.counts, width=width * 0.9, color=_CHANCE)
    for x, c in zip(centres, curve.counts, strict=True):
        bottom.text(x, c, str(int(c)), ha="center", va="bottom", fontsize=8)
    bottom.set_ylim(0, max(1, int(curve.counts.max())) * 1.35)
    _style(bottom, "", "Predicted probability", "Images")
    return fig


def plot_afroc(fpf: np.ndarray, llf: np.ndarray, *, fom: float) -> Figure:
    """AFROC curve (lesion localisation fraction vs false-positive fraction of normal images).

    Args:
        fpf: (K,) false-positive fractions; the last point is the (1, 1) extension.
        llf: (K,) lesion localisation fractions.
        fom: AFROC figure of merit (area) shown in the title.

    Returns:
        The figure.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    if len(fpf) < 2 or not (np.all(np.isfinite(fpf)) and np.all(np.isfinite(llf))):
        _unavailable(ax, "AFROC (needs lesions and caries-free images)")
    else:
        ax.plot(fpf[:-1], llf[:-1], color=_CURVE, lw=2, label="AFROC")
        ax.plot(fpf[-2:], llf[-2:], ls="--", color=_CURVE, lw=1.5, label="extension to (1, 1)")
        ax.fill_between(fpf, llf, color=_CURVE, alpha=0.1)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    _style(ax, f"AFROC (FOM {_fmt(fom)})", "False-positive fraction (caries-free images)",
           "Lesion localisation fraction")
    _legend(ax, "lower right")
    return fig


def plot_all(curves: CurveSet) -> dict[str, Figure]:
    """Every evaluation plot of a :class:`CurveSet`, keyed ``roc``, ``froc``, ``pr``, ``reliability``, ``afroc``."""
    return {"roc": plot_roc(*curves.roc, auroc=curves.auroc, operating_point=curves.roc_point, band=curves.roc_band),
            "froc": plot_froc(*curves.froc, fom=curves.froc_fom, fom_points=curves.froc_fom_points,
                              operating_point=curves.froc_point),
            "pr": plot_pr(*curves.pr, ap=curves.ap50),
            "reliability": plot_reliability(curves.reliability, ece=curves.ece),
            "afroc": plot_afroc(*curves.afroc, fom=curves.afroc_fom)}
