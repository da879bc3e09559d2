"""Representation analysis of ViT encoders: pure tensor functions, each tested on inputs with known answers.

The measures follow the comparison of reconstruction- and contrastive-based pretraining in the MIM literature
(e.g. Park et al., "What do self-supervised ViTs learn?", ICLR 2023):

* :func:`attention_distance`: mean distance between a query patch and the patches it attends to, weighted by the
  attention. Large: global attention (typical of contrastive pretraining, later layers); small: local.
* :func:`attention_nmi`: normalised mutual information between query and key positions of an attention map.
  Near 0: every query attends to the same keys ("attention collapse", typical of contrastive pretraining);
  near 1: each query attends to its own keys.
* :func:`fourier_profile` / :func:`high_frequency_amplitude`: relative log amplitude of the 2-D Fourier transform
  of the token feature maps. High values at high frequencies: the features carry texture / high-frequency detail
  (typical of reconstruction pretraining); low values: they are smooth, shape-like.
* :func:`linear_probe_accuracy` and :func:`knn_accuracy`: how linearly / locally separable the classes are in a
  layer's pooled features, cross-validated over patient groups by :func:`probe_scores`.

Shapes: attention ``(B, heads, N, N)`` over patch tokens only (no cls token; see :func:`patch_attention`), rows
summing to 1; token features ``(B, L, D)`` with ``L = gh * gw`` patches in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["attention_distance", "attention_nmi", "fourier_profile", "grouped_folds", "high_frequency_amplitude",
           "knn_accuracy", "linear_probe_accuracy", "patch_attention", "patch_distances", "probe_scores"]

_EPS = 1e-12


def patch_attention(attn: torch.Tensor, num_prefix: int = 1) -> torch.Tensor:
    """Patch-to-patch part of an attention map, rows renormalised to sum to 1.

    Args:
        attn: (B, heads, P + L, P + L) attention probabilities with ``P = num_prefix`` leading tokens (cls).
        num_prefix: leading non-patch tokens to drop.

    Returns:
        (B, heads, L, L) attention of patch queries over patch keys.
    """
    a = attn[..., num_prefix:, num_prefix:].float()
    return a / a.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def patch_distances(grid: tuple[int, int], patch_size: float = 1.0) -> torch.Tensor:
    """Euclidean distances between patch centres of a row-major grid: (L, L), in units of ``patch_size``."""
    gh, gw = grid
    yy, xx = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                            indexing="ij")  # fmt: skip
    centres = torch.stack([yy.flatten(), xx.flatten()], dim=1) * float(patch_size)
    return torch.cdist(centres, centres)


def attention_distance(attn: torch.Tensor, grid: tuple[int, int], patch_size: float = 1.0) -> torch.Tensor:
    """Mean attention distance per image and head: ``mean_q sum_k a[q, k] * |pos_q - pos_k|``.

    Args:
        attn: (B, heads, L, L) patch attention (rows sum to 1), ``L = gh * gw``.
        grid: (gh, gw) patch grid.
        patch_size: patch side in pixels (the result is in pixels), or in mm for a result in mm.

    Returns:
        (B, heads) mean distances. Uniform attention gives the mean pairwise distance of the grid; attention to
        oneself gives 0.
    """
    dist = patch_distances(grid, patch_size).to(attn.device)
    if attn.shape[-1] != dist.shape[0]:
        raise ValueError(f"attn should have {dist.shape[0]} keys for grid {grid}, got {attn.shape[-1]}.")
    return (attn.float() * dist).sum(dim=-1).mean(dim=-1)


def attention_nmi(attn: torch.Tensor) -> torch.Tensor:
    """Normalised mutual information between query and key positions, per image and head.

    Queries are uniform, ``p(q) = 1 / N``, and ``p(k | q) = attn[q, k]``, so ``p(q, k) = attn[q, k] / N`` and
    ``p(k) = mean_q attn[q, k]``. The result is ``I(Q; K) / sqrt(H(Q) H(K))`` in [0, 1].

    Args:
        attn: (B, heads, N, N) attention, rows summing to 1.

    Returns:
        (B, heads) NMI: 0 when every query has the same attention distribution (uniform attention included), 1
        for a permutation (each query attends to one key of its own).
    """
    a = attn.double()
    n = a.shape[-1]
    p_k = a.mean(dim=-2)  # (B, h, N)
    ratio = a / p_k.unsqueeze(-2).clamp_min(_EPS)
    mi = (a * torch.log(ratio.clamp_min(_EPS))).sum(dim=(-2, -1)) / n
    h_q = math.log(n)
    h_k = -(p_k * torch.log(p_k.clamp_min(_EPS))).sum(dim=-1)
    denom = (h_q * h_k).clamp_min(_EPS).sqrt()
    return (mi.clamp_min(0.0) / denom).where(h_k > 1e-9, torch.zeros_like(mi)).float()


def _feature_maps(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    b, length, d = tokens.shape
    if length != grid[0] * grid[1]:
        raise ValueError(f"tokens should have {grid[0] * grid[1]} patches for grid {grid}, got {length}.")
    return tokens.float().transpose(1, 2).reshape(b, d, grid[0], grid[1])


def fourier_profile(tokens: torch.Tensor, grid: tuple[int, int], num_bins: int | None = None) -> torch.Tensor:
    """Relative log amplitude of the token feature maps' 2-D Fourier transform versus radial frequency.

    Each channel of the (gh, gw) feature map is Fourier transformed; the amplitude is averaged over images and
    channels, binned by radial frequency ``|f| / f_max`` (``f_max`` = the corner frequency (pi, pi)), logged, and
    the value of the lowest bin (DC) subtracted.

    Args:
        tokens: (B, L, D) patch tokens.
        grid: (gh, gw) with gh * gw = L.
        num_bins: frequency bins from 0 to the highest frequency (default ``max(gh, gw) // 2 + 1``).

    Returns:
        (num_bins,) ``log amplitude(f) - log amplitude(0)``; bins without frequencies are NaN.
    """
    maps = _feature_maps(tokens, grid)
    amp = torch.fft.fft2(maps).abs().mean(dim=(0, 1))  # (gh, gw)
    fy = torch.fft.fftfreq(grid[0]).abs() * 2.0  # in units of the Nyquist frequency: 0 .. 1
    fx = torch.fft.fftfreq(grid[1]).abs() * 2.0
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / math.sqrt(2.0)  # 0 .. 1 at (pi, pi)
    bins = num_bins or max(grid) // 2 + 1
    index = torch.clamp((radius * (bins - 1)).round().long(), 0, bins - 1)
    sums = torch.zeros(bins).index_add_(0, index.flatten(), amp.flatten())
    counts = torch.zeros(bins).index_add_(0, index.flatten(), torch.ones(index.numel()))
    mean = sums / counts.clamp_min(1)
    log_amp = torch.log(mean + 1e-6 * float(amp.max().clamp_min(_EPS)))
    profile = log_amp - log_amp[0]
    return profile.where(counts > 0, torch.full_like(profile, float("nan")))


def high_frequency_amplitude(tokens: torch.Tensor, grid: tuple[int, int]) -> float:
    """Relative log amplitude at high frequencies: the mean of the upper half of :func:`fourier_profile`."""
    profile = fourier_profile(tokens, grid)
    upper = profile[profile.numel() // 2:]
    upper = upper[torch.isfinite(upper)]
    return float(upper.mean()) if upper.numel() else float("nan")


# ------------------------------------------------------------------------------------------------------- probes
def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(dim=0, keepdim=True), train.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _as_tensors(*arrays: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
    return [torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a) for a in arrays]


def linear_probe_accuracy(train_x: np.ndarray | torch.Tensor, train_y: np.ndarray | torch.Tensor,
                          test_x: np.ndarray | torch.Tensor, test_y: np.ndarray | torch.Tensor, *,
                          weight_decay: float = 1e-3, max_iter: int = 100) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features (full-batch L-BFGS).

    Args:
        train_x: (N, D) training features.
        train_y: (N,) integer labels.
        test_x: (M, D) test features.
        test_y: (M,) integer labels.
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.

    Returns:
        Fraction of test samples classified correctly.
    """
    train_x, train_y, test_x, test_y = _as_tensors(train_x, train_y, test_x, test_y)
    xtr, xte = _standardise(train_x.double(), test_x.double())
    ytr, yte = train_y.long(), test_y.long()
    classes = int(max(ytr.max(), yte.max())) + 1
    layer = torch.nn.Linear(xtr.shape[1], classes, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(xtr), ytr) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((layer(xte).argmax(dim=1) == yte).double().mean())


def knn_accuracy(train_x: np.ndarray | torch.Tensor, train_y: np.ndarray | torch.Tensor,
                 test_x: np.ndarray | torch.Tensor, test_y: np.ndarray | torch.Tensor, k: int = 5) -> float:
    """Test accuracy of a k-nearest-neighbour majority vote by cosine similarity of centred features.

    Args:
        train_x: (N, D) training features.
        train_y: (N,) integer labels.
        test_x: (M, D) test features.
        test_y: (M,) integer labels.
        k: neighbours (at most N); ties go to the class of the nearest neighbour among the tied ones.

    Returns:
        Fraction of test samples classified correctly.
    """
    train_x, train_y, test_x, test_y = _as_tensors(train_x, train_y, test_x, test_y)
    mean = train_x.double().mean(dim=0, keepdim=True)
    xtr, xte = F.normalize(train_x.double() - mean, dim=1), F.normalize(test_x.double() - mean, dim=1)
    k = max(1, min(k, xtr.shape[0]))
    _, idx = (xte @ xtr.T).topk(k, dim=1)
    labels = train_y.long()[idx]  # (M, k), nearest first
    classes = int(max(train_y.max(), test_y.max())) + 1
    votes = F.one_hot(labels, classes).double().sum(dim=1)
    # tie-break by the nearest neighbour: a small bonus that decreases with rank
    bonus = F.one_hot(labels, classes).double() * torch.linspace(1e-3, 1e-6, k, dtype=torch.float64)[None, :, None]
    pred = (votes + bonus.sum(dim=1)).argmax(dim=1)
    return float((pred == test_y.long()).double().mean())


def grouped_folds(groups: Sequence[object], n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Split samples into ``n_folds`` test folds so that no group (patient) spans two folds.

    Args:
        groups: one group label per sample.
        n_folds: folds (at most the number of groups).
        seed: shuffles the groups before they are dealt round-robin to the folds.

    Returns:
        One boolean (N,) test mask per fold; the masks partition the samples.
    """
    keys = sorted({str(g) for g in groups})
    if len(keys) < 2:
        raise ValueError(f"groups should hold at least 2 distinct groups for a split, got {len(keys)}.")
    n_folds = max(2, min(n_folds, len(keys)))
    order = np.random.default_rng(seed).permutation(len(keys))
    fold_of = {keys[j]: i % n_folds for i, j in enumerate(order)}
    labels = np.array([fold_of[str(g)] for g in groups])
    return [labels == f for f in range(n_folds)]


def probe_scores(features: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray,
                 groups: Sequence[object], *, n_folds: int = 5, k: int = 5, seed: int = 0) -> dict[str, float | None]:
    """Linear-probe and k-NN accuracy, cross-validated over groups (patients).

    Folds whose training part holds a single class are skipped.

    Args:
        features: (N, D) pooled features.
        labels: (N,) integer labels.
        groups: (N,) patient (or image) of each sample.
        n_folds: cross-validation folds.
        k: neighbours of the k-NN classifier.
        seed: fold assignment.

    Returns:
        ``{"linear": acc, "knn": acc, "folds": n}``; accuracies are sample-weighted over the usable folds, None
        when no fold is usable (one class only, or fewer than 2 groups).
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    y = np.asarray(labels, dtype=np.int64)
    if len(set(y.tolist())) < 2 or len({str(g) for g in groups}) < 2:
        return {"linear": None, "knn": None, "folds": 0}
    correct = {"linear": 0.0, "knn": 0.0}
    seen, used = 0, 0
    for test in grouped_folds(groups, n_folds, seed):
        train = ~test
        if len(set(y[train].tolist())) < 2 or not test.any():
            continue
        n_test = int(test.sum())
        args = (x[train], torch.as_tensor(y[train]), x[test], torch.as_tensor(y[test]))
        correct["linear"] += linear_probe_accuracy(*args) * n_test
        correct["knn"] += knn_accuracy(*args, k=k) * n_test
        seen, used = seen + n_test, used + 1
    if not seen:
        return {"linear": None, "knn": None, "folds": 0}
    return {"linear": correct["linear"] / seen, "knn": correct["knn"] / seen, "folds": used}
