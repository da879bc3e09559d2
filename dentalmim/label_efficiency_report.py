"""Tables, plot and verdict of a label-efficiency study (:mod:`dentalmim.label_efficiency`).

A *summary* maps encoder -> label fraction -> ``{"mean", "low", "high", "spread", "n_seeds", "n_train_images"}``
of one metric: the mean over seeds, and a bootstrap 95 % CI (one seed) or mean -/+ sd over seeds (several).

With several seeds, every encoder is also compared with the baseline *paired by seed* (:func:`paired_differences`):
a seed draws the same labelled subset for every encoder, so ``encoder - baseline`` per seed removes the subset's
own luck from the comparison, and "better in k of n seeds" says how consistent a gain is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dentalmim.label_efficiency import LabelEfficiencyConfig

#: Metrics always reported per cell (the configured ``metric`` is added when it is another one).
REPORTED_METRICS: tuple[str, ...] = ("froc_fom", "auroc", "ap50", "sensitivity_at_1fp")
#: encoder -> label fraction -> aggregate of one metric (see the module docstring).
Summary = dict[str, dict[float, dict[str, Any]]]
#: encoder -> label fraction -> ``{"mean", "diffs", "seeds", "better", "n"}`` of ``encoder - baseline`` per seed.
Paired = dict[str, dict[float, dict[str, Any]]]


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def fmt_value(value: Any) -> str:
    """A metric value with 3 decimals; ``n/a`` for None / nan (undefined on this test set)."""
    value = _num(value)
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


def _pct(frac: float) -> str:
    return f"{frac * 100:g}%"


def _versus(name: str, value: float, base_name: str, base: float, pair: dict[str, Any] | None = None) -> str:
    delta = value - base
    shown = f"{delta:+.3f}" if math.isfinite(delta) else "n/a"
    if pair is not None and pair["n"] > 1:
        shown += f"; paired by seed {pair['mean']:+.3f}, better in {pair['better']} of {pair['n']} seeds"
    return f"{name} {fmt_value(value)} vs {base_name} {fmt_value(base)} ({shown})"


def paired_differences(cells: list[dict[str, Any]], metric: str, baseline: str) -> Paired:
    """``encoder - baseline`` of ``metric`` per (fraction, seed) where both cells have a defined value.

    Returns:
        encoder (not the baseline) -> fraction -> ``{"mean": mean difference, "diffs": per seed, "seeds": seeds,
        "better": seeds where the encoder beats the baseline, "n": paired seeds}``; fractions without a pair are
        left out.
    """
    values: dict[tuple[str, float, int], float] = {}
    for cell in cells:
        values[(cell["encoder"], cell["fraction"], cell["seed"])] = _num(cell["metrics"].get(metric))
    out: Paired = {}
    for (name, frac, seed), value in sorted(values.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        base = values.get((baseline, frac, seed), math.nan)
        if name == baseline or not (math.isfinite(value) and math.isfinite(base)):
            continue
        entry = out.setdefault(name, {}).setdefault(frac, {"diffs": [], "seeds": []})
        entry["diffs"].append(value - base)
        entry["seeds"].append(seed)
    for per in out.values():
        for entry in per.values():
            diffs = np.array(entry["diffs"])
            entry.update(mean=float(diffs.mean()), better=int((diffs > 0).sum()), n=len(diffs))
    return out


def verdict(summary: Summary, metric: str, baseline: str, paired: Paired | None = None) -> str:
    """E.g. ``froc_fom (...) at 10% labels (3 images): mae 0.410 vs scratch 0.220 (+0.190); at 100% ...``; with
    ``paired`` (several seeds) each comparison adds the mean seed-paired difference and "better in k of n seeds"
    (they differ from the difference of means when a cell is undefined)."""
    fractions = sorted({f for per in summary.values() for f in per})
    parts = []
    for frac in sorted({fractions[0], fractions[-1]}):
        base = summary[baseline][frac]
        others = [_versus(name, per[frac]["mean"], baseline, base["mean"], (paired or {}).get(name, {}).get(frac))
                  for name, per in summary.items() if name != baseline and frac in per]
        body = ", ".join(others) if others else f"{baseline} {fmt_value(base['mean'])}"
        parts.append(f"at {_pct(frac)} labels ({base['n_train_images']:g} images): {body}")
    seeds = max(c["n_seeds"] for per in summary.values() for c in per.values())
    return f"{metric} on the test set (mean of {seeds} seed(s)) " + "; ".join(parts)


def summarise(cells: list[dict[str, Any]], metric: str) -> Summary:
    """Aggregate the cells over seeds (see :attr:`LabelEfficiencyResult.summary`)."""
    out: Summary = {}
    for cell in cells:
        out.setdefault(cell["encoder"], {}).setdefault(cell["fraction"], {"cells": []})["cells"].append(cell)
    for per in out.values():
        for entry in per.values():
            group = entry.pop("cells")
            values = np.array([_num(c["metrics"].get(metric)) for c in group])
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if finite.size else math.nan
            if len(group) == 1:
                low, high = (_num(v) for v in (group[0]["ci"].get(metric) or [None, None]))
                spread = "bootstrap 95% CI"
            else:
                sd = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
                low, high, spread = mean - sd, mean + sd, "mean -/+ sd over seeds"
            entry.update(mean=mean, low=low, high=high, spread=spread, n_seeds=len(group),
                         n_train_images=float(np.mean([c["n_train_images"] for c in group])))
    return out


def _table(summary: Summary) -> list[str]:
    """Markdown rows: one per encoder, one column per fraction, ``mean [low, high]``."""
    fractions = sorted({f for per in summary.values() for f in per})
    first = next(iter(summary.values()))
    head = [f"{_pct(f)} ({first[f]['n_train_images']:g} img)" if f in first else _pct(f) for f in fractions]
    rows = ["| encoder | " + " | ".join(head) + " |", "|---|" + "---|" * len(fractions)]
    for name, per in summary.items():
        cells = []
        for frac in fractions:
            e = per.get(frac)
            cells.append("-" if e is None else
                         f"{fmt_value(e['mean'])} [{fmt_value(e['low'])}, {fmt_value(e['high'])}]")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def _paired_table(paired: Paired, baseline: str, metric: str) -> list[str]:
    """Markdown rows of the paired differences: ``mean (better in k of n; per-seed values)`` per fraction."""
    fractions = sorted({f for per in paired.values() for f in per})
    if not fractions:
        return []
    rows = [f"Paired by seed, {metric} minus {baseline} (same labelled subset): mean (seeds better; per seed)", "",
            "| encoder | " + " | ".join(_pct(f) for f in fractions) + " |", "|---|" + "---|" * len(fractions)]
    for name, per in paired.items():
        cells = []
        for frac in fractions:
            e = per.get(frac)
            cells.append("-" if e is None else f"{e['mean']:+.3f} ({e['better']}/{e['n']}; "
                         + ", ".join(f"{d:+.3f}" for d in e["diffs"]) + ")")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*rows, ""]


def write_markdown(cfg: LabelEfficiencyConfig, cells: list[dict[str, Any]], data: dict[str, Any],
                   line: str, path: Path, baseline: str) -> Path:
    """``label_efficiency.md``: one table per reported metric (rows encoders, columns label fractions), and with
    several seeds the paired differences from ``baseline`` below each."""
    test, val = data["test"], data["val"]
    seeds = f"seed {cfg.seeds[0]}: mean [bootstrap 95% CI]" if len(cfg.seeds) == 1 else \
        f"seeds {list(cfg.seeds)}: mean [mean - sd, mean + sd] over seeds"
    lines = ["# Label efficiency", "",
             f"Test set `{cfg.test_coco.name}`: {test['images']} images, {test['patients']} patients, "
             f"{test['lesions']} lesions. Training pool: {data['pool']['images']} images of "
             f"{data['pool']['patients']} patients; columns give the share of its patients and the mean number of "
             "labelled training images. "
             + (f"Validation (checkpoint and thresholds, shared by every cell, not counted): {val['images']} image(s) "
                f"of {val['patients']} patient(s). " if val else "No validation set (last checkpoint). ")
             + f"Fine-tuning: `{cfg.finetune_config.name}`, {cfg.finetune_steps} steps per cell; {seeds}.", ""]
    for metric in dict.fromkeys((cfg.metric, *REPORTED_METRICS)):
        lines += [f"## {metric}" + (" (headline)" if metric == cfg.metric else ""), "",
                  *_table(summarise(cells, metric)), ""]
        if len(cfg.seeds) > 1:
            lines += _paired_table(paired_differences(cells, metric, baseline), baseline, metric)
    total = sum(c["seconds"] or 0 for c in cells)
    lines += [f"{len(cells)} cells, {total / 60:.1f} min of fine-tuning and evaluation.", "", line, ""]
    path.write_text("\n".join(lines))
    return path


def write_plot(summary: Summary, metric: str, baseline: str, path: Path) -> Path:
    """``label_efficiency.png``: metric vs labelled fraction (log x), one line and band per encoder."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, per in summary.items():
        fracs = sorted(per)
        mean, low, high = (np.array([per[f][k] for f in fracs], dtype=float) for k in ("mean", "low", "high"))
        (line,) = ax.plot(fracs, mean, marker="o", label=name, linestyle="--" if name == baseline else "-")
        ax.fill_between(fracs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    fracs = sorted({f for per in summary.values() for f in per})
    ref = summary[baseline]
    ax.set_xscale("log")
    ax.set_xticks(fracs, [f"{_pct(f)}\n({ref[f]['n_train_images']:g} img)" if f in ref else _pct(f) for f in fracs])
    ax.minorticks_off()
    spread = next(iter(ref.values()))["spread"]
    ax.set_xlabel("labelled training fraction (labelled images)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{metric} vs labels (band: {spread})", fontsize=11)
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=150)
    return path
