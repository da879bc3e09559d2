"""Masked image modeling objectives on a :class:`~dentalmim.models.vit.ViTEncoder`.

* :class:`MaskedAutoencoder` (He et al., 2022): only the visible patches are embedded and encoded; a light decoder
  with mask tokens reconstructs the removed ones; the loss is on removed patches only, so in training the last
  decoder block, norm and head run on the removed tokens alone (the same loss and gradients, fewer FLOPs).
  MAE's default mask ratio is 0.75 for natural images; radiographs are smoother and more redundant locally but
  carry small, low-contrast findings (caries), and ratios of 0.6-0.75 are a reasonable range to compare (lower
  ratios make the pretext task easier and the encoder slower, since it sees more tokens).
* :class:`ContrastiveLearner` (instance discrimination, SimCLR / MoCo v3 without momentum encoder): two augmented
  views through the full (unmasked) encoder, pooled, projected, symmetric InfoNCE.
* :class:`HybridMIM`: MAE on view 1 plus ``contrastive_weight`` x InfoNCE between the pooled *visible-token*
  encodings of both views (each view independently masked, so the contrastive branch costs one more
  visible-only encoder pass instead of two full ones; cf. CMAE / MSN).

Every objective maps ``(imgs, imgs_2)`` to an :class:`MIMOutput`; shapes: ``imgs: (B, 1, H, W)``,
``mask: (B, L), 1 = removed``, ``pred: (B, L, p * p)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dentalmim.models.mim_losses import InfoNCELoss, MAELoss, patchify, unpatchify
from dentalmim.models.pos_embed import resize_pos_embed, sincos_pos_embed_2d
from dentalmim.models.patch_embed import gather_rows
from dentalmim.models.vit import Block, ViTEncoder, init_mae_weights


@dataclass
class MIMOutput:
    """Result of one objective forward pass.

    Attributes:
        loss: scalar total loss (what is optimised).
        terms: named scalar loss terms (detached copies are logged), e.g. ``{"mae": ..., "contrastive": ...}``.
        pred: (B, L, p * p * C) reconstructed patches, or None without a decoder (MAE predicts only the
            removed patches: its visible patches' rows are 0).
        mask: (B, L), 1 = removed, or None without masking.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    pred: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def num_visible(length: int, mask_ratio: float) -> int:
    """Patches kept by masking ``length`` patches at ``mask_ratio``: ``int(L * (1 - mask_ratio))``, at least 1."""
    return max(1, int(length * (1.0 - mask_ratio)))


def mask_indices(
    batch: int, length: int, mask_ratio: float, device: torch.device | str, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by shuffling, entirely on ``device``.

    Args:
        batch: B.
        length: L patches per sample.
        mask_ratio: fraction of patches removed; ``K = int(L * (1 - mask_ratio))`` (at least 1) are kept.
        device: where the noise and indices are made (no host round trip).
        noise: optional (B, L) uniform noise deciding the shuffle (for reproducible masks).

    Returns:
        ids_shuffle: (B, L) patch indices, the K kept ones first; mask: (B, L) float, 1 = removed;
        ids_restore: (B, L) un-shuffling indices.
    """
    keep = num_visible(length, mask_ratio)
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, length, device=noise.device)
    mask[:, :keep] = 0
    return ids_shuffle, mask.gather(1, ids_restore), ids_restore


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking of tokens (see :func:`mask_indices`).

    Args:
        x: (B, L, D) patch tokens.
        mask_ratio: fraction of patches removed.
        noise: optional (B, L) uniform noise deciding the shuffle.

    Returns:
        x_visible: (B, K, D) kept tokens; mask: (B, L) with 1 = removed; ids_restore: (B, L) un-shuffling indices.
    """
    b, length, _ = x.shape
    ids_shuffle, mask, ids_restore = mask_indices(b, length, mask_ratio, x.device, noise)
    keep = num_visible(length, mask_ratio)
    return gather_rows(x, ids_shuffle[:, :keep]), mask.to(x.dtype), ids_restore


class MAEDecoder(nn.Module):
    """Light MAE decoder: latent + mask tokens -> pixel predictions for every patch.

    Args:
        encoder_dim: width of the encoder tokens.
        patch_size: patch side p.
        grid_size: base patch grid (gh, gw) of the fixed sin-cos positional embedding.
        in_chans: image channels C.
        embed_dim: decoder width.
        depth: decoder blocks.
        num_heads: decoder attention heads.
        mlp_ratio: MLP hidden width / decoder width.
    """

    def __init__(
        self,
        encoder_dim: int,
        patch_size: int,
        grid_size: tuple[int, int],
        in_chans: int = 1,
        embed_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid_size).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size * in_chans)
        self.apply(init_mae_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int],
                ids_pred: torch.Tensor | None = None) -> torch.Tensor:
        """Predict all patches, or only the patches ``ids_pred``.

        Args:
            latent: (B, 1 + K, D_enc) encoder output on visible patches, cls first.
            ids_restore: (B, L) from :func:`mask_indices`.
            grid: (gh, gw) patch grid, gh * gw = L.
            ids_pred: optional (B, M) row-major patch indices to predict (the removed ones, which are all the
                loss reads): the last block then runs its queries, output projection and MLP, and the norm and
                head run, on those M tokens alone (:meth:`~dentalmim.models.vit.Block.forward_subset`).

        Returns:
            (B, L, p * p * C) predicted patches in row-major order, or (B, M, p * p * C) for ``ids_pred``.
        """
        x = self.embed(latent)
        b, length = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(b, length + 1 - x.shape[1], -1)
        patches = gather_rows(torch.cat([x[:, 1:], mask_tokens], dim=1), ids_restore)
        patches = patches + resize_pos_embed(self.pos_embed, self.grid_size, grid).to(x.dtype)
        x = torch.cat([x[:, :1], patches], dim=1)
        if ids_pred is None:
            for blk in self.blocks:
                x = blk(x)
            return self.pred(self.norm(x[:, 1:]))
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.pred(self.norm(self.blocks[-1].forward_subset(x, ids_pred + 1)))


