"""Masked image modeling pretraining: the LightningModule and the ``dentalmim pretrain`` LightningCLI.

:class:`PretrainModule` only wires an objective (:mod:`dentalmim.models.mim`), logging and AdamW parameter groups;
its typed, documented ``__init__`` is the ``model:`` section of ``configs/pretrain/*.yaml``.

Multi-GPU / multi-node runs need no code: ``--trainer.devices 4 --trainer.strategy ddp [--trainer.num_nodes 2]``.
The learning rate scales with the global batch (per-device batch x devices x nodes x gradient accumulation), the
contrastive loss gathers negatives from every rank, and the data module's persistent cache is keyed by file
content and reader settings, so every rank can share one cache folder safely. With a BatchNorm projection head
(contrastive / hybrid) set ``trainer.sync_batchnorm: true`` under DDP.

Run ``dentalmim pretrain fit --config configs/pretrain/mae_vit_tiny.yaml --data.data_dir DIR`` (``--print_config``
shows the resolved config; ``--ckpt_path last`` resumes; ``--model.init_encoder FILE`` continues pretraining from
existing encoder weights).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_warn

from dentalmim.errors import ConfigError, DentalMimError
from dentalmim.models.mim import MIMOutput, num_visible
from dentalmim.models.objectives import build_registered, objective_spec
from dentalmim.models.vit import VIT_PRESETS, ViTEncoder, validate_vit_args
from dentalmim.training.cli_args import check_model_field, isolated_argv, run_lightning_cli
from dentalmim.training.export import init_encoder_from
from dentalmim.training.optim import param_groups_weight_decay, scaled_lr, warmup_cosine_factor

Objective = Literal["mae", "contrastive", "hybrid", "simmim"]
OBJECTIVES = ("mae", "contrastive", "hybrid", "simmim")
#: Parameter-name suffixes without weight decay (besides norms and biases).
NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token")


class NonFiniteLossError(DentalMimError, RuntimeError):
    """Training produced a NaN or infinite loss (diverged); the message names the step and the loss terms."""


def check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteLossError` if any loss term is NaN or infinite.

    Args:
        terms: named scalar loss terms.
        step: global step, for the message.
    """
    stacked = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
    if bool(torch.isfinite(stacked).all()):  # one device sync per step
        return
    shown = ", ".join(f"{name}={float(value.detach())}" for name, value in terms.items())
    raise NonFiniteLossError(
        f"non-finite loss at step {step} ({shown}); training stopped. Lower model.lr / model.base_lr, "
        "raise model.warmup_steps or set trainer.gradient_clip_val, and resume from the last good checkpoint."
    )


def validate_pretrain_args(hp: dict[str, Any]) -> None:
    """Check :class:`PretrainModule` arguments; raise :class:`ConfigError` naming the first bad field."""
    check_model_field(hp["objective"] in OBJECTIVES, "objective", f"one of {OBJECTIVES}", hp["objective"])
    check_model_field(hp["preset"] in VIT_PRESETS, "preset", f"one of {tuple(VIT_PRESETS)}", hp["preset"])
    check_model_field(0.0 < hp["mask_ratio"] < 1.0, "mask_ratio", "in (0, 1)", hp["mask_ratio"])
    check_model_field(hp["temperature"] > 0, "temperature", "> 0", hp["temperature"])
    check_model_field(hp["mae_weight"] >= 0, "mae_weight", ">= 0", hp["mae_weight"])
    check_model_field(hp["contrastive_weight"] >= 0, "contrastive_weight", ">= 0", hp["contrastive_weight"])
    check_model_field(hp["lr"] is None or hp["lr"] > 0, "lr", "> 0 or null", hp["lr"])
    check_model_field(hp["base_lr"] > 0, "base_lr", "> 0", hp["base_lr"])
    check_model_field(hp["weight_decay"] >= 0, "weight_decay", ">= 0", hp["weight_decay"])
    check_model_field(all(0 <= b < 1 for b in hp["betas"]), "betas", "two values in [0, 1)", hp["betas"])
    check_model_field(0 <= hp["warmup_fraction"] < 1, "warmup_fraction", "in [0, 1)", hp["warmup_fraction"])
    check_model_field(hp["warmup_steps"] is None or hp["warmup_steps"] >= 0, "warmup_steps", ">= 0 or null", hp["warmup_steps"])
    check_model_field(0 <= hp["min_lr_ratio"] <= 1, "min_lr_ratio", "in [0, 1]", hp["min_lr_ratio"])
    init = hp.get("init_encoder")
    check_model_field(init is None or Path(init).is_file(), "init_encoder", "an existing exported encoder "
                      "(.safetensors), pretraining .ckpt, model bundle or fine-tuning .ckpt, or null", init)
    dec = hp["decoder_embed_dim"]
    check_model_field(dec > 0 and dec % hp["decoder_num_heads"] == 0 and dec % 4 == 0, "decoder_embed_dim",
           f"a positive multiple of 4 divisible by decoder_num_heads={hp['decoder_num_heads']}", dec)  # fmt: skip
    enc = encoder_config(hp)
    try:
        validate_vit_args(enc["img_size"], enc["patch_size"], enc["embed_dim"], enc["depth"], enc["num_heads"],
                          enc["drop_path_rate"], enc["pos_embed"], enc["pool"], enc["stem"])  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None


