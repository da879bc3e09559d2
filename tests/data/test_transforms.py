"""Dictionary transforms: loading, casting, box-consistent crops, the albumentations bridge, tensor conversion.

Images are synthetic: dark squares (lesions) on a bright textured background, so a test can check that each box
still marks its square after every geometric step.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from dentalmim.data.transforms import (
    BOXES_KEY,
    CROP_ORIGIN_KEY,
    ERROR_KEY,
    IMAGE_KEY,
    LABELS_KEY,
    META_KEY,
    AlbumentationsBoxd,
    AlbumentationsImaged,
    CastArrayd,
    LoadRadiographd,
    RandCropWithBoxesd,
    ToGreyTensord,
    detection_augmentation,
    pretrain_augmentation,
)
from dentalmim.errors import DicomReadError
from tests.data._helpers_d import BITS, lesion_image, write_dicom

BOXES = np.array([[20, 30, 36, 46], [150, 40, 158, 48], [90, 150, 130, 170]], dtype=np.float32)
DARK = 0.4  # lesions are ~0.15, background ~0.7


def _sample(h: int = 200, w: int = 260, boxes: np.ndarray = BOXES) -> dict:
    image = lesion_image(h, w, boxes).astype(np.float32)[None] / ((1 << BITS) - 1)
    return {IMAGE_KEY: image, BOXES_KEY: boxes.copy(), LABELS_KEY: np.arange(len(boxes), dtype=np.int64)}


def _dark_bbox(image: np.ndarray) -> np.ndarray:
    """Tight xyxy box of the dark pixels of a (1, H, W) image."""
    ys, xs = np.nonzero(image[0] < DARK)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def test_load_radiograph(tmp_path: Path) -> None:
    pixels = lesion_image(48, 70, [(5, 6, 15, 16)])
    path = write_dicom(tmp_path / "a.dcm", pixels)
    out = LoadRadiographd()({IMAGE_KEY: str(path), BOXES_KEY: BOXES[:1]})
    image = out[IMAGE_KEY]
    assert image.shape == (1, 48, 70) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    expected = (pixels - pixels.min()) / float(pixels.max() - pixels.min())  # the reader's min-max stretch
    np.testing.assert_allclose(image[0], expected, atol=1e-3)  # no axis swap, no resizing
    assert out[META_KEY]["rows"] == 48 and out[META_KEY]["columns"] == 70
    assert out[BOXES_KEY] is not None
    (tmp_path / "b.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(DicomReadError):
        LoadRadiographd()({IMAGE_KEY: str(tmp_path / "b.dcm")})
    failed = LoadRadiographd(on_error="record")({IMAGE_KEY: str(tmp_path / "b.dcm")})
    assert IMAGE_KEY not in failed and failed[ERROR_KEY].startswith("not_dicom")
    with pytest.raises(ValueError, match="max_pixels"):
        LoadRadiographd(max_pixels=0)


def test_cast_array_round_trip() -> None:
    sample = _sample()
    half = CastArrayd(dtype=np.float16)(sample)
    assert half[IMAGE_KEY].dtype == np.float16
    back = CastArrayd(dtype=np.float32)({IMAGE_KEY: torch.from_numpy(half[IMAGE_KEY])})
    assert isinstance(back[IMAGE_KEY], np.ndarray) and back[IMAGE_KEY].dtype == np.float32
    np.testing.assert_allclose(back[IMAGE_KEY], sample[IMAGE_KEY], atol=1e-3)
    assert CastArrayd()({"other": 1}) == {"other": 1}


def _check_crop(sample: dict, out: dict, crop: int) -> None:
    """Every kept box is exactly a lesion square (clipped to the crop) and the crop is the source window."""
    x0, y0 = out[CROP_ORIGIN_KEY]
    image = out[IMAGE_KEY]
    assert image.shape == (1, crop, crop)
    src = sample[IMAGE_KEY][0]
    window = src[max(y0, 0):y0 + crop, max(x0, 0):x0 + crop]
    placed = image[0, max(-y0, 0):, max(-x0, 0):]
    np.testing.assert_array_equal(placed[: window.shape[0], : window.shape[1]], window)
    for box, label in zip(out[BOXES_KEY], out[LABELS_KEY]):
        orig = sample[BOXES_KEY][label] - [x0, y0, x0, y0]
        np.testing.assert_array_equal(box, np.clip(orig, 0, crop))
        x1, y1, x2, y2 = box.astype(int)
        assert (image[0, y1:y2, x1:x2] < DARK).all()
        visible = (x2 - x1) * (y2 - y1)
        assert visible >= 0.5 * (orig[2] - orig[0]) * (orig[3] - orig[1])


def test_crop_keeps_boxes_consistent() -> None:
    sample = _sample()
    crop = RandCropWithBoxesd(64, pos_fraction=0.5)
    crop.set_random_state(0)
    n_boxes = 0
    for _ in range(60):
        out = crop(sample)
        _check_crop(sample, out, 64)
        n_boxes += len(out[BOXES_KEY])
        dropped = set(range(3)) - set(out[LABELS_KEY].tolist())
        x0, y0 = out[CROP_ORIGIN_KEY]
        for k in dropped:  # a dropped lesion shows less than half of itself
            b = np.clip(sample[BOXES_KEY][k] - [x0, y0, x0, y0], 0, 64)
            assert (b[2] - b[0]) * (b[3] - b[1]) < 0.5 * np.prod(sample[BOXES_KEY][k, 2:] - sample[BOXES_KEY][k, :2])
    assert n_boxes > 20


def test_pos_fraction_one_always_contains_a_whole_lesion() -> None:
    sample = _sample(300, 400, BOXES[1:2])
    crop = RandCropWithBoxesd(48, pos_fraction=1.0)
    crop.set_random_state(1)
    origins = set()
    for _ in range(40):
        out = crop(sample)
        x0, y0 = out[CROP_ORIGIN_KEY]
        origins.add((int(x0), int(y0)))
        np.testing.assert_array_equal(out[BOXES_KEY], BOXES[1:2] - [x0, y0, x0, y0])  # fully inside, unclipped
    assert len(origins) > 10  # jittered, not always the same window
    none = RandCropWithBoxesd(48, pos_fraction=0.0)
    none.set_random_state(1)
    assert sum(len(none(sample)[BOXES_KEY]) for _ in range(40)) < 10


def test_dense_fraction_puts_negative_crops_on_the_bright_structures() -> None:
    image = np.zeros((1, 400, 800), np.float32)
    image[0, 300:324, 600:648] = 1.0  # one small bright "tooth" in a dark panoramic-like field
    sample = {IMAGE_KEY: image, BOXES_KEY: np.zeros((0, 4), np.float32), LABELS_KEY: np.zeros(0, np.int64)}
    dense, uniform = RandCropWithBoxesd(64, pos_fraction=0.0, dense_fraction=1.0), RandCropWithBoxesd(64, 0.0)
    dense.set_random_state(0)
    uniform.set_random_state(0)
    assert sum(dense(sample)[IMAGE_KEY].max() == 1.0 for _ in range(40)) >= 36
    assert sum(uniform(sample)[IMAGE_KEY].max() == 1.0 for _ in range(40)) <= 8
    flat = {**sample, IMAGE_KEY: np.full((1, 200, 200), 0.5, np.float32)}  # nothing bright: a uniform crop
    assert dense(flat)[IMAGE_KEY].shape == (1, 64, 64)
    for kwargs, name in [({"dense_fraction": 1.5}, "dense_fraction"), ({"dense_quantile": 1.0}, "dense_quantile")]:
        with pytest.raises(ValueError, match=name):
            RandCropWithBoxesd(8, **kwargs)


def test_zoomed_out_crops_shrink_image_and_boxes_together() -> None:
    image = np.zeros((1, 600, 800), np.float32)
    image[0, 300:340, 400:430] = 1.0  # one 30 x 40 bright "lesion"
    sample = {IMAGE_KEY: image, BOXES_KEY: np.array([[400, 300, 430, 340]], np.float32),
              LABELS_KEY: np.array([0], np.int64)}
    crop = RandCropWithBoxesd(128, pos_fraction=1.0, zoom_fraction=1.0, zoom_min=0.3)
    crop.set_random_state(0)
    sides = []
    for _ in range(30):
        out = crop(sample)
        assert out[IMAGE_KEY].shape == (1, 128, 128) and out[IMAGE_KEY].dtype == np.float32
        (box,) = out[BOXES_KEY]
        ys, xs = np.nonzero(out[IMAGE_KEY][0] > 0.5)  # the resized lesion lies where its scaled box says
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.5)
        sides.append(box[3] - box[1])
    assert min(sides) < 0.45 * 40 and max(sides) > 0.8 * 40  # zoom spread over [0.3, 1]: 12-40 px
    assert min(sides) >= 0.3 * 40 - 1
    plain = RandCropWithBoxesd(128, pos_fraction=1.0, zoom_fraction=0.0)
    plain.set_random_state(0)
    assert all(np.ptp(plain(sample)[BOXES_KEY][0][[1, 3]]) == 40 for _ in range(10))  # off: native scale
    for kwargs, name in [({"zoom_fraction": 1.5}, "zoom_fraction"), ({"zoom_min": 0.0}, "zoom_min"),
                         ({"zoom_fraction": 0.5, "second_view_key": "image_2"}, "second view")]:
        with pytest.raises(ValueError, match=name):
            RandCropWithBoxesd(8, **kwargs)


def test_zoom_fraction_sets_the_share_of_zoomed_crops() -> None:
    sample = {IMAGE_KEY: np.zeros((1, 500, 500), np.float32)}
    crop = RandCropWithBoxesd(64, zoom_fraction=0.5, zoom_min=0.5)
    crop.set_random_state(3)
    windows = [crop._window() for _ in range(400)]
    zoomed = sum(w != (64, 64) for w in windows)
    assert 160 <= zoomed <= 240
    assert all(64 <= h <= 128 and h == w for h, w in windows)
    assert crop(sample)[IMAGE_KEY].shape == (1, 64, 64)


def test_lesion_larger_than_crop_is_centred() -> None:
    sample = _sample(200, 260, np.array([[10, 10, 110, 90]], dtype=np.float32))
    out = RandCropWithBoxesd(64, pos_fraction=1.0, min_visible=0.1)(sample)
    assert tuple(out[CROP_ORIGIN_KEY]) == (28, 18)
    np.testing.assert_array_equal(out[BOXES_KEY], [[0, 0, 64, 64]])


def test_crop_of_small_image_pads() -> None:
    sample = _sample(40, 50, np.array([[5, 5, 15, 12]], dtype=np.float32))
    crop = RandCropWithBoxesd((64, 80), pos_fraction=0.0)
    crop.set_random_state(3)
    for _ in range(10):
        out = crop(sample)
        x0, y0 = out[CROP_ORIGIN_KEY]
        assert -30 <= x0 <= 0 and -24 <= y0 <= 0
        image = out[IMAGE_KEY][0]
        assert image.shape == (64, 80)
        np.testing.assert_array_equal(image[-y0:-y0 + 40, -x0:-x0 + 50], sample[IMAGE_KEY][0])
        assert image.sum() == pytest.approx(sample[IMAGE_KEY].sum(), rel=1e-5)  # zeros elsewhere
        np.testing.assert_array_equal(out[BOXES_KEY], [[5 - x0, 5 - y0, 15 - x0, 12 - y0]])
    edge = RandCropWithBoxesd(64, pad_mode="edge")(sample)[IMAGE_KEY][0]
    assert edge.min() > 0.0


def test_crop_is_deterministic_and_validates() -> None:
    sample = _sample()
    runs = []
    for seed in (5, 5, 6):
        crop = RandCropWithBoxesd(64)
        crop.set_random_state(seed)
        runs.append([tuple(crop(sample)[CROP_ORIGIN_KEY]) for _ in range(5)])
    assert runs[0] == runs[1] != runs[2]
    for kwargs, name in [({"crop_size": 0}, "crop_size"), ({"crop_size": 8, "pos_fraction": 2}, "pos_fraction"),
                         ({"crop_size": 8, "min_visible": 0}, "min_visible"),
                         ({"crop_size": 8, "pad_mode": "wrap"}, "pad_mode")]:
        with pytest.raises(ValueError, match=name):
            RandCropWithBoxesd(**kwargs)


def test_second_view_overlaps_first() -> None:
    sample = _sample()
    crop = RandCropWithBoxesd(64, pos_fraction=0.0, second_view_key="image_2", view_shift=0.25)
    crop.set_random_state(7)
    src = sample[IMAGE_KEY][0]
    shifts = set()
    for _ in range(5):
        out = crop(sample)
        x0, y0 = out[CROP_ORIGIN_KEY]
        matches = [(dx, dy) for dy in range(-16, 17) for dx in range(-16, 17)
                   if 0 <= y0 + dy <= 136 and 0 <= x0 + dx <= 196
                   and np.array_equal(src[y0 + dy:y0 + dy + 64, x0 + dx:x0 + dx + 64], out["image_2"][0])]
        assert matches, "image_2 should be a window within view_shift of the first crop"
        shifts.add(matches[0])
    assert len(shifts) > 1


GEOMETRIC = [
    [A.HorizontalFlip(p=1.0)],
    [A.VerticalFlip(p=1.0)],
    [A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)],
    [A.Affine(rotate=(7, 7), border_mode=0, fill=0.7, p=1.0)],
    [A.Affine(rotate=(-7, -7), scale=(1.1, 1.1), border_mode=0, fill=0.7, p=1.0)],
    [A.Affine(scale=(0.9, 0.9), border_mode=0, fill=0.7, p=1.0)],
]


@pytest.mark.parametrize("steps", GEOMETRIC, ids=["hflip", "vflip", "both", "rot7", "rot-7s1.1", "s0.9"])
def test_albumentations_boxes_follow_the_lesion(steps: list) -> None:
    square = np.array([[30, 20, 52, 44]], dtype=np.float32)
    sample = _sample(96, 128, square)
    compose = A.Compose(steps, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))
    out = AlbumentationsBoxd(compose)(sample)
    assert out[IMAGE_KEY].shape == (1, 96, 128) and out[IMAGE_KEY].dtype == np.float32
    assert out[LABELS_KEY].tolist() == [0]
    np.testing.assert_allclose(out[BOXES_KEY][0], _dark_bbox(out[IMAGE_KEY]), atol=1.0)


def test_detection_augmentation_keeps_labels_with_their_lesions() -> None:
    boxes = np.array([[10, 10, 30, 30], [70, 50, 90, 70]], dtype=np.float32)
    sample = _sample(96, 128, boxes)
    sample[IMAGE_KEY][0, 50:70, 70:90] = 0.3  # lesion 1 is lighter than lesion 0
    aug = AlbumentationsBoxd(detection_augmentation())
    aug.set_random_state(0)
    seen_flip = False
    for _ in range(15):
        out = aug(sample)
        image, out_boxes = out[IMAGE_KEY][0], out[BOXES_KEY]
        assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
        means = {int(lab): image[int(b[1]) + 2:int(b[3]) - 2, int(b[0]) + 2:int(b[2]) - 2].mean()
                 for b, lab in zip(out_boxes, out[LABELS_KEY])}
        ring = image[image > 0.5].mean()
        assert all(m < ring - 0.2 for m in means.values())
        if len(means) == 2:
            assert means[0] < means[1]
        seen_flip |= bool(out_boxes[0, 0] > 64)
    assert seen_flip
    again = AlbumentationsBoxd(detection_augmentation())
    again.set_random_state(0)
    aug.set_random_state(0)
    np.testing.assert_array_equal(again(sample)[IMAGE_KEY], aug(sample)[IMAGE_KEY])
    with pytest.raises(ValueError, match="pascal_voc"):
        AlbumentationsBoxd(A.Compose([A.HorizontalFlip()]))


def test_pretrain_augmentation_and_tensor_conversion() -> None:
    sample = _sample(64, 64, np.zeros((0, 4), np.float32))
    sample["image_2"] = sample[IMAGE_KEY].copy()
    aug = AlbumentationsImaged(pretrain_augmentation(strength=2.0), keys=(IMAGE_KEY, "image_2"))
    aug.set_random_state(0)
    outs = [aug(sample) for _ in range(4)]
    assert any(not np.array_equal(o[IMAGE_KEY], o["image_2"]) for o in outs)  # independent draws per view
    tensors = ToGreyTensord(keys=(IMAGE_KEY, "image_2"))(outs[0])
    for key in (IMAGE_KEY, "image_2"):
        assert tensors[key].shape == (1, 64, 64) and tensors[key].dtype == torch.float32
        assert 0.0 <= float(tensors[key].min()) and float(tensors[key].max()) <= 1.0
    assert tensors[BOXES_KEY].shape == (0, 4) and tensors[BOXES_KEY].dtype == torch.float32
    assert tensors[LABELS_KEY].dtype == torch.int64
    with pytest.raises(ValueError, match="strength"):
        pretrain_augmentation(strength=0)


def test_flips_on_a_synthetic_radiograph_keep_lesion_content() -> None:
    from dentalmim.data.synth import generate_image

    synth = generate_image(np.random.default_rng(0), "bitewing", 0.25)
    assert len(synth.boxes) > 0
    sample = {IMAGE_KEY: synth.pixels[None].astype(np.float32), BOXES_KEY: np.asarray(synth.boxes, np.float32),
              LABELS_KEY: np.arange(len(synth.boxes))}
    flips = A.Compose([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)],
                      bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))
    out = AlbumentationsBoxd(flips)(sample)
    for box, label in zip(out[BOXES_KEY].astype(int), out[LABELS_KEY]):
        x1, y1, x2, y2 = np.asarray(synth.boxes[label]).astype(int)
        np.testing.assert_array_equal(out[IMAGE_KEY][0, box[1]:box[3], box[0]:box[2]],
                                      synth.pixels[y1:y2, x1:x2][::-1, ::-1])


def test_a_max_spacing_crops_coarse_images_as_if_upsampled() -> None:
    image = np.zeros((1, 600, 800), np.float32)
    image[0, 300:340, 400:430] = 1.0  # a 30 x 40 bright "lesion"
    sample = {IMAGE_KEY: image, BOXES_KEY: np.array([[400, 300, 430, 340]], np.float32),
              LABELS_KEY: np.array([0], np.int64)}
    for spacing, target, (want_w, want_h) in [((0.1, 0.1), 0.05, (60, 80)),     # panoramic read finer: 2x
                                              ((0.025, 0.025), 0.05, (30, 40)),  # intraoral: finer already
                                              ((0.1, 0.05), 0.05, (30, 80)),     # per axis (row, column)
                                              ((0.2, 0.2), 0.05, (120, 128)),    # 4x: taller than the crop, cut
                                              (None, 0.05, (30, 40))]:           # unknown spacing: native
        crop = RandCropWithBoxesd(128, pos_fraction=1.0, max_spacing_mm=target)
        crop.set_random_state(0)
        for _ in range(5):
            out = crop({**sample, META_KEY: {"pixel_spacing_mm": spacing}})
            assert out[IMAGE_KEY].shape == (1, 128, 128)
            (box,) = out[BOXES_KEY]
            assert (box[2] - box[0], box[3] - box[1]) == pytest.approx((want_w, want_h), abs=1.0)
            ys, xs = np.nonzero(out[IMAGE_KEY][0] > 0.5)  # the resampled lesion lies where its box says
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1.5)
    with pytest.raises(ValueError, match="max_spacing_mm should be null or in"):
        RandCropWithBoxesd(8, max_spacing_mm=0.0)
    with pytest.raises(ValueError, match="second view"):
        RandCropWithBoxesd(8, max_spacing_mm=0.05, second_view_key="image_2")
