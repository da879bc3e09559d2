"""Overlay rendering: geometry of the drawn boxes, colours, threshold, downsizing, PNG output, validation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dentalmim.inference.overlay import CLASS_COLORS, overlay_png_bytes, render_overlay, save_overlay_png

GREY = 128  # 0.5 rendered


def _flat(h: int = 128, w: int = 160) -> np.ndarray:
    return np.full((h, w), 0.5, dtype=np.float32)


def _render(pixels: np.ndarray, boxes, scores, names, **kwargs) -> np.ndarray:
    kwargs.setdefault("threshold", 0.5)
    kwargs.setdefault("header", False)
    return render_overlay(pixels, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                          names, **kwargs)


def test_overlay_shape_dtype_and_plain_image() -> None:
    pixels = np.linspace(0.0, 1.0, 64 * 96, dtype=np.float32).reshape(64, 96)
    out = _render(pixels, [], [], [])
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    expected = np.round(pixels * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize("name", sorted(CLASS_COLORS))
def test_overlay_box_band_outside_the_box_in_class_colour(name: str) -> None:
    out = _render(_flat(), [[20, 30, 40, 50]], [0.9], [name])  # covers columns 20..39, rows 30..49
    color = CLASS_COLORS[name]
    # band of 2 px (picture < 900 px) just outside every side, black 1 px rim beyond it
    for row, col in ((40, 19), (40, 18), (40, 40), (40, 41), (29, 30), (28, 30), (50, 30), (51, 30)):
        assert tuple(out[row, col]) == color, (row, col)
    for row, col in ((40, 17), (40, 42), (52, 30)):
        assert tuple(out[row, col]) == (0, 0, 0), (row, col)
    inside = out[30:50, 20:40]
    assert (inside == GREY).all()  # the lesion itself stays visible
    label_rows = out[:27, 17:60]
    assert (label_rows == color).all(axis=2).sum() > 20  # label tag above the box


def test_overlay_boxes_below_threshold_are_not_drawn() -> None:
    pixels = _flat()
    blank = _render(pixels, [], [], [], header=True, image_probability=0.2)
    low = _render(pixels, [[20, 30, 40, 50]], [0.49], ["caries"], header=True, image_probability=0.2)
    np.testing.assert_array_equal(low, blank)
    mixed = _render(pixels, [[20, 30, 40, 50], [90, 60, 120, 90]], [0.3, 0.8], ["caries", "dentin_caries"])
    assert (mixed[40, 15:20] == GREY).all()  # low box: nothing drawn
    assert tuple(mixed[75, 89]) == CLASS_COLORS["dentin_caries"]


def test_overlay_max_side_downsizes_picture_and_boxes() -> None:
    pixels = _flat(300, 600)
    boxes, scores, names = [[200, 100, 260, 160]], [0.9], ["enamel_caries"]
    out = _render(pixels, boxes, scores, names, max_side=150)
    assert out.shape == (75, 150, 3)  # aspect kept
    # box scaled by 0.25 -> columns 50..64, rows 25..39; band just outside
    color = CLASS_COLORS["enamel_caries"]
    assert tuple(out[32, 49]) == color and tuple(out[32, 65]) == color and tuple(out[24, 57]) == color
    assert (out[26:39, 51:64] == GREY).all()
    native = _render(pixels, boxes, scores, names, max_side=1000)
    assert native.shape == (300, 600, 3) and tuple(native[130, 199]) == color


def test_overlay_line_width_scales_with_picture() -> None:
    big = _render(_flat(1500, 3000), [[1000, 700, 1040, 740]], [0.9], ["caries"])
    color = CLASS_COLORS["caries"]
    band = [c for c in range(980, 1000) if tuple(big[720, c]) == color]
    assert len(band) >= 6  # about 3000 / 450 px: visible once the panoramic is shown screen-sized


def test_overlay_header_dims_corner() -> None:
    pixels = _flat()
    plain = _render(pixels, [[60, 60, 80, 80]], [0.9], ["dentin_caries"])
    headed = _render(pixels, [[60, 60, 80, 80]], [0.9], ["dentin_caries"], header=True, image_probability=0.93,
                     model_version="1.2.3")
    assert headed[2:6, 2:6].mean() < plain[2:6, 2:6].mean() * 0.5
    left = headed[:, :30]  # the label tag of the box starts at column 57
    assert (left == CLASS_COLORS["dentin_caries"]).all(axis=2).sum() > 20  # legend swatch


def test_overlay_png_bytes_and_file(tmp_path: Path) -> None:
    args = (_flat(), np.array([[20, 30, 40, 50]], np.float32), np.array([0.9]), ["caries"])
    expected = render_overlay(*args, threshold=0.5, image_probability=0.7, model_version="0.1")
    data = overlay_png_bytes(*args, threshold=0.5, image_probability=0.7, model_version="0.1")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)
    path = save_overlay_png(*args, tmp_path / "out" / "overlay.png", threshold=0.5, image_probability=0.7,
                            model_version="0.1")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixels": np.zeros((8, 8, 3), np.float32)}, "pixels should be"),
        ({"boxes": np.zeros((1, 3))}, "boxes should have shape"),
        ({"scores": np.array([0.9, 0.8])}, "scores should have shape"),
        ({"threshold": 1.5}, "threshold should be in"),
        ({"image_probability": -0.1}, "image_probability should be in"),
        ({"max_side": 4}, "max_side should be"),
    ],
)
def test_overlay_invalid_arguments(kwargs: dict, match: str) -> None:
    args = {"pixels": _flat(), "boxes": np.array([[1.0, 2.0, 3.0, 4.0]]), "scores": np.array([0.9]),
            "class_names": ["caries"], "threshold": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        render_overlay(args.pop("pixels"), args.pop("boxes"), args.pop("scores"), args.pop("class_names"), **args)


def test_overlay_accepts_class_names_of_other_label_sets() -> None:
    boxes = np.array([[10.0, 10.0, 30.0, 30.0]])
    known = render_overlay(_flat(), boxes, np.array([0.9]), ["caries"], threshold=0.5, header=False)
    other = render_overlay(_flat(), boxes, np.array([0.9]), ["caries_RB"], threshold=0.5, header=False)
    assert (other != render_overlay(_flat(), boxes[:0], np.zeros(0), [], threshold=0.5, header=False)).any()
    assert other.shape == known.shape
