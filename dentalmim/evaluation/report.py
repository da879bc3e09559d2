"""Evaluation report: ``metrics.json``, a self-contained ``report.html`` and ``report.pdf``.

Typical use (the CLI wires the model and the data set)::

    metrics = evaluate_detections(images, score_threshold=t, n_boot=1000)
    curves = compute_curves(images, score_threshold=t)
    gallery = select_gallery(images, 6, load_image, score_threshold=t)
    paths = write_report(out_dir, metrics, curves, gallery=gallery, provenance={"model_version": ..., ...})

The HTML embeds plots and gallery images as base64 PNG data URIs with inline CSS: it needs no network, script or
other file, and every string from metrics, configuration or metadata is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dentalmim
from dentalmim.evaluation.metrics_curves import CurveSet
from dentalmim.evaluation.metrics_summary import to_jsonable
from dentalmim.evaluation.plots import figure_to_png, plot_all
from dentalmim.evaluation.report_gallery import GalleryItem, png_bytes, render_gallery_item, select_gallery
from dentalmim.evaluation.report_html import render_html
from dentalmim.evaluation.report_pdf import write_pdf
from dentalmim.fileio import atomic_write_bytes

__all__ = ["PROVENANCE_KEYS", "GalleryItem", "ReportPaths", "complete_provenance", "select_gallery",
           "write_metrics_json", "write_report"]

#: Provenance fields shown first (others are kept after them).
PROVENANCE_KEYS: tuple[str, ...] = ("model_version", "model_sha256", "dataset_sha256", "date", "dentalmim_version",
                                    "config")


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`write_report`."""

    html: Path
    pdf: Path
    metrics_json: Path


def complete_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """Provenance with the standard fields first; ``date`` (UTC, ISO 8601) and ``dentalmim_version`` filled in
    when missing, other missing standard fields set to ``None``."""
    given = dict(provenance or {})
    given.setdefault("date", dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())
    given.setdefault("dentalmim_version", dentalmim.__version__)
    out = {k: given.pop(k, None) for k in PROVENANCE_KEYS}
    return {**out, **given}


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any], provenance: Mapping[str, Any]) -> Path:
    """Write ``metrics`` plus a ``provenance`` entry as strict JSON (nan -> null), atomically.

    Args:
        path: output file.
        metrics: the metrics dictionary.
        provenance: run metadata, stored under ``"provenance"``.

    Returns:
        The written path.
    """
    path = Path(path)
    doc = to_jsonable({**metrics, "provenance": provenance})
    atomic_write_bytes(path, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8"), private=False)
    return path


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], curves: CurveSet, *,
                 gallery: Sequence[GalleryItem] = (), provenance: Mapping[str, Any] | None = None,
                 title: str = "dentalmim evaluation report") -> ReportPaths:
    """Write ``metrics.json``, ``report.html`` and ``report.pdf`` into ``out_dir``.

    Args:
        out_dir: output folder (created when missing).
        metrics: the :func:`~dentalmim.evaluation.metrics.evaluate_detections` dictionary.
        curves: curve data from :func:`~dentalmim.evaluation.metrics.compute_curves`.
        gallery: worst cases, e.g. from :func:`select_gallery`.
        provenance: model version and sha256, config dict, dataset sha256, date, dentalmim version (see
            :func:`complete_provenance`).
        title: report title.

    Returns:
        The :class:`ReportPaths`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = complete_provenance(provenance)
    figures = plot_all(curves)
    plots = {k: figure_to_png(f) for k, f in figures.items()}
    rendered = [(g.kind, g.title, *render_gallery_item(g)) for g in gallery]
    cards = [(kind, text, png_bytes(crop), png_bytes(thumb)) for kind, text, crop, thumb in rendered]
    page = render_html(title, to_jsonable(metrics), plots, cards, to_jsonable(prov))
    html_path = out / "report.html"
    atomic_write_bytes(html_path, page.encode("utf-8"), private=False)
    pdf_path = write_pdf(out / "report.pdf", title, to_jsonable(metrics), figures, rendered, to_jsonable(prov))
    json_path = write_metrics_json(out / "metrics.json", metrics, prov)
    return ReportPaths(html=html_path, pdf=pdf_path, metrics_json=json_path)
