"""Checkpoint -> :class:`Predictor`: whole-radiograph caries detection for the CLI and the service.

A :class:`Predictor` loads a model once (a fine-tuning ``.ckpt`` or a model bundle, see below), picks the device
(CUDA when present, else CPU) and precision (CUDA: bf16 autocast, fp16 where bf16 is unsupported; CPU: fp32),
and runs tiled inference (:mod:`dentalmim.inference.tiling`: tiles of the training crop size, 25 % overlap,
``tile_batch_size`` tiles per forward pass, ``torch.inference_mode``) on an (H, W) float image in [0, 1] or a
DICOM file. It returns a :class:`Prediction` in original pixels; :meth:`Prediction.to_findings` adds millimetres.
A model fine-tuned with ``max_spacing_mm`` (:mod:`dentalmim.data.spacing`) upsamples images with coarser pixels to
that spacing before tiling; for an image without a spacing it cannot, and the prediction's warnings say so.

Operating point: boxes are reported when their score is >= ``score_threshold``, chosen on validation data after
fine-tuning (:func:`select_operating_point`: the highest threshold reaching the best lesion sensitivity at <= 1
false positive per image) and stored with the model; ``image_threshold`` (Youden's J on validation
image-level probabilities) decides ``caries_present``. Models without a validation pass get 0.3 / 0.5.

Model bundle (:func:`save_model_bundle`): ``NAME.safetensors`` (detector weights; the metadata is also embedded)
plus ``NAME.json`` = ``{"format": "dentalmim-detector", "format_version": 1, "version", "detector": <config>,
"class_names", "tile_size", "tile_overlap", "max_spacing_mm" (null: all native), "nms_iou",
"max_detections", "score_threshold", "image_threshold",
"threshold_rule", "dentalmim_version", "created", ...}``: self-contained, no Lightning or training code needed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dentalmim import __version__
from dentalmim.data.spacing import SPACING_LIMIT_MM, spacing_factors, valid_spacing
from dentalmim.errors import ConfigError
from dentalmim.evaluation.metrics import EvalImage, froc_curve, youden_threshold
from dentalmim.inference.tiling import tiled_detect
from dentalmim.models.detector import CariesDetector, default_class_names
from dentalmim.training.export import CheckpointError
from dentalmim.weights import save_weights

DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_IMAGE_THRESHOLD = 0.5
THRESHOLD_RULE = ("score_threshold: highest box score threshold reaching the best validation lesion sensitivity "
                  "with <= {fp} false positives/image; image_threshold: Youden's J on validation image probabilities")
#: Validation images of each class (with / without caries) below which the image threshold is called provisional.
MIN_THRESHOLD_SUPPORT = 5
#: Metadata keys: how many validation images of each class the image threshold was chosen on.
SUPPORT_KEYS = ("threshold_val_caries_images", "threshold_val_caries_free_images")
#: Metadata key: image type (:func:`~dentalmim.data.dicom.image_type`) -> ``[caries, caries-free]`` validation
#: images of that type behind the image threshold (absent in models that predate it).
TYPE_SUPPORT_KEY = "threshold_val_image_types"
DEFAULTS_RULE = "defaults (no validation pass)"
BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION = "dentalmim-detector", 1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Prediction:
    """Detections on one radiograph, in original pixels (x along columns, y along rows).

    Attributes:
        boxes: (K, 4) float32 ``x1, y1, x2, y2``.
        scores: (K,) float32 in [0, 1], descending.
        labels: (K,) int64 class indices into ``class_names``.
        class_names: names of the classes.
        image_probability: image-level caries probability (max over tiles).
        threshold: box score threshold used.
        image_threshold: image-level operating threshold.
        model_version: version of the model that produced this.
        image_size: (H, W).
        pixel_spacing_mm: (row = y, column = x) spacing, DICOM order, when known.
        num_tiles: tiles run.
        timing_ms: ``read`` (DICOM decode), ``inference`` and ``total`` milliseconds.
        warnings: what a reader must know about the model's operating point (:func:`threshold_warnings`), and
            about this image's type (:meth:`note_image_type`).
        type_support: the model's :data:`TYPE_SUPPORT_KEY` record (empty when the model has none).
        image_type: ``panoramic`` / ``intraoral`` / another Modality code once known, else None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image_probability: float
    threshold: float
    image_threshold: float
    model_version: str
    image_size: tuple[int, int]
    pixel_spacing_mm: tuple[float, float] | None = None
    num_tiles: int = 0
    timing_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    type_support: dict[str, list[int]] = field(default_factory=dict)
    image_type: str | None = None

    def note_image_type(self, modality: str | None) -> None:
        """Record the image's type from its DICOM Modality and add the :func:`image_type_warnings` it calls for
        (idempotent)."""
        from dentalmim.data.dicom import image_type

        self.image_type = image_type(modality)
        for warning in image_type_warnings(self.type_support, self.image_type):
            if warning not in self.warnings:
                self.warnings.append(warning)

    @property
    def caries_present(self) -> bool:
        """Image-level decision: ``image_probability >= image_threshold``."""
        return self.image_probability >= self.image_threshold

    def to_findings(self, spacing_mm: tuple[float, float] | None = None) -> dict[str, Any]:
        """JSON-serialisable findings.

        Args:
            spacing_mm: (row = y, column = x) pixel spacing in mm; default :attr:`pixel_spacing_mm`.

        Returns:
            ``{"model_version", "image": {"rows", "columns", "pixel_spacing_mm"}, "image_probability",
            "image_threshold", "caries_present", "score_threshold", "findings": [{"class", "label", "score",
            "box_px": {x1, y1, x2, y2}, "box_mm": {x1, y1, x2, y2} | None}], "warnings", "timing_ms"}``; mm
            boxes use the column spacing for x and the row spacing for y; ``warnings`` (a list, usually empty)
            says when the image-level operating point rests on too little validation data.
        """
        spacing = spacing_mm if spacing_mm is not None else self.pixel_spacing_mm
        findings = []
        for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            px = dict(zip(("x1", "y1", "x2", "y2"), (round(v, 2) for v in box)))
            mm = None
            if spacing is not None:
                sy, sx = float(spacing[0]), float(spacing[1])
                mm = dict(zip(("x1", "y1", "x2", "y2"), (round(v, 4) for v in (box[0] * sx, box[1] * sy,
                                                                                box[2] * sx, box[3] * sy))))
            findings.append({"class": self.class_names[label], "label": int(label), "score": round(score, 4),
                             "box_px": px, "box_mm": mm})
        return {"model_version": self.model_version,
                "image": {"rows": self.image_size[0], "columns": self.image_size[1],
                          "pixel_spacing_mm": list(spacing) if spacing is not None else None},
                "image_probability": round(self.image_probability, 4), "image_threshold": self.image_threshold,
                "caries_present": self.caries_present, "score_threshold": self.threshold,
                "findings": findings, "warnings": list(self.warnings),
                "timing_ms": {k: round(v, 1) for k, v in self.timing_ms.items()}}


