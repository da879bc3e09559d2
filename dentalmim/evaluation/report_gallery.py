"""Gallery of the worst false negatives and false positives: selection and overlay rendering.

Crops keep native resolution (pixels are only enlarged by an integer nearest-neighbour factor so that small
lesions stay visible) and come with a downscaled context thumbnail of the whole image. Ground truth is drawn
green, predictions red-orange with their score.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dentalmim.evaluation.metrics_match import FROC_CRITERION, EvalImage, HitCriterion, hit_matrix, match_table

__all__ = ["GT_COLOUR", "PRED_COLOUR", "GalleryItem", "png_bytes", "render_gallery_item", "select_gallery"]

GT_COLOUR = (40, 200, 60)
PRED_COLOUR = (255, 90, 20)
FOCUS_COLOUR = (255, 220, 0)


@dataclass
class GalleryItem:
    """One gallery entry.

    Args:
        image: (H, W) float image in [0, 1].
        gt_boxes: (N, 4) xyxy lesion boxes.
        pred_boxes: (M, 4) xyxy predicted boxes.
        pred_scores: (M,) prediction scores.
        title: caption (escaped when rendered).
        kind: "FN" (missed lesion) or "FP" (false-positive prediction).
        focus: (4,) xyxy box the crop is centred on; ``None`` = the first lesion (FN) or top prediction (FP).
    """

    image: np.ndarray
    gt_boxes: np.ndarray
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    title: str
    kind: Literal["FN", "FP"]
    focus: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 2:
            raise ValueError(f"image should have shape (H, W), got {self.image.shape}.")
        if self.kind not in ("FN", "FP"):
            raise ValueError(f"kind should be 'FN' or 'FP', got {self.kind!r}.")
        self.gt_boxes = np.asarray(self.gt_boxes, dtype=np.float64).reshape(-1, 4)
        self.pred_boxes = np.asarray(self.pred_boxes, dtype=np.float64).reshape(-1, 4)
        self.pred_scores = np.asarray(self.pred_scores, dtype=np.float64).reshape(-1)
        if self.focus is None:
            boxes = self.gt_boxes if self.kind == "FN" else self.pred_boxes[np.argsort(-self.pred_scores)]
            self.focus = boxes[0] if len(boxes) else np.array([0, 0, *self.image.shape[::-1]], np.float64)
        self.focus = np.asarray(self.focus, dtype=np.float64).reshape(4)


def _best_overlap_scores(im: EvalImage, criterion: HitCriterion) -> np.ndarray:
    """(N,) highest score among predictions hitting each lesion (``-inf`` when none does)."""
    hits, _ = hit_matrix(im.pred_boxes, im.gt_boxes, criterion)
    return np.where(hits, im.pred_scores[:, None], -np.inf).max(axis=0, initial=-np.inf)


def select_gallery(items: Sequence[EvalImage], k: int, load_image: Callable[[EvalImage], np.ndarray], *,
                   score_threshold: float, criterion: HitCriterion = FROC_CRITERION) -> list[GalleryItem]:
    """Pick the worst false negatives and false positives at the operating threshold.

    False negatives are lesions not matched by a prediction with ``score >= score_threshold``, worst first: lowest
    best-overlap score (the highest score of any prediction hitting the lesion), then largest size. False positives
    are unmatched predictions with ``score >= score_threshold``, highest score first.

    Args:
        items: the evaluation set.
        k: how many of each kind.
        load_image: returns the (H, W) [0, 1] pixels of an item (called once per selected image).
        score_threshold: lesion operating threshold.
        criterion: lesion hit rule (as in FROC).

    Returns:
        Up to ``k`` FN items followed by up to ``k`` FP items.
    """
    if k < 0:
        raise ValueError(f"k should be >= 0, got {k}.")
    table = match_table(items, criterion)
    best = np.concatenate([_best_overlap_scores(im, criterion) for im in items] or [np.zeros(0)])
    missed = np.flatnonzero(table.lesion_score < score_threshold)
    fn = missed[np.lexsort((-table.lesion_size_px[missed], best[missed]))][:k]
    kept = np.flatnonzero(table.fp_score >= score_threshold)
    fp = kept[np.argsort(-table.fp_score[kept], kind="stable")][:k]
    cache: dict[int, np.ndarray] = {}

    def make(i: int, kind: Literal["FN", "FP"], focus: np.ndarray, title: str) -> GalleryItem:
        if i not in cache:
            cache[i] = load_image(items[i])
        im = items[i]
        return GalleryItem(cache[i], im.gt_boxes, im.pred_boxes, im.pred_scores, title, kind, focus)

    out = []
    for j in fn:
        i, g = int(table.lesion_image[j]), int(table.lesion_index[j])
        score = "none" if not np.isfinite(best[j]) else f"{best[j]:.2f}"
        out.append(make(i, "FN", items[i].gt_boxes[g], f"Missed lesion, image {items[i].image_id}, "
                        f"{table.lesion_size_px[j]:.0f} px, best overlapping score {score}"))
    for j in fp:
        i, p = int(table.fp_image[j]), int(table.fp_index[j])
        out.append(make(i, "FP", items[i].pred_boxes[p], f"False positive, image {items[i].image_id}, "
                        f"score {table.fp_score[j]:.2f}"))
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _to_rgb(image: np.ndarray) -> Image.Image:
    grey = (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _draw_boxes(draw: ImageDraw.ImageDraw, item: GalleryItem, origin: tuple[float, float], scale: float,
                width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None) -> None:
    def xy(b: np.ndarray) -> list[float]:  # inclusive corners; a box thinner than a pixel once scaled stays a dot
        x0, y0 = (b[0] - origin[0]) * scale, (b[1] - origin[1]) * scale
        return [x0, y0, max(x0, (b[2] - origin[0]) * scale - 1), max(y0, (b[3] - origin[1]) * scale - 1)]

    for b in item.gt_boxes:
        draw.rectangle(xy(b), outline=GT_COLOUR, width=width)
    for b, s in zip(item.pred_boxes, item.pred_scores, strict=True):
        r = xy(b)
        draw.rectangle(r, outline=PRED_COLOUR, width=width)
        if font is not None:
            label = f"{s:.2f}"
            anchor = "lb" if r[1] >= 16 else "lt"  # above the box, or inside it at the image top
            tb = draw.textbbox((r[0], r[1]), label, font=font, anchor=anchor)
            draw.rectangle(tb, fill=(0, 0, 0))
            draw.text((r[0], r[1]), label, fill=PRED_COLOUR, font=font, anchor=anchor)


def render_gallery_item(item: GalleryItem, *, min_context_px: int = 48, display_px: int = 320,
                        thumb_px: int = 320) -> tuple[Image.Image, Image.Image]:
    """Overlay crop at native resolution and a context thumbnail.

    Args:
        item: the gallery entry.
        min_context_px: minimum margin (native pixels) around the focus box.
        display_px: crops smaller than this are enlarged by an integer factor towards it.
        thumb_px: longest side of the context thumbnail.

    Returns:
        ``(crop, thumbnail)`` RGB images.
    """
    h, w = item.image.shape
    f = item.focus
    half = max(min_context_px, float(max(f[2] - f[0], f[3] - f[1])))
    cx, cy = (f[0] + f[2]) / 2, (f[1] + f[3]) / 2
    x0, y0 = int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half)))
    x1, y1 = int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    zoom = max(1, display_px // max(x1 - x0, y1 - y0))
    crop = _to_rgb(item.image[y0:y1, x0:x1]).resize(((x1 - x0) * zoom, (y1 - y0) * zoom), Image.NEAREST)
    _draw_boxes(ImageDraw.Draw(crop), item, (x0, y0), zoom, 2, _font(15))
    scale = min(1.0, thumb_px / max(h, w))
    thumb = _to_rgb(item.image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(thumb)
    _draw_boxes(draw, item, (0, 0), scale, 1, None)
    draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=FOCUS_COLOUR, width=2)
    return crop, thumb


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
