"""MONAI dictionary transforms for radiographs with lesion boxes, and the albumentations bridge.

Samples are dicts keyed by the module constants: ``IMAGE_KEY`` holds a (1, H, W) float image in [0, 1] (numpy
until :class:`ToGreyTensord`), ``BOXES_KEY`` float32 (N, 4) ``x1, y1, x2, y2`` pixels in the image's current
frame, ``LABELS_KEY`` int64 (N,), ``META_KEY`` the :meth:`DicomMeta.to_dict` of the source file. No transform
swaps axes or resizes the whole image: crops are taken at native resolution, or upsampled from coarse images when
``max_spacing_mm`` is set (:mod:`dentalmim.data.spacing`).

A training pipeline is ``LoadRadiographd -> CastArrayd(float16)`` (deterministic, cacheable) followed by
``RandCropWithBoxesd -> CastArrayd(float32) -> AlbumentationsBoxd -> ToGreyTensord`` (random, per epoch; cropping
first means a memory-mapped cache entry is only read where the crop lies).
Random transforms draw from MONAI's ``self.R`` (``set_random_state``), albumentations included, so a pipeline is
reproducible given its seeds and :func:`monai.data.utils.worker_init_fn` gives each DataLoader worker its own
stream.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable, Transform

from dentalmim.data import dicom as dicom_io
from dentalmim.data.spacing import check_max_spacing, spacing_factors
from dentalmim.errors import DicomReadError

IMAGE_KEY = "image"
IMAGE_2_KEY = "image_2"
BOXES_KEY = "boxes"
LABELS_KEY = "labels"
META_KEY = "meta"
#: Set (with ``PATH_KEY``) instead of the image when :class:`LoadRadiographd` records a read failure.
ERROR_KEY = "error"
PATH_KEY = "path"
#: ``(x0, y0)`` int64: where the crop's top-left corner lies in the source image (may be negative when padded).
CROP_ORIGIN_KEY = "crop_origin"

__all__ = ["BOXES_KEY", "CROP_ORIGIN_KEY", "ERROR_KEY", "IMAGE_2_KEY", "IMAGE_KEY", "LABELS_KEY", "META_KEY",
           "PATH_KEY", "AlbumentationsBoxd", "AlbumentationsImaged", "CastArrayd", "LoadRadiographd",
           "RandCropWithBoxesd", "ToGreyTensord", "crop_or_pad", "detection_augmentation", "pretrain_augmentation"]


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class LoadRadiographd(MapTransform):
    """Read DICOM paths with :func:`dentalmim.data.dicom.read_dicom` into (1, H, W) float32 arrays.

    Args:
        keys: keys holding file paths (the first one's metadata goes to ``META_KEY``, others to ``<key>_meta``).
        max_pixels: decompression-bomb guard passed to ``read_dicom``.
        on_error: ``raise`` the :class:`DicomReadError` (or OSError), or ``record`` it: the image key is removed and
            ``ERROR_KEY`` (``"<code>: <reason>"``) and ``PATH_KEY`` are set, so a dataset can skip the sample.
    """

    def __init__(self, keys: str | Sequence[str] = IMAGE_KEY, max_pixels: int = dicom_io.DEFAULT_MAX_PIXELS,
                 on_error: Literal["raise", "record"] = "raise") -> None:
        super().__init__(keys)
        if max_pixels <= 0:
            raise ValueError(f"max_pixels should be positive, got {max_pixels}.")
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error should be 'raise' or 'record', got {on_error!r}.")
        self.max_pixels, self.on_error = max_pixels, on_error

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for i, key in enumerate(self.key_iterator(d)):
            path = str(d[key])
            try:
                image = dicom_io.read_dicom(path, max_pixels=self.max_pixels)
            except (DicomReadError, OSError) as exc:
                if self.on_error == "raise":
                    raise
                del d[key]
                reason = exc.reason if isinstance(exc, DicomReadError) else type(exc).__name__
                d[ERROR_KEY], d[PATH_KEY] = f"{getattr(exc, 'code', 'os_error')}: {reason}", path
                return d
            d[key] = np.ascontiguousarray(image.pixels, dtype=np.float32)[None]
            d[META_KEY if i == 0 else f"{key}_meta"] = image.meta.to_dict()
        return d


class CastArrayd(MapTransform):
    """Cast arrays (numpy or torch, e.g. from a cache) to a numpy dtype; float16 halves cache size.

    Args:
        keys: keys to cast (missing keys are skipped, e.g. after a recorded read error).
        dtype: target numpy dtype.
    """

    def __init__(self, keys: str | Sequence[str] = IMAGE_KEY, dtype: Any = np.float32) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.dtype = np.dtype(dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _as_numpy(d[key]).astype(self.dtype, copy=False)
        return d


def crop_or_pad(image: np.ndarray, x0: int, y0: int, width: int, height: int,
                pad_mode: Literal["constant", "edge"] = "constant") -> np.ndarray:
    """Window ``[y0, y0 + height) x [x0, x0 + width)`` of a (C, H, W) image; outside parts are padded.

    Returns:
        (C, height, width) array of the input dtype (zeros or edge values where the window leaves the image).
    """
    _, h, w = image.shape
    ys, ye, xs, xe = max(y0, 0), min(y0 + height, h), max(x0, 0), min(x0 + width, w)
    if ys >= ye or xs >= xe:
        raise ValueError(f"crop window should overlap the image, got origin ({x0}, {y0}) for {w}x{h}.")
    region = image[:, ys:ye, xs:xe]
    pads = ((0, 0), (ys - y0, y0 + height - ye), (xs - x0, x0 + width - xe))
    if any(p for pair in pads for p in pair):
        return np.pad(region, pads, mode=pad_mode)
    return region.copy()  # never a view: later steps may work in place


def shift_and_filter_boxes(boxes: np.ndarray, x0: int, y0: int, width: int, height: int, image_size: tuple[int, int],
                           min_visible: float, min_side: float) -> tuple[np.ndarray, np.ndarray]:
    """Move (N, 4) xyxy boxes into a crop's frame, clip them to the visible image and keep the visible ones.

    Args:
        image_size: (H, W) of the source image (padding is not image, boxes never extend into it).
        min_visible: keep a box when at least this fraction of its area is visible.
        min_side: ... and both visible sides are at least ``min(min_side, original side)``.

    Returns:
        The kept boxes, float32 (M, 4), and the boolean keep mask (N,).
    """
    shifted = boxes.astype(np.float32).reshape(-1, 4) - np.asarray([x0, y0, x0, y0], dtype=np.float32)
    lo = np.asarray([max(0, -x0), max(0, -y0)] * 2, dtype=np.float32)
    hi = np.asarray([min(width, image_size[1] - x0), min(height, image_size[0] - y0)] * 2, dtype=np.float32)
    clipped = np.clip(shifted, lo, hi)
    sides, orig = clipped[:, 2:] - clipped[:, :2], shifted[:, 2:] - shifted[:, :2]
    visible = np.clip(sides, 0, None).prod(axis=1)
    keep = (visible >= min_visible * orig.prod(axis=1)) & np.all(sides >= np.minimum(min_side, orig), axis=1)
    keep &= visible > 0
    return clipped[keep], keep


class RandCropWithBoxesd(Randomizable, Transform):
    """Random native-resolution crop that keeps boxes consistent (and optionally a second, overlapping view).

    With probability ``pos_fraction`` (and when the sample has boxes) the window is placed so a randomly chosen
    lesion lies fully inside it, at a random position. Otherwise, with probability ``dense_fraction``, the window
    contains a randomly chosen bright pixel (in the top ``1 - dense_quantile`` of the image's intensities: teeth and
    restorations), so lesion-free teeth are seen as negatives even where teeth cover little of the image, as in
    panoramics; otherwise the window is uniform over the image. Images
    smaller than the crop are placed at a random offset inside it and padded. Boxes are shifted, clipped, and
    dropped if less than ``min_visible`` of their area remains; labels follow.

    With probability ``zoom_fraction`` the crop is zoomed out: a window ``1 / z`` times the crop size, ``z``
    log-uniform in ``[zoom_min, 1]``, is cut (placed by the same rules) and resized (area interpolation) to the
    crop size, boxes scaled with it. A model trained on fine-spacing intraoral images then also sees teeth and
    lesions at the coarser scale of panoramics (about 0.1 mm pixels against 0.02-0.03 mm).

    With ``max_spacing_mm`` every sample whose ``META_KEY`` gives a coarser pixel spacing is cropped as if
    upsampled to it (:mod:`dentalmim.data.spacing`): the window is ``crop / factor`` native pixels per axis (before
    any zoom), resized to the crop size (bilinear when enlarging, area interpolation when shrinking), boxes scaled
    with it.

    Args:
        crop_size: output side ``S`` or ``(height, width)``.
        pos_fraction: probability of a lesion-centred crop, in [0, 1].
        dense_fraction: probability that a crop that is not lesion-centred contains a bright pixel, in [0, 1].
        dense_quantile: intensity quantile above which a pixel counts as bright, in (0, 1).
        min_visible: minimum visible area fraction of a kept box, in (0, 1].
        min_side: minimum visible box side (pixels, capped by the box's own side).
        pad_mode: ``constant`` (zeros) or ``edge``.
        second_view_key: if set, also write a second crop whose origin is shifted by up to ``view_shift`` of
            the crop size (same region, jittered; boxes refer to the first view only).
        view_shift: maximum shift of the second view as a fraction of the crop size, in [0, 1).
        zoom_fraction: probability of a zoomed-out crop, in [0, 1] (not with ``second_view_key``).
        zoom_min: smallest zoom factor ``z``, in (0, 1].
        max_spacing_mm: upsample images with coarser pixels (mm) to this spacing; None = all native.
        image_key, boxes_key, labels_key: sample keys (missing boxes mean an image-only sample).
    """

    def __init__(self, crop_size: int | Sequence[int], pos_fraction: float = 0.5, *, min_visible: float = 0.5,
                 min_side: float = 2.0, pad_mode: Literal["constant", "edge"] = "constant",
                 second_view_key: str | None = None, view_shift: float = 0.25, dense_fraction: float = 0.0,
                 dense_quantile: float = 0.9, zoom_fraction: float = 0.0, zoom_min: float = 0.35,
                 max_spacing_mm: float | None = None, image_key: str = IMAGE_KEY, boxes_key: str = BOXES_KEY,
                 labels_key: str = LABELS_KEY) -> None:
        size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(s) for s in crop_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"crop_size should be a positive int or (height, width), got {crop_size}.")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction should be in [0, 1], got {pos_fraction}.")
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"min_visible should be in (0, 1], got {min_visible}.")
        if pad_mode not in ("constant", "edge"):
            raise ValueError(f"pad_mode should be 'constant' or 'edge', got {pad_mode!r}.")
        if not 0.0 <= view_shift < 1.0:
            raise ValueError(f"view_shift should be in [0, 1), got {view_shift}.")
        if not 0.0 <= dense_fraction <= 1.0:
            raise ValueError(f"dense_fraction should be in [0, 1], got {dense_fraction}.")
        if not 0.0 < dense_quantile < 1.0:
            raise ValueError(f"dense_quantile should be in (0, 1), got {dense_quantile}.")
        if not 0.0 <= zoom_fraction <= 1.0:
            raise ValueError(f"zoom_fraction should be in [0, 1], got {zoom_fraction}.")
        if not 0.0 < zoom_min <= 1.0:
            raise ValueError(f"zoom_min should be in (0, 1], got {zoom_min}.")
        if (zoom_fraction > 0 or max_spacing_mm is not None) and second_view_key is not None:
            raise ValueError("zoom_fraction > 0 or max_spacing_mm cannot be combined with a second view.")
        self.max_spacing_mm = check_max_spacing(max_spacing_mm)
        self.dense_fraction, self.dense_quantile = dense_fraction, dense_quantile
        self.zoom_fraction, self.zoom_min = zoom_fraction, zoom_min
        self.crop_size: tuple[int, int] = size  # type: ignore[assignment]
        self.pos_fraction, self.min_visible, self.min_side = pos_fraction, min_visible, min_side
        self.pad_mode = pad_mode
        self.second_view_key, self.view_shift = second_view_key, view_shift
        self.image_key, self.boxes_key, self.labels_key = image_key, boxes_key, labels_key

    def _axis_origin(self, size: int, crop: int, box: tuple[float, float] | None) -> int:
        """Random origin along one axis, containing ``box`` = (start, end) when possible."""
        lo, hi = min(0, size - crop), max(0, size - crop)
        if box is not None:
            need_lo, need_hi = int(np.ceil(box[1])) - crop, int(np.floor(box[0]))
            if need_lo <= need_hi:
                lo, hi = max(lo, need_lo), min(hi, need_hi)
            else:  # lesion larger than the crop: centre on it
                lo = hi = int(np.clip(round((box[0] + box[1] - crop) / 2), lo, hi))
        return int(self.R.randint(lo, hi + 1))

    def _bright_point(self, image: np.ndarray) -> np.ndarray | None:
        """A random pixel among the brightest (on an 8-pixel lattice), as a zero-size xyxy box; None if flat."""
        grid = image.reshape(-1, *image.shape[-2:])[0, ::8, ::8]
        if grid.max() <= grid.min():
            return None
        threshold = np.quantile(grid, self.dense_quantile)
        ys, xs = np.nonzero(grid > threshold) if (grid > threshold).any() else np.nonzero(grid == grid.max())
        k = self.R.randint(len(ys))
        x, y = float(xs[k] * 8), float(ys[k] * 8)
        return np.array([x, y, x, y], dtype=np.float32)

    def randomize(self, image_size: tuple[int, int], boxes: np.ndarray, image: np.ndarray | None = None,
                  window: tuple[int, int] | None = None) -> tuple[int, int]:
        """Pick the origin ``(x0, y0)`` of a ``window`` (default: the crop size) in an image of size (H, W) with
        (N, 4) boxes (``image``: for ``dense_fraction``)."""
        target = None
        if self.R.rand() < self.pos_fraction and len(boxes):
            target = boxes[self.R.randint(len(boxes))]
        elif image is not None and self.dense_fraction > 0 and self.R.rand() < self.dense_fraction:
            target = self._bright_point(image)
        (ch, cw), (h, w) = window or self.crop_size, image_size
        x0 = self._axis_origin(w, cw, None if target is None else (target[0], target[2]))
        y0 = self._axis_origin(h, ch, None if target is None else (target[1], target[3]))
        return x0, y0

    def _window(self, factors: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
        """(height, width) of the window to cut: the crop size divided by the spacing ``factors`` (fy, fx), and
        by a zoom factor for a zoomed-out crop."""
        (ch, cw), (fy, fx), z = self.crop_size, factors, 1.0
        if self.zoom_fraction > 0 and self.R.rand() < self.zoom_fraction:
            z = float(np.exp(self.R.uniform(np.log(self.zoom_min), 0.0)))
        return max(1, round(ch / (fy * z))), max(1, round(cw / (fx * z)))

    def _second_origin(self, x0: int, y0: int, image_size: tuple[int, int]) -> tuple[int, int]:
        (ch, cw), (h, w) = self.crop_size, image_size
        out = []
        for origin, crop, size in ((x0, cw, w), (y0, ch, h)):
            shift = int(self.view_shift * crop)
            moved = origin + int(self.R.randint(-shift, shift + 1))
            out.append(int(np.clip(moved, min(0, size - crop), max(0, size - crop))))
        return out[0], out[1]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = _as_numpy(d[self.image_key])
        size = (int(image.shape[-2]), int(image.shape[-1]))
        boxes = _as_numpy(d.get(self.boxes_key, np.zeros((0, 4)))).astype(np.float32).reshape(-1, 4)
        meta = d.get(META_KEY) or {}
        factors = spacing_factors(meta.get("pixel_spacing_mm"), self.max_spacing_mm)
        (ch, cw), (wh, ww) = self.crop_size, self._window(factors)
        x0, y0 = self.randomize(size, boxes, image, (wh, ww))
        region = crop_or_pad(image, x0, y0, ww, wh, self.pad_mode)
        if (wh, ww) != (ch, cw):
            interp = cv2.INTER_AREA if wh * ww > ch * cw else cv2.INTER_LINEAR
            region = np.stack([cv2.resize(c.astype(np.float32), (cw, ch), interpolation=interp)
                               for c in region]).astype(region.dtype, copy=False)  # float32: any input dtype
        d[self.image_key] = region
        d[CROP_ORIGIN_KEY] = np.asarray([x0, y0], dtype=np.int64)
        if self.second_view_key is not None:
            x1, y1 = self._second_origin(x0, y0, size)
            d[self.second_view_key] = crop_or_pad(image, x1, y1, cw, ch, self.pad_mode)
        if self.boxes_key in d:
            scale = np.asarray([cw / ww, ch / wh] * 2, dtype=np.float32)
            kept, keep = shift_and_filter_boxes(boxes, x0, y0, ww, wh, size, self.min_visible,
                                                self.min_side * ww / cw)
            d[self.boxes_key] = kept * scale
            if self.labels_key in d:
                d[self.labels_key] = _as_numpy(d[self.labels_key]).astype(np.int64).reshape(-1)[keep]
        return d


def _seed_albumentations(transform: A.BaseCompose, seed: int) -> None:
    """Give an albumentations pipeline one shared stream (``set_random_seed`` would seed every child alike)."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _to_chw(hwc: np.ndarray) -> np.ndarray:
    """(H, W, 1) or (H, W) albumentations output -> (1, H, W) float32 clipped to [0, 1]."""
    image = hwc[..., 0] if hwc.ndim == 3 else hwc
    return np.clip(image, 0.0, 1.0).astype(np.float32)[None]


class AlbumentationsImaged(Randomizable, MapTransform):
    """Apply an albumentations pipeline (intensity/geometry, no boxes) to each (1, H, W) image key independently.

    Args:
        transform: the pipeline (e.g. :func:`pretrain_augmentation`); it sees (H, W, 1) float32 images.
        keys: image keys; each gets its own random draw (two views are augmented independently).
    """

    def __init__(self, transform: A.BaseCompose, keys: str | Sequence[str] = IMAGE_KEY) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            _seed_albumentations(self.transform, int(self.R.randint(2**31)))
            hwc = np.ascontiguousarray(_as_numpy(d[key])[0], dtype=np.float32)[..., None]
            d[key] = _to_chw(self.transform(image=hwc)["image"])
        return d


class AlbumentationsBoxd(Randomizable, Transform):
    """Box-aware bridge: apply an albumentations pipeline to the image and its pascal_voc (xyxy pixel) boxes.

    The pipeline must be built with ``bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"])``
    (as :func:`detection_augmentation` does): boxes leaving the image are clipped/dropped by albumentations
    and labels follow them.

    Args:
        transform: the albumentations pipeline.
        image_key, boxes_key, labels_key: sample keys; image (1, H, W) float in [0, 1], boxes (N, 4), labels (N,).
    """

    def __init__(self, transform: A.Compose, image_key: str = IMAGE_KEY, boxes_key: str = BOXES_KEY,
                 labels_key: str = LABELS_KEY) -> None:
        params = transform.processors.get("bboxes")
        if params is None or params.params.format != "pascal_voc" or "labels" not in params.params.label_fields:
            raise ValueError("transform should be an A.Compose with bbox_params format 'pascal_voc' and "
                             "label_fields ['labels'].")
        self.transform, self.image_key, self.boxes_key, self.labels_key = transform, image_key, boxes_key, labels_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        _seed_albumentations(self.transform, int(self.R.randint(2**31)))
        hwc = np.ascontiguousarray(_as_numpy(d[self.image_key])[0], dtype=np.float32)[..., None]
        boxes = _as_numpy(d.get(self.boxes_key, np.zeros((0, 4)))).astype(np.float32).reshape(-1, 4)
        labels = _as_numpy(d.get(self.labels_key, np.zeros(len(boxes)))).astype(np.int64).reshape(-1)
        out = self.transform(image=hwc, bboxes=boxes, labels=labels)
        d[self.image_key] = _to_chw(out["image"])
        d[self.boxes_key] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        d[self.labels_key] = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return d


def _intensity(strength: float) -> list[A.BasicTransform]:
    """Mild exposure / detector variation: brightness-contrast, gamma, noise, slight blur."""
    return [A.RandomBrightnessContrast(brightness_limit=0.15 * strength, contrast_limit=0.15 * strength, p=0.5),
            A.RandomGamma(gamma_limit=(100 - 20 * strength, 100 + 20 * strength), p=0.5),
            A.GaussNoise(std_range=(0.005, 0.02 * strength), p=0.3),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 0.8), p=0.2)]


