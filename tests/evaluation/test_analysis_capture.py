"""Hook-based capture of per-layer tokens and attention, checked against the encoder's own computation."""

from __future__ import annotations

import torch

from dentalmim.evaluation.analysis_capture import LayerRecorder, attention_from_qkv, run_layers
from dentalmim.models.vit import ViTEncoder


def tiny_encoder(seed: int = 0) -> ViTEncoder:
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2).eval()
    with torch.no_grad():  # larger q/k weights than the init, so the attention is far from uniform
        for blk in enc.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    return enc


def test_recomputed_attention_reproduces_each_attention_modules_output() -> None:
    """softmax(q k^T / sqrt(d)) @ v through the output projection equals what the (SDPA) attention module returned."""
    enc = tiny_encoder()
    x = torch.rand(2, 1, 32, 40)
    qkv_out, attn_out = [], []
    handles = [h for blk in enc.blocks for h in (
        blk.attn.qkv.register_forward_hook(lambda m, i, o: qkv_out.append(o)),
        blk.attn.register_forward_hook(lambda m, i, o: attn_out.append(o)))]
    try:
        outputs = run_layers(enc, x)
    finally:
        for h in handles:
            h.remove()
    n = 1 + 4 * 5
    assert len(outputs.attention) == 3 and outputs.attention[0].shape == (2, 2, n, n)
    for blk, probs, qkv, out in zip(enc.blocks, outputs.attention, qkv_out, attn_out, strict=True):
        assert torch.allclose(probs.sum(-1), torch.ones(2, 2, n), atol=1e-5)
        v = qkv.reshape(2, n, 3, 2, 16).permute(2, 0, 3, 1, 4)[2]
        recomputed = blk.attn.proj((probs @ v).transpose(1, 2).flatten(2))
        assert torch.allclose(recomputed, out, atol=1e-5)
        assert probs.max() > 5.0 / n  # not trivially uniform


def test_captured_tokens_are_the_block_outputs() -> None:
    enc = tiny_encoder(1)
    x = torch.rand(3, 1, 32, 32)
    outputs = run_layers(enc, x, attention=False)
    assert outputs.attention == [] and [t.shape for t in outputs.tokens] == [(3, 17, 32)] * 3
    with torch.no_grad():
        assert torch.allclose(enc.norm(outputs.tokens[-1]), enc.forward_features(x), atol=1e-6)
        h = enc._prepend_cls(enc.embed_patches(x))
        assert torch.allclose(outputs.tokens[0], enc.blocks[0](h), atol=1e-6)


def test_zero_query_key_weights_give_uniform_attention() -> None:
    enc = tiny_encoder()
    with torch.no_grad():
        for blk in enc.blocks:
            blk.attn.qkv.weight[:64].zero_()
            blk.attn.qkv.bias[:64].zero_()
    outputs = run_layers(enc, torch.rand(1, 1, 32, 32))
    assert all(torch.allclose(a, torch.full_like(a, 1 / 17)) for a in outputs.attention)


def test_hooks_are_removed_after_the_context() -> None:
    enc = tiny_encoder()
    with LayerRecorder(enc) as rec:
        enc.forward_features(torch.rand(1, 1, 32, 32))
    assert len(rec.outputs.tokens) == 3
    enc.forward_features(torch.rand(1, 1, 32, 32))
    assert len(rec.outputs.tokens) == 3
    assert all(not blk._forward_hooks and not blk.attn.qkv._forward_hooks for blk in enc.blocks)


def test_attention_from_qkv_matches_the_encoders_explicit_maps() -> None:
    enc = tiny_encoder(2)
    x = torch.rand(2, 1, 32, 32)
    outputs = run_layers(enc, x)
    if hasattr(enc, "get_attention_maps"):  # the encoder's own analysis path, where it has one
        for ours, theirs in zip(outputs.attention, enc.get_attention_maps(x), strict=True):
            assert torch.allclose(ours, theirs, atol=1e-5)
    qkv = torch.zeros(1, 4, 3 * 8)
    qkv[0, :, :8] = torch.eye(4, 8) * 100  # q_i = 100 e_i; k_j = 0 for all j -> uniform
    assert torch.allclose(attention_from_qkv(qkv, num_heads=2), torch.full((1, 2, 4, 4), 0.25))
