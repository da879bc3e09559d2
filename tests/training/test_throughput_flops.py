"""The analytic FLOP count behind the MFU of benchmarks/pretrain_throughput.py matches PyTorch's FLOP counter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pretrain_throughput as bench  # noqa: E402


@pytest.mark.parametrize("size", [64, 96])
def test_analytic_training_flops_match_flop_counter(size: int) -> None:
    args = bench.parse_args(["--preset", "nano", "--img-size", str(size), "--batch", "2", "--decoder-dim", "64"])
    model, loss = bench.build("dentalmim", args, size)
    # the math SDPA backend decomposes attention into matmuls the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss(torch.rand(2, 1, size, size)).backward()
    assert counter.get_total_flops() / 2 == pytest.approx(bench.train_flops_per_image(args, size), rel=1e-9)