def detection_augmentation(*, vertical_flip: bool = True, rotate: float = 7.0,
                           scale: tuple[float, float] = (0.9, 1.1), intensity: bool = True,
                           min_visibility: float = 0.5) -> A.Compose:
    """Default box-aware augmentation for caries detection (use with :class:`AlbumentationsBoxd`).

    Horizontal flip (left/right mirror), optional vertical flip (upper/lower arch mirror), a small affine
    (rotation within ``±rotate`` degrees, isotropic ``scale``; boxes take the rotated box's bounding box) and
    mild intensity changes.

    Args:
        vertical_flip: include a vertical flip (p = 0.5).
        rotate: maximum rotation in degrees (>= 0).
        scale: scale range of the affine.
        intensity: include the intensity transforms.
        min_visibility: boxes keeping less of their area after the affine are dropped, in [0, 1].
    """
    if rotate < 0:
        raise ValueError(f"rotate should be >= 0, got {rotate}.")
    if not 0.0 <= min_visibility <= 1.0:
        raise ValueError(f"min_visibility should be in [0, 1], got {min_visibility}.")
    geometric: list[A.BasicTransform] = [A.HorizontalFlip(p=0.5)]
    if vertical_flip:
        geometric.append(A.VerticalFlip(p=0.5))
    geometric.append(A.Affine(rotate=(-rotate, rotate), scale=scale, border_mode=0, fill=0, p=0.5))
    return A.Compose([*geometric, *(_intensity(1.0) if intensity else [])],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                              min_visibility=min_visibility, clip=True))


