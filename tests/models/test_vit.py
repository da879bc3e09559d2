"""ViT encoder: shapes at several input sizes, SDPA attention vs a manual softmax, drop path, presets, errors."""

from __future__ import annotations

import pytest
import torch

from dentalmim.models.patch_embed import ConvPatchEmbed, PatchEmbed
from dentalmim.models.pos_embed import resize_pos_embed, sincos_pos_embed_2d
from dentalmim.models.vit import (
    VIT_PRESETS,
    Attention,
    Block,
    DropPath,
    ViTEncoder,
    drop_path,
    vit_encoder,
)


def tiny_vit(**kw) -> ViTEncoder:
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, **kw}
    return ViTEncoder(**args)


@pytest.mark.parametrize("size", [(32, 32), (48, 64), (16, 40)])
def test_forward_features_shapes_at_any_multiple_of_patch(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.rand(2, 1, *size)
    tokens = vit.forward_features(x)
    length = (size[0] // 8) * (size[1] // 8)
    assert tokens.shape == (2, 1 + length, 32)
    assert vit(x).shape == (2, 32)
    assert torch.isfinite(tokens).all()


def test_pos_embed_is_interpolated_for_other_grids_and_cached() -> None:
    vit = tiny_vit()
    base = vit.pos_embed_for((4, 4))
    assert base is vit.pos_embed
    bigger = vit.pos_embed_for((6, 8))
    assert bigger.shape == (1, 48, 32)
    assert vit.pos_embed_for((6, 8)) is bigger  # cached per grid
    # bicubic resize to the same grid is the identity, and corners of an upsampled grid stay close to the base's
    again = resize_pos_embed(bigger, (6, 8), (6, 8))
    assert again is bigger
    assert torch.allclose(bigger[0, 0], base[0, 0], atol=0.35)


def test_learnable_pos_embed_gets_gradients_through_interpolation() -> None:
    torch.manual_seed(0)
    vit = tiny_vit(pos_embed="learnable")
    # a random projection of the pooled output: a plain sum of the final LayerNorm is constant, so its
    # gradient is zero up to rounding and would make the check flaky
    out = vit(torch.rand(1, 1, 48, 48))
    (out * torch.randn_like(out)).sum().backward()
    assert vit.pos_embed.grad is not None and vit.pos_embed.grad.abs().sum() > 1e-4


def test_sincos_embedding_is_distinct_per_position() -> None:
    emb = sincos_pos_embed_2d(16, (3, 5))
    assert emb.shape == (15, 16)
    distances = torch.cdist(emb, emb) + torch.eye(15) * 10
    assert distances.min() > 1e-3
    # row 0, column 2 and row 1, column 2 share the column half
    assert torch.allclose(emb[2, 8:], emb[7, 8:])
    assert not torch.allclose(emb[2, :8], emb[7, :8])


def test_attention_equals_manual_softmax_qk_v() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4)
    x = torch.randn(3, 7, 16)
    b, n, d = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, 4, d // 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / (d // 4) ** 0.5, dim=-1)
    manual = attn.proj((weights @ v).transpose(1, 2).reshape(b, n, d))
    assert torch.allclose(attn(x), manual, atol=1e-5)
    assert torch.allclose(attn.attention_map(x), weights, atol=1e-6)


def test_bf16_attention_on_cpu_matches_fp32_sdpa() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=2)
    x = torch.randn(2, 9, 32)
    reference = attn(x)
    low = attn.to(torch.bfloat16)(x.to(torch.bfloat16))  # explicit-matmul path on CPU
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_block_forward_subset_equals_the_full_block_at_those_tokens(qkv_bias: bool) -> None:
    torch.manual_seed(0)
    blk = Block(32, 4, qkv_bias=qkv_bias)
    x, ids = torch.randn(3, 11, 32), torch.stack([torch.randperm(11)[:5] for _ in range(3)])
    full = blk(x).gather(1, ids.unsqueeze(-1).expand(-1, -1, 32))
    assert torch.allclose(blk.forward_subset(x, ids), full, atol=1e-5)


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_embedding_selected_patches_equals_gathering_all_tokens(stem: str) -> None:
    torch.manual_seed(0)
    vit = ViTEncoder(32, 8, 1, 32, 1, 2, stem=stem).eval()  # eval: the conv stem's BatchNorm on running stats
    x = torch.rand(2, 1, 32, 48)
    ids = torch.tensor([[0, 23, 5], [17, 2, 9]])
    expected = vit.embed_patches(x).gather(1, ids.unsqueeze(-1).expand(-1, -1, 32))
    assert torch.allclose(vit.embed_patches(x, ids), expected, atol=1e-6)