def select_operating_point(images: list[EvalImage], target_fp: float,
                           image_types: Sequence[str] | None = None) -> dict[str, Any]:
    """Operating thresholds chosen on validation predictions (the rule stored with every model).

    The box ``score_threshold`` is the highest threshold reaching the best lesion sensitivity attainable with at
    most ``target_fp`` false positives per image (FROC hit rule: centre inside the lesion box or IoU >= 0.3); the
    ``image_threshold`` maximises Youden's J of the image-level probability. Without lesions (or a sensitivity of
    0), or without both image classes, the defaults :data:`DEFAULT_SCORE_THRESHOLD` /
    :data:`DEFAULT_IMAGE_THRESHOLD` stay.

    Args:
        images: validation images with full-image predictions (low score floor, e.g. 0.05).
        target_fp: false positives per image allowed.
        image_types: the type of each image (:func:`~dentalmim.data.dicom.image_type`), optional.

    Returns:
        ``{"score_threshold": float, "image_threshold": float}`` plus the validation images of each class the
        image threshold rests on (:data:`SUPPORT_KEYS`, 0 when the default stays) and, with ``image_types``, the
        same per image type (:data:`TYPE_SUPPORT_KEY`, empty when the default stays).
    """
    out: dict[str, Any] = {"score_threshold": DEFAULT_SCORE_THRESHOLD, "image_threshold": DEFAULT_IMAGE_THRESHOLD,
                           **dict.fromkeys(SUPPORT_KEYS, 0)}
    if any(len(im.gt_boxes) for im in images):
        fppi, sens, thr = froc_curve(images)
        ok = np.flatnonzero((fppi <= target_fp) & np.isfinite(thr))
        if len(ok) and sens[ok].max() > 0:
            best = ok[sens[ok] >= sens[ok].max()]
            out["score_threshold"] = float(thr[best].max())
    prob = np.array([im.image_prob for im in images])
    truth = np.array([im.has_caries for im in images])
    image_thr = youden_threshold(prob, truth) if len(set(truth.tolist())) == 2 else float("nan")
    if image_types is not None:
        if len(image_types) != len(images):
            raise ValueError(f"image_types should have one entry per image ({len(images)}), got {len(image_types)}.")
        out[TYPE_SUPPORT_KEY] = {}
    if math.isfinite(image_thr):
        out["image_threshold"] = image_thr
        out[SUPPORT_KEYS[0]], out[SUPPORT_KEYS[1]] = int(truth.sum()), len(truth) - int(truth.sum())
        for kind, has_caries in zip(image_types or (), truth.tolist()):
            counts = out[TYPE_SUPPORT_KEY].setdefault(kind, [0, 0])
            counts[0 if has_caries else 1] += 1
    return out


