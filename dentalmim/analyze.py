"""``dentalmim analyze``: compare what pretrained encoders learned, layer by layer, on your own radiographs.

Steps: read radiographs (a folder of DICOMs, or a COCO file whose boxes give caries / no-caries labels), cut
fixed-size crops at native resolution (never a global downsize), run every encoder over them with
:class:`~dentalmim.evaluation.analysis_capture.LayerRecorder`, and compute per layer the measures of
:mod:`dentalmim.evaluation.analysis`. Outputs in ``OUT``: ``analysis.json`` (every number), ``report.html``
(self-contained, plots side by side) and the plots as PNG files.

Crop labels (COCO input only): a crop is *caries* when the centre of a lesion box lies inside it. Images with no
annotation only give caries-free crops; for an image with lesions the first crop is centred on a lesion (with a
random shift), the others are random. Probes are cross-validated over patients (``images[].patient_id``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dentalmim.errors import ConfigError, DicomReadError
from dentalmim.evaluation.analysis import (
    attention_distance,
    attention_nmi,
    fourier_profile,
    patch_attention,
    probe_scores,
)
from dentalmim.evaluation.analysis_capture import run_layers

__all__ = ["AnalysisResult", "CropSet", "analyze_encoders", "encoder_names", "load_crops"]


@dataclass
class CropSet:
    """Native-resolution crops of the analysed radiographs.

    Attributes:
        images: (N, S, S) float32 crops in [0, 1] (zero padding where an image is smaller than S).
        labels: (N,) 1 = caries in the crop, 0 = none; None without labels.
        groups: patient (or file) of each crop, for patient-aware probe splits.
        spacing_mm: (N,) pixel spacing in mm (NaN where unknown).
        sources: source file of each crop.
    """

    images: np.ndarray
    labels: np.ndarray | None
    groups: list[str]
    spacing_mm: np.ndarray
    sources: list[str]


def _crop(pixels: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    out = np.zeros((size, size), dtype=np.float32)
    piece = pixels[max(top, 0): top + size, max(left, 0): left + size]
    out[max(-top, 0): max(-top, 0) + piece.shape[0], max(-left, 0): max(-left, 0) + piece.shape[1]] = piece
    return out


def _corner(centre: float, extent: int, size: int) -> int:
    """Top/left of a ``size`` window centred on ``centre``, kept inside an image of ``extent`` when it fits."""
    start = round(centre - size / 2)
    return max(0, min(start, extent - size)) if extent >= size else (extent - size) // 2


def _windows(shape: tuple[int, int], centres: list[tuple[float, float]], n: int, size: int,
             rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` crop corners: the first centred on a lesion (shifted by up to size / 4) or the image, then random."""
    h, w = shape
    out = []
    for i in range(n):
        if i == 0:
            cy, cx = centres[rng.integers(len(centres))] if centres else (h / 2, w / 2)
            shift = rng.uniform(-size / 4, size / 4, size=2) if centres else np.zeros(2)
            out.append((_corner(cy + shift[0], h, size), _corner(cx + shift[1], w, size)))
        else:
            out.append((int(rng.integers(0, max(h - size, 0) + 1)), int(rng.integers(0, max(w - size, 0) + 1))))
    return out


def _spacing(meta: Any) -> float:
    spacing = getattr(meta, "pixel_spacing_mm", None)
    return float(np.mean(spacing)) if spacing else float("nan")


def _coco_items(path: Path) -> list[tuple[Path, str, list[tuple[float, float]]]]:
    from dentalmim.data.coco import CocoDataset

    coco = CocoDataset.load(path)
    by_image = coco.annotations_by_image()
    items = []
    for im in coco.images:
        centres = [(a.bbox[1] + a.bbox[3] / 2, a.bbox[0] + a.bbox[2] / 2) for a in by_image.get(im.id, [])]
        items.append((coco.image_path(im), str(im.patient_id or im.id), centres))
    return items


