"""Representation-analysis measures on constructed inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dentalmim.evaluation.analysis import (
    attention_distance,
    attention_nmi,
    fourier_profile,
    grouped_folds,
    high_frequency_amplitude,
    knn_accuracy,
    linear_probe_accuracy,
    patch_attention,
    patch_distances,
    probe_scores,
)

GRID = (4, 6)
L = GRID[0] * GRID[1]


def uniform(b: int = 2, heads: int = 3, n: int = L) -> torch.Tensor:
    return torch.full((b, heads, n, n), 1.0 / n)


def identity(b: int = 2, heads: int = 3, n: int = L) -> torch.Tensor:
    return torch.eye(n).expand(b, heads, n, n).clone()


def test_patch_distances_are_euclidean_in_patch_units() -> None:
    d = patch_distances((2, 3), patch_size=16)
    assert d.shape == (6, 6)
    assert d[0, 1] == pytest.approx(16) and d[0, 3] == pytest.approx(16)  # right and below neighbours
    assert d[0, 5] == pytest.approx(16 * math.sqrt(1 + 4))
    assert torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)


def test_uniform_attention_gives_the_mean_pairwise_distance_and_zero_nmi() -> None:
    attn = uniform()
    expected = float(patch_distances(GRID, 16).mean())  # every query averages its distances to all keys
    dist = attention_distance(attn, GRID, patch_size=16)
    assert dist.shape == (2, 3) and torch.allclose(dist, torch.full((2, 3), expected), atol=1e-4)
    assert torch.allclose(attention_nmi(attn), torch.zeros(2, 3), atol=1e-6)


def test_attention_to_oneself_gives_zero_distance_and_maximal_nmi() -> None:
    attn = identity()
    assert torch.allclose(attention_distance(attn, GRID, 16), torch.zeros(2, 3))
    assert torch.allclose(attention_nmi(attn), torch.ones(2, 3), atol=1e-6)
    perm = torch.eye(L)[torch.randperm(L, generator=torch.Generator().manual_seed(0))]
    assert torch.allclose(attention_nmi(perm.expand(1, 1, L, L)), torch.ones(1, 1), atol=1e-6)


def test_collapsed_attention_has_zero_nmi_but_can_be_far() -> None:
    """Every query attends to patch 0 (the top-left corner): the same pattern for every query -> NMI 0."""
    attn = torch.zeros(1, 1, L, L)
    attn[..., 0] = 1.0
    assert float(attention_nmi(attn)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_distance(attn, GRID, 1)) == pytest.approx(float(patch_distances(GRID)[:, 0].mean()))


def test_local_attention_is_between_the_extremes() -> None:
    d = patch_distances(GRID)
    local = torch.softmax(-4.0 * d, dim=-1).expand(1, 2, L, L)
    dist, nmi = float(attention_distance(local, GRID).mean()), float(attention_nmi(local).mean())
    assert 0.0 < dist < float(d.mean()) and 0.0 < nmi < 1.0


def test_patch_attention_drops_the_cls_token_and_renormalises() -> None:
    attn = torch.softmax(torch.randn(2, 3, 1 + L, 1 + L), dim=-1)
    pa = patch_attention(attn, num_prefix=1)
    assert pa.shape == (2, 3, L, L)
    assert torch.allclose(pa.sum(-1), torch.ones(2, 3, L), atol=1e-5)
    assert torch.allclose(pa[0, 0, 0], attn[0, 0, 1, 1:] / attn[0, 0, 1, 1:].sum(), atol=1e-6)
    with pytest.raises(ValueError, match="keys for grid"):
        attention_distance(attn, GRID)


def checkerboard(grid: tuple[int, int], d: int = 8, b: int = 2) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    board = ((yy + xx) % 2 * 2 - 1).float().flatten()  # +-1, the highest frequency (pi, pi)
    return board[None, :, None].expand(b, -1, d) * torch.linspace(0.5, 2.0, d)


def smooth(grid: tuple[int, int], d: int = 8, b: int = 2) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(grid[0]).float(), torch.arange(grid[1]).float(), indexing="ij")
    ramp = (1.0 + 0.1 * yy + 0.05 * xx).flatten()  # mostly DC
    return ramp[None, :, None].expand(b, -1, d).clone()


def test_a_checkerboard_has_high_amplitude_at_high_frequencies() -> None:
    grid = (8, 8)
    prof = fourier_profile(checkerboard(grid), grid)
    assert prof.shape == (5,) and prof[0] == 0
    assert prof[-1] > 5.0 and prof[-1] > prof[1]  # energy only at (pi, pi), none at DC
    assert high_frequency_amplitude(checkerboard(grid), grid) > high_frequency_amplitude(smooth(grid), grid)
    assert float(fourier_profile(smooth(grid), grid)[-1]) < 0  # a smooth map: less at high than at DC


def test_fourier_profile_checks_the_grid() -> None:
    with pytest.raises(ValueError, match="patches for grid"):
        fourier_profile(torch.zeros(1, 10, 4), (4, 4))


def clusters(n: int, d: int = 6, sep: float = 6.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, d))
    x[:, 0] += sep * (y - 0.5)
    return x, y


def test_linearly_separable_features_give_probe_accuracy_one() -> None:
    x, y = clusters(60)
    assert linear_probe_accuracy(x[:40], y[:40], x[40:], y[40:]) == 1.0
    assert knn_accuracy(x[:40], y[:40], x[40:], y[40:], k=5) == 1.0


def test_probes_are_at_chance_on_noise_and_knn_finds_nonlinear_clusters() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 4)), rng.integers(0, 2, 400)
    assert 0.35 < linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) < 0.65
    # XOR-like: four clusters, not linearly separable, but neighbours share labels
    centres = np.array([[5, 5], [-5, -5], [5, -5], [-5, 5]], dtype=float)
    labels = np.array([0, 0, 1, 1])
    idx = rng.integers(0, 4, 200)
    pts, lab = centres[idx] + rng.normal(scale=0.5, size=(200, 2)), labels[idx]
    assert knn_accuracy(pts[:100], lab[:100], pts[100:], lab[100:], k=3) == 1.0
    assert linear_probe_accuracy(pts[:100], lab[:100], pts[100:], lab[100:]) < 0.8


def test_grouped_folds_never_split_a_group() -> None:
    groups = [f"p{i // 3}" for i in range(30)]
    folds = grouped_folds(groups, 4, seed=0)
    assert len(folds) == 4 and np.all(np.sum(folds, axis=0) == 1)  # a partition
    for mask in folds:
        inside = {g for g, m in zip(groups, mask, strict=True) if m}
        outside = {g for g, m in zip(groups, mask, strict=True) if not m}
        assert inside and not inside & outside
    with pytest.raises(ValueError, match="at least 2 distinct groups"):
        grouped_folds(["a", "a"], 2)


def test_probe_scores_cross_validate_and_handle_single_class() -> None:
    x, y = clusters(40)
    groups = [f"p{i // 2}" for i in range(40)]
    scores = probe_scores(x, y, groups, n_folds=4)
    assert scores == {"linear": 1.0, "knn": 1.0, "folds": 4}
    assert probe_scores(x, np.zeros(40, dtype=int), groups) == {"linear": None, "knn": None, "folds": 0}
