"""Synthetic dental radiographs with caries lesions: the project's embedded default data.

``generate_image`` draws one bitewing-, periapical- or panoramic-like radiograph as an attenuation image (teeth
with enamel, dentin, pulp and roots in trabecular alveolar bone, restorations, carious lesions), rotates it
slightly, passes it through a detector model (quantum and electronic noise, blur, vignetting, heel effect, log
and windowing) and returns the display image with exact lesion boxes computed from the final lesion masks.
``generate_corpus`` writes labeled and unlabeled corpora as DICOM files plus COCO annotations;
``image_rng(seed, split, index)`` regenerates the ground truth of any corpus file; ``render_preview`` draws the
README pictures. Helpers live in ``synth_*`` modules (anatomy, tooth rendering, lesions, restorations, layouts,
canvas and detector, DICOM formats, corpus planning, previews).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from tqdm.auto import tqdm

from dentalmim import __version__
from dentalmim.data.encode import SUPPORTED_TRANSFER_SYNTAXES, save_dicom
from dentalmim.data.synth_canvas import Canvas, Exposure, draw_tooth, expose, lesion_boxes, rotate_crop
from dentalmim.data.synth_corpus import (CARIES_CATEGORY, IMAGES_PER_PATIENT, ImagePlan, coco_annotations, coco_image,
                                         image_rng, plan_split)
from dentalmim.data.synth_dicom import DicomIds, FileFormat, build_dataset
from dentalmim.data.synth_intraoral import bitewing_scene, draw_alveolar, periapical_scene
from dentalmim.data.synth_lesions import Lesion
from dentalmim.data.synth_preview import render_preview as _render_preview
from dentalmim.data.synth_scene import BONE_LOSS_PROBABILITY, BoneParams, Scene, assign_findings
from dentalmim.errors import ConfigError

__all__ = [
    "IMAGE_KINDS", "ImageKind", "SynthImage", "SynthSummary", "generate_corpus", "generate_image", "image_rng",
    "image_to_dataset", "render_preview",
]

ImageKind = Literal["bitewing", "periapical", "panoramic"]
#: Image kinds :func:`generate_image` draws.
IMAGE_KINDS: tuple[str, ...] = ("bitewing", "periapical", "panoramic")
#: Largest accepted ``scale``.
MAX_SCALE = 4.0
#: Range of the probability that a tooth is restored (drawn per image).
RESTORED_FRACTION = (0.0, 0.35)
#: Smallest side openjpeg encodes.
_J2K_MIN_SIDE = 32


@dataclass
class SynthImage:
    """One synthetic radiograph with its ground truth.

    Attributes:
        kind: "bitewing" | "periapical" | "panoramic".
        pixels: (H, W) float32 display image in [0, 1], bright = dense.
        boxes: (N, 4) float32 tight lesion boxes x1, y1, x2, y2 (x2 = last column + 1).
        lesions: the N lesions, in box order (tooth, site, depth class, ICCMS score).
        labels: (H, W) uint16 lesion masks: pixel value i + 1 marks lesion i, 0 = none.
        tooth_mask: (H, W) bool, True on teeth.
        teeth: FDI numbers of the teeth whose crown centre is in the image.
        spacing_mm: pixel spacing (mm) at the detector.
    """

    kind: str
    pixels: np.ndarray
    boxes: np.ndarray
    lesions: list[Lesion]
    labels: np.ndarray
    tooth_mask: np.ndarray
    teeth: list[int]
    spacing_mm: float


def _check_args(kind: str, scale: float) -> None:
    if kind not in IMAGE_KINDS:
        raise ConfigError(f"kind should be one of {IMAGE_KINDS}, got {kind!r}.")
    if not 0.0 < scale <= MAX_SCALE:
        raise ConfigError(f"scale should be in (0, {MAX_SCALE:g}], got {scale}.")


#: Largest ``lesion_contrast``: beyond it nearly every lesion hits the cap of :func:`apply_lesions`.
MAX_LESION_CONTRAST = 5.0


def _check_lesion_contrast(value: float) -> None:
    if not 0.0 < value <= MAX_LESION_CONTRAST:
        raise ConfigError(f"lesion_contrast should be in (0, {MAX_LESION_CONTRAST:g}], got {value}.")


def _build_scene(rng: np.random.Generator, kind: str, scale: float, size: float) -> Scene:
    if kind == "bitewing":
        return bitewing_scene(rng, scale, size)
    if kind == "periapical":
        return periapical_scene(rng, scale, size)
    from dentalmim.data.synth_panoramic import panoramic_scene

    return panoramic_scene(rng, scale, size)


def _draw_background(rng: np.random.Generator, scene: Scene, canvas: Canvas) -> None:
    if scene.kind == "panoramic":
        from dentalmim.data.synth_panoramic import draw_skull

        draw_skull(rng, canvas, scene)
        return
    draw_alveolar(rng, canvas, scene.rows, soft_mm=float(rng.uniform(15.0, 28.0)),
                  bone=BoneParams.sample(rng, BONE_LOSS_PROBABILITY))


def _exposure(rng: np.random.Generator, kind: str, scale: float) -> Exposure:
    """Detector parameters; quanta per pixel grow as pixels get larger (small ``scale``)."""
    pano = kind == "panoramic"
    photons = float(rng.uniform(300.0, 1500.0) if pano else rng.uniform(500.0, 2500.0)) / scale**2
    return Exposure(
        photons=photons, psf_px=float(rng.uniform(0.9, 1.6) if pano else rng.uniform(0.6, 1.1)) * scale,
        vignetting=float(rng.uniform(0.0, 0.2)), heel=float(rng.uniform(0.0, 0.25)),
        electronic=float(rng.uniform(1.0, 6.0)) / scale,
        gamma=float(rng.uniform(0.6, 0.85) if pano else rng.uniform(0.8, 1.25)),  # panoramics: brighter mid-tones
    )


def _finish(rng: np.random.Generator, scene: Scene, canvas: Canvas, kind: str, scale: float) -> SynthImage:
    """Final rotation and crop, detector simulation, exact boxes from the final label map."""
    angle = float(rng.uniform(-scene.max_rotation_deg, scene.max_rotation_deg))
    att, thick, labels = rotate_crop([canvas.attenuation, canvas.thickness, canvas.labels], angle, scene.out_shape,
                                     nearest=(False, False, True))
    pixels = expose(rng, att, _exposure(rng, kind, scale))
    boxes, ids = lesion_boxes(labels, len(canvas.lesions), pixels)
    remap = np.zeros(len(canvas.lesions) + 1, np.uint16)
    remap[ids] = np.arange(1, ids.size + 1, dtype=np.uint16)
    m = scene.margin
    h, w = scene.out_shape
    teeth = [t.shape.fdi for t in scene.teeth if m <= t.x < m + w and m <= t.y < m + h]
    return SynthImage(
        kind=kind, pixels=pixels, boxes=boxes, lesions=[canvas.lesions[i - 1] for i in ids], labels=remap[labels],
        tooth_mask=thick > 0.5, teeth=sorted(set(teeth)), spacing_mm=1.0 / scene.px_per_mm,
    )


def generate_image(
    rng: np.random.Generator, kind: ImageKind = "bitewing", scale: float = 1.0, *, caries_free: bool = False,
    lesion_contrast: float = 1.0,
) -> SynthImage:
    """Draws one synthetic radiograph.

    Four independent random streams (anatomy, findings, background, detector) are split off ``rng``, so the same
    generator state with ``caries_free=True`` gives the same image without its lesions.

    Args:
        rng: random generator (consumed).
        kind: "bitewing" | "periapical" | "panoramic".
        scale: size factor in (0, 4]: 1.0 is realistic (bitewing about 1-2.6 MP at 0.019-0.03 mm pixels,
            panoramic about 2900 x 1450 at 0.1 mm); anatomy and lesions scale with the image.
        caries_free: draw no lesion.
        lesion_contrast: multiplies the attenuation every lesion removes, in (0, 5]. 1.0 gives the calibrated,
            subtle lesions (a few per cent of contrast); 3.0 gives advanced, cavitated-looking ones (the demo's).
            The same generator state gives the same anatomy and lesion shapes whatever the value.

    Returns:
        The image and its ground truth.
    """
    _check_args(kind, scale)
    _check_lesion_contrast(lesion_contrast)
    anatomy, findings, background, detector = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=4))
    scene = _build_scene(anatomy, kind, scale, size=float(anatomy.uniform(0.92, 1.08)))
    assign_findings(findings, scene.teeth, carious=not caries_free,
                    restored_fraction=float(findings.uniform(*RESTORED_FRACTION)), eligible=scene.crown_inside)
    if lesion_contrast != 1.0:
        for tooth in scene.teeth:
            tooth.lesions = [replace(lesion, contrast=lesion_contrast) for lesion in tooth.lesions]
    canvas = Canvas.empty(scene.canvas_shape, scene.px_per_mm)
    for tooth in scene.teeth:
        draw_tooth(canvas, tooth)
    _draw_background(background, scene, canvas)
    return _finish(detector, scene, canvas, kind, scale)


def render_preview(image: SynthImage, path: str | os.PathLike, *, max_width: int = 1200, inset_side: int = 260,
                   max_insets: int = 3) -> Path:
    """Writes a PNG preview of ``image``: downsized to ``max_width`` with lesion boxes (yellow: enamel, red:
    dentin) above a strip of native-resolution insets of the smallest lesions. Returns the path written."""
    return _render_preview(image.pixels, image.boxes, image.lesions, path, max_width=max_width,
                           inset_side=inset_side, max_insets=max_insets)


@dataclass
class SynthSummary:
    """What :func:`generate_corpus` wrote.

    Attributes:
        root: the output folder.
        labeled_dir: ``root/labeled``.
        coco_path: ``root/labeled/annotations.json``.
        unlabeled_dir: ``root/unlabeled``.
        n_labeled: labeled images written.
        n_unlabeled: unlabeled images written.
        n_lesions: annotated lesions.
        n_patients: distinct synthetic patients.
    """

    root: Path
    labeled_dir: Path
    coco_path: Path
    unlabeled_dir: Path
    n_labeled: int
    n_unlabeled: int
    n_lesions: int
    n_patients: int = 0

    def format(self) -> str:
        """One-line human summary."""
        return (f"synthetic corpus in {self.root}: {self.n_labeled} labeled images ({self.n_lesions} caries "
                f"boxes, COCO {self.coco_path}) + {self.n_unlabeled} unlabeled images, {self.n_patients} patients")


def _check_corpus_args(n: int, n_unlabeled: int, scale: float, fractions: dict[str, float],
                       syntaxes: Sequence[str] | None) -> None:
    if n < 0 or n_unlabeled < 0:
        raise ConfigError(f"n and n_unlabeled should be >= 0, got {n} and {n_unlabeled}.")
    _check_args("bitewing", scale)
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} should be in [0, 1], got {value}.")
    for syntax in syntaxes or ():
        if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
            raise ConfigError(f"syntaxes should be among {sorted(SUPPORTED_TRANSFER_SYNTAXES)}, got {syntax!r}.")


def image_to_dataset(image: SynthImage, fmt: FileFormat, ids: DicomIds) -> Dataset:
    """Turns ``image`` into an encoded DICOM data set (IO for intraoral, DX/PX for panoramic images).

    Args:
        image: the synthetic radiograph.
        fmt: storage format (transfer syntax, bits, photometric interpretation, spacing attribute, VOI, rescale);
            see :func:`dentalmim.data.synth_dicom.choose_format`.
        ids: patient/study/series/instance identifiers.

    Returns:
        The data set, ready for :func:`dentalmim.data.encode.save_dicom`.
    """
    return build_dataset(image.pixels, image.spacing_mm, image.kind, fmt, ids)


def _write_image(plan: ImagePlan, path: Path, seed: int, scale: float, lesion_contrast: float) -> SynthImage:
    """Draws the planned image and writes it as DICOM."""
    rng = image_rng(seed, plan.split, plan.index)
    img = generate_image(rng, plan.kind, scale, caries_free=plan.caries_free,  # type: ignore[arg-type]
                         lesion_contrast=lesion_contrast)
    fmt = plan.fmt
    if fmt.syntax.startswith("jpeg2000") and min(img.pixels.shape) < _J2K_MIN_SIDE:
        fmt = replace(fmt, syntax="explicit_le")  # openjpeg needs 32 pixels a side; only at tiny scales
    save_dicom(image_to_dataset(img, fmt, plan.ids), path)
    return img


def _write_images(plans: list[ImagePlan], root: Path, seed: int, scale: float, lesion_contrast: float,
                  progress: bool) -> tuple[list[dict], list[dict]]:
    """Draws and writes every planned image; returns the COCO images and annotations of the labeled ones."""
    images: list[dict] = []
    annotations: list[dict] = []
    for plan in tqdm(plans, desc="synth", unit="img", disable=not progress):
        folder = root / "labeled" / "images" if plan.split == "labeled" else root / "unlabeled"
        img = _write_image(plan, folder / plan.name, seed, scale, lesion_contrast)
        if plan.split == "labeled":
            images.append(coco_image(len(images) + 1, f"images/{plan.name}", plan, img.pixels.shape))
            annotations += coco_annotations(len(annotations) + 1, len(images), img.boxes, img.lesions)
    return images, annotations


def generate_corpus(
    out_dir: str | os.PathLike,
    n: int = 40,
    seed: int = 0,
    *,
    n_unlabeled: int | None = None,
    scale: float = 1.0,
    panoramic_fraction: float = 0.25,
    caries_free_fraction: float = 0.3,
    syntaxes: Sequence[str] | None = None,
    lesion_contrast: float = 1.0,
    images_per_patient: tuple[int, int] = IMAGES_PER_PATIENT,
    progress: bool = True,
) -> SynthSummary:
    """Writes a synthetic corpus: labeled DICOMs with COCO caries boxes and an unlabeled pool.

    Layout: ``out_dir/labeled/images/img_NNNNN.dcm``, ``out_dir/labeled/annotations.json`` (``file_name`` =
    ``images/img_NNNNN.dcm``) and ``out_dir/unlabeled/unl_NNNNN.dcm``. The same arguments give byte-identical
    files. Existing files of the same names are overwritten.

    Args:
        out_dir: output folder (created).
        n: labeled images.
        seed: corpus seed.
        n_unlabeled: unlabeled images (default: ``n``).
        scale: image size factor in (0, 4] (1.0 realistic; tests use 0.1-0.25).
        panoramic_fraction: share of panoramic images (the rest: 80 % bitewings, 20 % periapicals).
        caries_free_fraction: share of images without lesions.
        syntaxes: transfer syntax names to cycle through; None: a fixed mix over all supported syntaxes with
            lossy JPEG / JPEG 2000 (quality 95) for about 1 file in 10, labeled files included.
        lesion_contrast: lesion conspicuity, see :func:`generate_image` (1.0: subtle; the demo uses
            :data:`dentalmim.demo.DEMO_LESION_CONTRAST`).
        images_per_patient: inclusive range of images per synthetic patient (over one or two visits); fewer
            images per patient give more patients, hence finer patient-level splits and bootstrap intervals.
        progress: show a tqdm progress bar.

    Returns:
        Summary of what was written.
    """
    n_unlabeled = n if n_unlabeled is None else n_unlabeled
    _check_corpus_args(n, n_unlabeled, scale, {"panoramic_fraction": panoramic_fraction,
                                               "caries_free_fraction": caries_free_fraction}, syntaxes)
    _check_lesion_contrast(lesion_contrast)
    lo, hi = images_per_patient
    if not 1 <= lo <= hi:
        raise ConfigError(f"images_per_patient should be a range (lo, hi) with 1 <= lo <= hi, "
                          f"got {images_per_patient}.")
    root = Path(out_dir)
    images_dir, unlabeled_dir = root / "labeled" / "images", root / "unlabeled"
    images_dir.mkdir(parents=True, exist_ok=True)
    unlabeled_dir.mkdir(parents=True, exist_ok=True)
    opts = {"panoramic_fraction": panoramic_fraction, "caries_free_fraction": caries_free_fraction,
            "syntaxes": syntaxes, "images_per_patient": (int(lo), int(hi))}
    plans = plan_split(seed, "labeled", n, 1, **opts)
    first = max((p.ids.patient_number for p in plans), default=0) + 1
    plans += plan_split(seed, "unlabeled", n_unlabeled, first, **opts)
    images, annotations = _write_images(plans, root, seed, scale, lesion_contrast, progress)
    coco = {"info": {"description": "dentalmim synthetic caries corpus", "version": __version__, "seed": seed,
                     "scale": scale, "lesion_contrast": lesion_contrast, "images_per_patient": [int(lo), int(hi)]},
            "images": images, "annotations": annotations, "categories": [CARIES_CATEGORY]}
    coco_path = root / "labeled" / "annotations.json"
    coco_path.write_text(json.dumps(coco, indent=1) + "\n")
    return SynthSummary(root=root, labeled_dir=root / "labeled", coco_path=coco_path, unlabeled_dir=unlabeled_dir,
                        n_labeled=n, n_unlabeled=n_unlabeled, n_lesions=len(annotations),
                        n_patients=len({p.ids.patient_number for p in plans}))
