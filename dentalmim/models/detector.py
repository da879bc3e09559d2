"""Caries detector: ViT encoder + simple feature pyramid + FCOS head + image-level head.

The pipeline is a few named methods, each short:

* :meth:`CariesDetector.forward_features`: images (B, 1, H, W) -> cls token (B, D) and pyramid maps;
* :meth:`CariesDetector.forward`: -> :class:`DetectorOutput` (dense logits / distances per level, image logit);
* :meth:`CariesDetector.forward_loss`: images + boxes + labels -> loss terms (:class:`~.det_losses.FCOSLoss`);
* :meth:`CariesDetector.postprocess`: -> per-image :class:`Detections` (score filter, top-k, class-wise NMS).

Box scores are ``sqrt(sigmoid(class logit) * sigmoid(centerness logit))``; the image-level probability is the
sigmoid of the image head's logit. ``H`` and ``W`` must be multiples of the encoder's patch size (tiled inference
pads; see :mod:`dentalmim.inference.tiling`). The detector is a pure ``nn.Module``: no I/O, no logging;
:attr:`CariesDetector.config` plus the state dict rebuild it (:meth:`CariesDetector.from_config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dentalmim.models.det_boxes import batched_nms, clip_boxes, decode_ltrb
from dentalmim.models.det_heads import (
    DetailBranch,
    FCOSHead,
    ImageLevelHead,
    SimpleFeaturePyramid,
)
from dentalmim.models.det_losses import DenseOutputs, FCOSLoss
from dentalmim.models.det_targets import level_points
from dentalmim.models.vit import ViTEncoder

#: Default pyramid for patch 16: strides 4 (two transposed convs, for tiny lesions), 8, 16, 32.
DEFAULT_STRIDES = (4, 8, 16, 32)


def default_class_names(num_classes: int) -> list[str]:
    """Class names used when the labels give none: ``caries``; ``enamel_caries``/``dentin_caries``; ``class_i``."""
    if num_classes == 1:
        return ["caries"]
    if num_classes == 2:
        return ["enamel_caries", "dentin_caries"]
    return [f"class_{i}" for i in range(num_classes)]


@dataclass
class DetectorOutput:
    """Raw detector outputs.

    Attributes:
        cls_logits: per level (B, K, H_k, W_k) class logits.
        ltrb: per level (B, 4, H_k, W_k) distances in input pixels.
        centerness: per level (B, 1, H_k, W_k) logits.
        image_logit: (B,) image-level logit.
        strides: stride of each level.
    """

    cls_logits: list[torch.Tensor]
    ltrb: list[torch.Tensor]
    centerness: list[torch.Tensor]
    image_logit: torch.Tensor
    strides: tuple[int, ...]


@dataclass
class Detections:
    """Detections of one image: boxes (N, 4) xyxy input pixels, scores (N,) in [0, 1], labels (N,) int64."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class CariesDetector(nn.Module):
    """ViTDet-style FCOS detector with an image-level caries head.

    Args:
        encoder: the ViT backbone (pretrained or fresh).
        num_classes: lesion classes K (1: ``caries``; 2: enamel / dentin depth classes).
        pyramid_strides: output strides; each must be ``patch_size * 2**k``.
        fpn_channels: width of the pyramid levels and head.
        head_convs: conv layers per head tower.
        prior_prob: initial foreground probability of the class logits.
        focal_alpha: focal loss alpha.
        focal_gamma: focal loss gamma.
        center_radius: FCOS center-sampling radius in strides.
        image_loss_weight: weight of the image-level BCE.
        size_factor: level ``k`` regresses boxes up to ``size_factor * stride_k`` (FCOS: 8).
        detail_channels: width of the first stage of the :class:`~.det_heads.DetailBranch` CNN that adds pixel
            detail to the pyramid levels; 0 = none (the plain ViTDet pyramid).
    """

    def __init__(self, encoder: ViTEncoder, num_classes: int = 1, pyramid_strides: Sequence[int] = DEFAULT_STRIDES,
                 fpn_channels: int = 128, head_convs: int = 2, prior_prob: float = 0.01, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, center_radius: float = 1.5, image_loss_weight: float = 0.5,
                 size_factor: float = 8.0, detail_channels: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes should be >= 1, got {num_classes}.")
        if fpn_channels < 1 or head_convs < 0:
            raise ValueError(f"fpn_channels should be >= 1 and head_convs >= 0, got {fpn_channels}, {head_convs}.")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob should be in (0, 1), got {prior_prob}.")
        self.config: dict[str, Any] = {
            "encoder": dict(encoder.config), "num_classes": num_classes, "pyramid_strides": list(pyramid_strides),
            "fpn_channels": fpn_channels, "head_convs": head_convs, "prior_prob": prior_prob,
            "focal_alpha": focal_alpha, "focal_gamma": focal_gamma, "center_radius": center_radius,
            "image_loss_weight": image_loss_weight, "size_factor": size_factor, "detail_channels": detail_channels,
        }  # fmt: skip
        self.num_classes, self.strides = num_classes, tuple(int(s) for s in pyramid_strides)
        self.encoder = encoder
        self.pyramid = SimpleFeaturePyramid(encoder.embed_dim, encoder.patch_size, self.strides, fpn_channels)
        self.detail = DetailBranch(detail_channels, self.strides, fpn_channels) if detail_channels else None
        self.head = FCOSHead(fpn_channels, num_classes, self.strides, head_convs, prior_prob)
        self.image_head = ImageLevelHead(encoder.embed_dim, fpn_channels)
        self.criterion = FCOSLoss(num_classes, focal_alpha, focal_gamma, center_radius, image_loss_weight, size_factor)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CariesDetector:
        """Rebuild a detector (random weights) from :attr:`config`."""
        kwargs = {k: v for k, v in config.items() if k != "encoder"}
        return cls(ViTEncoder(**config["encoder"]), **kwargs)

    @property
    def patch_size(self) -> int:
        """Input sides must be multiples of this."""
        return self.encoder.patch_size

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images: (B, 1, H, W) -> cls token (B, D) and pyramid maps, per level (B, C, H_k, W_k)."""
        tokens = self.encoder.forward_features(images)
        gh, gw = self.encoder.grid_of(images)
        fmap = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
        features = self.pyramid(fmap)
        if self.detail is not None:
            features = self.detail(images, features)
        return tokens[:, 0], features

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """images: (B, 1, H, W) in [0, 1], H and W multiples of the patch size -> :class:`DetectorOutput`."""
        cls_token, features = self.forward_features(images)
        cls_logits, ltrb, ctr = self.head(features)
        image_logit = self.image_head(cls_token, features, cls_logits)
        return DetectorOutput(cls_logits, ltrb, ctr, image_logit, self.strides)

    def flatten(self, out: DetectorOutput) -> DenseOutputs:
        """Concatenate the levels: (B, P, K) logits, (B, P, 4) distances, (B, P) centerness, (P, 2) points."""
        sizes = [tuple(c.shape[-2:]) for c in out.cls_logits]
        points = level_points(sizes, out.strides, out.cls_logits[0].device)
        level = torch.cat([torch.full((len(p),), k, dtype=torch.long, device=p.device) for k, p in enumerate(points)])
        return DenseOutputs(
            cls_logits=torch.cat([c.flatten(2) for c in out.cls_logits], 2).transpose(1, 2),
            ltrb=torch.cat([b.flatten(2) for b in out.ltrb], 2).transpose(1, 2),
            centerness=torch.cat([c.flatten(1) for c in out.centerness], 1),
            points=torch.cat(points), point_level=level, strides=out.strides)

    def forward_loss(self, images: torch.Tensor, boxes: Sequence[torch.Tensor],
                     labels: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training loss.

        Args:
            images: (B, 1, H, W) crops.
            boxes: per image (Ni, 4) float xyxy boxes in crop pixels.
            labels: per image (Ni,) int64 classes in ``0..K-1``.

        Returns:
            ``{"loss", "loss_cls", "loss_box", "loss_ctr", "loss_image"}`` scalars.
        """
        out = self(images)
        return self.criterion(self.flatten(out), out.image_logit, boxes, labels)

    @torch.no_grad()
    def postprocess(self, out: DetectorOutput, image_size: tuple[int, int], score_threshold: float = 0.05,
                    nms_iou: float = 0.5, max_detections: int = 100, pre_nms_top_k: int = 1000) -> list[Detections]:
        """Dense outputs -> detections per image.

        Args:
            out: :meth:`forward` output.
            image_size: (H, W) to clip boxes to.
            score_threshold: minimum box score kept.
            nms_iou: class-wise NMS IoU threshold.
            max_detections: most boxes kept per image.
            pre_nms_top_k: most candidates entering NMS per image.

        Returns:
            One :class:`Detections` per image, by descending score.
        """
        dense = self.flatten(out)
        scores = (dense.cls_logits.float().sigmoid() * dense.centerness.float().sigmoid()[..., None]).sqrt()
        results = []
        for b in range(scores.shape[0]):
            flat = scores[b].flatten()  # (P * K,), index = point * K + class
            keep = torch.nonzero(flat > score_threshold).flatten()
            keep = keep[flat[keep].topk(min(pre_nms_top_k, len(keep))).indices]
            point, label = keep // self.num_classes, keep % self.num_classes
            boxes = clip_boxes(decode_ltrb(dense.points[point], dense.ltrb[b, point].float()), *image_size)
            kept = batched_nms(boxes, flat[keep], label, nms_iou, max_keep=max_detections)
            results.append(Detections(boxes[kept], flat[keep][kept], label[kept]))
        return results

    @torch.no_grad()
    def detect(self, images: torch.Tensor, **postprocess_kwargs: Any) -> tuple[list[Detections], torch.Tensor]:
        """images: (B, 1, H, W) -> (detections per image, image-level probabilities (B,))."""
        out = self(images)
        dets = self.postprocess(out, (images.shape[-2], images.shape[-1]), **postprocess_kwargs)
        return dets, out.image_logit.float().sigmoid()
