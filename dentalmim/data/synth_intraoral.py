"""Intraoral layouts: bitewings (upper and lower posterior crowns around the bite tab) and periapicals.

Sizes follow common digital sensors (size 2: about 36 x 26 mm) at 0.019-0.03 mm pixels, so a bitewing is
1-2.6 MP at scale 1.0.
"""

from __future__ import annotations

import math

import numpy as np

from dentalmim.data.synth_canvas import Canvas, PlacedTooth
from dentalmim.data.synth_fields import smooth_noise, smoothstep
from dentalmim.data.synth_scene import (
    UPPER_ROW,
    BoneParams,
    RowSpec,
    Scene,
    bone_equivalent,
    crest_line,
    lay_row,
    rotation_margin,
)
from dentalmim.data.synth_tooth import MU_BONE, MU_SOFT

#: Active sensor areas (width, height) in mm.
BITEWING_SENSORS_MM = ((36.0, 26.0), (40.0, 30.0), (35.0, 24.0))
PERIAPICAL_SENSORS_MM = {"anterior": (24.0, 33.0), "posterior": (36.0, 26.0)}
#: Range of native pixel spacings (mm).
INTRAORAL_SPACING_MM = (0.019, 0.03)
#: Bound of the final random rotation (degrees).
INTRAORAL_ROTATION_DEG = 4.0
#: Periapical regions: (upper row slice in image order, anchor tooth), mirrored for the other side/arch.
_PERIAPICAL_REGIONS = {"anterior": (slice(5, 11), 21), "premolar": (slice(1, 7), 14), "molar": (slice(0, 5), 16)}
#: Bone-equivalent thickness (mm) of the crestal cortical line.
CREST_CORTEX_MM = 2.0


def _sensor(rng: np.random.Generator, size_mm: tuple[float, float], scale: float) -> tuple[tuple[int, int], float]:
    """Image shape (H, W) and pixels per mm for a sensor of ``size_mm`` = (width, height)."""
    spacing = float(rng.uniform(*INTRAORAL_SPACING_MM))
    ppm = scale / spacing
    return (max(16, round(size_mm[1] * ppm)), max(16, round(size_mm[0] * ppm))), ppm


