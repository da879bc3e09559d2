"""Evaluation inputs and lesion matching.

One :class:`EvalImage` holds an image's ground truth and predictions. :func:`match_table` matches predictions to
lesions once (greedy, by descending score, each lesion matched at most once) and flattens the result over images
into a :class:`LesionTable`; every lesion-level metric (FROC, AFROC, AP) is then a re-aggregation of that table,
which is what makes image-level bootstrap resampling cheap.

Boxes follow the library convention: float (N, 4) ``x1, y1, x2, y2`` in pixels of the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AP_CRITERION", "FROC_CRITERION", "EvalImage", "HitCriterion", "LesionTable", "box_iou",
           "hit_matrix", "match_image", "match_table"]


def _as_boxes(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1, 4) if np.size(x) == 0 else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} should have shape (N, 4), got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} should be finite.")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise ValueError(f"{name} should satisfy x2 >= x1 and y2 >= y1 (xyxy).")
    return arr


def _as_vector(x: object, n: int, name: str, dtype: type) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} should have shape ({n},), got {arr.shape}.")
    return arr


@dataclass
class EvalImage:
    """Ground truth and predictions of one image.

    Args:
        gt_boxes: (N, 4) lesion boxes, xyxy pixels.
        pred_boxes: (M, 4) predicted boxes, xyxy pixels.
        pred_scores: (M,) confidence of each prediction (any real scale; higher = more confident).
        gt_labels: (N,) int class ids; ``None`` = all 1 (``caries``).
        pred_labels: (M,) int class ids; ``None`` = all 1.
        image_prob: image-level probability of caries in [0, 1]; ``None`` = the highest prediction score
            (0 without predictions), which then has to lie in [0, 1].
        has_caries: image-level truth; ``None`` = ``N > 0``.
        image_id: identifier used in reports (never patient data).
        patient_id: pseudonymous patient id; when every image has one, bootstrap resamples patients.
        pixel_spacing_mm: (row = y, column = x) spacing in mm (DICOM order) or ``None`` when unknown.
    """

    gt_boxes: np.ndarray
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    gt_labels: np.ndarray | None = None
    pred_labels: np.ndarray | None = None
    image_prob: float | None = None
    has_caries: bool | None = None
    image_id: str | int = ""
    patient_id: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.gt_boxes = _as_boxes(self.gt_boxes, "gt_boxes")
        self.pred_boxes = _as_boxes(self.pred_boxes, "pred_boxes")
        n, m = len(self.gt_boxes), len(self.pred_boxes)
        self.pred_scores = _as_vector(self.pred_scores, m, "pred_scores", np.float64)
        if not np.all(np.isfinite(self.pred_scores)):
            raise ValueError("pred_scores should be finite.")
        self.gt_labels = _as_vector(np.ones(n) if self.gt_labels is None else self.gt_labels, n, "gt_labels",
                                    np.int64)
        self.pred_labels = _as_vector(np.ones(m) if self.pred_labels is None else self.pred_labels, m,
                                      "pred_labels", np.int64)
        if self.image_prob is None:
            self.image_prob = float(self.pred_scores.max()) if m else 0.0
        self.image_prob = float(self.image_prob)
        if not 0.0 <= self.image_prob <= 1.0:
            raise ValueError(f"image_prob should be in [0, 1] (it defaults to the highest prediction score), "
                             f"got {self.image_prob}.")
        self.has_caries = bool(n > 0 if self.has_caries is None else self.has_caries)
        if self.pixel_spacing_mm is not None:
            sy, sx = (float(v) for v in self.pixel_spacing_mm)
            if not (sy > 0 and sx > 0):
                raise ValueError(f"pixel_spacing_mm should be positive, got {self.pixel_spacing_mm}.")
            self.pixel_spacing_mm = (sy, sx)

    def lesion_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Largest side of each lesion box.

        Returns:
            ``(size_px (N,), size_mm (N,))``; ``size_mm`` is nan without pixel spacing.
        """
        w = self.gt_boxes[:, 2] - self.gt_boxes[:, 0]
        h = self.gt_boxes[:, 3] - self.gt_boxes[:, 1]
        size_px = np.maximum(w, h)
        if self.pixel_spacing_mm is None:
            return size_px, np.full(len(w), np.nan)
        sy, sx = self.pixel_spacing_mm
        return size_px, np.maximum(w * sx, h * sy)


