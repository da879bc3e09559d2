"""Scene building blocks shared by the intraoral and panoramic layouts: rows of teeth, restorations, lesions.

Image orientation follows the radiological convention: the patient's right is on the image left, so the maxillary
row reads 18..11 21..28 from left to right and the mandibular row 48..41 31..38.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dentalmim.data.synth_anatomy import is_upper, sample_tooth_shape
from dentalmim.data.synth_canvas import Canvas, PlacedTooth
from dentalmim.data.synth_fields import trabecular_texture
from dentalmim.data.synth_lesions import SITE_WEIGHTS, sample_lesion
from dentalmim.data.synth_restorations import sample_restoration

#: Full rows in image order (left to right).
UPPER_ROW = (18, 17, 16, 15, 14, 13, 12, 11, 21, 22, 23, 24, 25, 26, 27, 28)
LOWER_ROW = (48, 47, 46, 45, 44, 43, 42, 41, 31, 32, 33, 34, 35, 36, 37, 38)
#: Range of the overlap (mm, negative = gap) between neighbouring crowns in projection.
CONTACT_OVERLAP_MM = (-0.25, 0.6)
#: Peak-to-peak variation of trabecular bone density relative to its mean.
TEXTURE_CONTRAST = 0.8
#: Probability of periodontal bone loss (crest far below the CEJ).
BONE_LOSS_PROBABILITY = 0.15
#: Smoothing (mm) of the crest line between its points at the teeth and the interdental septa.
_CREST_SMOOTHING_MM = 0.8
#: Lesions per carious image: 1 + Poisson(mean).
EXTRA_LESIONS_MEAN = 1.2
#: Largest number of lesions drawn in one image.
MAX_LESIONS = 6


def distal_sign(fdi: int) -> float:
    """+1 when the distal side of tooth ``fdi`` is towards +x in the image (patient's left quadrants 2 and 3)."""
    return 1.0 if fdi // 10 in (2, 3) else -1.0


@dataclass(frozen=True)
class RowSpec:
    """How to lay out one row of teeth.

    Attributes:
        fdis: tooth numbers in image order (left to right).
        y_of_x: canvas ``y`` (px) of the cusp-tip line as a function of canvas ``x`` (px).
        slope_of_x: ``dy/dx`` of that line (the teeth stand perpendicular to it).
        width_of: per tooth, a factor on its mesiodistal width (panoramic projections narrow the front teeth).
        tilt_deg: standard deviation of the random individual tilt (degrees).
    """

    fdis: Sequence[int]
    y_of_x: Callable[[float], float]
    slope_of_x: Callable[[float], float]
    width_of: Callable[[int], float] = lambda fdi: 1.0
    tilt_deg: float = 2.5


def lay_row(
    rng: np.random.Generator, spec: RowSpec, anchor: tuple[int, float], px_per_mm: float, size: float
) -> list[PlacedTooth]:
    """Places a row of touching teeth so that the mesial contact of ``anchor[0]`` lies at canvas x ``anchor[1]``.

    Args:
        rng: random generator.
        spec: the row.
        anchor: (tooth number in the row, canvas x in px of its contact with the tooth on its left).
        px_per_mm: canvas resolution.
        size: patient size factor.

    Returns:
        The placed teeth, left to right.
    """
    upward = is_upper(spec.fdis[0])
    shapes = [sample_tooth_shape(rng, f, size, distal_sign(f), spec.width_of(f)) for f in spec.fdis]
    lo, hi = CONTACT_OVERLAP_MM
    steps = [s.width - float(rng.uniform(lo, hi)) * size for s in shapes]
    lefts = np.concatenate([[0.0], np.cumsum(steps[:-1])]) * px_per_mm
    lefts += anchor[1] - lefts[list(spec.fdis).index(anchor[0])]
    teeth = []
    for shape, left in zip(shapes, lefts, strict=True):
        x = float(left + shape.width * px_per_mm / 2)
        slope = math.atan(spec.slope_of_x(x))
        tilt = math.radians(float(rng.normal(0.0, spec.tilt_deg)))
        angle = (slope if upward else -slope) + tilt
        teeth.append(PlacedTooth(shape, x, spec.y_of_x(x), angle, upward, distal_sign(shape.fdi)))
    return teeth


def assign_findings(
    rng: np.random.Generator,
    teeth: list[PlacedTooth],
    *,
    carious: bool,
    restored_fraction: float,
    eligible: Callable[[PlacedTooth], bool],
) -> None:
    """Adds restorations and lesions to ``teeth`` in place.

    Args:
        rng: random generator.
        teeth: all teeth of the scene.
        carious: whether to draw lesions at all (caries-free images get none).
        restored_fraction: probability that a tooth carries a restoration.
        eligible: whether a tooth may carry a lesion (its crown must lie well inside the final image).
    """
    for tooth in teeth:
        if rng.random() < restored_fraction:
            tooth.restoration = sample_restoration(rng, tooth.shape)
    if not carious:
        return
    candidates = [t for t in teeth if eligible(t)]
    n = min(1 + int(rng.poisson(EXTRA_LESIONS_MEAN)), MAX_LESIONS)
    sites, weights = list(SITE_WEIGHTS), np.array(list(SITE_WEIGHTS.values()))
    used: set[tuple[int, float]] = set()  # (tooth, side): one lesion per proximal side and one occlusal
    for _ in range(4 * n):
        if len(used) >= n or not candidates:
            break
        tooth = candidates[int(rng.integers(len(candidates)))]
        site = str(rng.choice(sites, p=weights / weights.sum()))
        side = float(rng.choice([-1.0, 1.0])) if site != "occlusal" else 0.0
        key = (tooth.shape.fdi, side)
        if key in used or (tooth.restoration is not None and tooth.restoration.blocks(site, side)):
            continue
        used.add(key)
        tooth.lesions.append(sample_lesion(rng, tooth.shape, site, side, tooth.distal_sign))


@dataclass(frozen=True)
class BoneParams:
    """Alveolar bone of one patient.

    Attributes:
        cortical_mm: buccal + lingual cortical plates crossed by the beam.
        trabecular_mm: trabecular bone between them.
        bvtv: bone volume fraction of the trabecular bone (the rest is marrow, about soft tissue).
        crest_mm: distance from the CEJ to the alveolar crest (larger with periodontal bone loss).
    """

    cortical_mm: float
    trabecular_mm: float
    bvtv: float
    crest_mm: float

    @classmethod
    def sample(cls, rng: np.random.Generator, bone_loss_probability: float) -> BoneParams:
        """Draws a patient's bone; with ``bone_loss_probability`` the crest sits 2.5-5 mm below the CEJ."""
        loss = rng.random() < bone_loss_probability
        return cls(cortical_mm=float(rng.uniform(2.0, 4.0)), trabecular_mm=float(rng.uniform(6.0, 10.0)),
                   bvtv=float(rng.uniform(0.25, 0.45)),
                   crest_mm=float(rng.uniform(2.5, 5.0) if loss else rng.uniform(1.0, 2.0)))


@dataclass
class Scene:
    """Everything needed to draw one radiograph.

    Attributes:
        kind: "bitewing" | "periapical" | "panoramic".
        out_shape: final image (H, W).
        margin: canvas border (px) on each side, room for the final rotation.
        px_per_mm: resolution (pixels per mm at the detector).
        rows: rows of placed teeth (upper and/or lower).
        max_rotation_deg: bound of the final random rotation.
    """

    kind: str
    out_shape: tuple[int, int]
    margin: int
    px_per_mm: float
    rows: list[list[PlacedTooth]]
    max_rotation_deg: float

    @property
    def canvas_shape(self) -> tuple[int, int]:
        """(H, W) of the canvas, the final image plus the margin on each side."""
        return self.out_shape[0] + 2 * self.margin, self.out_shape[1] + 2 * self.margin

    @property
    def teeth(self) -> list[PlacedTooth]:
        """All placed teeth."""
        return [t for row in self.rows for t in row]

    def crown_inside(self, tooth: PlacedTooth) -> bool:
        """Whether the crown of ``tooth`` stays inside the final image whatever the final rotation."""
        s = tooth.shape
        corners = tooth.to_canvas([-s.width / 2, s.width / 2, -s.width / 2, s.width / 2],
                                  [0.0, 0.0, s.crown_height, s.crown_height], self.px_per_mm)
        pad = 2 * self.margin
        h, w = self.canvas_shape
        return bool((corners[:, 0] > pad).all() and (corners[:, 0] < w - pad).all()
                    and (corners[:, 1] > pad).all() and (corners[:, 1] < h - pad).all())


def bone_equivalent(rng: np.random.Generator, canvas: Canvas, bone: BoneParams, cortical_mm: float) -> np.ndarray:
    """Bone-equivalent thickness (mm) wherever bone is present: cortical plates, trabecular texture (displaced by
    the roots: they replace marrow and trabeculae) and the lamina dura / ligament rings around the roots.

    Returns:
        (H, W) float32, to be multiplied by the bone presence and ``MU_BONE``.
    """
    texture = trabecular_texture(rng, canvas.attenuation.shape, 0.9 * canvas.px_per_mm)  # mean about 0.35
    trab = bone.bvtv * bone.trabecular_mm
    texture *= np.float32(trab * TEXTURE_CONTRAST)
    texture += np.float32(trab * (1.0 - 0.35 * TEXTURE_CONTRAST))
    texture -= bone.bvtv * canvas.thickness
    np.maximum(texture, 0.0, out=texture)
    texture += canvas.bone
    texture += np.float32(cortical_mm)
    return texture


def rotation_margin(out_shape: tuple[int, int], max_rotation_deg: float) -> int:
    """Canvas border (px) so that a rotation by up to ``max_rotation_deg`` never exposes the canvas edge."""
    s = math.sin(math.radians(max_rotation_deg))
    return int(math.ceil(0.5 * s * (out_shape[0] + out_shape[1]))) + 2


def crest_line(row: list[PlacedTooth], xs: np.ndarray, ppm: float, depth_mm: float) -> np.ndarray:
    """Canvas ``y`` of the alveolar crest of one row of teeth.

    Args:
        row: the teeth, left to right.
        xs: (W,) canvas columns (px).
        ppm: pixels per mm.
        depth_mm: CEJ-to-crest distance; interdental septa reach 0.6 mm higher than the bone at mid-tooth.

    Returns:
        (W,) float32 crest ``y`` per column (constant beyond the first and last tooth).
    """
    pts = []
    for tooth in row:
        hc, w = tooth.shape.crown_height, tooth.shape.width
        pts.append(tooth.to_canvas([0.0, -w / 2, w / 2], [hc + depth_mm + 0.3, hc + depth_mm - 0.3,
                                                          hc + depth_mm - 0.3], ppm))
    pts = np.concatenate(pts)
    order = np.argsort(pts[:, 0])
    crest = np.interp(xs, pts[order, 0], pts[order, 1])
    return ndimage.gaussian_filter1d(crest, _CREST_SMOOTHING_MM * ppm, mode="nearest").astype(np.float32)