def pretrain_augmentation(*, strength: float = 1.0, flips: bool = True) -> A.Compose:
    """Intensity augmentation for masked-image-model pretraining (use with :class:`AlbumentationsImaged`).

    Args:
        strength: scales brightness/contrast/gamma/noise ranges, in (0, 2].
        flips: include horizontal and vertical flips.
    """
    if not 0.0 < strength <= 2.0:
        raise ValueError(f"strength should be in (0, 2], got {strength}.")
    flip = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)] if flips else []
    return A.Compose([*flip, *_intensity(strength)])


class ToGreyTensord(MapTransform):
    """End of a pipeline: images to contiguous torch float32 (1, H, W) in [0, 1], boxes float32, labels int64.

    Args:
        keys: image keys (missing ones skipped).
        boxes_key, labels_key: converted when present.
    """

    def __init__(self, keys: str | Sequence[str] = IMAGE_KEY, boxes_key: str = BOXES_KEY,
                 labels_key: str = LABELS_KEY) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.boxes_key, self.labels_key = boxes_key, labels_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(np.ascontiguousarray(_as_numpy(d[key]), dtype=np.float32))
            if image.ndim == 2:
                image = image[None]
            d[key] = image.clamp(0.0, 1.0)  # not in place: the array may be a cache entry
        if self.boxes_key in d:
            d[self.boxes_key] = torch.as_tensor(_as_numpy(d[self.boxes_key]), dtype=torch.float32).reshape(-1, 4)
        if self.labels_key in d:
            d[self.labels_key] = torch.as_tensor(_as_numpy(d[self.labels_key]), dtype=torch.int64).reshape(-1)
        return d
