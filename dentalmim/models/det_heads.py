"""Detector building blocks: ViTDet simple feature pyramid, FCOS head, image-level head.

* :class:`SimpleFeaturePyramid` (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object
  Detection"): every pyramid level is built from the *last* ViT feature map (stride = patch size ``p``) alone:
  transposed 2x2 convolutions for finer strides (``p/2``: one, ``p/4``: two, ...), identity at ``p``, 2x2 max
  pooling for coarser ones; each level then gets a 1x1 + 3x3 convolution with channel LayerNorm.
* :class:`DetailBranch`: an optional light CNN on the input pixels whose maps are added to the pyramid levels
  (the "spatial prior" idea of ViT-Adapter, Chen et al. 2023): a ViT token summarises a whole ``p x p`` patch,
  while caries lesions are often only 10-30 px across, so fine levels built from tokens alone lack pixel detail.
* :class:`FCOSHead`: one head shared by all levels: a classification tower and a box tower
  (``num_convs`` x conv3x3-GroupNorm-ReLU), class logits, ``ltrb`` distances ``softplus(scale_k * x) * stride_k``
  (a learnable scale per level; softplus rather than FCOS's ReLU so no output is stuck at zero gradient) and
  centerness on the box tower (the FCOS "centerness on reg" variant).
* :class:`ImageLevelHead`: an image (crop) level caries logit from the cls token and an attention pooling of the
  pyramid features, the attention being the dense class logits (where the head sees lesions), plus a learned
  multiple of the highest dense logit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W) maps (as in ViTDet / ConvNeXt)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _resample(dim: int, log2_ratio: int) -> tuple[nn.Module, int]:
    """Module changing the stride by ``2 ** log2_ratio`` (negative: upsample) and its output width."""
    if log2_ratio == 0:
        return nn.Identity(), dim
    if log2_ratio > 0:
        return nn.Sequential(*[nn.MaxPool2d(2, 2) for _ in range(log2_ratio)]), dim
    layers: list[nn.Module] = []
    for i in range(-log2_ratio):
        if i > 0:
            layers += [LayerNorm2d(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim // 2, 2, 2))
        dim //= 2
    return nn.Sequential(*layers), dim


def validate_pyramid(patch_size: int, strides: Sequence[int], embed_dim: int) -> None:
    """Raise :class:`ValueError` unless every stride is ``patch_size * 2**k`` (|k| <= 3), strictly increasing."""
    strides = list(strides)
    if not strides or strides != sorted(set(strides)):
        raise ValueError(f"pyramid_strides should be a non-empty strictly increasing list, got {strides}.")
    for s in strides:
        ratio = math.log2(s / patch_size) if s > 0 else 0.5
        if ratio != int(ratio) or abs(ratio) > 3:
            raise ValueError(f"pyramid_strides should be patch_size={patch_size} times a power of 2 in "
                             f"[1/8, 8], got {s}.")
        if ratio < 0 and embed_dim % (2 ** int(-ratio)):
            raise ValueError(f"embed_dim should be divisible by {2 ** int(-ratio)} for stride {s}, got {embed_dim}.")


class SimpleFeaturePyramid(nn.Module):
    """Multi-scale maps from one ViT map.

    Args:
        embed_dim: ViT width D.
        patch_size: ViT patch size p (stride of the input map).
        strides: output strides, e.g. ``(4, 8, 16, 32)`` for ``p = 16``.
        out_channels: width C of every level.
    """

    def __init__(self, embed_dim: int, patch_size: int, strides: Sequence[int], out_channels: int = 128) -> None:
        super().__init__()
        validate_pyramid(patch_size, strides, embed_dim)
        self.strides = tuple(int(s) for s in strides)
        self.levels = nn.ModuleList()
        for s in self.strides:
            resample, dim = _resample(embed_dim, int(round(math.log2(s / patch_size))))
            self.levels.append(nn.Sequential(
                resample, nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, D, H/p, W/p) -> one (B, C, H_k, W_k) map per stride (H_k = H/s_k, floored when s_k > p)."""
        return [level(x) for level in self.levels]


