"""Patient-level splits and label-fraction subsets of a :class:`~dentalmim.data.coco.CocoDataset`.

Every image of a patient lands in the same split (no leakage between train and evaluation). Patients with at
least one lesion ("positive") and caries-free patients are allocated separately, so each split gets positives
whenever there are enough positive patients. Both functions are deterministic for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dentalmim.data.coco import CocoDataset

__all__ = ["allocate", "patient_fraction", "split_by_patient"]


def allocate(n: int, fractions: Sequence[float], *, ensure_each: bool = False) -> list[int]:
    """Split ``n`` items into counts proportional to ``fractions`` (largest remainder; counts sum to ``n``).

    Args:
        n: number of items.
        fractions: non-negative shares summing to 1.
        ensure_each: give every split with a positive share at least one item when ``n`` allows it.
    """
    quotas = [n * f for f in fractions]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if ensure_each and n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _groups(ds: CocoDataset, seed: int) -> tuple[list[str], list[str]]:
    """Positive and negative patient ids, each in a seeded random order."""
    positive_images = {a.image_id for a in ds.annotations}
    patients = ds.patients()
    pos = sorted(p for p, ids in patients.items() if positive_images.intersection(ids))
    neg = sorted(set(patients) - set(pos))
    rng = np.random.default_rng(seed)
    return [pos[i] for i in rng.permutation(len(pos))], [neg[i] for i in rng.permutation(len(neg))]


def split_by_patient(ds: CocoDataset, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                     seed: int = 0) -> tuple[CocoDataset, ...]:
    """Split a dataset by patient into ``len(fractions)`` parts (e.g. train / val / test).

    Args:
        ds: the dataset.
        fractions: share of patients per split, non-negative, summing to 1 (a 0 gives an empty split).
        seed: seed of the patient shuffle.

    Returns:
        One dataset per fraction; fractions hold approximately by patient count, positives and caries-free
        patients are spread separately.
    """
    if not fractions or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions should be non-negative and sum to 1, got {tuple(fractions)}.")
    pos, neg = _groups(ds, seed)
    chosen: list[list[str]] = [[] for _ in fractions]
    for group, ensure in ((pos, True), (neg, False)):
        start = 0
        for k, count in enumerate(allocate(len(group), fractions, ensure_each=ensure)):
            chosen[k] += group[start:start + count]
            start += count
    patients = ds.patients()
    return tuple(ds.subset(i for p in split for i in patients[p]) for split in chosen)


def patient_fraction(ds: CocoDataset, frac: float, seed: int = 0) -> list[int]:
    """Image ids of about ``frac`` of the patients, positives and negatives in proportion.

    Nested for a fixed seed: a smaller ``frac`` selects a prefix of the same patient order. At least one
    patient (a positive one if any exists) is kept.
    """
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac should be in (0, 1], got {frac}.")
    pos, neg = _groups(ds, seed)
    n_pos = math.ceil(frac * len(pos) - 1e-9)
    n_neg = math.floor(frac * len(neg) + 0.5)
    if n_pos + n_neg == 0:
        n_neg = 1
    patients = ds.patients()
    return [i for p in pos[:n_pos] + neg[:n_neg] for i in patients[p]]
