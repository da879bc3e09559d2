"""Per-layer tokens and attention probabilities of a ViT encoder, captured with forward hooks.

The encoder's attention runs through fused ``scaled_dot_product_attention`` kernels that never materialise the
probabilities, so :class:`LayerRecorder` hooks each block's fused ``attn.qkv`` projection, splits its output into
q and k exactly as the attention module does (``(B, N, 3, heads, head_dim)``) and computes
``softmax(q k^T / sqrt(head_dim))`` itself; a second hook on each block keeps its output tokens. The model code is
not touched, so the capture keeps working when the attention kernel changes (a test checks the recomputed
probabilities against the block's own output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

import torch
from torch import nn

__all__ = ["LayerOutputs", "LayerRecorder", "attention_from_qkv", "run_layers"]


def attention_from_qkv(qkv: torch.Tensor, num_heads: int, scale: float | None = None) -> torch.Tensor:
    """Attention probabilities from the output of a fused qkv projection.

    Args:
        qkv: (B, N, 3 * D) with layout (3, heads, head_dim) along the last axis (q first).
        num_heads: attention heads.
        scale: logit scale (default ``head_dim ** -0.5``).

    Returns:
        (B, heads, N, N) float32 probabilities; rows sum to 1.
    """
    b, n, three_d = qkv.shape
    head_dim = three_d // (3 * num_heads)
    q, k, _ = qkv.float().reshape(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    scale = head_dim**-0.5 if scale is None else scale
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@dataclass
class LayerOutputs:
    """What one forward pass left in the hooks.

    Attributes:
        tokens: one (B, 1 + L, D) block output per block (before the final norm), in block order.
        attention: one (B, heads, 1 + L, 1 + L) attention map per block (empty when not recorded).
    """

    tokens: list[torch.Tensor] = field(default_factory=list)
    attention: list[torch.Tensor] = field(default_factory=list)


class LayerRecorder:
    """Context manager that records every block's output tokens (and attention) during forward passes.

    Args:
        encoder: a :class:`~dentalmim.models.vit.ViTEncoder` (any module whose ``blocks`` each have
            ``attn.qkv`` and ``attn.num_heads``).
        attention: also record the attention probabilities.

    Example::

        with LayerRecorder(encoder) as rec:
            encoder.forward_features(images)
        rec.outputs.attention[-1]  # (B, heads, 1 + L, 1 + L) of the last block
    """

    def __init__(self, encoder: nn.Module, attention: bool = True) -> None:
        self.encoder, self.record_attention = encoder, attention
        self.outputs = LayerOutputs()
        self._handles: list[Any] = []

    def _token_hook(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self.outputs.tokens.append(output.detach())

    def _qkv_hook(self, attn: nn.Module):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.outputs.attention.append(attention_from_qkv(output.detach(), attn.num_heads,
                                                             getattr(attn, "scale", None)))
        return hook

    def __enter__(self) -> Self:
        self.outputs = LayerOutputs()
        for blk in self.encoder.blocks:
            self._handles.append(blk.register_forward_hook(self._token_hook))
            if self.record_attention:
                self._handles.append(blk.attn.qkv.register_forward_hook(self._qkv_hook(blk.attn)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@torch.no_grad()
def run_layers(encoder: nn.Module, images: torch.Tensor, attention: bool = True) -> LayerOutputs:
    """Run ``encoder.forward_features`` on ``images: (B, C, H, W)`` and return every block's tokens / attention."""
    with LayerRecorder(encoder, attention) as rec:
        encoder.forward_features(images)
    depth = len(encoder.blocks)
    if len(rec.outputs.tokens) != depth or (attention and len(rec.outputs.attention) != depth):
        raise RuntimeError(f"expected one capture per block ({depth}), got {len(rec.outputs.tokens)} token and "
                           f"{len(rec.outputs.attention)} attention captures.")
    return rec.outputs
