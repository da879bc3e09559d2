"""Vision Transformer encoder for 1-channel radiographs.

Pre-norm ViT blocks (as in facebookresearch/mae and DeiT) with attention through
:func:`torch.nn.functional.scaled_dot_product_attention`, so the flash / memory-efficient kernels are used on GPU
and the fused CPU kernel on CPU. Attention probabilities are materialised only when explicitly asked for
(:meth:`ViTEncoder.get_attention_maps`), for analysis.

Positional embeddings are fixed 2-D sin-cos (default, as in MAE) or learnable, built for the base grid
``img_size // patch_size`` and resized bicubically to any other grid, so the encoder runs on any input whose
sides are multiples of ``patch_size``. Resized fixed embeddings are cached per (grid, device, dtype).

Shapes: ``B`` batch, ``L`` patches, ``D`` width; tokens are ``(B, 1 + L, D)`` with the cls token first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dentalmim.models.patch_embed import ConvPatchEmbed, PatchEmbed, gather_rows
from dentalmim.models.pos_embed import resize_pos_embed, sincos_pos_embed_2d

#: Width / depth / heads of the named encoder sizes; ``nano`` is for tests and the CPU demo.
VIT_PRESETS: dict[str, dict[str, int]] = {
    "nano": {"embed_dim": 128, "depth": 6, "num_heads": 4},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}

PosEmbedType = Literal["sincos", "learnable"]
StemType = Literal["linear", "conv"]
PoolType = Literal["cls", "mean"]


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch, rescale the kept ones.

    Args:
        x: residual branch output, (B, ...).
        drop_prob: probability of dropping a sample's branch.
        training: identity when False.

    Returns:
        Tensor shaped like ``x``.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    Args:
        dim: token width D.
        num_heads: heads; ``dim`` must be divisible by it.
        qkv_bias: bias in the qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split ``x: (B, N, D)`` into q, k, v, each (B, heads, N, D / heads)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _kv_of(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context: (B, N, D)`` alone (the k, v rows of the fused projection)."""
        b, n, d = context.shape
        bias = self.qkv.bias[d:] if self.qkv.bias is not None else None
        kv = F.linear(context, self.qkv.weight[d:], bias).reshape(b, n, 2, self.num_heads, self.head_dim)
        return kv.permute(2, 0, 3, 1, 4).unbind(0)

    def _q_of(self, x: torch.Tensor) -> torch.Tensor:
        """Queries of ``x: (B, M, D)`` alone: (B, heads, M, D / heads)."""
        b, m, d = x.shape
        bias = self.qkv.bias[:d] if self.qkv.bias is not None else None
        return F.linear(x, self.qkv.weight[:d], bias).reshape(b, m, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D) through the fused SDPA kernel.

        With ``context: (B, N_c, D)``, ``x`` gives the queries only and ``context`` the keys and values
        (the rows of ``x`` must be rows of ``context``: this is self-attention evaluated for a subset of tokens).

        Exception: reduced-precision attention on CPU uses explicit matmuls, because PyTorch's CPU
        flash-attention kernel is 2-4x slower in bf16 than bf16 matmul + softmax (measured with torch 2.13).
        """
        if context is None:
            q, k, v = self._qkv(x)
        else:
            q, (k, v) = self._q_of(x), self._kv_of(context)
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            out = self._probabilities(q, k) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))

    def _probabilities(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit attention probabilities ``softmax(q k^T / sqrt(d))``: (B, heads, N, N)."""
        q, k, _ = self._qkv(x)
        return self._probabilities(q, k)