def load_crops(data: str | Path, *, crop_size: int = 224, crops_per_image: int = 2, max_images: int | None = 64,
               seed: int = 0) -> CropSet:
    """Read radiographs and cut native-resolution crops (see the module docstring for the labels).

    Args:
        data: a folder of DICOM files (searched recursively; unreadable files are skipped) or a COCO ``.json``.
        crop_size: crop side S in pixels.
        crops_per_image: crops per radiograph.
        max_images: read at most this many radiographs (the first in sorted / COCO order); None: all.
        seed: crop positions.

    Returns:
        The crops.

    Raises:
        ConfigError: ``data`` is neither, or no radiograph could be read.
    """
    from dentalmim.data.dicom import read_dicom

    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".json":
        items, labelled = _coco_items(data), True
    elif data.is_dir():
        items = [(p, p.stem, []) for p in sorted(data.rglob("*")) if p.is_file()]
        labelled = False
    else:
        raise ConfigError(f"data should be a folder of DICOM files or a COCO .json file, got {str(data)!r}.")
    rng = np.random.default_rng(seed)
    crops, labels, groups, spacing, sources = [], [], [], [], []
    for path, group, centres in items:
        if max_images is not None and len(set(sources)) >= max_images:
            break
        try:
            image = read_dicom(path)
        except DicomReadError:
            continue
        for top, left in _windows(image.pixels.shape, centres, crops_per_image, crop_size, rng):
            crops.append(_crop(image.pixels, top, left, crop_size))
            labels.append(int(any(top <= cy < top + crop_size and left <= cx < left + crop_size for cy, cx in centres)))
            groups.append(group)
            spacing.append(_spacing(image.meta))
            sources.append(str(path))
    if not crops:
        raise ConfigError(f"data should hold readable DICOM radiographs, found none in {str(data)!r}.")
    return CropSet(np.stack(crops), np.array(labels) if labelled else None, groups, np.array(spacing), sources)