@dataclass(frozen=True)
class HitCriterion:
    """When a prediction localises a lesion.

    A prediction hits a lesion when ``centre_inside`` is on and the prediction's centre lies inside the lesion box
    (half-open ``[x1, x2) x [y1, y2)``), or when ``iou_threshold`` is set and IoU >= ``iou_threshold``.

    Args:
        iou_threshold: IoU needed for a hit, in (0, 1], or ``None`` for no IoU rule.
        centre_inside: whether a prediction centred inside the lesion box is a hit.
    """

    iou_threshold: float | None = 0.3
    centre_inside: bool = True

    def __post_init__(self) -> None:
        t = self.iou_threshold
        if t is not None and not 0.0 < t <= 1.0:
            raise ValueError(f"iou_threshold should be in (0, 1], got {t}.")
        if t is None and not self.centre_inside:
            raise ValueError("HitCriterion needs iou_threshold or centre_inside.")


#: FROC/AFROC default (common in radiology CAD): centre inside the lesion box OR IoU >= 0.3.
FROC_CRITERION = HitCriterion(iou_threshold=0.3, centre_inside=True)
#: Detection AP default: IoU >= 0.5 only.
AP_CRITERION = HitCriterion(iou_threshold=0.5, centre_inside=False)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two box sets.

    Args:
        a: (M, 4) xyxy boxes.
        b: (N, 4) xyxy boxes.

    Returns:
        (M, N) IoU; 0 where the union is empty.
    """
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def hit_matrix(pred_boxes: np.ndarray, gt_boxes: np.ndarray, criterion: HitCriterion) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """Which predictions hit which lesions.

    Args:
        pred_boxes: (M, 4) xyxy.
        gt_boxes: (N, 4) xyxy.
        criterion: the hit rule.

    Returns:
        ``(hits (M, N) bool, iou (M, N))``.
    """
    iou = box_iou(pred_boxes, gt_boxes)
    hits = np.zeros(iou.shape, dtype=bool)
    if criterion.iou_threshold is not None:
        hits |= iou >= criterion.iou_threshold
    if criterion.centre_inside:
        cx = (pred_boxes[:, None, 0] + pred_boxes[:, None, 2]) / 2
        cy = (pred_boxes[:, None, 1] + pred_boxes[:, None, 3]) / 2
        hits |= ((cx >= gt_boxes[None, :, 0]) & (cx < gt_boxes[None, :, 2])
                 & (cy >= gt_boxes[None, :, 1]) & (cy < gt_boxes[None, :, 3]))
    return hits, iou


def match_image(pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray,
                criterion: HitCriterion) -> np.ndarray:
    """Greedy matching of one image's predictions to its lesions.

    Predictions are visited by descending score (stable for ties); each takes, among the still unmatched lesions
    it hits, the one with the highest IoU (lowest index on ties). A prediction that hits no unmatched lesion
    (including a second mark on an already found lesion) is a false positive.

    Args:
        pred_boxes: (M, 4) xyxy.
        pred_scores: (M,) scores.
        gt_boxes: (N, 4) xyxy.
        criterion: the hit rule.

    Returns:
        (M,) int64: index of the matched lesion per prediction, -1 for false positives.
    """
    match = np.full(len(pred_boxes), -1, dtype=np.int64)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return match
    hits, iou = hit_matrix(pred_boxes, gt_boxes, criterion)
    quality = np.where(hits, iou, -1.0)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for p in np.argsort(-pred_scores, kind="stable"):
        q = np.where(taken, -1.0, quality[p])
        g = int(np.argmax(q))
        if q[g] >= 0.0:
            match[p], taken[g] = g, True
    return match


@dataclass(frozen=True)
class LesionTable:
    """Matching result flattened over images (lesions and false positives), the input of lesion metrics.

    Attributes:
        n_images: number of images.
        normal: (n_images,) bool, images without caries (image-level truth).
        lesion_image: (L,) image index of each lesion.
        lesion_index: (L,) index of the lesion within its image's ``gt_boxes``.
        lesion_score: (L,) score of the prediction matched to the lesion, ``-inf`` when unmatched.
        lesion_label: (L,) class id.
        lesion_size_px: (L,) largest box side in pixels.
        lesion_size_mm: (L,) largest box side in mm (nan without pixel spacing).
        fp_image: (F,) image index of each false-positive prediction.
        fp_index: (F,) index of the prediction within its image.
        fp_score: (F,) score of each false positive.
    """

    n_images: int
    normal: np.ndarray
    lesion_image: np.ndarray
    lesion_index: np.ndarray
    lesion_score: np.ndarray
    lesion_label: np.ndarray
    lesion_size_px: np.ndarray
    lesion_size_mm: np.ndarray
    fp_image: np.ndarray
    fp_index: np.ndarray
    fp_score: np.ndarray

    def select_lesions(self, keep: np.ndarray) -> LesionTable:
        """The same table with only the lesions where ``keep`` (L,) is true; false positives are kept."""
        names = ("lesion_image", "lesion_index", "lesion_score", "lesion_label", "lesion_size_px",
                 "lesion_size_mm")
        fields = {k: getattr(self, k)[keep] for k in names}
        return LesionTable(n_images=self.n_images, normal=self.normal, fp_image=self.fp_image,
                           fp_index=self.fp_index, fp_score=self.fp_score, **fields)


def match_table(images: Sequence[EvalImage], criterion: HitCriterion = FROC_CRITERION,
                label: int | None = None) -> LesionTable:
    """Match every image and flatten the result.

    Args:
        images: the evaluation set.
        criterion: the hit rule.
        label: when set, only lesions and predictions of this class take part (class-aware); ``None`` pools all
            classes (class-agnostic "caries" detection).

    Returns:
        The :class:`LesionTable`.
    """
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("li", "lx", "ls", "ll", "lp", "lm", "fi", "fx", "fs")}
    for i, im in enumerate(images):
        gk = np.ones(len(im.gt_boxes), bool) if label is None else im.gt_labels == label
        pk = np.ones(len(im.pred_boxes), bool) if label is None else im.pred_labels == label
        gidx, pidx = np.flatnonzero(gk), np.flatnonzero(pk)
        match = match_image(im.pred_boxes[pidx], im.pred_scores[pidx], im.gt_boxes[gidx], criterion)
        score = np.full(len(gidx), -np.inf)
        score[match[match >= 0]] = im.pred_scores[pidx][match >= 0]
        size_px, size_mm = im.lesion_sizes()
        fp = pidx[match < 0]
        for key, val in (("li", np.full(len(gidx), i)), ("lx", gidx), ("ls", score), ("ll", im.gt_labels[gidx]),
                         ("lp", size_px[gidx]), ("lm", size_mm[gidx]), ("fi", np.full(len(fp), i)), ("fx", fp),
                         ("fs", im.pred_scores[fp])):
            cols[key].append(val)
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    ints = {k: cat[k].astype(np.int64) for k in ("li", "lx", "ll", "fi", "fx")}
    return LesionTable(n_images=len(images), normal=np.array([not im.has_caries for im in images], dtype=bool),
                       lesion_image=ints["li"], lesion_index=ints["lx"], lesion_score=cat["ls"].astype(float),
                       lesion_label=ints["ll"], lesion_size_px=cat["lp"].astype(float),
                       lesion_size_mm=cat["lm"].astype(float), fp_image=ints["fi"], fp_index=ints["fx"],
                       fp_score=cat["fs"].astype(float))
