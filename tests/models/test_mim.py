"""MAE masking and visible-only encoding, MIM losses (patchify, masked MSE, InfoNCE), contrastive and hybrid."""

from __future__ import annotations

import math

import pytest
import torch

from dentalmim.models.mim import (
    ContrastiveLearner,
    HybridMIM,
    MaskedAutoencoder,
    ProjectionHead,
    random_masking,
)
from dentalmim.models.mim_losses import (
    InfoNCELoss,
    MAELoss,
    info_nce,
    masked_mse,
    normalize_patches,
    patchify,
    unpatchify,
)
from dentalmim.models.patch_embed import PatchEmbed
from dentalmim.models.vit import ViTEncoder


def tiny_vit(**kw) -> ViTEncoder:
    return ViTEncoder(**{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, **kw})


def tiny_mae(mask_ratio: float = 0.75, **kw) -> MaskedAutoencoder:
    return MaskedAutoencoder(tiny_vit(), mask_ratio, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **kw)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.6])
def test_random_masking_removes_exact_count_per_sample(ratio: float) -> None:
    x = torch.randn(5, 20, 8)
    visible, mask, ids_restore = random_masking(x, ratio)
    keep = int(20 * (1 - ratio))
    assert visible.shape == (5, keep, 8)
    assert mask.shape == (5, 20)
    assert torch.equal(mask.sum(1), torch.full((5,), 20.0 - keep))
    # the visible tokens are exactly the unmasked ones, in shuffled order
    for b in range(5):
        kept = x[b][mask[b] == 0]
        assert torch.equal(kept.sort(0).values, visible[b].sort(0).values)
    # ids_restore undoes the shuffle: restored masks are 0 first in shuffled order
    assert torch.equal(mask.gather(1, ids_restore.argsort(1))[:, :keep], torch.zeros(5, keep))


def test_masks_differ_between_samples_and_follow_the_noise() -> None:
    x = torch.randn(4, 16, 2)
    _, mask, _ = random_masking(x, 0.5)
    assert len({tuple(m.tolist()) for m in mask}) > 1
    noise = torch.rand(4, 16)
    _, m1, _ = random_masking(x, 0.5, noise)
    _, m2, _ = random_masking(x, 0.5, noise)
    assert torch.equal(m1, m2)


def test_masking_is_generated_on_the_input_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_rand = torch.rand

    def spy(*args, **kwargs):
        calls.append(kwargs.get("device"))
        return real_rand(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", spy)
    x = torch.randn(2, 16, 4, device="meta")
    visible, mask, ids = random_masking(x, 0.75)
    assert calls == [torch.device("meta")]
    assert visible.device.type == mask.device.type == ids.device.type == "meta"


def test_encoder_sees_only_visible_tokens() -> None:
    mae = tiny_mae(0.75)
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    out = mae(torch.rand(3, 1, 32, 32))
    assert seen == [torch.Size([3, 1 + 4, 32])]  # 16 patches, 25 % visible, plus cls
    assert out.pred.shape == (3, 16, 64)
    assert out.mask.shape == (3, 16)
    assert torch.isfinite(out.loss)


def test_conv_stem_mae_visible_latent_ignores_masked_pixels() -> None:
    mae = MaskedAutoencoder(tiny_vit(stem="conv"), 0.75, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    mae.eval()  # BatchNorm on running statistics: in training, batch statistics are shared by all patches
    imgs, noise = torch.rand(1, 1, 32, 32), torch.rand(1, 16)
    latent, mask, _ = mae.forward_encoder(imgs, noise)
    hidden = imgs.clone()
    for index in torch.nonzero(mask[0]).flatten().tolist():  # scramble every removed patch
        r, c = divmod(index, 4)
        hidden[0, 0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = torch.rand(8, 8)
    again, _, _ = mae.forward_encoder(hidden, noise)
    assert not torch.equal(hidden, imgs) and torch.allclose(latent, again, atol=1e-6)


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_removed_only_decoding_gives_the_full_decoders_loss_and_gradients(stem: str) -> None:
    """The training path (visible-only embedding, last decoder block and head on removed patches only) is the
    same function as embedding everything and decoding every patch."""
    torch.manual_seed(0)
    mae = MaskedAutoencoder(tiny_vit(stem=stem), 0.75, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
    mae.eval()
    imgs, noise = torch.rand(3, 1, 32, 40), torch.rand(3, 20)
    out = mae(imgs, noise=noise)
    fast = torch.autograd.grad(out.loss, list(mae.parameters()), allow_unused=True)
    tokens, mask, ids_restore = random_masking(mae.encoder.embed_patches(imgs), 0.75, noise)
    full = mae.forward_decoder(mae.encoder.forward_tokens(tokens), ids_restore, (4, 5))
    loss = mae.forward_loss(imgs, full, mask)
    slow = torch.autograd.grad(loss, list(mae.parameters()), allow_unused=True)
    assert torch.equal(mask, out.mask) and torch.allclose(out.loss, loss, atol=1e-6)
    assert torch.allclose(out.pred[mask.bool()], full[mask.bool()], atol=1e-5)
    assert torch.all(out.pred[~mask.bool()] == 0)  # visible patches are not predicted
    for a, b in zip(fast, slow):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)


def test_mae_runs_on_other_image_sizes() -> None:
    mae = tiny_mae(0.5)
    out = mae(torch.rand(2, 1, 48, 40))
    assert out.pred.shape == (2, 30, 64)
    recon, mask = mae.reconstruct(torch.rand(2, 1, 48, 40))
    assert recon.shape == mask.shape == (2, 1, 48, 40)


def test_patchify_unpatchify_roundtrip_and_patch_embed_order() -> None:
    imgs = torch.rand(2, 1, 16, 24)
    patches = patchify(imgs, 8)
    assert patches.shape == (2, 6, 64)
    assert torch.equal(unpatchify(patches, 8, (2, 3)), imgs)
    assert torch.equal(patches[0, 4], imgs[0, 0, 8:16, 8:16].reshape(-1))  # patch (row 1, col 1)
    embed = PatchEmbed(8, 1, 4)
    assert torch.allclose(embed(imgs), embed.proj(patches))


def test_loss_ignores_visible_patches() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]], dtype=torch.float32)
    loss = masked_mse(pred, target, mask)
    changed = pred.clone()
    changed[mask == 0] += 100.0
    assert torch.allclose(masked_mse(changed, target, mask), loss)
    expected = ((pred - target) ** 2).mean(-1)[mask == 1].mean()
    assert torch.allclose(loss, expected)


