"""Non-parametric bootstrap confidence intervals, resampling images (or patients).

A resample is represented by a row of *count weights*: ``weights[b, i]`` is how many times image ``i`` was drawn
in resample ``b``. Metrics written in weighted form (``weights (B, n) -> values (B,)``) evaluate every resample
in one vectorised call (:func:`bootstrap_weighted`); any plain metric of a list of items works through
:func:`bootstrap_ci`. Both draw the same resamples for the same seed, so they agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

__all__ = ["Estimate", "WeightedMetric", "bootstrap_ci", "bootstrap_weighted", "bootstrap_weights",
           "percentile_interval"]

T = TypeVar("T")
#: A metric in weighted form: count weights (B, n_items) -> metric values (B,).
WeightedMetric = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval (nan when undefined)."""

    value: float
    ci_low: float
    ci_high: float


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 0:
        raise ValueError(f"n_boot should be >= 0, got {n_boot}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha should be in (0, 1), got {alpha}.")


def bootstrap_weights(n_items: int, n_boot: int, seed: int = 0,
                      groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """Count weights of ``n_boot`` resamples with replacement.

    Args:
        n_items: number of items (images).
        n_boot: number of resamples.
        seed: seed of ``numpy.random.default_rng``; equal seeds give equal resamples.
        groups: (n_items,) group id per item (e.g. patient id); when given, whole groups are resampled (as many
            draws as there are groups) and each item inherits its group's count.

    Returns:
        (n_boot, n_items) float64 counts.
    """
    if n_items < 1:
        raise ValueError(f"n_items should be >= 1, got {n_items}.")
    rng = np.random.default_rng(seed)
    if groups is None:
        inverse, n_units = np.arange(n_items), n_items
    else:
        if len(groups) != n_items:
            raise ValueError(f"groups should have length {n_items}, got {len(groups)}.")
        keys = {g: k for k, g in enumerate(dict.fromkeys(groups))}
        inverse, n_units = np.array([keys[g] for g in groups]), len(keys)
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = (draws + n_units * np.arange(n_boot)[:, None]).reshape(-1)
    counts = np.bincount(flat, minlength=n_boot * n_units).reshape(n_boot, n_units).astype(np.float64)
    return counts[:, inverse]


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of bootstrap samples, ignoring resamples where the metric is undefined (nan).

    Args:
        samples: (B,) metric values.
        alpha: 1 - coverage.

    Returns:
        ``(low, high)``; nan when no sample is finite.
    """
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(s, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(metric_fn: Callable[[list[T]], float], items: Sequence[T], *, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05, groups: Sequence[Hashable] | None = None) -> Estimate:
    """Bootstrap interval of any metric of a list of items (one call per resample).

    Args:
        metric_fn: metric of a list of items (e.g. images) -> float (nan when undefined).
        items: the evaluation units (images).
        n_boot: number of resamples (0 = no interval).
        seed: resampling seed.
        alpha: 1 - coverage (0.05 = 95% interval).
        groups: optional group id per item (patient-level resampling).

    Returns:
        The point estimate on ``items`` and the percentile interval.
    """
    _check(n_boot, alpha)
    items = list(items)
    value = float(metric_fn(items))
    if n_boot == 0:
        return Estimate(value, float("nan"), float("nan"))
    weights = bootstrap_weights(len(items), n_boot, seed, groups).astype(np.int64)
    samples = [float(metric_fn([it for it, c in zip(items, row, strict=True) for _ in range(c)]))
               for row in weights]
    return Estimate(value, *percentile_interval(np.array(samples), alpha))


def apply_chunked(metric_fn: WeightedMetric, weights: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Evaluate a weighted metric over the rows of ``weights`` in chunks (bounded memory).

    Args:
        metric_fn: weighted metric.
        weights: (B, n) count weights.
        chunk: rows per call.

    Returns:
        (B,) values.
    """
    out = [np.asarray(metric_fn(weights[s:s + chunk]), dtype=np.float64) for s in range(0, len(weights), chunk)]
    return np.concatenate(out) if out else np.zeros(0)


def bootstrap_weighted(metric_fn: WeightedMetric, n_items: int, *, n_boot: int = 1000, seed: int = 0,
                       alpha: float = 0.05, groups: Sequence[Hashable] | None = None,
                       weights: np.ndarray | None = None) -> Estimate:
    """Bootstrap interval of a metric in weighted form, all resamples vectorised.

    Args:
        metric_fn: count weights (B, n_items) -> values (B,).
        n_items: number of items.
        n_boot: number of resamples (0 = no interval); ignored when ``weights`` is given.
        seed: resampling seed.
        alpha: 1 - coverage.
        groups: optional group id per item (patient-level resampling).
        weights: precomputed (B, n_items) resample counts, shared across metrics so they use the same resamples.

    Returns:
        The point estimate (all weights 1) and the percentile interval.
    """
    _check(n_boot, alpha)
    value = float(np.asarray(metric_fn(np.ones((1, n_items))))[0])
    if weights is None:
        if n_boot == 0:
            return Estimate(value, float("nan"), float("nan"))
        weights = bootstrap_weights(n_items, n_boot, seed, groups)
    if weights.shape[0] == 0:
        return Estimate(value, float("nan"), float("nan"))
    if weights.ndim != 2 or weights.shape[1] != n_items:
        raise ValueError(f"weights should have shape (B, {n_items}), got {weights.shape}.")
    return Estimate(value, *percentile_interval(apply_chunked(metric_fn, weights), alpha))
