"""Optimiser helpers for pretraining: weight-decay parameter groups, batch-size lr scaling, warmup + cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

#: Reference batch of the linear lr scaling rule (MAE: ``lr = base_lr * batch / 256``).
LR_REFERENCE_BATCH = 256


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, skip_names: Iterable[str] = ()
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Norm weights, biases (every parameter with fewer than 2 dimensions) and parameters whose name ends with one
    of ``skip_names`` (positional embeddings, cls / mask tokens) get no weight decay.

    Args:
        model: the module to optimise.
        weight_decay: decay of the decayed group.
        skip_names: name suffixes excluded from decay, e.g. ``{"cls_token", "pos_embed", "mask_token"}``.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]``
        (each group also carries ``"names"`` for inspection).
    """
    skip = tuple(skip_names)
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name.endswith(skip):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """Linear scaling rule: ``base_lr * effective_batch / 256``."""
    return base_lr * effective_batch / LR_REFERENCE_BATCH


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup to 1, then half-cosine decay to ``min_ratio``.

    Args:
        step: optimiser step, 0-based (the factor applies to this step's update).
        warmup_steps: steps of linear warmup; step ``i < warmup_steps`` gets ``(i + 1) / warmup_steps``.
        total_steps: total optimiser steps; the cosine would reach ``min_ratio`` at step ``total_steps`` (so the
            last step still gets a small non-zero rate).
        min_ratio: final lr / peak lr.

    Returns:
        Multiplier in [min_ratio, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
