"""Caries detector: pyramid shapes, box ops, FCOS targets, losses, NMS and post-processing on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from dentalmim.models import det_boxes
from dentalmim.models.det_boxes import (batched_nms, box_ios, box_iou, clip_boxes, decode_ltrb, encode_ltrb,
                                        generalized_iou, greedy_clusters, nms, weighted_box_fusion)
from dentalmim.models.det_losses import giou_loss, sigmoid_focal_loss
from dentalmim.models.det_targets import centerness_target, fcos_targets, level_points, level_size_ranges
from dentalmim.models.detector import CariesDetector, DetectorOutput
from dentalmim.models.vit import ViTEncoder

torch.set_num_threads(1)


def tiny_detector(patch_size: int = 16, strides: tuple[int, ...] = (4, 8, 16, 32), num_classes: int = 1,
                  seed: int = 0, detail_channels: int = 0) -> CariesDetector:
    torch.manual_seed(seed)
    encoder = ViTEncoder(img_size=64, patch_size=patch_size, embed_dim=64, depth=2, num_heads=2)
    return CariesDetector(encoder, num_classes=num_classes, pyramid_strides=strides, fpn_channels=32,
                          detail_channels=detail_channels)


def all_points(sizes: list[tuple[int, int]], strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    pts = level_points(sizes, strides)
    level = torch.cat([torch.full((len(p),), k) for k, p in enumerate(pts)])
    return torch.cat(pts), level


# ----------------------------------------------------------------------------------------------- detector shapes
@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96), (96, 160), (48, 80)])
def test_pyramid_levels_have_the_stride_shapes_for_any_input_size(height: int, width: int) -> None:
    det = tiny_detector(num_classes=2)
    out = det(torch.rand(2, 1, height, width))
    assert out.strides == (4, 8, 16, 32)
    for k, s in enumerate(out.strides):
        expect = (height // s, width // s)  # strides > patch size come from 2x2 max pooling (floor)
        assert out.cls_logits[k].shape == (2, 2, *expect)
        assert out.ltrb[k].shape == (2, 4, *expect)
        assert out.centerness[k].shape == (2, 1, *expect)
        assert (out.ltrb[k] > 0).all()
    assert out.image_logit.shape == (2,)


def test_patch_8_pyramid_and_invalid_strides() -> None:
    det = tiny_detector(patch_size=8, strides=(4, 8, 16))
    out = det(torch.rand(1, 1, 32, 48))
    assert [tuple(c.shape[-2:]) for c in out.cls_logits] == [(8, 12), (4, 6), (2, 3)]
    encoder = ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="pyramid_strides should be patch_size=16 times a power of 2"):
        CariesDetector(encoder, pyramid_strides=(4, 12))
    with pytest.raises(ValueError, match="strictly increasing"):
        CariesDetector(encoder, pyramid_strides=(16, 8))
    with pytest.raises(ValueError, match="num_classes should be >= 1"):
        CariesDetector(encoder, num_classes=0)


def test_from_config_rebuilds_the_same_network() -> None:
    det = tiny_detector(num_classes=2).eval()
    clone = CariesDetector.from_config(det.config).eval()
    clone.load_state_dict(det.state_dict())
    x = torch.rand(1, 1, 64, 64)
    assert torch.equal(det(x).cls_logits[0], clone(x).cls_logits[0])


# ------------------------------------------------------------------------------------------------ detail branch
@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_a_fresh_detail_branch_leaves_the_pyramid_unchanged(height: int, width: int) -> None:
    det = tiny_detector(detail_channels=8).eval()
    x = torch.rand(2, 1, height, width)
    with_detail = det(x)
    det.detail = None
    plain = det(x)
    for k in range(4):  # zero-initialised projections: same maps, also where the convs round up (80 / 32)
        assert torch.equal(with_detail.cls_logits[k], plain.cls_logits[k])
        assert torch.equal(with_detail.ltrb[k], plain.ltrb[k])


def test_the_detail_branch_is_trained_and_changes_the_fine_levels_locally() -> None:
    det = tiny_detector(detail_channels=8)
    boxes, labels = [torch.tensor([[10.0, 10.0, 22.0, 20.0]])], [torch.tensor([0])]
    images = torch.rand(1, 1, 64, 64)
    det.forward_loss(images, boxes, labels)["loss"].backward()
    assert det.get_parameter("detail.stages.0.0.weight").grad.abs().sum() == 0  # zero projections gate it at first
    for name in ("detail.proj.4.weight", "detail.proj.32.weight"):
        assert det.get_parameter(name).grad.abs().sum() > 0, name
    torch.optim.SGD(det.parameters(), lr=0.1).step()
    det.zero_grad()
    det.forward_loss(images, boxes, labels)["loss"].backward()
    assert det.get_parameter("detail.stages.0.0.weight").grad.abs().sum() > 0  # after one step the CNN learns
    # with trained-looking (non-zero) projections, a one-pixel change reaches the stride-4 level through the
    # branch only near that pixel: the branch is a local CNN, unlike the ViT path
    det = tiny_detector(detail_channels=8).eval()
    for proj in det.detail.proj.values():
        torch.nn.init.normal_(proj.weight, std=0.1)
    x = torch.rand(1, 1, 64, 64)
    y = x.clone()
    y[0, 0, 5, 5] += 1.0
    zeros = [torch.zeros(1, 32, 64 // s, 64 // s) for s in det.strides]
    with torch.no_grad():
        change = (det.detail(y, zeros)[0] - det.detail(x, zeros)[0]).abs().sum(dim=(0, 1))  # (16, 16) at stride 4
    assert change[:3, :3].sum() > 0
    assert change[6:, :].sum() == 0 and change[:, 6:].sum() == 0


def test_detail_branch_round_trips_and_rejects_bad_settings() -> None:
    det = tiny_detector(detail_channels=8).eval()
    clone = CariesDetector.from_config(det.config).eval()
    clone.load_state_dict(det.state_dict())
    assert det.config["detail_channels"] == 8
    x = torch.rand(1, 1, 64, 64)
    assert torch.equal(det(x).cls_logits[0], clone(x).cls_logits[0])
    encoder = ViTEncoder(img_size=48, patch_size=12, embed_dim=64, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="power-of-2 pyramid strides"):
        CariesDetector(encoder, pyramid_strides=(6, 12, 24), detail_channels=8)
    with pytest.raises(ValueError, match="detail_channels should be >= 1"):
        CariesDetector(encoder, pyramid_strides=(6, 12, 24), detail_channels=-1)


# ------------------------------------------------------------------------------------------------------ box ops
def test_ltrb_encoding_round_trips_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.randint(0, 512, (100, 2), generator=gen).float() + 0.5
    boxes = torch.randint(0, 256, (100, 4), generator=gen).float() * 2
    boxes[:, 2:] = boxes[:, :2] + torch.randint(1, 64, (100, 2), generator=gen).float()
    assert torch.equal(decode_ltrb(points, encode_ltrb(points, boxes)), boxes)
    ltrb = encode_ltrb(torch.tensor([[5.0, 6.0]]), torch.tensor([[1.0, 2.0, 11.0, 8.0]]))
    assert ltrb.tolist() == [[4.0, 4.0, 6.0, 2.0]]


def test_iou_ios_and_giou_on_known_pairs() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 1.0], [5.0, 5.0, 6.0, 6.0], [0.5, 0.0, 1.5, 1.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.5])
    assert box_ios(a, b)[0].tolist() == pytest.approx([0.5, 1.0, 0.0, 1.0])
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 1.0]])
    target = torch.tensor([[0.0, 0.0, 2.0, 1.0], [2.0, 0.0, 3.0, 1.0], [1.0, 0.0, 3.0, 1.0]])
    # identical: 1; disjoint, hull 3 and union 2: -1/3; half overlap, hull = union: IoU 1/3
    assert generalized_iou(pred, target).tolist() == pytest.approx([1.0, -1 / 3, 1 / 3], abs=1e-6)
    assert giou_loss(pred, target).tolist() == pytest.approx([0.0, 4 / 3, 2 / 3], abs=1e-6)
    assert clip_boxes(torch.tensor([[-3.0, -1.0, 70.0, 20.0]]), 16, 64).tolist() == [[0.0, 0.0, 64.0, 16.0]]


def test_nms_suppresses_overlaps_and_keeps_classes_apart() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0],
                          [0.0, 0.0, 10.0, 9.0]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]  # 0 and 3 overlap the best box (IoU 0.68 and 0.63)
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]  # 3 still overlaps 0 by IoU 0.9
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [1]
    labels = torch.tensor([0, 1, 0, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [1, 0, 2]  # 0 is alone in class 0's top spot
    inner = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 10.0]])  # IoU 0.4 but fully contained
    assert nms(inner, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(inner, torch.tensor([0.9, 0.8]), 0.5, metric="ios").tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0)).tolist() == []


def reference_clusters(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, metric: str,
                       max_keep: int | None) -> tuple[list[int], list[int]]:
    """The greedy sweep written plainly: one overlap row per kept box, on a full matrix."""
    order = scores.argsort(descending=True, stable=True).tolist()
    overlap = (box_iou if metric == "iou" else box_ios)(boxes, boxes)
    owner, kept = [-1] * len(boxes), []
    for i in order:
        if max_keep is not None and len(kept) >= max_keep:
            break
        if owner[i] >= 0:
            continue
        kept.append(i)
        owner[i] = i
        for j in order[order.index(i) + 1:]:
            if owner[j] < 0 and overlap[i, j] > threshold:
                owner[j] = i
    return kept, owner


@pytest.mark.parametrize("metric", ["iou", "ios"])
@pytest.mark.parametrize("max_keep", [None, 7])
@pytest.mark.parametrize("block_rows", [1, 5, 64])
def test_blockwise_greedy_clusters_equal_the_plain_sweep(metric: str, max_keep: int | None, block_rows: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # overlapping clusters, score ties and zero-area boxes, over many blocks (rows are computed block-wise)
    monkeypatch.setattr(det_boxes, "_BLOCK_ROWS", block_rows)
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(150, 2, generator=g) * 120
    boxes = torch.cat([xy, xy + 5 + torch.rand(150, 2, generator=g) * 30], dim=1)
    boxes[:6, 2:] = boxes[:6, :2]
    scores = torch.rand(150, generator=g)
    scores[10:30] = 0.5
    keep, owner = greedy_clusters(boxes, scores, 0.3, metric, max_keep)
    want_keep, want_owner = reference_clusters(boxes, scores, 0.3, metric, max_keep)
    assert keep.tolist() == want_keep and owner.tolist() == want_owner
    assert 7 <= len(want_keep) < 150  # boxes were absorbed, and the early stop is reached


def test_weighted_box_fusion_averages_each_cluster() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.75, 0.25, 0.5])
    fused, fused_scores, labels = weighted_box_fusion(boxes, scores, torch.zeros(3, dtype=torch.long), 0.5)
    assert fused.tolist() == [[0.5, 0.0, 10.5, 10.0], [50.0, 50.0, 60.0, 60.0]]
    assert fused_scores.tolist() == [0.75, 0.5]
    assert labels.tolist() == [0, 0]


# ------------------------------------------------------------------------------------------------ FCOS targets
def test_points_lie_at_cell_centres_and_ranges_follow_fcos() -> None:
    pts = level_points([(2, 3)], [8])[0]
    assert pts.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]  # x along columns, row-major
    assert level_size_ranges((8, 16, 32, 64, 128)) == [(0, 64), (64, 128), (128, 256), (256, 512),
                                                       (512, math.inf)]
    with pytest.raises(ValueError, match="strides should be increasing"):
        level_size_ranges((16, 8))


def test_point_inside_a_box_gets_it_on_the_level_of_its_size() -> None:
    strides = (4, 8)
    points, level = all_points([(32, 32), (16, 16)], strides)  # 128 x 128 input; ranges [0, 32], (32, inf)
    small = torch.tensor([[10.0, 10.0, 30.0, 26.0]])  # max distance <= 20: level 0 only
    t = fcos_targets(points, level, strides, small, torch.tensor([0]), center_radius=0)
    pos = t.labels >= 0
    assert pos.any() and (level[pos] == 0).all()
    inside = (points[:, 0] > 10) & (points[:, 0] < 30) & (points[:, 1] > 10) & (points[:, 1] < 26)
    assert torch.equal(pos, inside & (level == 0))
    assert torch.equal(decode_ltrb(points[pos], t.ltrb[pos]), small.expand(int(pos.sum()), 4))
    big = torch.tensor([[0.0, 0.0, 120.0, 120.0]])  # centre points have max distance 60: level 1
    t = fcos_targets(points, level, strides, big, torch.tensor([0]), center_radius=0)
    centre = ((points - 60).abs().amax(dim=1) < 4)
    assert (t.labels[centre & (level == 1)] == 0).all()
    assert (t.labels[centre & (level == 0)] == -1).all()  # too large for the stride-4 range


def test_ambiguous_points_take_the_smallest_box_and_center_sampling_limits_positives() -> None:
    points, level = all_points([(16, 16)], (4,))
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 8.0, 24.0, 24.0]])
    t = fcos_targets(points, level, (4,), boxes, torch.tensor([0, 1]), size_ranges=[(0, math.inf)],
                     center_radius=0)
    in_small = (points > 8).all(dim=1) & (points < 24).all(dim=1)
    assert (t.labels[in_small] == 1).all() and (t.box_index[in_small] == 1).all()
    assert (t.labels[~in_small & (points < 40).all(dim=1)] == 0).all()
    sampled = fcos_targets(points, level, (4,), boxes[:1], torch.tensor([0]), size_ranges=[(0, math.inf)],
                           center_radius=1.0)
    assert int((sampled.labels >= 0).sum()) == 4  # only the 2 x 2 points within 4 px of the centre (20, 20)


def test_a_tiny_lesion_between_points_gets_its_nearest_point() -> None:
    points, level = all_points([(8, 8), (4, 4)], (4, 8))
    tiny = torch.tensor([[8.5, 8.5, 9.5, 9.5]])  # contains no point centre at all
    t = fcos_targets(points, level, (4, 8), tiny, torch.tensor([0]))
    pos = torch.nonzero(t.labels >= 0).flatten()
    assert len(pos) == 1 and level[pos].item() == 0 and points[pos[0]].tolist() == [10.0, 10.0]
    assert t.centerness[pos].item() == 1.0
    unforced = fcos_targets(points, level, (4, 8), tiny, torch.tensor([0]), force_small=False)
    assert (unforced.labels == -1).all()
    empty = fcos_targets(points, level, (4, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (empty.labels == -1).all() and (empty.centerness == 0).all()


def test_centerness_target_is_one_at_the_centre() -> None:
    ltrb = torch.tensor([[5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 4.0, 2.0]])
    assert centerness_target(ltrb).tolist() == pytest.approx([1.0, 0.5])


# ------------------------------------------------------------------------------------------------------ losses
def test_focal_loss_matches_a_hand_computation() -> None:
    logits, targets = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    alpha, gamma = 0.25, 2.0
    expected = 0.0
    for z, y in zip(logits.tolist(), targets.tolist()):
        p = 1 / (1 + math.exp(-z))
        p_t = p if y == 1 else 1 - p
        a_t = alpha if y == 1 else 1 - alpha
        expected += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    assert sigmoid_focal_loss(logits, targets, alpha, gamma).item() == pytest.approx(expected, rel=1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert sigmoid_focal_loss(logits, targets, -1, 0.0).item() == pytest.approx(bce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction should be one of"):
        sigmoid_focal_loss(logits, targets, reduction="max")


def test_loss_terms_are_finite_and_reach_every_head() -> None:
    det = tiny_detector(num_classes=2)
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 25.0], [50.0, 5.0, 53.0, 7.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.long)]
    terms = det.forward_loss(torch.rand(2, 1, 64, 64), boxes, labels)
    assert set(terms) == {"loss", "loss_cls", "loss_box", "loss_ctr", "loss_image"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["loss_image"].item() == pytest.approx(math.log(2), rel=1e-4)  # image head starts at p = 0.5
    terms["loss"].backward()
    for name in ("encoder.blocks.0.attn.qkv.weight", "pyramid.levels.0.1.weight", "head.cls_logits.weight",
                 "head.bbox_pred.weight", "head.centerness.weight", "image_head.fc.weight"):
        assert det.get_parameter(name).grad.abs().sum() > 0, name


# -------------------------------------------------------------------------------------------- post-processing
def test_postprocess_decodes_a_planted_detection_at_its_location() -> None:
    det = tiny_detector()
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2)]
    cls = [torch.full((1, 1, h, w), -10.0) for h, w in sizes]
    ltrb = [torch.ones(1, 4, h, w) for h, w in sizes]
    ctr = [torch.full((1, 1, h, w), 10.0) for h, w in sizes]
    cls[1][0, 0, 3, 5] = 4.0  # stride 8, row 3, column 5 -> point (44, 28)
    ltrb[1][0, :, 3, 5] = torch.tensor([4.0, 2.0, 6.0, 8.0])
    out = DetectorOutput(cls, ltrb, ctr, torch.zeros(1), (4, 8, 16, 32))
    dets = det.postprocess(out, (64, 64), score_threshold=0.5)
    assert len(dets) == 1 and len(dets[0].boxes) == 1
    assert dets[0].boxes[0].tolist() == [40.0, 26.0, 50.0, 36.0]
    expected = math.sqrt(torch.sigmoid(torch.tensor(4.0)).item() * torch.sigmoid(torch.tensor(10.0)).item())
    assert dets[0].scores[0].item() == pytest.approx(expected, rel=1e-5)
    assert dets[0].labels.tolist() == [0]


def test_detect_returns_probabilities_and_bounded_detections() -> None:
    det = tiny_detector(num_classes=2).eval()
    dets, prob = det.detect(torch.rand(3, 1, 64, 96), score_threshold=0.0, max_detections=7)
    assert prob.shape == (3,) and ((prob >= 0) & (prob <= 1)).all()
    for d in dets:
        assert len(d.boxes) == 7 and d.boxes.shape == (7, 4)
        assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= 96).all() and (d.boxes[:, 3] <= 64).all()
        assert torch.all(d.scores[:-1] >= d.scores[1:])
        assert set(d.labels.tolist()) <= {0, 1}
