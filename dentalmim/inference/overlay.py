"""Findings drawn over the radiograph: a picture for clinicians (web page, report, PNG download).

Boxes are drawn just *outside* the lesion box (the lesion itself stays visible) as a band in the class colour
(enamel: yellow, dentin: red, generic caries: orange) with a thin black outer rim for contrast on bright enamel,
plus a label with the class and score. Line width and font size grow with the output picture, so both a
3000 x 1500 panoramic and a 400 px crop read well. A translucent header in the top-left corner gives the image
caries probability, the number of regions at or above the threshold, the colour legend and the model version.
Output pixel (r, c) shows image pixel (r / s, c / s), where s is the ``max_side`` scale (1 by default).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: RGB colour per detector class.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "enamel_caries": (255, 221, 0),
    "dentin_caries": (235, 40, 40),
    "caries": (255, 140, 0),
}
#: Short label text per class.
CLASS_LABELS = {"enamel_caries": "enamel", "dentin_caries": "dentin", "caries": "caries"}


def _colour(class_name: str) -> tuple[int, int, int]:
    """Box colour of a class; classes of other label sets get the generic caries colour."""
    return CLASS_COLORS.get(class_name, CLASS_COLORS["caries"])


def _label(class_name: str) -> str:
    """Short label of a class; other label sets' class names are shown as they are."""
    return CLASS_LABELS.get(class_name, class_name)


#: Smallest accepted ``max_side``.
MIN_SIDE = 16
_HEADER_DIM = 0.3  # brightness factor of the image under the header


def render_overlay(
    pixels: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    threshold: float,
    image_probability: float | None = None,
    max_side: int | None = None,
    model_version: str | None = None,
    header: bool = True,
) -> np.ndarray:
    """Draws the findings of one radiograph.

    Args:
        pixels: (H, W) float display image in [0, 1] (values outside are clipped).
        boxes: (K, 4) x1, y1, x2, y2 in original pixels (x along Columns).
        scores: (K,) scores; only boxes with score >= ``threshold`` are drawn.
        class_names: K class names; those of :data:`CLASS_COLORS` get their colour, others the generic one.
        threshold: drawing threshold in [0, 1].
        image_probability: image-level caries probability in [0, 1], shown in the header.
        max_side: when given and smaller than max(H, W), the picture is downsized so its longer side is
            ``max_side`` (boxes scaled alike); None keeps native resolution.
        model_version: shown in the header.
        header: draw the header (probability, count, legend, version).

    Returns:
        (H', W', 3) uint8 RGB picture, H' = round(H s), W' = round(W s).
    """
    boxes, scores = _check_args(pixels, boxes, scores, class_names, threshold, image_probability, max_side)
    image, scale = _base_image(pixels, max_side)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 450))
    font = _font(max(12, round(max(image.size) / 80)))
    keep = [i for i in np.argsort(scores, kind="stable") if scores[i] >= threshold]  # best drawn last (on top)
    for i in keep:
        _draw_box(draw, boxes[i] * scale, class_names[i], float(scores[i]), width, font, image.size)
    if header:
        shown = [class_names[i] for i in keep]
        _draw_header(image, _header_lines(len(keep), threshold, image_probability, model_version), shown, font)
    return np.asarray(image)


def overlay_png_bytes(pixels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                      **kwargs) -> bytes:
    """:func:`render_overlay` encoded as PNG; ``kwargs`` go to :func:`render_overlay` (``threshold`` required)."""
    buffer = io.BytesIO()
    Image.fromarray(render_overlay(pixels, boxes, scores, class_names, **kwargs)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay_png(pixels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                     path: str | os.PathLike, **kwargs) -> Path:
    """Writes :func:`render_overlay` as a PNG file (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(overlay_png_bytes(pixels, boxes, scores, class_names, **kwargs))
    return path


def _check_args(pixels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                threshold: float, image_probability: float | None, max_side: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Validates the arguments; returns boxes (K, 4) and scores (K,) as float64."""
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ValueError(f"pixels should be a non-empty (H, W) array, got shape {np.shape(pixels)}.")
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes should have shape (K, 4), got {boxes.shape}.")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes should be finite, got NaN or infinite coordinates.")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(boxes),):
        raise ValueError(f"scores should have shape ({len(boxes)},) (one per box), got {scores.shape}.")
    if len(class_names) != len(boxes):
        raise ValueError(f"class_names should have {len(boxes)} entries (one per box), got {len(class_names)}.")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold should be in [0, 1], got {threshold}.")
    if image_probability is not None and not 0.0 <= float(image_probability) <= 1.0:
        raise ValueError(f"image_probability should be in [0, 1] or None, got {image_probability}.")
    if max_side is not None and (not isinstance(max_side, int) or max_side < MIN_SIDE):
        raise ValueError(f"max_side should be None or an int >= {MIN_SIDE}, got {max_side!r}.")
    return boxes, scores


