"""Leaderboard of a paradigm benchmark (:mod:`dentalmim.paradigms`): markdown, JSON and plot.

Rows are ranked by the headline metric (undefined values last); compute cost sits beside accuracy.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dentalmim.label_efficiency_report import REPORTED_METRICS, fmt_value

if TYPE_CHECKING:
    from dentalmim.paradigms import ParadigmConfig


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def ranked(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows sorted by ``metric`` (highest first; rows without a value last, in their order)."""
    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = _num(row["metrics"].get(metric))
        return (1, 0.0) if math.isnan(value) else (0, -value)

    return sorted(rows, key=key)


def _pretrain_cost(row: dict[str, Any]) -> dict[str, Any]:
    return row.get("pretrain") or {}


def total_hours(row: dict[str, Any]) -> float:
    """CPU + GPU hours of pretraining and fine-tuning of a row."""
    stages = [_pretrain_cost(row), row.get("finetune") or {}]
    return sum(_num(s.get("cpu_hours", 0.0)) + _num(s.get("gpu_hours", 0.0)) for s in stages)


def ranking_line(rows: list[dict[str, Any]], metric: str) -> str:
    """E.g. ``froc_fom on the test set: mae 0.41 (pretrain 3.2 min), simmim 0.38 (...), scratch 0.22``."""
    parts = []
    for row in ranked(rows, metric):
        wall = _pretrain_cost(row).get("wall_s")
        cost = f" (pretrain {wall / 60:.1f} min)" if wall else ""
        parts.append(f"{row['paradigm']} {fmt_value(row['metrics'].get(metric))}{cost}")
    return f"{metric} on the test set: " + ", ".join(parts)


def _fmt_ci(row: dict[str, Any], key: str) -> str:
    ci = row.get("ci", {}).get(key)
    shown = fmt_value(row["metrics"].get(key))
    return f"{shown} [{fmt_value(ci[0])}, {fmt_value(ci[1])}]" if ci else shown


def _fmt(value: Any, spec: str) -> str:
    value = _num(value)
    return "n/a" if math.isnan(value) else format(value, spec)


