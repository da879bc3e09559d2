"""PDF version of the evaluation report (matplotlib ``PdfPages``).

Pages: summary (headline metrics with intervals, counts, provenance), breakdowns, one page per plot, then the
gallery (three cases per page). Text is drawn with mathtext off, so ``$`` in metadata stays literal.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from PIL import Image

from dentalmim.evaluation.report_html import BREAKDOWN_TITLES, METRIC_LABELS, SHORT_LABELS, fmt, fmt_ci

__all__ = ["write_pdf"]

_A4 = (8.27, 11.69)
_WIDTH = 95  # characters per line of monospaced text at 8.5 pt on A4


def _text_page(title: str, lines: Sequence[str]) -> Figure:
    fig = Figure(figsize=_A4)
    fig.text(0.06, 0.965, title, fontsize=14, weight="bold", va="top", parse_math=False)
    fig.text(0.06, 0.93, "\n".join(lines), family="monospace", fontsize=8.5, va="top", parse_math=False)
    return fig


def _wrap(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, _WIDTH, subsequent_indent=indent) or [""]


def _summary_lines(metrics: Mapping[str, Any], provenance: Mapping[str, Any], max_config_lines: int = 25) -> list[str]:
    ci = metrics.get("ci", {})
    lines = []
    if metrics.get("warnings"):
        lines += ["READ THIS FIRST", "", *(ln for w in metrics["warnings"] for ln in _wrap(f"- {w}")), ""]
    lines += ["HEADLINE METRICS (95% bootstrap CI)", ""]
    for key, label in METRIC_LABELS.items():
        if key in metrics:
            lines.append(f"{label[:60]:<60} {fmt(metrics[key]):>8}   {fmt_ci(ci.get(key)):>15}")
    lines += ["", "COUNTS AND OPERATING POINT", ""]
    for key, value in {**metrics.get("counts", {}), **metrics.get("operating_point", {})}.items():
        lines.append(f"{key:<30} {fmt(value)}")
    lines += ["", "PROVENANCE", ""]
    for key, value in provenance.items():
        if isinstance(value, Mapping | list | tuple):
            dumped = json.dumps(value, indent=1, default=str).splitlines()
            lines.append(f"{key}:")
            lines += [ln for raw in dumped[:max_config_lines] for ln in _wrap("  " + raw, "    ")]
            if len(dumped) > max_config_lines:
                lines.append(f"  ... ({len(dumped) - max_config_lines} more lines in report.html)")
        else:
            lines += _wrap(f"{key:<20} {value}", " " * 21)
    return lines


def _breakdown_lines(metrics: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, title in BREAKDOWN_TITLES.items():
        groups = metrics.get(name) or {}
        if not groups:
            continue
        keys = [k for k in SHORT_LABELS if any(k in g for g in groups.values())]
        lines += [title.upper(), ""]
        for group, g in groups.items():
            label = f"{group} ({g['name']})" if g.get("name") else group
            lines.append(f"{label[:30]:<30} lesions {fmt(g.get('lesions'))}")
            for k in keys:
                lines.append(f"    {SHORT_LABELS[k]:<28} {fmt(g.get(k)):>8}   {fmt_ci(g.get('ci', {}).get(k)):>15}")
        lines.append("")
    return lines or ["No lesions."]


def _gallery_pages(cards: Sequence[tuple[str, str, Image.Image, Image.Image]], per_page: int = 3) -> list[Figure]:
    pages = []
    for start in range(0, len(cards), per_page):
        fig = Figure(figsize=_A4, layout="constrained")
        fig.suptitle("Worst false negatives and false positives", fontsize=13)
        axes = fig.subplots(per_page, 2, gridspec_kw={"width_ratios": [1, 1]}, squeeze=False)
        for row, ax_pair in enumerate(axes):
            for ax in ax_pair:
                ax.set_axis_off()
            if start + row >= len(cards):
                continue
            kind, title, crop, thumb = cards[start + row]
            ax_pair[0].imshow(np.asarray(crop), interpolation="nearest")
            ax_pair[0].set_title(f"{kind}: " + textwrap.shorten(title, 70), fontsize=8, loc="left", parse_math=False)
            ax_pair[1].imshow(np.asarray(thumb))
            ax_pair[1].set_title("context", fontsize=8, loc="left")
        pages.append(fig)
    return pages


def write_pdf(path: str | Path, title: str, metrics: Mapping[str, Any], figures: Mapping[str, Figure],
              cards: Sequence[tuple[str, str, Image.Image, Image.Image]], provenance: Mapping[str, Any]) -> Path:
    """Write the PDF report.

    Args:
        path: output file.
        title: report title (first page).
        metrics: the metrics dictionary (``evaluate_detections`` layout).
        figures: plot key -> figure, one page each.
        cards: gallery entries ``(kind, title, crop, context thumbnail)``.
        provenance: model / data / run metadata.

    Returns:
        The written path.
    """
    path = Path(path)
    pages = [_text_page(title, _summary_lines(metrics, provenance)),
             _text_page("Breakdowns", _breakdown_lines(metrics)), *figures.values(), *_gallery_pages(cards)]
    with PdfPages(path, metadata={"Title": title, "Creator": "dentalmim", "CreationDate": None}) as pdf:
        for page in pages:
            pdf.savefig(page)
    return path
