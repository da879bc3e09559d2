"""Caries-detector fine-tuning: the LightningModule and the ``dentalmim finetune`` LightningCLI.

:class:`FinetuneModule` wires a :class:`~dentalmim.models.detector.CariesDetector` (encoder from an exported
``.safetensors`` file, from a pretraining ``.ckpt``, or fresh with ``encoder: null`` for the from-scratch
baseline), AdamW with layer-wise lr decay, warmup + cosine, and validation on *full* images through tiled
inference (the same code path as :class:`~dentalmim.inference.predictor.Predictor`).

Validation metrics (``on_validation_epoch_end``), computed with :mod:`dentalmim.evaluation`:

* ``val/sens_1fp``: lesion sensitivity at <= ``target_fp_per_image`` false positives per image (FROC operating
  point; a prediction hits a lesion when its centre is inside the lesion box or IoU >= 0.3);
* ``val/ap50``: detection AP at IoU 0.5; ``val/image_auroc``: AUROC of the image-level probability;
* ``val/score`` = mean of ``sens_1fp`` and ``image_auroc`` (undefined ones skipped, 0 if none): the early-stopping
  and checkpoint monitor of the configs.

Operating thresholds are chosen on the same validation pass and saved in every checkpoint (``checkpoint
["dentalmim"]``, see :meth:`FinetuneModule.model_metadata`), so the best checkpoint carries the thresholds of its
own epoch (rule: :func:`~dentalmim.inference.predictor.select_operating_point`).

Run ``dentalmim finetune fit --config configs/finetune/caries_vit_small.yaml --model.encoder ENCODER``.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from dentalmim import __version__
from dentalmim.data.dicom import image_type
from dentalmim.data.spacing import check_max_spacing, spacing_factors
from dentalmim.errors import ConfigError, DentalMimError
from dentalmim.evaluation.metrics import EvalImage, auroc, average_precision, froc_curve
from dentalmim.inference.predictor import (DEFAULT_IMAGE_THRESHOLD, DEFAULT_SCORE_THRESHOLD, SUPPORT_KEYS,
                                          THRESHOLD_RULE, TYPE_SUPPORT_KEY, select_operating_point)
from dentalmim.inference.tiling import tiled_detect
from dentalmim.models.detector import CariesDetector, default_class_names
from dentalmim.models.vit import VIT_PRESETS, ViTEncoder, validate_vit_args
from dentalmim.training.cli_args import check_model_field, run_lightning_cli
from dentalmim.training.optim import warmup_cosine_factor
from dentalmim.training.pretrain import PretrainCLI, check_finite

#: Parameter-name suffixes without weight decay (besides norms, biases and other 1-d parameters).
NO_DECAY_NAMES = ("cls_token", "pos_embed")


#: (field, check, expectation) of the numeric :class:`FinetuneModule` arguments.
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("num_classes", lambda v: v >= 1, ">= 1"), ("fpn_channels", lambda v: v >= 1, ">= 1"),
    ("head_convs", lambda v: v >= 0, ">= 0"), ("detail_channels", lambda v: v >= 0, ">= 0"),
    ("focal_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("focal_gamma", lambda v: v >= 0, ">= 0"), ("center_radius", lambda v: v >= 0, ">= 0"),
    ("image_loss_weight", lambda v: v >= 0, ">= 0"), ("lr", lambda v: v > 0, "> 0"),
    ("layer_decay", lambda v: 0 < v <= 1, "in (0, 1]"), ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("warmup_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("warmup_steps", lambda v: v is None or v >= 0, ">= 0 or null"),
    ("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"), ("tile_overlap", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("val_tile_batch_size", lambda v: v >= 1, ">= 1"), ("val_score_threshold", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("nms_iou", lambda v: 0 < v <= 1, "in (0, 1]"), ("max_detections", lambda v: v >= 1, ">= 1"),
    ("target_fp_per_image", lambda v: v > 0, "> 0"),
)


def validate_finetune_args(hp: dict[str, Any]) -> None:
    """Check :class:`FinetuneModule` arguments; raise :class:`ConfigError` naming the first bad field."""
    enc = hp["encoder"]
    check_model_field(enc is None or Path(enc).suffix in (".safetensors", ".ckpt"), "encoder",
           "a .safetensors (export-encoder) or .ckpt (pretraining) file, or null", enc)
    check_model_field(enc is None or Path(enc).is_file(), "encoder", "an existing file", enc)
    init = hp.get("init_detector")
    check_model_field(init is None or Path(init).is_file(), "init_detector",
                      "an existing model bundle (.safetensors) or fine-tuning .ckpt, or null", init)
    check_model_field(hp["preset"] in VIT_PRESETS, "preset", f"one of {tuple(VIT_PRESETS)}", hp["preset"])
    for field, ok, expectation in _RULES:
        check_model_field(ok(hp[field]), field, expectation, hp[field])
    names = hp["class_names"]
    check_model_field(names is None or len(names) == hp["num_classes"], "class_names",
           f"null or {hp['num_classes']} names (num_classes)", names)
    try:
        check_max_spacing(hp.get("max_spacing_mm"))
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None
    tile = hp["tile_size"]
    check_model_field(tile is None or tile > 0, "tile_size", "null or positive (data.crop_size)", tile)
    try:
        cfg = scratch_encoder_config(hp)
        validate_vit_args(cfg["img_size"], cfg["patch_size"], cfg["embed_dim"], cfg["depth"], cfg["num_heads"],
                          cfg["drop_path_rate"], cfg["pos_embed"], stem=cfg["stem"])  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None


def scratch_encoder_config(hp: dict[str, Any]) -> dict[str, Any]:
    """ViTEncoder kwargs of a fresh encoder: the preset with ``embed_dim`` / ``depth`` / ``num_heads`` overrides."""
    preset = VIT_PRESETS.get(hp["preset"], VIT_PRESETS["small"])
    return {"img_size": hp["img_size"], "patch_size": hp["patch_size"], "in_chans": 1,
            "embed_dim": hp["embed_dim"] or preset["embed_dim"], "depth": hp["depth"] or preset["depth"],
            "num_heads": hp["num_heads"] or preset["num_heads"], "drop_path_rate": hp["drop_path_rate"],
            "pos_embed": hp["pos_embed"], "stem": hp["stem"]}  # fmt: skip


def load_pretrained_encoder(path: str | Path, drop_path_rate: float = 0.0) -> ViTEncoder:
    """Encoder of an exported ``.safetensors`` file or a pretraining ``.ckpt``, with fine-tuning drop path.

    Args:
        path: :func:`~dentalmim.training.export.export_encoder` output or a ``PretrainModule`` checkpoint.
        drop_path_rate: stochastic depth of the rebuilt encoder (pretraining usually used none).

    Returns:
        The encoder (train mode) with the pretrained weights.
    """
    from dentalmim.training.export import export_encoder, load_encoder

    path = Path(path)
    try:
        if path.suffix == ".ckpt":
            with tempfile.TemporaryDirectory() as tmp:
                loaded = load_encoder(export_encoder(path, Path(tmp) / "encoder.safetensors"))
        else:
            loaded = load_encoder(path)
    except DentalMimError as exc:
        raise ConfigError(f"model.encoder: {exc}") from None
    encoder = ViTEncoder(**{**loaded.config, "drop_path_rate": drop_path_rate})
    encoder.load_state_dict(loaded.state_dict())
    return encoder


def layer_id(name: str, depth: int) -> int:
    """Layer index of a detector parameter for lr decay: 0 for embeddings, ``i + 1`` for block ``i``, ``depth + 1``
    for the final encoder norm and everything outside the encoder."""
    if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def param_groups_lrd(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                     depth: int) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise lr decay: block ``i`` of ``depth`` gets ``lr * layer_decay ** (depth - i)``,
    the patch embedding ``lr * layer_decay ** (depth + 1)``, the pyramid and heads ``lr``.

    Args:
        model: a :class:`CariesDetector` (parameter names ``encoder.*``, ``pyramid.*``, ``head.*``, ...).
        lr: peak learning rate of the heads.
        weight_decay: decay of weight matrices (none on 1-d parameters, tokens and positional embeddings).
        layer_decay: per-block decay factor in (0, 1].
        depth: number of encoder blocks.

    Returns:
        Parameter groups with ``lr``, ``weight_decay``, ``lr_scale`` and ``names``; frozen parameters are left out.
    """
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or name.endswith(NO_DECAY_NAMES)
        lid = layer_id(name, depth)
        scale = layer_decay ** (depth + 1 - lid)
        group = groups.setdefault((lid, no_decay), {"params": [], "names": [], "lr_scale": scale, "lr": lr * scale,
                                                    "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def validation_metrics(images: list[EvalImage], target_fp: float) -> dict[str, float]:
    """``sens_1fp``, ``ap50``, ``image_auroc`` (nan when undefined) and ``score`` of a validation set."""
    has_lesions = any(len(im.gt_boxes) for im in images)
    fppi, sens, _ = froc_curve(images) if has_lesions else (None, None, None)
    sens_fp = float(sens[fppi <= target_fp].max()) if has_lesions else float("nan")
    ap50 = average_precision(images) if has_lesions else float("nan")
    truth = np.array([im.has_caries for im in images])
    both = len(set(truth.tolist())) == 2
    image_auroc = auroc(np.array([im.image_prob for im in images]), truth) if both else float("nan")
    defined = [v for v in (sens_fp, image_auroc) if math.isfinite(v)]
    return {"sens_1fp": sens_fp, "ap50": ap50, "image_auroc": image_auroc,
            "score": float(np.mean(defined)) if defined else 0.0}


class FinetuneModule(pl.LightningModule):
    """Fine-tuning of the caries detector on COCO-labelled radiographs.

    Args:
        encoder: pretrained encoder: ``.safetensors`` from ``dentalmim export-encoder`` or a pretraining ``.ckpt``;
            null trains from scratch (the comparison baseline) with the preset below.
        preset: scratch encoder size: ``nano``, ``tiny``, ``small`` or ``base`` (ignored with ``encoder``).
        img_size: scratch encoder base image side (positional-embedding grid); other sizes are interpolated.
        patch_size: scratch encoder patch side (a pretrained encoder keeps its own).
        embed_dim: scratch encoder width, overriding the preset (null = preset).
        depth: scratch encoder blocks, overriding the preset (null = preset).
        num_heads: scratch encoder heads, overriding the preset (null = preset).
        pos_embed: scratch encoder positional embedding: ``sincos`` or ``learnable``.
        stem: scratch encoder patch embedding: ``linear`` or ``conv`` (a pretrained encoder keeps its own).
        drop_path_rate: stochastic depth of the last encoder block during fine-tuning.
        num_classes: lesion classes (linked from ``data.num_classes``: 1 for caries, 2 for enamel/dentin).
        class_names: names of the classes; null = taken from the data module's labels.
        pyramid_strides: detector pyramid strides (patch 16: 4 and 8 by transposed convs, 16, 32 by max pooling).
        fpn_channels: pyramid / head width.
        head_convs: conv layers per FCOS head tower.
        detail_channels: first-stage width of the detail CNN that adds pixel detail to every pyramid level, for
            lesions not much larger than a patch; 0 = the plain ViTDet pyramid.
        focal_alpha: focal loss alpha (weight of positives).
        focal_gamma: focal loss gamma.
        center_radius: FCOS center-sampling radius in strides.
        image_loss_weight: weight of the image-level ("crop has a lesion") BCE.
        freeze_encoder: train only the pyramid and heads (linear-probing style comparison).
        lr: peak AdamW learning rate of the pyramid and heads (encoder blocks get less, see ``layer_decay``).
        layer_decay: layer-wise lr decay: block ``i`` of ``depth`` gets ``lr * layer_decay ** (depth - i)``.
        weight_decay: AdamW decay (none on norms, biases, positional embeddings and tokens).
        betas: AdamW betas.
        warmup_fraction: linear warmup as a fraction of all optimiser steps (when ``warmup_steps`` is null).
        warmup_steps: linear warmup steps, overriding ``warmup_fraction``.
        min_lr_ratio: final learning rate of the cosine schedule / peak.
        tile_size: tiled-inference tile side (linked from ``data.crop_size``: the training crop size).
        tile_overlap: overlap of neighbouring tiles, in [0, 1).
        max_spacing_mm: coarsest pixel spacing (mm) images are read at, in validation and (stored in the model)
            in prediction: an image with larger pixels is upsampled to it, finer ones stay native (linked from
            ``data.max_spacing_mm``; :mod:`dentalmim.data.spacing`); null = every image at native resolution.
        val_tile_batch_size: tiles per forward pass during validation.
        val_score_threshold: lowest box score kept during validation (the FROC curve starts there).
        nms_iou: IoU threshold of the per-tile class-wise NMS.
        max_detections: most boxes per image.
        target_fp_per_image: false positives per image allowed by the operating-point rule and ``val/sens_1fp``.
        init_detector: start from a trained detector (a model bundle ``.safetensors`` or a fine-tuning ``.ckpt``):
            its architecture, weights, class names and operating thresholds replace ``encoder``, the scratch
            encoder sizes and the pyramid / head settings (retraining from the current model); null = off.
    """

    def __init__(
        self,
        encoder: str | None = None,
        preset: Literal["nano", "tiny", "small", "base"] = "small",
        img_size: int = 384,
        patch_size: int = 16,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        pos_embed: Literal["sincos", "learnable"] = "sincos",
        stem: Literal["linear", "conv"] = "linear",
        drop_path_rate: float = 0.1,
        num_classes: int = 1,
        class_names: list[str] | None = None,
        pyramid_strides: tuple[int, ...] = (4, 8, 16, 32),
        fpn_channels: int = 128,
        head_convs: int = 2,
        detail_channels: int = 0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        center_radius: float = 1.5,
        image_loss_weight: float = 0.5,
        freeze_encoder: bool = False,
        lr: float = 2e-4,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_fraction: float = 0.05,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.01,
        tile_size: int | None = None,
        tile_overlap: float = 0.25,
        max_spacing_mm: float | None = None,
        val_tile_batch_size: int = 8,
        val_score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        target_fp_per_image: float = 1.0,
        init_detector: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        hp = dict(self.hparams)
        validate_finetune_args(hp)
        init_meta: dict[str, Any] = {}
        if init_detector:
            self.detector, init_meta = _initial_detector(init_detector, num_classes)
            if init_meta.get("max_spacing_mm") != max_spacing_mm:
                rank_zero_warn(f"model.init_detector was fine-tuned with max_spacing_mm="
                               f"{init_meta.get('max_spacing_mm')}; this run uses {max_spacing_mm} "
                               f"(set data.max_spacing_mm to keep the model's)")
        else:
            backbone = (load_pretrained_encoder(encoder, drop_path_rate) if encoder
                        else ViTEncoder(**scratch_encoder_config(hp)))
            try:
                self.detector = CariesDetector(backbone, num_classes, pyramid_strides, fpn_channels, head_convs,
                                               focal_alpha=focal_alpha, focal_gamma=focal_gamma,
                                               center_radius=center_radius, image_loss_weight=image_loss_weight,
                                               detail_channels=detail_channels)
            except ValueError as exc:
                raise ConfigError(f"model.{exc}") from None
        patch = self.detector.encoder.patch_size  # the loaded encoder's, which may differ from the config's
        check_model_field(tile_size is None or tile_size % patch == 0, "tile_size",
                          f"a multiple of the encoder's patch size {patch} (tile_size = data.crop_size)", tile_size)
        if freeze_encoder:
            self.detector.encoder.requires_grad_(False)
        names = class_names or init_meta.get("class_names")
        self.class_names = list(names) if names else default_class_names(num_classes)
        self.tile_size = tile_size or img_size
        self.operating_point: dict[str, Any] = {
            "score_threshold": float(init_meta.get("score_threshold", DEFAULT_SCORE_THRESHOLD)),
            "image_threshold": float(init_meta.get("image_threshold", DEFAULT_IMAGE_THRESHOLD)),
            **{k: int(init_meta.get(k, 0)) for k in SUPPORT_KEYS},
            TYPE_SUPPORT_KEY: dict(init_meta.get(TYPE_SUPPORT_KEY) or {})}
        self._eval_images: list[tuple[EvalImage, str]] = []  # with each image's type (DICOM Modality)

    def forward(self, images: torch.Tensor) -> Any:
        """images: (B, 1, H, W) -> :class:`~dentalmim.models.detector.DetectorOutput`."""
        return self.detector(images)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        splits = getattr(datamodule, "splits", None)
        if not self.hparams.class_names and splits and "train" in splits:
            self.class_names = splits["train"].class_names(datamodule.class_mode)
        if len(self.class_names) != self.hparams.num_classes:
            raise ConfigError(f"model.num_classes should match the data's {len(self.class_names)} classes "
                              f"({self.class_names}), got {self.hparams.num_classes}.")

    def on_train_epoch_start(self) -> None:
        if self.hparams.freeze_encoder:
            self.detector.encoder.eval()  # frozen: no drop path, fixed statistics

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.detector.forward_loss(batch["image"], batch["boxes"], batch["labels"])
        check_finite(terms, self.global_step)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, prog_bar=True,
                      batch_size=batch["image"].shape[0])  # fmt: skip
        self.log("train/lr", max(g["lr"] for g in self.optimizers().param_groups), on_step=True)  # heads' lr
        return terms["loss"]

    def detect_image(self, image: torch.Tensor, score_threshold: float | None = None,
                     spacing_mm: Sequence[float] | None = None) -> Any:
        """Tiled detection of one full image (H, W) of (row, column) ``spacing_mm``, upsampled to
        ``max_spacing_mm`` when its pixels are coarser -> :class:`~dentalmim.inference.tiling.TiledResult` in
        original pixels."""
        hp = self.hparams
        fn = functools.partial(self.detector.detect, nms_iou=hp.nms_iou, max_detections=hp.max_detections,
                               score_threshold=hp.val_score_threshold if score_threshold is None else score_threshold)
        return tiled_detect(fn, image, tile_size=self.tile_size, overlap=hp.tile_overlap,
                            multiple=self.detector.patch_size, batch_size=hp.val_tile_batch_size,
                            factors=spacing_factors(spacing_mm, hp.max_spacing_mm),
                            max_detections=hp.max_detections)  # fmt: skip

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Tiled detection of each full validation image; metrics are computed at the end of the epoch."""
        metas = batch.get("meta") or [None] * batch["image"].shape[0]
        for i in range(batch["image"].shape[0]):
            res = self.detect_image(batch["image"][i, 0], spacing_mm=(metas[i] or {}).get("pixel_spacing_mm"))
            self._eval_images.append((EvalImage(
                gt_boxes=batch["boxes"][i].cpu().numpy(), gt_labels=batch["labels"][i].cpu().numpy(),
                pred_boxes=res.boxes.cpu().numpy(), pred_scores=res.scores.cpu().numpy(),
                pred_labels=res.labels.cpu().numpy(), image_prob=min(max(res.image_prob, 0.0), 1.0),
                image_id=int(batch["image_id"][i])), image_type((metas[i] or {}).get("modality"))))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Same as :meth:`validation_step` on the test split (thresholds are not re-chosen)."""
        self.validation_step(batch, batch_idx)

    def _log_evaluation(self, stage: str, choose_threshold: bool) -> None:
        gathered, self._eval_images = _gather_objects(self._eval_images), []
        if not gathered:
            return
        images, types = [im for im, _ in gathered], [kind for _, kind in gathered]
        metrics = validation_metrics(images, self.hparams.target_fp_per_image)
        if choose_threshold:
            self.operating_point = select_operating_point(images, self.hparams.target_fp_per_image, types)
        shown = {**metrics, **{k: v for k, v in self.operating_point.items() if k != TYPE_SUPPORT_KEY}}
        self.log_dict({f"{stage}/{k}": float(np.nan_to_num(v)) for k, v in shown.items() if k != "score"})
        self.log(f"{stage}/score", metrics["score"], prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", choose_threshold=not self.trainer.sanity_checking)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", choose_threshold=False)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups_lrd(self.detector, hp.lr, hp.weight_decay, hp.layer_decay,
                                  len(self.detector.encoder.blocks))
        groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=self.device.type == "cuda")
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("trainer.max_steps or trainer.max_epochs should be set, got neither.")
        total = max(1, int(total))
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(round(hp.warmup_fraction * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine_factor(step, warmup, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def model_metadata(self) -> dict[str, Any]:
        """What inference needs besides the weights: detector config, class names, tiling, thresholds."""
        hp = self.hparams
        return {"detector": self.detector.config, "class_names": list(self.class_names),
                "tile_size": self.tile_size, "tile_overlap": hp.tile_overlap,
                "max_spacing_mm": hp.max_spacing_mm, "nms_iou": hp.nms_iou,
                "max_detections": hp.max_detections, **self.operating_point,
                "threshold_rule": THRESHOLD_RULE.format(fp=hp.target_fp_per_image),
                "dentalmim_version": __version__}  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dentalmim"] = self.model_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("dentalmim") or {}
        self.class_names = list(meta.get("class_names", self.class_names))
        for key, value in self.operating_point.items():
            self.operating_point[key] = type(value)(meta.get(key, value))


def _initial_detector(path: str, num_classes: int) -> tuple[CariesDetector, dict[str, Any]]:
    """The detector (train mode) and metadata of ``model.init_detector``; its classes must match the data's."""
    from dentalmim.inference.predictor import load_model

    try:
        detector, meta = load_model(path)
    except DentalMimError as exc:
        raise ConfigError(f"model.init_detector: {exc}") from None
    if detector.num_classes != num_classes:
        raise ConfigError(f"model.init_detector should have {num_classes} classes (the data's), got "
                          f"{detector.num_classes}.")
    return detector.train(), meta


def _gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate a per-rank list over all ranks (identity without distributed training)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    gathered: list[list[Any] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, items)
    return [x for part in gathered for x in (part or [])]


class FinetuneCLI(PretrainCLI):
    """LightningCLI of ``dentalmim finetune``: the pretraining CLI's ``{root}`` paths and TensorBoard fallback, plus
    links ``data.crop_size -> model.tile_size`` and ``data.num_classes -> model.num_classes``. Subcommands: ``fit``,
    ``validate`` and ``test`` (no predict step: prediction is ``dentalmim predict``)."""

    SUBCOMMANDS = ("fit", "validate", "test")

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.crop_size", "model.tile_size")
        parser.link_arguments("data.max_spacing_mm", "model.max_spacing_mm")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def cli_main(args: list[str] | None = None) -> FinetuneCLI:
    """Run ``dentalmim finetune`` (subcommands ``fit``, ``validate``, ``test``; ``--config``, ``--print_config``).

    Args:
        args: command-line arguments after ``finetune``; None reads ``sys.argv``.

    Returns:
        The CLI object (``.model``, ``.trainer``, ``.datamodule``) once the subcommand has run.
    """
    from dentalmim.data.datamodules import DetectionDataModule

    return run_lightning_cli(FinetuneCLI, FinetuneModule, DetectionDataModule, args, "finetune")