def encoder_config(hp: dict[str, Any]) -> dict[str, Any]:
    """ViTEncoder keyword arguments from :class:`PretrainModule` hyper-parameters (preset + overrides)."""
    preset = VIT_PRESETS.get(hp["preset"], VIT_PRESETS["tiny"])
    return {
        "img_size": hp["img_size"], "patch_size": hp["patch_size"], "in_chans": 1,
        "embed_dim": hp["embed_dim"] or preset["embed_dim"], "depth": hp["depth"] or preset["depth"],
        "num_heads": hp["num_heads"] or preset["num_heads"], "mlp_ratio": 4.0, "qkv_bias": True,
        "drop_path_rate": hp["drop_path_rate"], "pos_embed": hp["pos_embed"], "pool": hp["pool"],
        "stem": hp["stem"],
    }  # fmt: skip


def build_objective(hp: dict[str, Any]) -> torch.nn.Module:
    """The objective module (with a fresh encoder) described by :class:`PretrainModule` hyper-parameters.

    Dispatched through the registry :mod:`dentalmim.models.objectives` (which documents how to add one).
    """
    return build_registered(hp["objective"], ViTEncoder(**encoder_config(hp)), hp)


class PretrainModule(pl.LightningModule):
    """Self-supervised pretraining of a ViT encoder on unlabeled radiographs.

    Args:
        objective: ``mae`` (masked autoencoder), ``contrastive`` (InfoNCE between two views, needs
            ``data.two_views: true``), ``hybrid`` (MAE + weighted InfoNCE, needs two views) or ``simmim``
            (mask tokens in the full encoder, linear pixel head, L1; uses ``mask_ratio`` and ``norm_pix_loss``).
        preset: encoder size: ``nano`` (128 wide, 6 deep), ``tiny`` (192, 12), ``small`` (384, 12), ``base`` (768, 12).
        img_size: training crop side in pixels (the data module's ``crop_size``); other sizes work through
            interpolated positional embeddings.
        patch_size: patch side in pixels; ``img_size`` must be a multiple of it.
        embed_dim: encoder width, overriding the preset (null = preset).
        depth: encoder blocks, overriding the preset (null = preset).
        num_heads: encoder heads, overriding the preset (null = preset).
        drop_path_rate: stochastic depth of the last encoder block (linear from 0).
        pos_embed: ``sincos`` (fixed, MAE) or ``learnable``.
        pool: pooled feature of the contrastive branch: ``cls`` token or ``mean`` of patch tokens.
        stem: patch embedding: ``linear`` (classic ViT) or ``conv`` (a small CNN per patch; MAE stays
            visible-only; the tiny configs use it, see :class:`dentalmim.models.patch_embed.ConvPatchEmbed`).
        mask_ratio: MAE fraction of removed patches, in (0, 1); 0.75 is MAE's default, 0.6-0.75 are worth trying
            on radiographs.
        norm_pix_loss: MAE targets standardised per patch.
        decoder_embed_dim: MAE decoder width.
        decoder_depth: MAE decoder blocks.
        decoder_num_heads: MAE decoder heads.
        proj_hidden_dim: contrastive projection MLP hidden width.
        proj_dim: contrastive embedding width.
        temperature: InfoNCE temperature.
        mae_weight: hybrid weight of the reconstruction loss.
        contrastive_weight: hybrid weight of the contrastive loss.
        lr: absolute peak learning rate; null = ``base_lr * global_batch / 256``.
        base_lr: learning rate per 256 images of global batch.
        weight_decay: AdamW decay (none on norms, biases, positional embeddings and tokens).
        betas: AdamW betas.
        warmup_fraction: linear warmup as a fraction of all optimiser steps (when ``warmup_steps`` is null).
        warmup_steps: linear warmup steps, overriding ``warmup_fraction``.
        min_lr_ratio: final learning rate of the cosine schedule / peak.
        init_encoder: continue pretraining from existing encoder weights: an exported encoder ``.safetensors``
            (with its JSON config), a pretraining ``.ckpt``, or a detector model bundle / fine-tuning ``.ckpt``
            (its ``encoder.*`` weights). Only the encoder is initialised (decoder and heads start fresh). Its
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads`` and ``pos_embed`` must equal this encoder's
            (preset + overrides), else :class:`ConfigError` names the differing field; another ``img_size`` is fine
            (a learnable positional embedding is resized to this grid). null = fresh encoder. On resume
            (``--ckpt_path``) the checkpoint's weights replace it; the file must still exist, or pass null.
    """

    def __init__(
        self,
        objective: Objective = "mae",
        preset: Literal["nano", "tiny", "small", "base"] = "tiny",
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        drop_path_rate: float = 0.0,
        pos_embed: Literal["sincos", "learnable"] = "sincos",
        pool: Literal["cls", "mean"] = "cls",
        stem: Literal["linear", "conv"] = "linear",
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        decoder_embed_dim: int = 256,
        decoder_depth: int = 4,
        decoder_num_heads: int = 8,
        proj_hidden_dim: int = 1024,
        proj_dim: int = 256,
        temperature: float = 0.2,
        mae_weight: float = 1.0,
        contrastive_weight: float = 0.1,
        lr: float | None = None,
        base_lr: float = 1.5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_fraction: float = 0.05,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        init_encoder: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        validate_pretrain_args(dict(self.hparams))
        self.objective = build_objective(dict(self.hparams))
        if init_encoder:
            init_encoder_from(self.encoder, init_encoder)

    @property
    def encoder(self) -> ViTEncoder:
        """The encoder being pretrained."""
        return self.objective.encoder

    def forward(self, imgs: torch.Tensor, imgs_2: torch.Tensor | None = None) -> MIMOutput:
        """imgs (and imgs_2 for two-view objectives): (B, 1, H, W) -> :class:`MIMOutput`."""
        return self.objective(imgs, imgs_2)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        two_views = getattr(datamodule, "two_views", None)
        if objective_spec(self.hparams.objective).two_views and two_views is False:
            raise ConfigError(
                f"data.two_views should be true for model.objective={self.hparams.objective!r}, got false."
            )
        crop = getattr(datamodule, "crop_size", None)
        self._check_data_fits(crop, getattr(datamodule, "batch_size", None))
        if isinstance(crop, int) and crop != self.hparams.img_size:
            rank_zero_warn(f"data.crop_size={crop} differs from model.img_size={self.hparams.img_size}: "
                           "positional embeddings are interpolated to the crop's patch grid.")  # fmt: skip

    def _check_data_fits(self, crop: int | None, batch_size: int | None) -> None:
        """Before training: crops tile into whole patches, masking leaves patches on both sides, and a contrastive
        objective has negatives in its batches (a data module without these attributes is not checked)."""
        patch, hp = self.encoder.patch_size, self.hparams
        if isinstance(crop, int):
            if crop % patch:
                raise ConfigError(f"data.crop_size should be a multiple of the encoder's patch size {patch}, "
                                  f"got {crop}.")
            length = (crop // patch) ** 2
            uses_masks = hp.objective != "contrastive"
            if uses_masks and not 1 <= num_visible(length, hp.mask_ratio) < length:
                raise ConfigError(f"model.mask_ratio should remove at least one of the {length} patches of a crop "
                                  f"and keep at least one, got {hp.mask_ratio}.")
        if isinstance(batch_size, int) and objective_spec(hp.objective).two_views and batch_size < 2:
            raise ConfigError(f"data.batch_size should be >= 2 for model.objective={hp.objective!r}: the other "
                              f"images of a batch are the contrastive negatives, got {batch_size}.")

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        out = self.objective(batch["image"], batch.get("image_2"))
        terms = {"loss": out.loss, **{f"loss_{k}": v for k, v in out.terms.items() if len(out.terms) > 1}}
        if stage == "train":
            check_finite(terms, self.global_step)
        on_step = stage == "train"
        self.log_dict({f"{stage}/{k}": v.detach() for k, v in terms.items()}, on_step=on_step,
                      on_epoch=not on_step, prog_bar=True, sync_dist=not on_step,
                      batch_size=batch["image"].shape[0])  # fmt: skip
        return out.loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, prog_bar=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def global_batch_size(self) -> int:
        """Images per optimiser step over all devices (for lr scaling)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        batch = getattr(datamodule, "batch_size", None) or getattr(datamodule, "hparams", {}).get("batch_size")
        if not batch:
            raise ConfigError("model.lr should be set: the data module exposes no batch_size to scale base_lr by.")
        return int(batch) * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = hp.lr if hp.lr is not None else scaled_lr(hp.base_lr, self.global_batch_size())
        groups = param_groups_weight_decay(self.objective, hp.weight_decay, NO_DECAY_NAMES)
        groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), fused=self.device.type == "cuda")
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("trainer.max_steps or trainer.max_epochs should be set, got neither.")
        total = max(1, int(total))
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(round(hp.warmup_fraction * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine_factor(step, warmup, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


#: Placeholder in logger ``save_dir`` / checkpoint ``dirpath`` values replaced by ``trainer.default_root_dir``.
ROOT_PLACEHOLDER = "{root}"


class PretrainCLI(LightningCLI):
    """LightningCLI of ``dentalmim pretrain``.

    Before instantiation it replaces :data:`ROOT_PLACEHOLDER` in logger and callback paths by
    ``trainer.default_root_dir`` and drops the TensorBoard logger (with a warning) when tensorboard is missing.
    Only the subcommands in :attr:`SUBCOMMANDS` are offered: the module has no test or predict step.
    """

    SUBCOMMANDS: tuple[str, ...] = ("fit", "validate")

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in cls.SUBCOMMANDS}

    def parse_arguments(self, parser: Any, args: Any) -> None:
        with isolated_argv(args):  # sys.argv holds the relaunch command line (run_lightning_cli) beside ``args``
            super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if ckpt_path is not None and str(ckpt_path) not in ("last", "best", "hpc") and not Path(ckpt_path).is_file():
            raise ConfigError(f"ckpt_path should be a checkpoint file or 'last', got {ckpt_path} (no such file).")
        trainer = config.get("trainer") if config is not None else None
        if trainer is None:
            return
        root = str(trainer.get("default_root_dir") or ".")
        for key in ("logger", "callbacks"):
            items = trainer.get(key)
            for item in items if isinstance(items, list) else []:
                _fill_root(item, root)
        loggers = trainer.get("logger")
        if isinstance(loggers, list) and not _tensorboard_available():
            kept = [lg for lg in loggers if "TensorBoardLogger" not in str(lg.get("class_path", ""))]
            if len(kept) != len(loggers):
                rank_zero_warn("tensorboard is not installed: TensorBoard logging disabled (CSV logs are kept).")
                trainer["logger"] = kept


def _fill_root(item: Any, root: str) -> None:
    """Replace :data:`ROOT_PLACEHOLDER` in the string init args of one ``class_path`` config entry."""
    init_args = item.get("init_args") if hasattr(item, "get") else None
    if init_args is None:
        return
    for name in list(init_args.keys()):
        value = init_args[name]
        if isinstance(value, str) and ROOT_PLACEHOLDER in value:
            init_args[name] = value.replace(ROOT_PLACEHOLDER, root)


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


def cli_main(args: list[str] | None = None) -> PretrainCLI:
    """Run ``dentalmim pretrain`` (subcommands ``fit``, ``validate``; ``--config``, ``--print_config``, ...).

    Args:
        args: command-line arguments after ``pretrain``; None reads ``sys.argv``.

    Returns:
        The CLI object (``.model``, ``.trainer``, ``.datamodule``) once the subcommand has run.
    """
    return run_lightning_cli(PretrainCLI, PretrainModule, None, args, "pretrain")
