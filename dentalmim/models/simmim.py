"""SimMIM-style masked image modeling (Xie et al., 2022) on a :class:`~dentalmim.models.vit.ViTEncoder`.

Unlike MAE, the *full* encoder runs on every position: the patch embeddings of removed patches are replaced by one
learnable mask token (before the positional embedding is added, so each mask token still knows where it is), and
a single linear head maps each encoder output token back to its patch's pixels. The loss is the L1 distance on the
removed patches only. There is no decoder, so almost all capacity (and compute) is in the encoder.

Shapes: ``imgs: (B, C, H, W)``, ``mask: (B, L), 1 = removed``, ``pred: (B, L, p * p * C)``.
"""

from __future__ import annotations

import torch
from torch import nn

from dentalmim.models.mim import MIMOutput, prediction_images
from dentalmim.models.mim_losses import normalize_patches, patchify
from dentalmim.models.vit import ViTEncoder


def random_patch_mask(batch: int, length: int, mask_ratio: float, device: torch.device,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample random mask removing ``round(L * mask_ratio)`` patches (at least 1, at most L - 1).

    Args:
        batch: B.
        length: L patches per image.
        mask_ratio: fraction removed, in (0, 1).
        device: device of the mask.
        noise: optional (B, L) scores; the highest-scoring patches are removed (reproducible masks).

    Returns:
        (B, L) float mask, 1 = removed.
    """
    removed = min(max(1, round(length * mask_ratio)), max(length - 1, 1))
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    ids = noise.argsort(dim=1, descending=True)[:, :removed]
    mask = torch.zeros(batch, length, device=device)
    return mask.scatter_(1, ids.to(device), 1.0)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the removed patches only.

    Args:
        pred: (B, L, P) predicted patches.
        target: (B, L, P) target patches.
        mask: (B, L), 1 = removed (scored), 0 = visible (ignored).

    Returns:
        Scalar: per-pixel L1 averaged over the pixels of removed patches.
    """
    per_patch = (pred.float() - target.float()).abs().mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class SimMIM(nn.Module):
    """Masked prediction with mask tokens in the full encoder and a linear pixel head.

    Args:
        encoder: the ViT to pretrain.
        mask_ratio: fraction of patches replaced by the mask token, in (0, 1); SimMIM uses 0.6.
        norm_pix_loss: standardise each target patch (as MAE's option); False predicts raw pixels, as SimMIM.
    """

    def __init__(self, encoder: ViTEncoder, mask_ratio: float = 0.6, norm_pix_loss: bool = False) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio should be in (0, 1), got {mask_ratio}.")
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        p, c = encoder.patch_size, encoder.config["in_chans"]
        self.head = nn.Linear(encoder.embed_dim, p * p * c)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W), mask: (B, L) -> encoder tokens (B, 1 + L, D), removed patches as mask tokens."""
        tokens = self.encoder.patch_embed(imgs)
        w = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1.0 - w) + self.mask_token.to(tokens.dtype) * w
        tokens = tokens + self.encoder.pos_embed_for(self.encoder.grid_of(imgs)).to(tokens.dtype)
        return self.encoder.forward_tokens(tokens)

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W) -> (B, L, p * p * C) targets, standardised per patch if ``norm_pix_loss``."""
        patches = patchify(imgs, self.encoder.patch_size)
        return normalize_patches(patches) if self.norm_pix_loss else patches

    def forward(self, imgs: torch.Tensor, imgs_2: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> MIMOutput:
        """imgs: (B, C, H, W) -> :class:`MIMOutput` with term ``simmim`` (``imgs_2`` is ignored)."""
        gh, gw = self.encoder.grid_of(imgs)
        mask = random_patch_mask(imgs.shape[0], gh * gw, self.mask_ratio, imgs.device, noise)
        pred = self.head(self.forward_encoder(imgs, mask)[:, 1:])
        loss = masked_l1(pred, self.target(imgs), mask)
        return MIMOutput(loss=loss, terms={"simmim": loss}, pred=pred, mask=mask)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted patches in image space (for :class:`~dentalmim.training.callbacks.ReconstructionPreview`).

        Returns:
            pred_imgs: (B, C, H, W) reconstruction; mask_imgs: (B, 1, H, W), 1 on removed pixels.
        """
        return prediction_images(imgs, self.forward(imgs, noise=noise), self.encoder, self.norm_pix_loss)