class Mlp(nn.Module):
    """Two-layer GELU MLP of a transformer block: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, with drop path.

    Args:
        dim: token width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias in the qkv projection.
        drop_path_rate: stochastic depth probability of this block.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_subset(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The block's outputs for some tokens only: ``forward(x)`` gathered at ``ids``, without computing the rest.

        Every token still serves as key and value; queries, the output projection and the MLP run on the
        selected tokens alone. Used where only some outputs are consumed (MAE's last decoder block: the loss
        reads the removed patches only).

        Args:
            x: (B, N, D) tokens.
            ids: (B, M) indices into N.

        Returns:
            (B, M, D), equal to ``forward(x).gather(1, ids)`` up to rounding (and drop-path draws).
        """
        h = self.norm1(x)
        xs = gather_rows(x, ids) + self.drop_path(self.attn(gather_rows(h, ids), context=h))
        return xs + self.drop_path(self.mlp(self.norm2(xs)))


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """ViT encoder for (B, C, H, W) radiographs with any H, W divisible by ``patch_size``.

    Args:
        img_size: side of the base (training) image; defines the base positional-embedding grid.
        patch_size: patch side p in pixels.
        in_chans: image channels (1 for radiographs).
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads; ``embed_dim`` must be divisible by it.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias in the qkv projections.
        drop_path_rate: stochastic depth, increasing linearly from 0 to this value over the blocks.
        pos_embed: ``"sincos"`` (fixed, as in MAE) or ``"learnable"``.
        pool: pooled feature of :meth:`forward`: ``"cls"`` token or ``"mean"`` of patch tokens.
        stem: patch embedding: ``"linear"`` (one Linear per patch, the classic ViT) or ``"conv"``
            (:class:`ConvPatchEmbed`, a small per-patch CNN).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        pos_embed: PosEmbedType = "sincos",
        pool: PoolType = "cls",
        stem: StemType = "linear",
    ) -> None:
        super().__init__()
        validate_vit_args(img_size, patch_size, embed_dim, depth, num_heads, drop_path_rate, pos_embed, pool, stem)
        self.config: dict[str, Any] = {
            "img_size": img_size, "patch_size": patch_size, "in_chans": in_chans, "embed_dim": embed_dim,
            "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias,
            "drop_path_rate": drop_path_rate, "pos_embed": pos_embed, "pool": pool, "stem": stem,
        }  # fmt: skip
        self.patch_size, self.embed_dim, self.pool = patch_size, embed_dim, pool
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed: nn.Module = (ConvPatchEmbed if stem == "conv" else PatchEmbed)(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        base = sincos_pos_embed_2d(embed_dim, self.grid_size).unsqueeze(0)
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(base.clone())
        else:
            self.register_buffer("pos_embed", base, persistent=False)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(init_mae_weights)
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_features(self) -> int:
        """Width D of the output tokens."""
        return self.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (tokens and embeddings)."""
        return {"cls_token", "pos_embed"}

    def grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid (H / p, W / p) of images ``x: (B, C, H, W)``."""
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional embedding (1, gh * gw, D) for a patch grid, resized from the base grid when needed."""
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        if isinstance(self.pos_embed, nn.Parameter):
            return resize_pos_embed(self.pos_embed, self.grid_size, grid)
        key = (tuple(grid), self.pos_embed.device, self.pos_embed.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = resize_pos_embed(self.pos_embed, self.grid_size, grid)
        return self._pos_cache[key]

    def embed_patches(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> patch tokens with positional embedding, (B, L, D); no cls token.

        With ``ids: (B, K)`` (row-major patch indices, e.g. MAE's visible patches), only those patches are
        embedded: (B, K, D), equal to the full result gathered at ``ids`` (linear stem; the conv stem's
        training-mode BatchNorm then sees only these patches).
        """
        pos = self.pos_embed_for(self.grid_of(x)).to(x.dtype)
        if ids is not None:
            pos = gather_rows(pos.expand(x.shape[0], -1, -1), ids)
        return self.patch_embed(x, ids) + pos

    def _prepend_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, 1 + K, D) with the cls token first."""
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the cls token and run the blocks and final norm.

        Args:
            tokens: (B, K, D) patch tokens (all L, or only the visible ones for MAE).

        Returns:
            (B, 1 + K, D) normalised tokens, cls first.
        """
        x = self._prepend_cls(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> all tokens (B, 1 + L, D), cls first."""
        return self.forward_tokens(self.embed_patches(x))

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, 1 + K, D) -> pooled (B, D) by the ``pool`` setting."""
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> pooled features (B, D)."""
        return self.pool_tokens(self.forward_features(x))

    def get_intermediate_layers(
        self, x: torch.Tensor, n: int | Sequence[int] = 1, norm: bool = True
    ) -> list[torch.Tensor]:
        """Tokens after selected blocks.

        Args:
            x: (B, C, H, W) images.
            n: the last ``n`` blocks, or explicit 0-based block indices.
            norm: apply the final LayerNorm to each output.

        Returns:
            One (B, 1 + L, D) tensor per selected block, in block order.
        """
        wanted = set(range(len(self.blocks) - n, len(self.blocks))) if isinstance(n, int) else set(n)
        h = self._prepend_cls(self.embed_patches(x))
        outputs = []
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            if i in wanted:
                outputs.append(self.norm(h) if norm else h)
        return outputs

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Explicit attention probabilities of every block (analysis only; training uses SDPA).

        Args:
            x: (B, C, H, W) images.

        Returns:
            One (B, heads, 1 + L, 1 + L) tensor per block; rows sum to 1.
        """
        h = self._prepend_cls(self.embed_patches(x))
        maps = []
        for blk in self.blocks:
            maps.append(blk.attn.attention_map(blk.norm1(h)))
            h = blk(h)
        return maps


def validate_vit_args(
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    drop_path_rate: float = 0.0,
    pos_embed: str = "sincos",
    pool: str = "cls",
    stem: str = "linear",
) -> None:
    """Raise :class:`ValueError` naming the first invalid encoder setting."""
    for name, value in (("img_size", img_size), ("patch_size", patch_size), ("embed_dim", embed_dim),
                        ("depth", depth), ("num_heads", num_heads)):  # fmt: skip
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} should be a positive integer, got {value!r}.")
    if img_size % patch_size:
        raise ValueError(f"img_size should be a multiple of patch_size={patch_size}, got {img_size}.")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim should be divisible by num_heads={num_heads}, got {embed_dim}.")
    if embed_dim % 4:
        raise ValueError(f"embed_dim should be a multiple of 4 (2-D sin-cos embedding), got {embed_dim}.")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate should be in [0, 1), got {drop_path_rate}.")
    if pos_embed not in ("sincos", "learnable"):
        raise ValueError(f"pos_embed should be one of ('sincos', 'learnable'), got {pos_embed!r}.")
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool should be one of ('cls', 'mean'), got {pool!r}.")
    if stem not in ("linear", "conv"):
        raise ValueError(f"stem should be one of ('linear', 'conv'), got {stem!r}.")
    if stem == "conv" and (patch_size < 4 or patch_size & (patch_size - 1)):
        raise ValueError(f"stem 'conv' needs a patch_size that is a power of 2 >= 4, got {patch_size}.")


def vit_encoder(preset: str = "tiny", **overrides: Any) -> ViTEncoder:
    """Build a :class:`ViTEncoder` from a named preset (see :data:`VIT_PRESETS`), with keyword overrides."""
    if preset not in VIT_PRESETS:
        raise ValueError(f"preset should be one of {tuple(VIT_PRESETS)}, got {preset!r}.")
    return ViTEncoder(**{**VIT_PRESETS[preset], **overrides})