def test_attention_maps_rows_sum_to_one_and_one_per_block() -> None:
    vit = tiny_vit(depth=3).eval()
    maps = vit.get_attention_maps(torch.rand(2, 1, 32, 24))
    assert len(maps) == 3
    assert maps[0].shape == (2, 2, 1 + 12, 1 + 12)
    assert torch.allclose(maps[-1].sum(-1), torch.ones(2, 2, 13), atol=1e-5)


def test_get_intermediate_layers_last_equals_forward_features() -> None:
    vit = tiny_vit(depth=3).eval()
    x = torch.rand(2, 1, 32, 32)
    layers = vit.get_intermediate_layers(x, n=2)
    assert len(layers) == 2
    assert torch.allclose(layers[-1], vit.forward_features(x), atol=1e-6)
    assert len(vit.get_intermediate_layers(x, n=[0])) == 1


def test_drop_path_identity_in_eval_and_drops_whole_samples_in_train() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 3, 4)
    module = DropPath(0.5).eval()
    assert torch.equal(module(x), x)
    out = drop_path(x, 0.5, training=True)
    per_sample = out.reshape(64, -1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped or kept as a whole
    assert 10 < int((per_sample[:, 0] == 0).sum()) < 54


def test_stochastic_depth_encoder_is_deterministic_in_eval() -> None:
    vit = tiny_vit(drop_path_rate=0.3).eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(vit(x), vit(x))


def test_patch_embed_is_a_linear_map_of_row_major_patches() -> None:
    embed = PatchEmbed(patch_size=4, in_chans=1, embed_dim=8)
    x = torch.zeros(1, 1, 8, 12)
    x[0, 0, 4:8, 8:12] = 1.0  # patch (row 1, col 2) -> index 1 * 3 + 2 = 5
    tokens = embed(x)
    expected = embed.proj(torch.ones(16))
    assert torch.allclose(tokens[0, 5], expected)
    assert torch.allclose(tokens[0, 0], embed.proj.bias)


def test_conv_stem_tokens_depend_only_on_their_own_patch() -> None:
    embed = ConvPatchEmbed(patch_size=8, in_chans=1, embed_dim=32).eval()
    x = torch.rand(2, 1, 16, 24)
    changed = x.clone()
    changed[1, 0, 8:16, 8:16] += 0.5  # patch (row 1, col 1) of the second image -> index 1 * 3 + 1 = 4
    a, b = embed(x), embed(changed)
    assert a.shape == (2, 6, 32)
    moved = (a - b).abs().amax(dim=-1)
    assert moved[1, 4] > 1e-3
    moved[1, 4] = 0
    assert torch.all(moved == 0)  # no pixel reaches another patch's token (MAE stays visible-only)
    # the same token whatever the position of its patch: the stem is shared by all patches
    assert torch.allclose(embed(x[:, :, :8, :8])[0, 0], a[0, 0], atol=1e-6)


def test_conv_stem_encoder_trains_and_round_trips_its_config() -> None:
    vit = tiny_vit(stem="conv")
    assert isinstance(vit.patch_embed, ConvPatchEmbed) and vit.config["stem"] == "conv"
    vit(torch.rand(2, 1, 32, 48)).sum().backward()
    assert vit.patch_embed.net[0].weight.grad is not None
    clone = ViTEncoder(**vit.config)
    clone.load_state_dict(vit.state_dict())  # BatchNorm buffers included
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(clone.eval()(x), vit.eval()(x))


def test_presets_and_overrides() -> None:
    assert VIT_PRESETS["base"] == {"embed_dim": 768, "depth": 12, "num_heads": 12}
    vit = vit_encoder("nano", img_size=32, patch_size=8, depth=1)
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (128, 1, 4)
    assert vit.config["depth"] == 1
    with pytest.raises(ValueError, match="preset"):
        vit_encoder("huge")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"img_size": 30}, "img_size"),
        ({"embed_dim": 30, "num_heads": 4}, "embed_dim"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"pos_embed": "rope"}, "pos_embed"),
        ({"depth": 0}, "depth"),
        ({"stem": "resnet"}, "stem"),
        ({"stem": "conv", "img_size": 36, "patch_size": 12}, "stem 'conv' needs a patch_size"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_vit(**kwargs)


def test_input_not_multiple_of_patch_is_rejected() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        tiny_vit()(torch.rand(1, 1, 30, 32))


def test_mae_initialisation() -> None:
    vit = tiny_vit()
    assert torch.all(vit.blocks[0].attn.qkv.bias == 0)
    assert 0.005 < float(vit.cls_token.detach().std()) < 0.05
    assert vit.no_weight_decay() == {"cls_token", "pos_embed"}