def threshold_warnings(meta: dict[str, Any]) -> list[str]:
    """Plain-language warnings about how well a model's operating point is supported by validation data.

    Args:
        meta: model metadata (:attr:`Predictor.metadata`).

    Returns:
        One sentence per problem: the thresholds are defaults (no validation pass, or validation images of one
        class only), or the image threshold rests on fewer than :data:`MIN_THRESHOLD_SUPPORT` validation images of
        a class. Empty otherwise, and for models that predate the record of :data:`SUPPORT_KEYS`.
    """
    threshold = float(meta.get("image_threshold", DEFAULT_IMAGE_THRESHOLD))
    pos, neg = (int(meta.get(k, -1)) for k in SUPPORT_KEYS)
    if meta.get("threshold_rule") == DEFAULTS_RULE or pos == neg == 0:
        return [f"image_threshold {threshold:.3f} is the default, not chosen on validation images with and without "
                "caries: the image-level operating point (sensitivity, specificity, PPV, NPV) is arbitrary."]
    if min(pos, neg) < 0 or min(pos, neg) >= MIN_THRESHOLD_SUPPORT:
        return []
    return [f"image_threshold {threshold:.3f} was chosen on only {pos} caries and {neg} caries-free validation "
            f"image(s) (fewer than {MIN_THRESHOLD_SUPPORT} of a class): treat the image-level operating point "
            "(sensitivity, specificity, PPV, NPV) as provisional and re-choose it on more validation data; the "
            "threshold-free metrics (AUROC, FROC, AP) are unaffected."]


