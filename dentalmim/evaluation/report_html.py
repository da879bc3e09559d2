"""Self-contained HTML of the evaluation report: inline CSS, images as base64 PNG data URIs, no scripts, no links.

Every string that comes from metrics, configuration or metadata goes through :func:`esc` (``html.escape``).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BREAKDOWN_TITLES", "METRIC_LABELS", "PLOT_TITLES", "SHORT_LABELS", "data_uri", "esc", "fmt", "fmt_ci",
           "render_html"]

#: Human-readable labels of the headline metrics, in display order.
METRIC_LABELS: dict[str, str] = {
    "froc_fom": "FROC figure of merit (mean sensitivity at 1/8-8 FP/image)",
    "sensitivity_at_1fp": "Lesion sensitivity at 1 FP/image",
    "afroc_fom": "AFROC figure of merit (JAFROC)",
    "ap50": "AP at IoU 0.5",
    "coco_ap": "COCO AP (IoU 0.50:0.95)",
    "lesion_sensitivity": "Lesion sensitivity at the operating threshold",
    "fp_per_image": "False positives per image at the operating threshold",
    "auroc": "Image-level AUROC",
    "auroc_image_size_baseline": "Image-level AUROC of image size alone (reference, not a model)",
    "sensitivity": "Image-level sensitivity",
    "specificity": "Image-level specificity",
    "ppv": "Image-level PPV",
    "npv": "Image-level NPV",
    "ece": "Expected calibration error (image level)",
}
#: Column titles of the breakdown tables.
SHORT_LABELS: dict[str, str] = {"froc_fom": "FROC FOM", "sensitivity_at_1fp": "Sensitivity at 1 FP/image",
                                "lesion_sensitivity": "Sensitivity at threshold", "ap50": "AP50",
                                "auroc": "Image AUROC", "sensitivity": "Image sensitivity",
                                "specificity": "Image specificity"}
PLOT_TITLES: dict[str, str] = {"roc": "Image-level ROC", "froc": "Lesion-level FROC", "pr": "Precision-recall",
                               "reliability": "Reliability diagram", "afroc": "AFROC"}
BREAKDOWN_TITLES: dict[str, str] = {"per_class": "Per class (class-aware matching)",
                                    "per_size_px": "Per lesion size (largest box side, pixels)",
                                    "per_size_mm": "Per lesion size (largest box side, mm)",
                                    "per_image_type": "Per image type (DICOM Modality; no intervals)"}
_DEFINITIONS = (
    "Lesion-level metrics pool all caries classes; a prediction localises a lesion by the FROC hit rule in "
    "the settings (default: centre inside the lesion box or IoU >= 0.3); each lesion is matched at most once, by "
    "descending score. AP uses IoU thresholds with COCO 101-point interpolation. Image-level metrics use the "
    "image probability at the image threshold. Larger radiographs show more teeth and are read as more tiles, so "
    "the AUROC of image size alone is given as a reference: an image-level AUROC says something about lesions only "
    "above it. Intervals are percentile bootstrap intervals over images (or "
    "patients when known); resamples where a metric is undefined are skipped.")
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1b1b;
background:#f6f7f9;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:1.7rem;margin:0 0 4px}h2{font-size:1.25rem;margin:28px 0 10px;border-bottom:2px solid #d8dde3;
padding-bottom:4px}h3{font-size:1.05rem;margin:18px 0 8px}
.sub{color:#555;margin:0 0 12px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:.92rem}
th,td{border:1px solid #d8dde3;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #d8dde3;padding:8px}
figure img{width:100%;max-width:600px;height:auto;display:block;margin:0 auto}
figcaption{font-size:.9rem;color:#444;margin-top:6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
.card{background:#fff;border:1px solid #d8dde3;padding:8px}
.card .imgs{display:flex;gap:8px;align-items:flex-start;flex-wrap:wrap}
.card img{image-rendering:pixelated;max-width:100%;height:auto}
.tag{display:inline-block;font-weight:600;border-radius:3px;padding:0 6px;margin-right:6px;color:#fff}
.FN{background:#2a8c3c}.FP{background:#d9480f}
pre{background:#fff;border:1px solid #d8dde3;padding:8px;overflow-x:auto;font-size:.85rem;margin:0}
.legend{font-size:.9rem;color:#444}
.warnings{background:#fff4e5;border:1px solid #f0a040;padding:4px 14px;margin:12px 0}
.warnings h2{border:0;margin:8px 0 0;font-size:1.1rem}
"""


def esc(value: object) -> str:
    """HTML-escape any value's ``str`` (quotes included)."""
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A value as text: floats with 3 decimals, ``n/a`` for ``None`` and non-finite floats."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else "n/a"
    return str(value)


