"""SimMIM objective and the objective registry (and its wiring into PretrainModule)."""

from __future__ import annotations

import typing

import pytest
import torch

from dentalmim.models.mim import ContrastiveLearner, HybridMIM, MaskedAutoencoder
from dentalmim.models.mim_losses import patchify
from dentalmim.models.objectives import (
    OBJECTIVE_REGISTRY,
    ObjectiveSpec,
    build_registered,
    objective_spec,
    register_objective,
)
from dentalmim.models.simmim import SimMIM, masked_l1, random_patch_mask
from dentalmim.models.vit import ViTEncoder
from dentalmim.training import pretrain
from dentalmim.training.pretrain import PretrainModule

TINY = {
    "preset": "nano", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "proj_hidden_dim": 32, "proj_dim": 16,
}  # fmt: skip


def tiny_encoder() -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def test_random_patch_mask_removes_the_requested_share() -> None:
    mask = random_patch_mask(3, 16, 0.6, torch.device("cpu"))
    assert mask.shape == (3, 16) and torch.all(mask.sum(1) == 10)  # round(16 * 0.6)
    noise = torch.arange(16.0).expand(2, 16)
    assert torch.equal(random_patch_mask(2, 16, 0.25, torch.device("cpu"), noise)[0, 12:], torch.ones(4))
    assert random_patch_mask(1, 2, 0.99, torch.device("cpu")).sum() == 1  # never every patch


def test_masked_l1_scores_removed_patches_only() -> None:
    target = torch.zeros(1, 2, 4)
    pred = torch.stack([torch.full((4,), 3.0), torch.full((4,), 1.0)])[None]
    assert float(masked_l1(pred, target, torch.tensor([[0.0, 1.0]]))) == pytest.approx(1.0)
    assert float(masked_l1(pred, target, torch.tensor([[1.0, 1.0]]))) == pytest.approx(2.0)


def test_mask_tokens_replace_removed_patches_before_the_positional_embedding() -> None:
    model = SimMIM(tiny_encoder(), mask_ratio=0.5)
    imgs = torch.rand(2, 1, 32, 32)
    captured = []
    handle = model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    mask = random_patch_mask(2, 16, 0.5, torch.device("cpu"))
    model.forward_encoder(imgs, mask)
    handle.remove()
    tokens = captured[0][:, 1:]  # drop cls
    pos = model.encoder.pos_embed_for((4, 4))
    expected_masked = (model.mask_token + pos).expand(2, -1, -1)
    expected_visible = model.encoder.embed_patches(imgs)
    m = mask.bool()
    assert torch.allclose(tokens[m], expected_masked[m], atol=1e-6)
    assert torch.allclose(tokens[~m], expected_visible[~m], atol=1e-6)


def test_simmim_output_loss_and_reconstruction() -> None:
    model = SimMIM(tiny_encoder(), mask_ratio=0.6)
    imgs = torch.rand(2, 1, 32, 40)
    out = model(imgs)
    assert out.pred.shape == (2, 20, 64) and out.mask.shape == (2, 20) and set(out.terms) == {"simmim"}
    assert torch.allclose(out.loss, masked_l1(out.pred, patchify(imgs, 8), out.mask))
    out.loss.backward()
    assert model.mask_token.grad is not None and model.head.weight.grad.abs().sum() > 0
    recon, mask = model.reconstruct(imgs, noise=torch.rand(2, 20))
    assert recon.shape == imgs.shape and mask.shape == (2, 1, 32, 40)
    with pytest.raises(ValueError, match="mask_ratio should be in"):
        SimMIM(tiny_encoder(), mask_ratio=1.0)


def test_simmim_learns_to_reconstruct() -> None:
    torch.manual_seed(0)
    model = SimMIM(tiny_encoder(), mask_ratio=0.5)
    _, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    imgs = (0.5 + 0.4 * torch.sin(xx / 3 + torch.arange(8.0)[:, None, None]))[:, None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = model(imgs).loss
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model(imgs).loss) < 0.5 * first


def test_registry_covers_the_pretrain_objective_literal() -> None:
    literal = typing.get_args(pretrain.Objective)
    assert set(literal) == set(pretrain.OBJECTIVES) == set(OBJECTIVE_REGISTRY)
    assert objective_spec("contrastive").two_views and not objective_spec("simmim").two_views
    with pytest.raises(ValueError, match="objective should be one of"):
        objective_spec("byol")
    with pytest.raises(ValueError, match="already registered"):
        register_objective(ObjectiveSpec("mae", lambda e, hp: e, False, "reconstruction", "dup"))


@pytest.mark.parametrize(("name", "kind"), [("mae", MaskedAutoencoder), ("contrastive", ContrastiveLearner),
                                            ("hybrid", HybridMIM), ("simmim", SimMIM)])
def test_pretrain_module_builds_every_registered_objective(name: str, kind: type) -> None:
    module = PretrainModule(objective=name, **TINY)
    assert isinstance(module.objective, kind) and module.encoder.embed_dim == 32
    hp = dict(module.hparams)
    assert isinstance(build_registered(name, tiny_encoder(), hp), kind)
    imgs = torch.rand(2, 1, 32, 32)
    out = module(imgs, imgs.flip(-1))
    assert torch.isfinite(out.loss)