class DetailBranch(nn.Module):
    """Pixel-detail maps for the pyramid levels from a small CNN on the input image.

    Stage ``k`` (stride ``2**k``) is a stride-2 3x3 conv-BN-ReLU followed by a 3x3 conv-BN-ReLU; widths double
    from ``channels`` up to ``4 * channels``. At every pyramid stride a 1x1 projection, initialised to zero, adds
    the stage's map to the level, so a fresh branch leaves the pyramid unchanged and training decides how much
    detail to mix in. The branch is local (receptive field of a few tens of pixels) and cheap next to the ViT.

    Args:
        channels: width of the first stage.
        strides: pyramid strides; each must be a power of 2 (>= 2).
        out_channels: width of the pyramid levels.
    """

    def __init__(self, channels: int, strides: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"detail_channels should be >= 1 (0 = no detail branch), got {channels}.")
        for s in strides:
            if s < 2 or s & (s - 1):
                raise ValueError(f"the detail branch needs power-of-2 pyramid strides, got {list(strides)}.")
        self.strides = tuple(int(s) for s in strides)
        self.stages, self.proj = nn.ModuleList(), nn.ModuleDict()
        width_in = 1
        for k in range(1, int(math.log2(max(self.strides))) + 1):
            width = channels * min(2 ** (k - 1), 4)
            self.stages.append(nn.Sequential(
                nn.Conv2d(width_in, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
            if 2**k in self.strides:
                proj = nn.Conv2d(width, out_channels, 1)
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
                self.proj[str(2**k)] = proj
            width_in = width

    def forward(self, images: torch.Tensor, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """images (B, 1, H, W), pyramid maps per level (B, C, H_k, W_k) -> the maps with the detail added.

        A stage map larger than its level (the stride-2 convs round up, the pyramid's pooling rounds down) is
        cropped to the level's size.
        """
        out = list(features)
        x = images
        for k, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if str(2**k) in self.proj:
                i = self.strides.index(2**k)
                h, w = out[i].shape[-2:]
                out[i] = out[i] + self.proj[str(2**k)](x[..., :h, :w]).to(out[i].dtype)
        return out


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    groups = math.gcd(32, channels)
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Dense anchor-free head shared over pyramid levels.

    Args:
        channels: input width C of every level.
        num_classes: number of lesion classes K (sigmoid outputs, no background class).
        strides: stride of each level (regression outputs are in pixels).
        num_convs: conv layers per tower.
        prior_prob: initial foreground probability of the class logits (focal-loss initialisation).
    """

    def __init__(self, channels: int, num_classes: int, strides: Sequence[int], num_convs: int = 2,
                 prior_prob: float = 0.01) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.cls_tower, self.box_tower = _tower(channels, num_convs), _tower(channels, num_convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """features: per level (B, C, H_k, W_k).

        Returns:
            ``(cls_logits, ltrb, centerness)``, each a list over levels of (B, K, H_k, W_k), (B, 4, H_k, W_k)
            positive pixel distances, and (B, 1, H_k, W_k) logits.
        """
        cls_out, box_out, ctr_out = [], [], []
        for k, feat in enumerate(features):
            cls_out.append(self.cls_logits(self.cls_tower(feat)))
            box = self.box_tower(feat)
            box_out.append(F.softplus(self.scales[k] * self.bbox_pred(box).float()) * self.strides[k])  # fp32 px
            ctr_out.append(self.centerness(box))
        return cls_out, box_out, ctr_out


class ImageLevelHead(nn.Module):
    """Image-level lesion logit.

    Args:
        embed_dim: width D of the ViT cls token.
        channels: width C of the pyramid levels.
    """

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim + channels)
        self.fc = nn.Linear(embed_dim + channels, 1)
        self.max_weight = nn.Parameter(torch.zeros(1))
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, cls_token: torch.Tensor, features: Sequence[torch.Tensor],
                cls_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Image logit.

        Args:
            cls_token: (B, D).
            features: per level (B, C, H_k, W_k) pyramid maps.
            cls_logits: per level (B, K, H_k, W_k) dense class logits.

        Returns:
            (B,) logits.
        """
        feats = torch.cat([f.flatten(2) for f in features], dim=2)  # (B, C, P)
        dense = torch.cat([c.flatten(2) for c in cls_logits], dim=2).amax(dim=1)  # (B, P)
        attn = dense.float().softmax(dim=1).to(feats.dtype)
        pooled = (feats * attn[:, None, :]).sum(dim=2)
        x = self.norm(torch.cat([cls_token, pooled.to(cls_token.dtype)], dim=1))
        return self.fc(x).squeeze(1) + self.max_weight * dense.amax(dim=1)