def test_mae_loss_gradient_only_reaches_removed_patch_predictions() -> None:
    imgs = torch.rand(2, 1, 16, 16)
    pred = torch.randn(2, 4, 64, requires_grad=True)
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    MAELoss(8, norm_pix_loss=True)(imgs, pred, mask).backward()
    assert torch.all(pred.grad[mask == 0] == 0)
    assert torch.all(pred.grad[mask == 1].abs().sum(-1) > 0)


def test_norm_pix_targets_are_standardised_per_patch() -> None:
    patches = torch.rand(3, 5, 64) * 7 + 2
    normed = normalize_patches(patches)
    assert torch.allclose(normed.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(normed.std(-1), torch.ones(3, 5), atol=1e-3)
    imgs = torch.rand(1, 1, 16, 16)
    assert torch.allclose(MAELoss(8, True).target(imgs), normalize_patches(patchify(imgs, 8)))
    assert torch.equal(MAELoss(8, False).target(imgs), patchify(imgs, 8))


def test_info_nce_matches_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cosines: q0.k0 = 1, q0.k1 = 1/sqrt2, q1.k0 = 0, q1.k1 = 1/sqrt2
    s = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(s / tau)))
    l1 = -math.log(math.exp(s / tau) / (math.exp(0.0) + math.exp(s / tau)))
    assert info_nce(q, k, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # with gathered keys, the positive is offset
    k_all = torch.cat([torch.randn(2, 2), k])
    assert info_nce(q, k_all[2:], tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert info_nce(q, k_all, tau, positive_offset=2).item() > 0


def test_info_nce_loss_is_symmetric_and_low_for_matching_views() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    loss = InfoNCELoss(temperature=0.1)
    assert loss(z, z).item() < 0.01
    other = torch.randn(8, 16)
    assert loss(z, other).item() == pytest.approx(loss(other, z).item(), rel=1e-6)
    assert loss(z, other).item() > 1.0
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)


def test_contrastive_learner_needs_two_views_and_returns_loss() -> None:
    model = ContrastiveLearner(tiny_vit(), proj_hidden_dim=16, proj_dim=8)
    out = model(torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32))
    assert out.loss.ndim == 0 and set(out.terms) == {"contrastive"}
    assert out.pred is None
    with pytest.raises(ValueError, match="two_views"):
        model(torch.rand(3, 1, 32, 32))
    assert ProjectionHead(32, 16, 8)(torch.randn(4, 32)).shape == (4, 8)


def test_hybrid_loss_is_the_weighted_sum() -> None:
    torch.manual_seed(0)
    hybrid = HybridMIM(tiny_mae(), proj_hidden_dim=16, proj_dim=8, mae_weight=0.7, contrastive_weight=0.3)
    out = hybrid(torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32))
    expected = 0.7 * out.terms["mae"] + 0.3 * out.terms["contrastive"]
    assert torch.allclose(out.loss, expected)
    assert out.pred.shape == (4, 16, 64) and out.mask.shape == (4, 16)
    # the encoder is stored once in the state dict
    keys = hybrid.state_dict().keys()
    assert not any(k.startswith("encoder.") for k in keys)
    with pytest.raises(ValueError, match="weights"):
        HybridMIM(tiny_mae(), mae_weight=0.0, contrastive_weight=0.0)


def test_mask_ratio_is_validated() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(1.0)
