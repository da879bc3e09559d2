"""Preview pictures of synthetic radiographs (README images): downsized image, lesion boxes, native-resolution inset.

Boxes are drawn in yellow for enamel lesions and red for dentin lesions; the inset shows the smallest lesion at
native resolution (or enlarged, never reduced) so that its real size in pixels is visible.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dentalmim.data.synth_lesions import Lesion

#: Box colours per depth class.
DEPTH_COLOURS = {"enamel": (255, 210, 0), "dentin": (255, 40, 40)}
INSET_COLOUR = (0, 200, 255)
#: Grey levels kept in the preview (fewer levels: smaller PNG, invisible at this size).
_GREY_LEVELS = 64


def _palette() -> list[int]:
    """Grey ramp in entries 0.._GREY_LEVELS-1, then the box colours."""
    greys = [round(i * 255 / (_GREY_LEVELS - 1)) for i in range(_GREY_LEVELS)]
    colours = [*DEPTH_COLOURS.values(), INSET_COLOUR]
    return [c for g in greys for c in (g, g, g)] + [c for rgb in colours for c in rgb]


def _colour_index(name: str) -> int:
    return _GREY_LEVELS + [*DEPTH_COLOURS, "inset"].index(name)


def _grey(pixels: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """Palette image of ``pixels`` (H, W) in [0, 1], optionally resized to ``size`` = (width, height)."""
    img = Image.fromarray(np.ascontiguousarray(pixels, np.float32), "F")
    if size is not None:
        img = img.resize(size, Image.Resampling.LANCZOS)
    arr = np.asarray(img, np.float32)
    levels = np.round(np.clip(arr, 0.0, 1.0) * (_GREY_LEVELS - 1)).astype(np.uint8)
    out = Image.frombytes("P", (levels.shape[1], levels.shape[0]), levels.tobytes())
    out.putpalette(_palette())
    return out


def _draw_boxes(draw: ImageDraw.ImageDraw, boxes: np.ndarray, lesions: list[Lesion], factor: float,
                offset: tuple[float, float] = (0.0, 0.0), width: int = 2) -> None:
    for box, lesion in zip(boxes.tolist(), lesions, strict=True):
        x1, y1, x2, y2 = ((v - offset[i % 2]) * factor for i, v in enumerate(box))
        draw.rectangle([x1 - 1, y1 - 1, x2, y2], outline=_colour_index(lesion.depth), width=width)


def _inset(pixels: np.ndarray, boxes: np.ndarray, lesions: list[Lesion], k: int,
           side: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Square crop around lesion ``k`` at native resolution, enlarged by an integer factor to about ``side`` px."""
    x1, y1, x2, y2 = boxes[k]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = pixels.shape
    half = min(max(int(max(x2 - x1, y2 - y1) * 1.6), 24), h // 2, w // 2)
    c0, r0 = int(np.clip(cx - half, 0, w - 2 * half)), int(np.clip(cy - half, 0, h - 2 * half))
    c1, r1 = c0 + 2 * half, r0 + 2 * half
    zoom = max(1, round(side / (2 * half)))
    crop = _grey(pixels[r0:r1, c0:c1]).resize((2 * half * zoom, 2 * half * zoom), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(crop)
    _draw_boxes(draw, boxes[k : k + 1], lesions[k : k + 1], zoom, (c0, r0), width=1)
    label = f"{lesions[k].fdi} {lesions[k].site} {lesions[k].depth}, {int(x2 - x1)}x{int(y2 - y1)} px, x{zoom}"
    draw.text((4, 2), label, fill=_colour_index("inset"))
    return crop, (c0, r0, c1, r1)


def render_preview(
    pixels: np.ndarray, boxes: np.ndarray, lesions: list[Lesion], path: str | os.PathLike, *,
    max_width: int = 1200, inset_side: int = 260, max_insets: int = 3,
) -> Path:
    """Writes a PNG preview: the image downsized to ``max_width`` with its lesion boxes, and below it a strip of
    native-resolution insets of the smallest lesions.

    Args:
        pixels: (H, W) display image in [0, 1].
        boxes: (N, 4) lesion boxes x1, y1, x2, y2 in pixels of ``pixels``.
        lesions: the N lesions (their depth class sets the colour).
        path: output PNG (palette mode).
        max_width: width of the preview (the image is never enlarged).
        inset_side: approximate side of each inset (pixels); 0 for none.
        max_insets: most insets shown (smallest lesions first).

    Returns:
        The path written.
    """
    if max_width < 64:
        raise ValueError(f"max_width should be >= 64, got {max_width}.")
    h, w = pixels.shape
    factor = min(1.0, max_width / w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    main = _grey(pixels, size)
    draw = ImageDraw.Draw(main)
    _draw_boxes(draw, boxes, lesions, factor)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    crops = []
    for k in np.argsort(areas, kind="stable")[: max_insets if inset_side > 0 else 0]:
        crop, (c0, r0, c1, r1) = _inset(pixels, boxes, lesions, int(k), inset_side)
        draw.rectangle([c0 * factor, r0 * factor, c1 * factor, r1 * factor], outline=_colour_index("inset"), width=1)
        crops.append(crop)
    path = Path(path)
    _with_strip(main, crops).save(path, optimize=True)  # palette PNG: 64 greys + box colours, half an RGB PNG
    return path


def _with_strip(main: Image.Image, crops: list[Image.Image]) -> Image.Image:
    """``main`` above a strip holding the ``crops`` side by side (those that fit)."""
    strip = max((c.height for c in crops), default=0)
    out = Image.new("P", (main.width, main.height + (strip + 8 if crops else 0)), 0)
    out.putpalette(_palette())
    out.paste(main, (0, 0))
    x, y = 4, main.height + 4
    for crop in crops:
        if x + crop.width > main.width:
            break
        out.paste(crop, (x, y))
        ImageDraw.Draw(out).rectangle([x, y, x + crop.width - 1, y + crop.height - 1],
                                      outline=_colour_index("inset"), width=1)
        x += crop.width + 8
    return out