class MaskedAutoencoder(nn.Module):
    """MAE on a ViT encoder.

    Args:
        encoder: the ViT to pretrain.
        mask_ratio: fraction of patches removed, in (0, 1).
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder heads.
        norm_pix_loss: per-patch standardised targets.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        mask_ratio: float = 0.75,
        decoder_embed_dim: int = 128,
        decoder_depth: int = 2,
        decoder_num_heads: int = 4,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio should be in (0, 1), got {mask_ratio}.")
        self.encoder, self.mask_ratio = encoder, mask_ratio
        in_chans = encoder.config["in_chans"]
        self.decoder = MAEDecoder(
            encoder.embed_dim, encoder.patch_size, encoder.grid_size, in_chans,
            decoder_embed_dim, decoder_depth, decoder_num_heads,
        )  # fmt: skip
        self.loss_fn = MAELoss(encoder.patch_size, norm_pix_loss)

    def forward_encoder(
        self, imgs: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: (B, C, H, W) -> latent (B, 1 + K, D), mask (B, L), ids_restore (B, L).

        Only the visible patches are embedded and encoded (the removed ones are never touched).
        """
        gh, gw = self.encoder.grid_of(imgs)
        ids_shuffle, mask, ids_restore = mask_indices(imgs.shape[0], gh * gw, self.mask_ratio, imgs.device, noise)
        tokens = self.encoder.embed_patches(imgs, ids_shuffle[:, : num_visible(gh * gw, self.mask_ratio)])
        return self.encoder.forward_tokens(tokens), mask.to(tokens.dtype), ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int],
                        removed_only: bool = False) -> torch.Tensor:
        """latent: (B, 1 + K, D), ids_restore: (B, L) -> pred (B, L, p * p * C).

        With ``removed_only``, only the removed patches are predicted (the decoder skips the visible tokens'
        work that nothing reads, see :class:`MAEDecoder`) and the visible patches' rows of ``pred`` are 0.
        """
        if not removed_only:
            return self.decoder(latent, ids_restore, grid)
        ids_removed = ids_restore.argsort(dim=1)[:, latent.shape[1] - 1:]  # ids_shuffle past the K kept
        pred = self.decoder(latent, ids_restore, grid, ids_removed)
        full = pred.new_zeros(ids_restore.shape[0], ids_restore.shape[1], pred.shape[-1])
        return full.scatter(1, ids_removed.unsqueeze(-1).expand(-1, -1, pred.shape[-1]), pred)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W), pred: (B, L, p * p * C), mask: (B, L) -> scalar loss on removed patches."""
        return self.loss_fn(imgs, pred, mask)

    def forward(
        self, imgs: torch.Tensor, imgs_2: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> MIMOutput:
        """imgs: (B, C, H, W) -> :class:`MIMOutput` (``imgs_2`` is ignored)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        pred = self.forward_decoder(latent, ids_restore, self.encoder.grid_of(imgs), removed_only=True)
        loss = self.forward_loss(imgs, pred, mask)
        return MIMOutput(loss=loss, terms={"mae": loss}, pred=pred, mask=mask)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted patches in image space, de-normalised with each patch's own statistics if needed.

        Returns:
            pred_imgs: (B, C, H, W) reconstruction; mask_imgs: (B, 1, H, W), 1 on removed pixels.
        """
        return prediction_images(imgs, self.forward(imgs, noise=noise), self.encoder, self.loss_fn.norm_pix_loss)


def prediction_images(imgs: torch.Tensor, out: MIMOutput, encoder: ViTEncoder,
                      norm_pix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch pixel predictions of a masked-image model as images (for reconstruction previews).

    Args:
        imgs: (B, C, H, W) inputs.
        out: the model's output (``pred`` (B, L, p*p*C), ``mask`` (B, L), 1 on removed patches).
        encoder: the model's encoder (patch size and grid).
        norm_pix: the targets were per-patch normalised: de-normalise with each input patch's own statistics.

    Returns:
        pred_imgs: (B, C, H, W) reconstruction; mask_imgs: (B, 1, H, W), 1 on removed pixels.
    """
    pred = out.pred.float()
    if norm_pix:
        target = patchify(imgs.float(), encoder.patch_size)
        pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
    grid, p = encoder.grid_of(imgs), encoder.patch_size
    mask = out.mask.unsqueeze(-1).expand(-1, -1, p * p).float()
    return unpatchify(pred, p, grid, imgs.shape[1]), unpatchify(mask, p, grid, 1)