def encoder_names(paths: Sequence[str | Path]) -> dict[str, Path]:
    """Unique display names for encoder files: the file stem, or ``parent/stem`` when stems repeat."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
    return dict(zip(names, paths, strict=True))


@dataclass
class _Accumulator:
    """Per-layer running measures of one encoder."""

    depth: int
    dist_px: list[list[torch.Tensor]] = field(default_factory=list)
    dist_mm: list[list[torch.Tensor]] = field(default_factory=list)
    nmi: list[list[torch.Tensor]] = field(default_factory=list)
    fourier: list[list[tuple[int, torch.Tensor]]] = field(default_factory=list)
    features: list[list[torch.Tensor]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("dist_px", "dist_mm", "nmi", "fourier", "features"):
            setattr(self, name, [[] for _ in range(self.depth)])


def _analyse_batch(acc: _Accumulator, outputs: Any, grid: tuple[int, int], patch: int,
                   spacing: torch.Tensor) -> None:
    prefix = outputs.tokens[0].shape[1] - grid[0] * grid[1]
    for i, (tokens, attn) in enumerate(zip(outputs.tokens, outputs.attention, strict=True)):
        pa = patch_attention(attn.cpu(), prefix)
        dist = attention_distance(pa, grid, patch)  # (B, heads)
        acc.dist_px[i].append(dist)
        acc.dist_mm[i].append(dist * spacing[:, None])
        acc.nmi[i].append(attention_nmi(pa))
        patches = tokens[:, prefix:].float().cpu()
        acc.fourier[i].append((patches.shape[0], fourier_profile(patches, grid)))
        acc.features[i].append(patches.mean(dim=1))


def _nanmean(x: torch.Tensor) -> float | None:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else None


def _layer_record(acc: _Accumulator, i: int, crops: CropSet, n_folds: int, k: int, seed: int) -> dict[str, Any]:
    dist, dist_mm, nmi = (torch.cat(getattr(acc, n)[i]) for n in ("dist_px", "dist_mm", "nmi"))
    total = sum(n for n, _ in acc.fourier[i])
    profile = sum(n * p for n, p in acc.fourier[i]) / total
    upper = profile[profile.numel() // 2:]
    record = {
        "layer": i + 1, "attention_distance_px": float(dist.mean()), "attention_distance_mm": _nanmean(dist_mm),
        "attention_distance_px_per_head": dist.mean(dim=0).tolist(), "attention_nmi": float(nmi.mean()),
        "attention_nmi_per_head": nmi.mean(dim=0).tolist(),
        "fourier_high_freq": _nanmean(upper), "fourier_profile": [None if not np.isfinite(v) else float(v)
                                                                  for v in profile.tolist()],
    }  # fmt: skip
    if crops.labels is not None:
        feats = torch.cat(acc.features[i]).numpy()
        scores = probe_scores(feats, crops.labels, crops.groups, n_folds=n_folds, k=k, seed=seed)
        record.update({"linear_probe_acc": scores["linear"], "knn_acc": scores["knn"], "probe_folds": scores["folds"]})
    else:
        record.update({"linear_probe_acc": None, "knn_acc": None, "probe_folds": 0})
    return record


def _attention_maps(outputs: Any, grid: tuple[int, int], n: int) -> np.ndarray:
    """(n, depth, 2, gh, gw): per crop and layer, the head-mean attention of the cls token and of the centre patch."""
    prefix = outputs.tokens[0].shape[1] - grid[0] * grid[1]
    centre = prefix + (grid[0] // 2) * grid[1] + grid[1] // 2
    maps = []
    for attn in outputs.attention:
        a = attn[:n].float().mean(dim=1).cpu()  # (n, N, N)
        maps.append(torch.stack([a[:, 0, prefix:], a[:, centre, prefix:]], dim=1).reshape(-1, 2, *grid))
    return torch.stack(maps, dim=1).numpy()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def analyze_encoder(path: str | Path, crops: CropSet, *, batch_size: int = 16, n_attention_images: int = 4,
                    n_folds: int = 5, k: int = 5, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """All per-layer measures of one exported encoder on ``crops`` (the ``encoders.<name>`` entry of the JSON).

    The entry also holds ``"_attention_maps"``: an array for the report (see :func:`_attention_maps`), which
    :func:`analyze_encoders` removes before writing the JSON.
    """
    from dentalmim.training.export import load_encoder

    dev = _resolve_device(device)
    encoder = load_encoder(path, map_location=dev)
    patch, size = encoder.patch_size, crops.images.shape[-1]
    if size % patch:
        raise ConfigError(f"crop_size should be a multiple of the patch size {patch} of {path}, got {size}.")
    grid = (size // patch, size // patch)
    acc, maps, start = _Accumulator(len(encoder.blocks)), None, time.perf_counter()
    for lo in range(0, len(crops.images), batch_size):
        batch = torch.from_numpy(crops.images[lo: lo + batch_size]).unsqueeze(1).to(dev)
        outputs = run_layers(encoder, batch)
        _analyse_batch(acc, outputs, grid, patch, torch.from_numpy(crops.spacing_mm[lo: lo + batch_size]).float())
        if maps is None:
            maps = _attention_maps(outputs, grid, n_attention_images)
    source = {}
    config_path = Path(path).with_suffix(".json")
    if config_path.is_file():
        source = json.loads(config_path.read_text()).get("source", {})
    layers = [_layer_record(acc, i, crops, n_folds, k, seed) for i in range(acc.depth)]
    return {"path": str(path), "config": encoder.config, "objective": source.get("objective"), "grid": list(grid),
            "seconds": time.perf_counter() - start, "layers": layers, "_attention_maps": maps}


@dataclass(frozen=True)
class AnalysisResult:
    """The numbers (as in ``analysis.json``) and the written files (``json``, ``html`` and each plot PNG)."""

    payload: dict[str, Any]
    paths: dict[str, Path]

    def format(self) -> str:
        """One line per encoder: last-layer attention distance, NMI and probe accuracy."""
        lines = []
        for name, enc in self.payload["encoders"].items():
            last = enc["layers"][-1]
            probe = last["linear_probe_acc"]
            lines.append(f"{name}: last layer attention distance {last['attention_distance_px']:.1f} px, "
                         f"NMI {last['attention_nmi']:.3f}, linear probe "
                         f"{'n/a' if probe is None else f'{probe:.3f}'}")
        return "\n".join(lines + [f"report: {self.paths['html']}"])


def _check_settings(out: str | Path, *, crop_size: int, crops_per_image: int, max_images: int, batch_size: int,
                    n_attention_images: int, n_folds: int, seed: int, device: str) -> None:
    """Settings that would fail (or silently change) the analysis, refused before any crop is read."""
    for name, value, low in (("crop_size", crop_size, 16), ("crops_per_image", crops_per_image, 1),
                             ("max_images", max_images, 1), ("batch_size", batch_size, 1),
                             ("n_attention_images", n_attention_images, 0), ("n_folds", n_folds, 2),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} should be an integer >= {low}, got {value!r}.")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"out should be a folder, got the file {out}.")
    if device not in ("cpu", "cuda", "auto") and not str(device).startswith("cuda:"):
        raise ConfigError(f"device should be cpu, cuda or auto, got {device!r}.")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but no CUDA GPU is available.")


def analyze_encoders(encoders: Sequence[str | Path] | Mapping[str, str | Path], data: str | Path,
                     out: str | Path, *, crop_size: int = 224, crops_per_image: int = 2,
                     max_images: int | None = 64, batch_size: int = 16, n_attention_images: int = 4,
                     n_folds: int = 5, k: int = 5, seed: int = 0, device: str = "cpu") -> AnalysisResult:
    """Analyse every encoder on the same crops and write ``analysis.json``, ``report.html`` and plots to ``out``.

    Args:
        encoders: exported ``.safetensors`` encoders (names from the file names), or name -> path.
        data: folder of DICOMs or COCO file (labels for the probes).
        out: output folder.
        crop_size: native-resolution crop side in pixels (a multiple of every encoder's patch size).
        crops_per_image: crops per radiograph.
        max_images: radiographs read at most (None: all).
        batch_size: crops per forward pass.
        n_attention_images: crops shown in the attention-map figures.
        n_folds: patient-grouped cross-validation folds of the probes.
        k: neighbours of the k-NN probe.
        seed: crop positions and folds.
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        The numbers and the written paths.
    """
    from dentalmim import __version__
    from dentalmim.evaluation.analysis_report import write_analysis_report

    named = dict(encoders) if isinstance(encoders, Mapping) else encoder_names(list(encoders))
    if not named:
        raise ConfigError("encoders should name at least one .safetensors file, got none.")
    for name, path in named.items():
        if not Path(path).is_file():
            raise ConfigError(f"encoder {name} should be an existing .safetensors file, got {str(path)!r}.")
    _check_settings(out, crop_size=crop_size, crops_per_image=crops_per_image, max_images=max_images,
                    batch_size=batch_size, n_attention_images=n_attention_images, n_folds=n_folds, seed=seed,
                    device=device)
    from dentalmim.training.export import encoder_config

    for name, path in named.items():  # every encoder is readable and fits the crops before any analysis starts
        patch = int(encoder_config(path).get("patch_size", 16))
        if crop_size % patch:
            raise ConfigError(f"crop_size should be a multiple of the patch size {patch} of encoder {name}, "
                              f"got {crop_size}.")
    crops = load_crops(data, crop_size=crop_size, crops_per_image=crops_per_image, max_images=max_images, seed=seed)
    results = {name: analyze_encoder(path, crops, batch_size=batch_size, n_attention_images=n_attention_images,
                                     n_folds=n_folds, k=k, seed=seed, device=device)
               for name, path in named.items()}  # fmt: skip
    maps = {name: r.pop("_attention_maps") for name, r in results.items()}
    labels = crops.labels
    payload = {
        "dentalmim_version": __version__,
        "data": {"source": str(data), "crops": len(crops.images), "images": len(set(crops.sources)),
                 "patients": len(set(crops.groups)), "crop_size": crop_size,
                 "caries_crops": None if labels is None else int(labels.sum()),
                 "spacing_known": int(np.isfinite(crops.spacing_mm).sum())},
        "settings": {"crops_per_image": crops_per_image, "max_images": max_images, "n_folds": n_folds, "k": k,
                     "seed": seed},
        "encoders": results,
    }  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_analysis_report(payload, maps, crops.images[:n_attention_images], out)
    return AnalysisResult(payload, paths)
