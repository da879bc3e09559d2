"""The analytic FLOP counts behind the MFU of benchmarks/pretrain_throughput.py match PyTorch's FLOP counter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pretrain_throughput as bench  # noqa: E402


def _counted(step) -> float:
    # the math SDPA backend decomposes attention into matmuls the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step().backward()
    return counter.get_total_flops() / 2  # batch of 2


@pytest.mark.parametrize("size", [64, 96])
def test_analytic_training_flops_match_flop_counter(size: int) -> None:
    args = bench.parse_args(["--preset", "nano", "--img-size", str(size), "--batch", "2", "--decoder-dim", "64"])
    model, loss = bench.build("dentalmim", args, size)
    x = torch.rand(2, 1, size, size)

    standard = bench.train_flops_per_image(args, size)  # every patch embedded, every token decoded
    assert _counted(lambda: bench.standard_mae_loss(model, x)) == pytest.approx(standard, rel=1e-9)
    executed = standard - bench.skipped_flops_per_image(args, size)
    assert _counted(lambda: loss(x)) == pytest.approx(executed, rel=1e-9)
    assert 0.02 < 1 - executed / standard < 0.1