def image_type_warnings(type_support: dict[str, Any], kind: str | None) -> list[str]:
    """A warning when the image threshold saw fewer than :data:`MIN_THRESHOLD_SUPPORT` validation images of a class
    of this image's type (panoramic, intraoral, ...).

    Args:
        type_support: the model's :data:`TYPE_SUPPORT_KEY` record; empty (older models, default thresholds): no
            warning, :func:`threshold_warnings` covers those.
        kind: the image's type; None or ``unknown`` (no Modality): no warning.

    Returns:
        At most one sentence. A model's image probability can rank one image type and not another (it happened
        on the demo's panoramics, README), so an overall validation set of enough images is not enough.
    """
    if not type_support or kind in (None, "unknown"):
        return []
    pos, neg = (int(v) for v in type_support.get(kind, (0, 0)))
    if min(pos, neg) >= MIN_THRESHOLD_SUPPORT:
        return []
    return [f"{kind} image: the image threshold was chosen with only {pos} {kind} validation image(s) with caries "
            f"and {neg} without (fewer than {MIN_THRESHOLD_SUPPORT} of a class), so the image-level call on {kind} "
            f"images is unverified; read the lesion boxes, and validate the model on more {kind} images."]


def _metadata_defaults(detector: CariesDetector) -> dict[str, Any]:
    return {"detector": detector.config, "class_names": default_class_names(detector.num_classes),
            "tile_size": detector.config["encoder"]["img_size"], "tile_overlap": 0.25, "max_spacing_mm": None,
            "nms_iou": 0.5, "max_detections": 100, "score_threshold": DEFAULT_SCORE_THRESHOLD,
            "image_threshold": DEFAULT_IMAGE_THRESHOLD, "threshold_rule": DEFAULTS_RULE,
            "dentalmim_version": __version__}  # fmt: skip


def _read_ckpt(path: Path) -> tuple[CariesDetector, dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a readable checkpoint"
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}).") from None
    meta = ckpt.get("dentalmim") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "detector" not in meta:
        raise CheckpointError(f"{path}: not a dentalmim fine-tuning checkpoint (no 'dentalmim' detector metadata).")
    detector = CariesDetector.from_config(meta["detector"])
    prefix = "detector."
    detector.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    version = meta.get("version") or f"{path.stem}-e{ckpt.get('epoch', 0)}-s{ckpt.get('global_step', 0)}"
    return detector, {**meta, "version": version}


def _read_bundle(path: Path) -> tuple[CariesDetector, dict[str, Any]]:
    """A model bundle's detector and metadata; :class:`CheckpointError` for anything that is not one."""
    json_path = path.with_suffix(".json")
    try:
        if json_path.is_file():
            meta = json.loads(json_path.read_text())
        else:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("dentalmim_bundle", "null") or "null")
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise CheckpointError(f"{path}: not a dentalmim model bundle ({json_path.name} missing or foreign).")
        detector = CariesDetector.from_config(meta["detector"])
        detector.load_state_dict(load_file(str(path)))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed file or metadata: any failure means "not a bundle"
        raise CheckpointError(f"{path}: not a dentalmim model bundle ({type(exc).__name__}).") from None
    return detector, meta