def fmt_ci(ci: Sequence[object] | None) -> str:
    """A ``[low, high]`` interval as text."""
    if not ci or all(v is None for v in ci):
        return "n/a"
    return f"{fmt(ci[0])} - {fmt(ci[1])}"


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if j >= numeric_from else f"<td>{c}</td>"
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline(metrics: Mapping[str, Any]) -> str:
    ci = metrics.get("ci", {})
    rows = [[esc(label), esc(key), esc(fmt(metrics.get(key))), esc(fmt_ci(ci.get(key)))]
            for key, label in METRIC_LABELS.items() if key in metrics]
    return _table(["Metric", "Key", "Value", "95% CI"], rows, numeric_from=2)


def _value_cell(value: object) -> str:
    if isinstance(value, Mapping | list | tuple):
        return f"<pre>{esc(json.dumps(value, indent=2, default=str))}</pre>"
    return esc(fmt(value))


def _warnings(warnings: Sequence[str]) -> str:
    items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return f'<div class="warnings"><h2>Read this first</h2><ul>{items}</ul></div>' if warnings else ""


def _key_values(data: Mapping[str, Any]) -> str:
    return _table(["Field", "Value"], [[esc(k), _value_cell(v)] for k, v in data.items()], numeric_from=2)


def _breakdown(name: str, groups: Mapping[str, Any]) -> str:
    keys = [k for k in SHORT_LABELS if any(k in g for g in groups.values())]
    header = ["Group", "Lesions"] + [SHORT_LABELS[k] for k in keys]
    rows = []
    for group, g in groups.items():
        label = f"{group} ({g['name']})" if g.get("name") else group
        cells = [f"{esc(fmt(g.get(k)))}<br><small>{esc(fmt_ci(g.get('ci', {}).get(k)))}</small>" for k in keys]
        rows.append([esc(label), esc(fmt(g.get("lesions")))] + cells)
    return f"<h3>{esc(BREAKDOWN_TITLES.get(name, name))}</h3>" + _table(header, rows)


def _plots(plots: Mapping[str, bytes]) -> str:
    figs = [f'<figure><img src="{data_uri(png)}" alt="{esc(PLOT_TITLES.get(k, k))}">'
            f"<figcaption>{esc(PLOT_TITLES.get(k, k))}</figcaption></figure>" for k, png in plots.items()]
    return f'<div class="plots">{"".join(figs)}</div>'


def _gallery(cards: Sequence[tuple[str, str, bytes, bytes]]) -> str:
    if not cards:
        return "<p>No cases selected for the gallery.</p>"
    out = []
    for kind, title, crop, thumb in cards:
        out.append(f'<div class="card"><p><span class="tag {esc(kind)}">{esc(kind)}</span>{esc(title)}</p>'
                   f'<div class="imgs"><img src="{data_uri(crop)}" alt="{esc(kind)} crop">'
                   f'<img src="{data_uri(thumb)}" alt="{esc(kind)} context"></div></div>')
    legend = ('<p class="legend">Ground truth green, predictions red-orange with score, crop region yellow on the '
              "context thumbnail. Crops are at native resolution (enlarged by an integer factor).</p>")
    return legend + f'<div class="gallery">{"".join(out)}</div>'


def render_html(title: str, metrics: Mapping[str, Any], plots: Mapping[str, bytes],
                cards: Sequence[tuple[str, str, bytes, bytes]], provenance: Mapping[str, Any]) -> str:
    """The report page.

    Args:
        title: page title.
        metrics: the metrics dictionary (``evaluate_detections`` layout).
        plots: plot key -> PNG bytes.
        cards: gallery entries ``(kind, title, crop PNG, context PNG)``.
        provenance: model / data / run metadata (values may be nested dictionaries).

    Returns:
        The HTML document.
    """
    counts = {**metrics.get("counts", {}), **metrics.get("operating_point", {})}
    breakdowns = "".join(_breakdown(k, metrics[k]) for k in BREAKDOWN_TITLES if metrics.get(k))
    settings = metrics.get("settings", {})
    sub = f"{provenance.get('date', '')} - dentalmim {provenance.get('dentalmim_version', '')}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><main><h1>{esc(title)}</h1><p class=\"sub\">{esc(sub)}</p>"
            f"{_warnings(metrics.get('warnings') or [])}"
            f"<h2>Headline metrics</h2>{_headline(metrics)}<p class=\"legend\">{esc(_DEFINITIONS)}</p>"
            f"<h2>Counts and operating point</h2>{_key_values(counts)}"
            f"<h2>Plots</h2>{_plots(plots)}<h2>Breakdowns</h2>{breakdowns or '<p>No lesions.</p>'}"
            f"<h2>Worst false negatives and false positives</h2>{_gallery(cards)}"
            f"<h2>Provenance</h2>{_key_values(provenance)}<h2>Settings</h2>{_key_values(settings)}"
            "</main></body></html>")