def markdown(cfg: ParadigmConfig, rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    """The leaderboard as markdown: accuracy table, representation table, compute table."""
    metric = cfg.metric
    others = [m for m in REPORTED_METRICS if m != metric]
    order = ranked(rows, metric)
    lines = [f"# Pretraining paradigm benchmark ({metric})", "",
             (f"Fine-tuned on {counts['train_images']} labelled images ({counts['train_patients']} patients, "
              f"{cfg.label_fraction:.0%} of the pool), {cfg.finetune_steps} steps; tested on "
              f"{counts['test_images']} images. Pretraining: {cfg.pretrain_steps} steps, seed {cfg.seed}."), "",
             (f"| rank | paradigm | objective | {metric} [95% CI] | " + " | ".join(others) + " |"),
             "|---|---|---|---|" + "---|" * len(others)]
    for i, row in enumerate(order, 1):
        lines.append(f"| {i} | {row['paradigm']} | {row.get('objective') or '-'} | {_fmt_ci(row, metric)} | "
                     + " | ".join(fmt_value(row["metrics"].get(m)) for m in others) + " |")
    lines += ["", "## Representations (layer probes on the labelled pool, patient-grouped CV)", "",
              ("`scratch`: a randomly initialised encoder of the same architecture (what pretraining has to "
               "beat)."), "",
              ("| paradigm | best layer | linear probe (best) | linear probe (last) | k-NN (last) | "
               "attention distance (last, px) | attention NMI (last) | high-freq amplitude (last) |"),
              "|---|---|---|---|---|---|---|---|"]
    for row in order:
        if "probe_best_layer" not in row:
            continue
        lines.append(f"| {row['paradigm']} | {row.get('probe_best_layer') or 'n/a'} | "
                     f"{fmt_value(row.get('probe_best_linear_acc'))} | {fmt_value(row.get('probe_last_linear_acc'))} | "
                     f"{fmt_value(row.get('probe_last_knn_acc'))} | {_fmt(row.get('last_attention_distance_px'), '.1f')} | "
                     f"{fmt_value(row.get('last_attention_nmi'))} | {fmt_value(row.get('last_fourier_high_freq'))} |")
    lines += ["", "## Compute", "",
              ("| paradigm | pretrain wall (min) | pretrain images/s | pretrain CPU h | pretrain GPU h | "
               "fine-tune wall (min) | fine-tune images/s | total CPU+GPU h |"), "|---|---|---|---|---|---|---|---|"]
    for row in order:
        pre, fin = _pretrain_cost(row), row.get("finetune") or {}
        lines.append(f"| {row['paradigm']} | {_fmt(pre.get('wall_s', math.nan) / 60, '.2f')} | "
                     f"{_fmt(pre.get('images_per_s'), '.1f')} | {_fmt(pre.get('cpu_hours'), '.4f')} | "
                     f"{_fmt(pre.get('gpu_hours'), '.4f')} | {_fmt(fin.get('wall_s', math.nan) / 60, '.2f')} | "
                     f"{_fmt(fin.get('images_per_s'), '.1f')} | {_fmt(total_hours(row), '.4f')} |")
    lines += ["", ("CPU hours count this process only (not dataloader worker processes); GPU hours are wall time x "
                   "GPUs used."), "", ranking_line(rows, metric), ""]
    return "\n".join(lines)


def write_plot(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """``leaderboard.png``: the metric with its CI per paradigm, and the metric versus compute hours."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = ranked(rows, metric)
    names = [r["paradigm"] for r in order]
    values = np.array([_num(r["metrics"].get(metric)) for r in order])
    cis = [r.get("ci", {}).get(metric) or [math.nan, math.nan] for r in order]
    low = np.array([_num(c[0]) for c in cis])
    high = np.array([_num(c[1]) for c in cis])
    err = np.nan_to_num(np.vstack([values - low, high - values]).clip(min=0))
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(names, np.nan_to_num(values), yerr=err, capsize=4, color="#1f5fa8")
    ax1.set_ylabel(f"test {metric}")
    ax1.set_title(f"{metric} (95% CI)", fontsize=11)
    ax1.grid(True, axis="y", alpha=0.35)
    hours = [total_hours(r) for r in order]
    ax2.scatter(hours, values, color="#d9480f")
    for name, x, y in zip(names, hours, values, strict=True):
        ax2.annotate(name, (x, 0.0 if math.isnan(y) else y), fontsize=9, xytext=(4, 4), textcoords="offset points")
    ax2.set_xlabel("compute (CPU + GPU hours, pretrain + fine-tune)")
    ax2.set_ylabel(f"test {metric}")
    ax2.set_title("accuracy vs compute", fontsize=11)
    ax2.grid(True, alpha=0.35)
    fig.savefig(path, dpi=150)
    return path


def write_leaderboard(cfg: ParadigmConfig, rows: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Path]:
    """Write ``leaderboard.md`` / ``.json`` / ``.png`` into ``cfg.out``; return their paths."""
    from dentalmim import __version__
    from dentalmim.evaluation.metrics_summary import to_jsonable
    from dentalmim.label_efficiency import _machine

    paths = {"md": cfg.out / "leaderboard.md", "json": cfg.out / "leaderboard.json", "png": cfg.out / "leaderboard.png"}
    payload = {"dentalmim_version": __version__, "config": cfg.to_dict(), "metric": cfg.metric, "counts": counts,
               "ranking": [r["paradigm"] for r in ranked(rows, cfg.metric)], "rows": rows, "machine": _machine(),
               "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    paths["json"].write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    paths["md"].write_text(markdown(cfg, rows, counts))
    write_plot(rows, cfg.metric, paths["png"])
    return paths