def _other(fdi: int) -> int:
    """The same tooth position in the opposite arch, same side (16 -> 46, 26 -> 36)."""
    return {1: 4, 2: 3, 3: 2, 4: 1}[fdi // 10] * 10 + fdi % 10


def _mirror(fdis: tuple[int, ...]) -> tuple[int, ...]:
    """The same teeth on the patient's other side, still in image order."""
    return tuple({1: 2, 2: 1, 3: 4, 4: 3}[f // 10] * 10 + f % 10 for f in reversed(fdis))


def bitewing_scene(rng: np.random.Generator, scale: float, size: float) -> Scene:
    """Upper and lower posterior teeth in occlusion around the bite tab, crowns and crests visible.

    Args:
        rng: random generator.
        scale: image size factor (1.0 = realistic pixel spacing).
        size: patient size factor.

    Returns:
        The scene (no findings yet).
    """
    out_shape, ppm = _sensor(rng, BITEWING_SENSORS_MM[int(rng.integers(len(BITEWING_SENSORS_MM)))], scale)
    margin = rotation_margin(out_shape, INTRAORAL_ROTATION_DEG)
    hc, wc = out_shape[0] + 2 * margin, out_shape[1] + 2 * margin
    upper = UPPER_ROW[:6] if rng.random() < 0.5 else UPPER_ROW[1:6]
    if rng.random() < 0.5:
        upper = _mirror(upper)
    lower = tuple(_other(f) for f in upper)
    anchor_up = 15 if 15 in upper else 26  # contact between the second premolar and the first molar
    mesial = 1.0 if anchor_up == 15 else -1.0
    x_anchor = wc / 2 + float(rng.uniform(-6.0, 6.0)) * ppm
    y_mid, gap = hc / 2 + float(rng.uniform(-2.0, 2.0)) * ppm, float(rng.uniform(0.3, 2.5)) * ppm
    tilt, curve = float(rng.normal(0.0, 0.05)), float(rng.normal(0.0, 0.004)) / ppm

    def line(dy: float) -> RowSpec:  # occlusal line with a slight tilt and curve of Spee
        return RowSpec(upper if dy < 0 else lower,
                       lambda x: y_mid + dy + tilt * (x - wc / 2) + curve * (x - wc / 2) ** 2,
                       lambda x: tilt + 2 * curve * (x - wc / 2))

    rows = [
        lay_row(rng, line(-gap / 2), (anchor_up, x_anchor), ppm, size),
        lay_row(rng, line(gap / 2), (_other(anchor_up), x_anchor + mesial * float(rng.uniform(0.5, 3.5)) * ppm),
                ppm, size),
    ]
    return Scene("bitewing", out_shape, margin, ppm, rows, INTRAORAL_ROTATION_DEG)


def periapical_scene(rng: np.random.Generator, scale: float, size: float) -> Scene:
    """A few whole teeth of one arch, crowns near one edge and apices near the other.

    Args:
        rng: random generator.
        scale: image size factor.
        size: patient size factor.

    Returns:
        The scene (no findings yet).
    """
    region = str(rng.choice(list(_PERIAPICAL_REGIONS)))
    rows_slice, anchor = _PERIAPICAL_REGIONS[region]
    sensor = PERIAPICAL_SENSORS_MM["anterior" if region == "anterior" else "posterior"]
    out_shape, ppm = _sensor(rng, sensor, scale)
    margin = rotation_margin(out_shape, INTRAORAL_ROTATION_DEG)
    hc, wc = out_shape[0] + 2 * margin, out_shape[1] + 2 * margin
    fdis = UPPER_ROW[rows_slice]
    if region != "anterior" and rng.random() < 0.5:
        fdis, anchor = _mirror(fdis), _mirror((anchor,))[0] + 1
    upper = rng.random() < 0.5
    if not upper:
        fdis, anchor = tuple(_other(f) for f in fdis), _other(anchor)
    edge = (2.5 + float(rng.uniform(0.0, 2.0))) * ppm + margin
    y_occ = hc - edge if upper else edge
    tilt = float(rng.normal(0.0, 0.04))
    spec = RowSpec(fdis, lambda x: y_occ + tilt * (x - wc / 2), lambda x: tilt)
    row = lay_row(rng, spec, (anchor, wc / 2 + float(rng.uniform(-4.0, 4.0)) * ppm), ppm, size)
    return Scene("periapical", out_shape, margin, ppm, [row], INTRAORAL_ROTATION_DEG)


def _bone_density(rows: list[list[PlacedTooth]], shape: tuple[int, int], ppm: float,
                  crest_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Bone presence (0..1, denser away from the crest) and the crestal cortical line, (H, W) float32 each."""
    density = np.zeros(shape, np.float32)
    cortex = np.zeros(shape, np.float32)
    xs = np.arange(shape[1], dtype=np.float32) + 0.5
    for row in rows:
        up = row[0].upward
        crest = crest_line(row, xs, ppm, crest_mm)
        inner, outer = (3.5 * ppm, 1.0 * ppm) if up else (1.0 * ppm, 3.5 * ppm)  # density ramps up inside bone
        r0 = max(0, int(float(crest.min()) - inner))
        r1 = min(shape[0], int(math.ceil(float(crest.max()) + outer)))
        if up:  # bone above the crest: full density beyond the transition band
            density[:r0] += 1.0
        else:
            density[r1:] += 1.0
        if r1 > r0:
            ys = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
            d = (crest[None, :] - ys if up else ys - crest[None, :]) / ppm  # mm inside the bone
            density[r0:r1] += smoothstep(d / 0.25) * (0.55 + 0.45 * smoothstep(d / 3.0))
            cortex[r0:r1] += np.exp(-(((d - 0.25) / 0.25) ** 2))
    return density, cortex


def draw_alveolar(rng: np.random.Generator, canvas: Canvas, rows: list[list[PlacedTooth]], *, soft_mm: float,
                  bone: BoneParams) -> None:
    """Adds soft tissue and alveolar bone (displaced by the roots, with lamina dura) to ``canvas`` in place.

    Args:
        rng: random generator.
        canvas: the canvas, teeth already drawn.
        rows: rows of teeth; bone lies beyond each row's crest (above maxillary, below mandibular teeth).
        soft_mm: water-equivalent soft-tissue thickness.
        bone: the patient's bone.
    """
    ppm, shape = canvas.px_per_mm, canvas.attenuation.shape
    density, cortex = _bone_density(rows, shape, ppm, bone.crest_mm)
    texture = bone_equivalent(rng, canvas, bone, bone.cortical_mm)
    canvas.attenuation += MU_BONE * (density * texture + CREST_CORTEX_MM * cortex)
    soft = smooth_noise(rng, shape, 10.0 * ppm)
    canvas.attenuation += MU_SOFT * soft_mm * (1.0 + 0.12 * soft)