class ProjectionHead(nn.Module):
    """SimCLR / MoCo v3 projection MLP: Linear-BN-ReLU-Linear, (N, D) -> (N, out_dim).

    Args:
        in_dim: input width.
        hidden_dim: hidden width.
        out_dim: embedding width of the contrastive loss.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContrastiveLearner(nn.Module):
    """Instance discrimination between two views through the full encoder.

    Args:
        encoder: the ViT to pretrain (pooled by its ``pool`` setting).
        proj_hidden_dim: projection MLP hidden width.
        proj_dim: projection output width.
        temperature: InfoNCE temperature.
    """

    def __init__(
        self, encoder: ViTEncoder, proj_hidden_dim: int = 1024, proj_dim: int = 256, temperature: float = 0.2
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, proj_hidden_dim, proj_dim)
        self.loss_fn = InfoNCELoss(temperature)

    def forward(self, imgs: torch.Tensor, imgs_2: torch.Tensor | None = None) -> MIMOutput:
        """imgs, imgs_2: (B, C, H, W) two views of the same images -> :class:`MIMOutput`."""
        if imgs_2 is None:
            raise ValueError("the contrastive objective needs two views: set data.two_views=true.")
        z = self.head(self.encoder(torch.cat([imgs, imgs_2], dim=0)))
        z1, z2 = z.chunk(2, dim=0)
        loss = self.loss_fn(z1, z2)
        return MIMOutput(loss=loss, terms={"contrastive": loss})


class HybridMIM(nn.Module):
    """MAE reconstruction plus InfoNCE between the visible-token encodings of two masked views.

    Args:
        mae: the masked autoencoder (owns the encoder).
        proj_hidden_dim: projection MLP hidden width.
        proj_dim: projection output width.
        temperature: InfoNCE temperature.
        mae_weight: weight of the reconstruction term.
        contrastive_weight: weight of the contrastive term.
    """

    def __init__(
        self,
        mae: MaskedAutoencoder,
        proj_hidden_dim: int = 1024,
        proj_dim: int = 256,
        temperature: float = 0.2,
        mae_weight: float = 1.0,
        contrastive_weight: float = 0.1,
    ) -> None:
        super().__init__()
        if mae_weight < 0 or contrastive_weight < 0 or mae_weight + contrastive_weight == 0:
            raise ValueError(f"loss weights should be >= 0 and not both 0, got {mae_weight}, {contrastive_weight}.")
        self.mae = mae
        self.head = ProjectionHead(mae.encoder.embed_dim, proj_hidden_dim, proj_dim)
        self.loss_fn = InfoNCELoss(temperature)
        self.mae_weight, self.contrastive_weight = mae_weight, contrastive_weight

    @property
    def encoder(self) -> ViTEncoder:
        """The pretrained encoder (owned by :attr:`mae`, so it is stored once in the state dict)."""
        return self.mae.encoder

    def forward(self, imgs: torch.Tensor, imgs_2: torch.Tensor | None = None) -> MIMOutput:
        """imgs, imgs_2: (B, C, H, W) two views -> :class:`MIMOutput` with terms ``mae`` and ``contrastive``."""
        if imgs_2 is None:
            raise ValueError("the hybrid objective needs two views: set data.two_views=true.")
        b = imgs.shape[0]
        latent, mask, ids_restore = self.mae.forward_encoder(torch.cat([imgs, imgs_2], dim=0))
        pred = self.mae.forward_decoder(latent[:b], ids_restore[:b], self.encoder.grid_of(imgs), removed_only=True)
        loss_mae = self.mae.forward_loss(imgs, pred, mask[:b])
        z1, z2 = self.head(self.encoder.pool_tokens(latent)).chunk(2, dim=0)
        loss_con = self.loss_fn(z1, z2)
        loss = self.mae_weight * loss_mae + self.contrastive_weight * loss_con
        return MIMOutput(loss=loss, terms={"mae": loss_mae, "contrastive": loss_con}, pred=pred, mask=mask[:b])