def load_model(path: str | Path) -> tuple[CariesDetector, dict[str, Any]]:
    """Load a fine-tuning ``.ckpt`` or a model bundle ``.safetensors``.

    Returns:
        ``(detector in eval mode on CPU, metadata)`` with every key of the bundle format filled in.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file.")
    if path.suffix == ".safetensors":
        detector, meta = _read_bundle(path)
    else:
        detector, meta = _read_ckpt(path)
    meta = {**_metadata_defaults(detector), **meta}
    meta.setdefault("version", path.stem)
    return detector.eval(), meta


def save_model_bundle(source: Any, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write a self-contained model bundle (format in the module docstring).

    Args:
        source: a ``FinetuneModule`` (thresholds and class names included), a :class:`CariesDetector` (defaults
            unless ``metadata`` gives them) or the path of a fine-tuning ``.ckpt``.
        path: destination ``.safetensors``; the JSON goes next to it.
        metadata: extra or overriding keys (e.g. ``version``, ``class_names``, ``score_threshold``).

    Returns:
        The safetensors path.
    """
    if isinstance(source, (str, Path)):
        detector, meta = load_model(source)
    elif hasattr(source, "model_metadata"):
        detector, meta = source.detector, {**_metadata_defaults(source.detector), **source.model_metadata()}
    elif isinstance(source, CariesDetector):
        detector, meta = source, _metadata_defaults(source)
    else:
        raise ConfigError(f"source should be a FinetuneModule, CariesDetector or .ckpt path, got {type(source)}.")
    path = Path(path)
    meta = {**meta, **(metadata or {}), "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
            "detector": detector.config, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    meta.setdefault("version", path.stem)
    if len(meta["class_names"]) != detector.num_classes:
        raise ConfigError(f"class_names should have {detector.num_classes} names, got {meta['class_names']}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in detector.state_dict().items()}
    save_weights(state, path, metadata={"format": "pt", "dentalmim_bundle": json.dumps(meta)})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without CUDA raises :class:`ConfigError`."""
    if device not in DEVICES:
        raise ConfigError(f"device should be one of {DEVICES}, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device should be 'cpu' or 'auto' on this machine (no CUDA), got 'cuda'.")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 support, ``fp16`` on other CUDA devices, ``fp32`` on CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision should be one of {PRECISIONS}, got {precision!r}.")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _as_image(image: np.ndarray) -> np.ndarray:
    """Check a caller's (H, W) image: finite floats in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"image should be a 2-D (H, W) array, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image should be float in [0, 1] (e.g. read_dicom(...).pixels), got dtype {arr.dtype}.")
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"image should hold finite values in [0, 1], got range [{lo}, {hi}].")
    return arr


class Predictor:
    """Whole-image caries detection with a loaded model (thread-compatible for sequential calls).

    Args:
        detector: the detector (moved to ``device``, eval mode).
        metadata: model metadata (see :func:`load_model`): class names, tiling, thresholds, version.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (autocast on the chosen device).
        tile_batch_size: tiles per forward pass.
    """

    def __init__(self, detector: CariesDetector, metadata: dict[str, Any], *, device: str = "auto",
                 precision: str = "auto", tile_batch_size: int = 8) -> None:
        if tile_batch_size < 1:
            raise ConfigError(f"tile_batch_size should be >= 1, got {tile_batch_size}.")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.metadata = {**_metadata_defaults(detector), "version": "unversioned", **metadata}
        self.detector = detector.to(self.device).eval()
        self.tile_batch_size = tile_batch_size

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                        tile_batch_size: int = 8) -> Predictor:
        """Load a fine-tuning ``.ckpt`` or a model bundle ``.safetensors`` once (see :func:`load_model`)."""
        detector, meta = load_model(path)
        return cls(detector, meta, device=device, precision=precision, tile_batch_size=tile_batch_size)

    @property
    def version(self) -> str:
        """Model version reported with every prediction."""
        return str(self.metadata["version"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def warnings(self) -> list[str]:
        """Operating-point warnings carried by every prediction (:func:`threshold_warnings` of the metadata)."""
        return threshold_warnings(self.metadata)

    @property
    def score_threshold(self) -> float:
        """Default box score threshold (chosen on validation data)."""
        return float(self.metadata["score_threshold"])

    @property
    def image_threshold(self) -> float:
        """Default image-level threshold (chosen on validation data)."""
        return float(self.metadata["image_threshold"])

    @property
    def max_spacing_mm(self) -> float | None:
        """Coarsest pixel spacing (mm) the model reads images at (coarser ones are upsampled); None = all native."""
        value = self.metadata.get("max_spacing_mm")
        return None if value is None else float(value)

    def spacing_factors(self, spacing_mm: Sequence[float] | None) -> tuple[float, float]:
        """Upsampling factors ``(fy, fx)`` applied before tiling an image of (row, column) ``spacing_mm``."""
        return spacing_factors(spacing_mm, self.max_spacing_mm)

    def spacing_warnings(self, spacing_mm: Sequence[float] | None) -> list[str]:
        """A warning when the model has a maximum spacing and this image's spacing is unknown or implausible."""
        if self.max_spacing_mm is None or valid_spacing(spacing_mm) is not None:
            return []
        return [f"The image has no usable pixel spacing (missing, or beyond {SPACING_LIMIT_MM:g} mm), so it was read "
                f"at its native resolution; this model upsamples "
                f"images with pixels coarser than {self.max_spacing_mm:g} mm, so if this one is coarse (a panoramic), "
                f"small lesions may be missed."]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def _load(self, image: np.ndarray | str | Path) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
        """Pixels, spacing and Modality (None for arrays)."""
        if isinstance(image, (str, Path)):
            from dentalmim.data.dicom import read_dicom

            dicom = read_dicom(image)
            return dicom.pixels, dicom.meta.pixel_spacing_mm, dicom.meta.modality
        return _as_image(image), None, None

    @property
    def type_support(self) -> dict[str, list[int]]:
        """Validation images per image type behind the image threshold (:data:`TYPE_SUPPORT_KEY`; may be empty)."""
        return {str(k): [int(x) for x in v] for k, v in (self.metadata.get(TYPE_SUPPORT_KEY) or {}).items()}

    def predict(self, image: np.ndarray | str | Path, *, threshold: float | None = None,
                pixel_spacing_mm: Sequence[float] | None = None) -> Prediction:
        """Detect caries on one radiograph.

        Args:
            image: (H, W) float array in [0, 1] (x along columns), or a DICOM file path.
            threshold: box score threshold; None = the model's validated :attr:`score_threshold`.
            pixel_spacing_mm: (row, column) spacing of an array image (a DICOM file's own spacing is used): it
                sets the millimetres of the findings and, for a model with ``max_spacing_mm``, the upsampling.

        Returns:
            :class:`Prediction` in original pixels (spacing filled in when known).
        """
        start = time.perf_counter()
        thr = self.score_threshold if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise ConfigError(f"threshold should be in [0, 1], got {thr}.")
        pixels, spacing, modality = self._load(image)
        if spacing is None and pixel_spacing_mm is not None:
            spacing = valid_spacing(pixel_spacing_mm)  # a malformed or implausible spacing counts as unknown
        read_ms = (time.perf_counter() - start) * 1e3
        result = self._run(pixels, thr, self.spacing_factors(spacing))
        total_ms = (time.perf_counter() - start) * 1e3
        pred = Prediction(
            boxes=result.boxes.float().cpu().numpy(), scores=result.scores.float().cpu().numpy(),
            labels=result.labels.cpu().numpy().astype(np.int64), class_names=self.class_names,
            image_probability=result.image_prob, threshold=thr, image_threshold=self.image_threshold,
            model_version=self.version, image_size=(int(pixels.shape[0]), int(pixels.shape[1])),
            pixel_spacing_mm=tuple(spacing) if spacing is not None else None, num_tiles=result.num_tiles,
            warnings=self.warnings + self.spacing_warnings(spacing), type_support=self.type_support,
            timing_ms={"read": read_ms, "inference": total_ms - read_ms, "total": total_ms})
        if modality is not None:
            pred.note_image_type(modality)
        return pred

    @torch.inference_mode()
    def _run(self, pixels: np.ndarray, threshold: float, factors: tuple[float, float] = (1.0, 1.0)) -> Any:
        meta = self.metadata
        tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        fn = functools.partial(self.detector.detect, score_threshold=threshold, nms_iou=meta["nms_iou"],
                               max_detections=meta["max_detections"])
        with self._autocast():
            return tiled_detect(fn, tensor, tile_size=int(meta["tile_size"]), overlap=float(meta["tile_overlap"]),
                                multiple=self.detector.patch_size, batch_size=self.tile_batch_size,
                                factors=factors, max_detections=int(meta["max_detections"]))

    def predict_batch(self, images: Sequence[np.ndarray | str | Path], *,
                      threshold: float | None = None) -> list[Prediction]:
        """:meth:`predict` for several radiographs (each image's tiles are batched; images run one after another,
        since their tile grids differ)."""
        return [self.predict(image, threshold=threshold) for image in images]
