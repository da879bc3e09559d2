"""Detection losses: sigmoid focal loss, GIoU loss, and the FCOS criterion that combines them.

The plain tensor functions are tested separately; :class:`FCOSLoss` only assigns targets per image
(:func:`~dentalmim.models.det_targets.fcos_targets`) and sums the terms:

* classification: sigmoid focal loss (Lin et al. 2017) over every point and class, summed and divided by the
  number of positive points (class imbalance: almost every point is background);
* box regression: ``1 - GIoU`` of decoded boxes on positive points, weighted by their centerness target;
* centerness: binary cross-entropy on positive points;
* image level: binary cross-entropy of the image logit against "the image (crop) contains a lesion".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dentalmim.models.det_boxes import decode_ltrb, generalized_iou
from dentalmim.models.det_targets import FCOSTargets, fcos_targets, level_size_ranges


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "sum") -> torch.Tensor:
    """Focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` on independent sigmoid outputs.

    Args:
        logits: (...) raw scores.
        targets: (...) same shape, in {0, 1} (soft values are accepted).
        alpha: weight of positives in [0, 1]; negatives get ``1 - alpha``; ``< 0`` disables weighting.
        gamma: focusing exponent (0 gives weighted binary cross-entropy).
        reduction: ``none``, ``sum`` or ``mean``.

    Returns:
        The reduced loss (a scalar) or the element-wise loss for ``none``.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction != "none":
        raise ValueError(f"reduction should be one of ('none', 'sum', 'mean'), got {reduction!r}.")
    return loss


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise ``1 - GIoU``: pred (N, 4), target (N, 4) xyxy -> (N,) in [0, 2]."""
    return 1.0 - generalized_iou(pred, target)


@dataclass
class DenseOutputs:
    """Flattened dense predictions of a batch (P points over all levels).

    Attributes:
        cls_logits: (B, P, C) class logits.
        ltrb: (B, P, 4) predicted distances in pixels (non-negative).
        centerness: (B, P) centerness logits.
        points: (P, 2) point coordinates ``x, y``.
        point_level: (P,) level index of each point.
        strides: stride of each level.
    """

    cls_logits: torch.Tensor
    ltrb: torch.Tensor
    centerness: torch.Tensor
    points: torch.Tensor
    point_level: torch.Tensor
    strides: Sequence[int]


class FCOSLoss(nn.Module):
    """FCOS criterion with an image-level term.

    Args:
        num_classes: C, number of lesion classes (no background class).
        focal_alpha: focal loss alpha.
        focal_gamma: focal loss gamma.
        center_radius: center-sampling radius in strides.
        image_loss_weight: weight of the image-level BCE (0 disables it).
        size_factor: level size-range factor (see :func:`~dentalmim.models.det_targets.level_size_ranges`).
    """

    def __init__(self, num_classes: int, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 center_radius: float = 1.5, image_loss_weight: float = 0.5, size_factor: float = 8.0) -> None:
        super().__init__()
        self.num_classes, self.focal_alpha, self.focal_gamma = num_classes, focal_alpha, focal_gamma
        self.center_radius, self.image_loss_weight, self.size_factor = center_radius, image_loss_weight, size_factor

    def targets(self, dense: DenseOutputs, boxes: Sequence[torch.Tensor],
                labels: Sequence[torch.Tensor]) -> list[FCOSTargets]:
        """One :class:`FCOSTargets` per image (boxes (Ni, 4) xyxy and labels (Ni,) in the input's pixels)."""
        ranges = level_size_ranges(dense.strides, self.size_factor)
        return [fcos_targets(dense.points, dense.point_level, dense.strides, b.to(dense.points),
                             lab.to(dense.points.device), size_ranges=ranges, center_radius=self.center_radius)
                for b, lab in zip(boxes, labels)]

    def forward(self, dense: DenseOutputs, image_logit: torch.Tensor | None, boxes: Sequence[torch.Tensor],
                labels: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms of a batch.

        Args:
            dense: flattened dense predictions.
            image_logit: (B,) image-level logits, or None.
            boxes: per image (Ni, 4) ground-truth boxes xyxy in input pixels.
            labels: per image (Ni,) int64 classes in ``0..C-1``.

        Returns:
            ``{"loss", "loss_cls", "loss_box", "loss_ctr"[, "loss_image"]}`` scalars.
        """
        t = self.targets(dense, boxes, labels)
        cls_t = torch.stack([x.labels for x in t])  # (B, P)
        fg = cls_t >= 0
        num_pos = fg.sum().clamp(min=1).float()
        onehot = F.one_hot(cls_t.clamp(min=0), self.num_classes).to(dense.cls_logits.dtype) * fg[..., None]
        loss_cls = sigmoid_focal_loss(dense.cls_logits.float(), onehot.float(), self.focal_alpha,
                                      self.focal_gamma) / num_pos
        ctr_t = torch.stack([x.centerness for x in t])[fg]
        pred_boxes = decode_ltrb(dense.points[None].expand_as(dense.ltrb[..., :2]), dense.ltrb.float())[fg]
        target_boxes = torch.stack([x.boxes for x in t])[fg]
        loss_box = (giou_loss(pred_boxes, target_boxes) * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        loss_ctr = F.binary_cross_entropy_with_logits(dense.centerness.float()[fg], ctr_t, reduction="sum") / num_pos
        terms = {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}
        if image_logit is not None and self.image_loss_weight > 0:
            has = torch.tensor([float(len(b) > 0) for b in boxes], device=image_logit.device)
            terms["loss_image"] = F.binary_cross_entropy_with_logits(image_logit.float(), has)
        total = loss_cls + loss_box + loss_ctr + self.image_loss_weight * terms.get("loss_image", 0.0)
        return {"loss": total, **terms}
