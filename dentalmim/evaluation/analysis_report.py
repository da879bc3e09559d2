"""Plots, ``analysis.json`` and the self-contained HTML report of ``dentalmim analyze``.

Plots follow :mod:`dentalmim.evaluation.plots` (object-oriented matplotlib, Agg canvas, no pyplot state); the
page reuses the evaluation report's style and escaping (:mod:`dentalmim.evaluation.report_html`): inline CSS,
images as base64 PNG data URIs, no scripts, no links.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dentalmim.evaluation.plots import _new_figure, _style, figure_to_png
from dentalmim.evaluation.report_html import _CSS, _table, data_uri, esc, fmt

__all__ = ["LAYER_METRICS", "plot_attention_maps", "plot_fourier_profiles", "plot_layer_metric", "render_analysis_html",
           "write_analysis_report"]

#: Per-layer measures plotted against depth: key -> (title, y label, what it means).
LAYER_METRICS: dict[str, tuple[str, str, str]] = {
    "attention_distance_px": ("Mean attention distance", "pixels",
                              "How far a patch looks. Large: global attention; small: local."),
    "attention_distance_mm": ("Mean attention distance (mm)", "mm",
                              "The same in millimetres, from the DICOM pixel spacing."),
    "attention_nmi": ("Attention NMI (query vs key position)", "NMI",
                      "Near 0: every query attends to the same keys (collapse); high: query-specific attention."),
    "fourier_high_freq": ("High-frequency amplitude of token features", "Δ log amplitude (high - DC)",
                          "High: features carry texture / fine detail; low: smooth, shape-like features."),
    "linear_probe_acc": ("Linear probe: caries vs none", "accuracy (patient-grouped CV)",
                         "Logistic regression on the layer's mean patch token."),
    "knn_acc": ("k-NN probe: caries vs none", "accuracy (patient-grouped CV)",
                "k nearest neighbours (cosine) on the layer's mean patch token."),
}


def _values(enc: Mapping[str, Any], key: str) -> tuple[list[int], list[float]]:
    layers = [rec["layer"] for rec in enc["layers"]]
    vals = [math.nan if rec.get(key) is None else float(rec[key]) for rec in enc["layers"]]
    return layers, vals


def plot_layer_metric(encoders: Mapping[str, Mapping[str, Any]], key: str) -> Figure | None:
    """One line per encoder of ``key`` versus layer; None when no encoder has a value."""
    if not any(np.isfinite(_values(enc, key)[1]).any() for enc in encoders.values()):
        return None
    title, ylabel, _ = LAYER_METRICS[key]
    fig = _new_figure((6.0, 4.0))
    ax = fig.subplots()
    for name, enc in encoders.items():
        layers, vals = _values(enc, key)
        ax.plot(layers, vals, marker="o", label=name)
    _style(ax, title, "layer (block)", ylabel)
    ax.legend(fontsize=9)
    return fig


def plot_fourier_profiles(encoders: Mapping[str, Mapping[str, Any]]) -> Figure:
    """One panel per encoder: relative log amplitude versus frequency, one line per layer (dark = early)."""
    from matplotlib import colormaps

    fig = _new_figure((4.2 * len(encoders), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(encoders), sharey=True))
    cmap = colormaps["viridis"]
    for ax, (name, enc) in zip(axes, encoders.items(), strict=True):
        depth = len(enc["layers"])
        for i, rec in enumerate(enc["layers"]):
            prof = np.array([math.nan if v is None else v for v in rec["fourier_profile"]], dtype=float)
            freq = np.linspace(0.0, 1.0, len(prof))
            ax.plot(freq, prof, color=cmap(i / max(depth - 1, 1)), label=f"layer {rec['layer']}")
        _style(ax, name, "frequency (fraction of (π, π))", "Δ log amplitude")
    if len(encoders) == 1 or depth <= 12:
        axes[-1].legend(fontsize=7, ncol=2)
    return fig


def _shown_layers(depth: int, n: int = 4) -> list[int]:
    return sorted({int(np.rint(x)) for x in np.linspace(0, depth - 1, min(n, depth))})


def plot_attention_maps(crop: np.ndarray, maps: Mapping[str, np.ndarray]) -> Figure:
    """Attention of the cls token and of the centre patch, per encoder, at a few layers, over one crop.

    Args:
        crop: (S, S) crop.
        maps: encoder name -> (depth, 2, gh, gw) head-mean attention maps of this crop (cls, centre patch).
    """
    cols = max(len(_shown_layers(m.shape[0])) for m in maps.values()) + 1
    fig = _new_figure((2.0 * cols, 2.05 * 2 * len(maps)))
    axes = np.atleast_2d(fig.subplots(2 * len(maps), cols))
    size = crop.shape[-1]
    for r, (name, m) in enumerate(maps.items()):
        for q, query in enumerate(("cls", "centre patch")):
            row = axes[2 * r + q]
            row[0].imshow(crop, cmap="gray", vmin=0, vmax=1)
            row[0].set_title(f"{name}\n{query} query", fontsize=8)
            for c, layer in enumerate(_shown_layers(m.shape[0]), start=1):
                row[c].imshow(crop, cmap="gray", vmin=0, vmax=1)
                peak = float(m[layer, q].max())  # scaled 0 .. peak: uniform attention shows evenly bright
                row[c].imshow(m[layer, q], cmap="inferno", alpha=0.6, extent=(0, size, size, 0),
                              interpolation="nearest", vmin=0.0, vmax=peak if peak > 0 else 1.0)
                if q == 1:
                    row[c].plot([size / 2], [size / 2], marker="+", color="cyan", markersize=8)
                row[c].set_title(f"layer {layer + 1} (peak {peak * m.shape[-1] * m.shape[-2]:.1f}x uniform)",
                                 fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_visible(False)
    return fig


def _summary_table(encoders: Mapping[str, Mapping[str, Any]]) -> str:
    keys = [k for k in LAYER_METRICS if any(rec.get(k) is not None for e in encoders.values() for rec in e["layers"])]
    rows = []
    for name, enc in encoders.items():
        for pos, rec in (("first", enc["layers"][0]), ("last", enc["layers"][-1])):
            rows.append([esc(name), esc(f"{pos} ({rec['layer']})")] + [esc(fmt(rec.get(k))) for k in keys])
    header = ["Encoder", "Layer"] + [LAYER_METRICS[k][0] for k in keys]
    return _table(header, rows, numeric_from=2)


def _figures(items: Mapping[str, bytes], captions: Mapping[str, str]) -> str:
    figs = [f'<figure><img src="{data_uri(png)}" alt="{esc(captions.get(k, k))}">'
            f"<figcaption>{esc(captions.get(k, k))}</figcaption></figure>" for k, png in items.items()]
    return f'<div class="plots">{"".join(figs)}</div>'


def render_analysis_html(payload: Mapping[str, Any], plots: Mapping[str, bytes], attention: Mapping[str, bytes]) -> str:
    """The analysis page: summary table, per-metric plots side by side, Fourier profiles, attention maps."""
    encoders = payload["encoders"]
    captions = {k: f"{v[0]}. {v[2]}" for k, v in LAYER_METRICS.items()}
    captions["fourier_profiles"] = ("Relative log amplitude of the token features' Fourier transform per layer "
                                    "(dark = early layers).")
    meta = {name: {"path": e["path"], "objective": e.get("objective"), "depth": len(e["layers"]),
                   "width": e["config"].get("embed_dim"), "patch_size": e["config"].get("patch_size")}
            for name, e in encoders.items()}  # fmt: skip
    enc_rows = [[esc(n), esc(fmt(m["objective"])), esc(m["depth"]), esc(m["width"]), esc(m["patch_size"]),
                 esc(m["path"])] for n, m in meta.items()]  # fmt: skip
    data_rows = [[esc(k), esc(fmt(v))] for k, v in {**payload["data"], **payload["settings"]}.items()]
    title = "Representation analysis"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><main><h1>{esc(title)}</h1>"
            f'<p class="sub">dentalmim {esc(payload.get("dentalmim_version", ""))}</p>'
            f"<h2>Encoders</h2>{_table(['Name', 'Objective', 'Blocks', 'Width', 'Patch', 'File'], enc_rows, 2)}"
            f"<h2>Data and settings</h2>{_table(['Field', 'Value'], data_rows, 1)}"
            f"<h2>First and last layer</h2>{_summary_table(encoders)}"
            f"<h2>Per layer</h2>{_figures({k: v for k, v in plots.items() if k in LAYER_METRICS}, captions)}"
            f"<h2>Frequency content</h2>{_figures({k: v for k, v in plots.items() if k not in LAYER_METRICS}, captions)}"
            f"<h2>Attention maps</h2><p class=\"legend\">Head-averaged attention of the cls token and of the centre "
            f"patch (cyan +) over native-resolution crops.</p>"
            f"{_figures(attention, {k: f'crop {k}' for k in attention})}"
            "</main></body></html>")


def write_analysis_report(payload: dict[str, Any], maps: Mapping[str, np.ndarray | None], crops: np.ndarray,
                          out: Path) -> dict[str, Path]:
    """Write ``analysis.json``, one PNG per plot (``plots/``) and ``report.html`` into ``out``.

    Args:
        payload: the numbers (:func:`dentalmim.analyze.analyze_encoders`).
        maps: encoder -> (n, depth, 2, gh, gw) attention maps of the first crops.
        crops: (n, S, S) those crops.
        out: output folder.

    Returns:
        ``json``, ``html`` and ``plot_<name>`` paths.
    """
    from dentalmim.evaluation.metrics_summary import to_jsonable

    encoders = payload["encoders"]
    plots = {key: figure_to_png(fig) for key in LAYER_METRICS
             if (fig := plot_layer_metric(encoders, key)) is not None}
    plots["fourier_profiles"] = figure_to_png(plot_fourier_profiles(encoders))
    n = min([len(crops)] + [len(m) for m in maps.values() if m is not None])
    attention = {str(i): figure_to_png(plot_attention_maps(crops[i], {k: m[i] for k, m in maps.items()}), dpi=110)
                 for i in range(n)}  # fmt: skip
    paths = {"json": out / "analysis.json", "html": out / "report.html"}
    (out / "plots").mkdir(exist_ok=True)
    for key, png in {**plots, **{f"attention_{k}": v for k, v in attention.items()}}.items():
        paths[f"plot_{key}"] = out / "plots" / f"{key}.png"
        paths[f"plot_{key}"].write_bytes(png)
    paths["json"].write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    paths["html"].write_text(render_analysis_html(payload, plots, attention))
    return paths