def _base_image(pixels: np.ndarray, max_side: int | None) -> tuple[Image.Image, float]:
    """Grey (H, W) [0, 1] -> RGB PIL image, downsized to ``max_side``; returns it and the scale factor."""
    grey = np.clip(np.nan_to_num(pixels.astype(np.float32, copy=False)), 0.0, 1.0)
    image = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), mode="L")
    h, w = pixels.shape
    scale = 1.0
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, resample=Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image.convert("RGB"), scale


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` px (bitmap default font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _draw_box(draw: ImageDraw.ImageDraw, box: np.ndarray, class_name: str, score: float, width: int,
              font: ImageFont.ImageFont, size: tuple[int, int]) -> None:
    """A band of ``width`` px just outside box (4,) xyxy (output pixels), a black rim, and the label."""
    x1, y1 = round(box[0]), round(box[1])
    x2, y2 = max(round(box[2]), x1 + 1), max(round(box[3]), y1 + 1)  # last covered pixel is x2 - 1, y2 - 1
    color = _colour(class_name)
    frame = (x1 - width - 1, y1 - width - 1, x2 + width, y2 + width)  # outermost drawn pixels (inclusive)
    draw.rectangle(frame, outline=(0, 0, 0), width=1)
    draw.rectangle((x1 - width, y1 - width, x2 + width - 1, y2 + width - 1), outline=color, width=width)
    _draw_label(draw, f"{_label(class_name)} {score:.2f}", frame, color, font, size)


def _draw_label(draw: ImageDraw.ImageDraw, text: str, frame: tuple[int, int, int, int],
                color: tuple[int, int, int], font: ImageFont.ImageFont, size: tuple[int, int]) -> None:
    """Text on a ``color`` tag above ``frame`` (below it when there is no room), kept inside the picture."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(frame[0], 0), max(size[0] - tw, 0))
    y = frame[1] - th if frame[1] - th >= 0 else min(frame[3] + 1, max(size[1] - th, 0))
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=(0, 0, 0), font=font)


def _header_lines(n_drawn: int, threshold: float, image_probability: float | None,
                  model_version: str | None) -> list[str]:
    lines = []
    if image_probability is not None:
        lines.append(f"caries probability {image_probability:.2f}")
    lines.append(f"{n_drawn} region{'s' if n_drawn != 1 else ''} with score >= {threshold:.2f}")
    if model_version:
        lines.append(f"model {model_version}")
    return lines


def _draw_header(image: Image.Image, lines: list[str], shown: Sequence[str], font: ImageFont.ImageFont) -> None:
    """Dims the top-left corner and writes ``lines`` plus a legend of the classes in ``shown``."""
    draw = ImageDraw.Draw(image)
    line_h = draw.textbbox((0, 0), "Ag", font=font)[3]
    pad = max(2, line_h // 3)
    legend = [name for name in CLASS_COLORS if name in shown]
    text_w = max([draw.textlength(t, font=font) for t in lines]
                 + [line_h * 1.4 + draw.textlength(_label(n), font=font) for n in legend])
    rows = len(lines) + len(legend)
    box = (0, 0, min(image.width, round(text_w) + 2 * pad), min(image.height, rows * (line_h + pad) + pad))
    image.paste(image.crop(box).point(lambda v: int(v * _HEADER_DIM)), box[:2])
    y = pad
    for text in lines:
        draw.text((pad, y), text, fill=(255, 255, 255), font=font)
        y += line_h + pad
    for name in legend:
        draw.rectangle((pad, y + 1, pad + line_h - 2, y + line_h - 1), fill=_colour(name))
        draw.text((pad + round(line_h * 1.4), y), _label(name), fill=(255, 255, 255), font=font)
        y += line_h + pad
