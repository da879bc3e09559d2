"""The CUDA paths: prediction in bf16 on the GPU, flash attention, a bf16-mixed MAE training step.

Skipped on machines without a CUDA GPU (CI, the development CPUs); ``benchmarks/gpu_checks.sh`` runs them on a GPU
machine, next to the GPU benchmarks and a one-GPU DDP pretraining run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dentalmim.inference.predictor import Predictor
from dentalmim.models.detector import CariesDetector
from dentalmim.models.mim import MaskedAutoencoder
from dentalmim.models.vit import ViTEncoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_checks.sh)")


def _detector() -> CariesDetector:
    torch.manual_seed(0)
    encoder = ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)
    return CariesDetector(encoder, num_classes=1, fpn_channels=32, detail_channels=8)


def _predictor(device: str) -> Predictor:
    meta = {"tile_size": 64, "score_threshold": 0.01, "image_threshold": 0.5, "version": "gpu-check"}
    return Predictor(_detector().eval(), meta, device=device)


def test_auto_picks_the_gpu_in_bf16_and_agrees_with_cpu_fp32() -> None:
    gpu, cpu = _predictor("auto"), _predictor("cpu")
    assert gpu.device.type == "cuda" and gpu.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    image = np.random.default_rng(0).random((300, 500), dtype=np.float32)
    a, b = gpu.predict(image), cpu.predict(image)
    assert a.num_tiles == b.num_tiles and len(b.scores) > 0
    assert a.image_probability == pytest.approx(b.image_probability, abs=0.02)
    assert a.scores[0] == pytest.approx(b.scores[0], abs=0.02)  # bf16 rounding, not a different model
    assert len(a.scores) == pytest.approx(len(b.scores), rel=0.2)


def test_encoder_attention_runs_the_flash_kernel_in_bf16() -> None:
    torch.manual_seed(0)
    vit = ViTEncoder(img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3).cuda()
    x = torch.rand(4, 1, 224, 224, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if flash attention cannot run these inputs
            flash = vit.forward_features(x)
            flash.float().sum().backward()
        with sdpa_kernel([SDPBackend.MATH]):
            reference = vit.forward_features(x)
    assert torch.allclose(flash.float(), reference.float(), atol=0.05)


def test_mae_bf16_mixed_training_lowers_the_loss_on_the_gpu() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(ViTEncoder(64, 16, 1, 64, 2, 2, stem="conv"), 0.75, 64, 1, 2, norm_pix_loss=False).cuda()
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    imgs = torch.stack([0.5 + 0.4 * torch.sin((xx + 7 * i) / 6) * torch.cos(yy / 9) for i in range(16)])
    imgs = imgs[:, None].cuda()
    losses = []
    for _ in range(40):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = mae(imgs).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
