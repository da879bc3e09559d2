"""Panoramic layout: both dental arches unrolled along a "smile" curve, mandible, maxilla and their neighbours.

Panoramic projections magnify vertically by about 1.25 and narrow the front teeth; the skull structures
(mandible outline with its cortex and canal, maxillary sinuses, nasal cavity, hard palate, zygomatic arches,
airway, spine ghost) are smooth, so they are drawn with OpenCV primitives on a coarse grid (about 0.4 mm) and
upsampled once; only the trabecular texture and the teeth are drawn at full resolution.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from dentalmim.data.synth_canvas import Canvas
from dentalmim.data.synth_fields import resize, smooth_noise
from dentalmim.data.synth_scene import (
    BONE_LOSS_PROBABILITY,
    LOWER_ROW,
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

#: Image width (mm at the detector) and pixel spacing (mm) ranges; height is about half the width.
PAN_WIDTH_MM = (280.0, 300.0)
PAN_SPACING_MM = (0.095, 0.105)
PAN_ROTATION_DEG = 1.0
#: Vertical magnification of the panoramic projection.
PAN_MAGNIFICATION = 1.25
#: Horizontal narrowing of each tooth class relative to the vertical magnification.
_WIDTH_FACTOR = {1: 0.85, 2: 0.85, 3: 0.9, 4: 1.0, 5: 1.0, 6: 1.1, 7: 1.1, 8: 1.1}
#: Coarse-grid resolution (pixels per mm) of the skull structures.
_COARSE_PPM = 2.5
#: Air (negative) or extra tissue, in mm of water, and bone-equivalent mm of the structures.
_SINUS_AIR_MM, _NASAL_AIR_MM, _AIRWAY_MM = 22.0, 28.0, 12.0
_CANAL_MM, _CANAL_WALL_MM = 4.0, 1.5
#: Height (mm, up is negative) of the centre of the maxillary sinuses.
_SINUS_Y_MM = -40.0
_PALATE_MM, _ZYGOMA_MM, _SEPTUM_MM, _SPINE_MM, _CORTEX_MM = 5.0, 1.5, 3.0, 8.0, 6.0


def _row_teeth(rng: np.random.Generator, row: tuple[int, ...]) -> tuple[int, ...]:
    """Drops third molars (40 % each) and, rarely, another tooth."""
    keep = [f for f in row if not (f % 10 == 8 and rng.random() < 0.4) and not (f % 10 != 8 and rng.random() < 0.02)]
    return tuple(keep)


def panoramic_scene(rng: np.random.Generator, scale: float, size: float) -> Scene:
    """Both arches along an upward-curving occlusal plane, incisors at the centre, molars towards the rami.

    Args:
        rng: random generator.
        scale: image size factor (1.0: about 2900 x 1450 at 0.1 mm).
        size: patient size factor.

    Returns:
        The scene (no findings yet).
    """
    width_mm = float(rng.uniform(*PAN_WIDTH_MM))
    ppm = scale / float(rng.uniform(*PAN_SPACING_MM))
    out_shape = (round(width_mm * float(rng.uniform(0.48, 0.52)) * ppm), round(width_mm * ppm))
    margin = rotation_margin(out_shape, PAN_ROTATION_DEG)
    hc, wc = out_shape[0] + 2 * margin, out_shape[1] + 2 * margin
    cx, y0 = wc / 2, hc / 2 + float(rng.uniform(2.0, 9.0)) * ppm
    smile, gap0 = float(rng.uniform(12.0, 22.0)) * ppm, float(rng.uniform(0.5, 2.0)) * ppm
    norm = (100.0 * ppm) ** 2

    def occ(x: float) -> float:
        return y0 - smile * (x - cx) ** 2 / norm

    def gap(x: float) -> float:  # the bite block opens the front teeth
        return gap0 + 3.0 * ppm * math.exp(-(((x - cx) / (25.0 * ppm)) ** 2))

    def spec(fdis: tuple[int, ...], sign: float) -> RowSpec:
        return RowSpec(fdis, lambda x: occ(x) + sign * gap(x) / 2, lambda x: -2.0 * smile * (x - cx) / norm,
                       width_of=lambda f: _WIDTH_FACTOR[f % 10], tilt_deg=2.0)

    mag = size * PAN_MAGNIFICATION
    upper, lower = _row_teeth(rng, UPPER_ROW), _row_teeth(rng, LOWER_ROW)
    rows = []
    for fdis, sign in ((upper, -1.0), (lower, 1.0)):
        mid = next(f for f in fdis if f // 10 in (2, 3))  # first tooth right of the midline
        rows.append(lay_row(rng, spec(fdis, sign), (mid, cx + float(rng.normal(0.0, 1.5)) * ppm), ppm, mag))
    return Scene("panoramic", out_shape, margin, ppm, rows, PAN_ROTATION_DEG)


class _Coarse:
    """A coarse grid over the canvas with millimetre coordinates centred on the canvas."""

    def __init__(self, shape: tuple[int, int], ppm: float) -> None:
        self.full_shape, self.ppm = shape, ppm
        self.factor = max(1, round(ppm / _COARSE_PPM))
        self.shape = (math.ceil(shape[0] / self.factor), math.ceil(shape[1] / self.factor))
        self.cppm = ppm / self.factor

    def px(self, pts_mm: np.ndarray) -> np.ndarray:
        """(N, 2) mm (x right, y down, origin at the canvas centre) -> (N, 2) int32 coarse pixels (x, y)."""
        centre = np.array([self.full_shape[1], self.full_shape[0]]) / (2 * self.factor)
        return np.round(centre + np.asarray(pts_mm, float) * self.cppm).astype(np.int32)

    def mm(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """Full-resolution canvas pixels -> (N, 2) mm."""
        h, w = self.full_shape
        return np.stack([(np.asarray(x_px) - w / 2) / self.ppm, (np.asarray(y_px) - h / 2) / self.ppm], 1)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """mm coordinates of the coarse pixel centres: x (1, w) and y (h, 1), float32."""
        xs = (np.arange(self.shape[1], dtype=np.float32) + 0.5) * self.factor
        ys = (np.arange(self.shape[0], dtype=np.float32) + 0.5) * self.factor
        pts_x, pts_y = self.mm(xs, np.zeros_like(xs))[:, 0], self.mm(np.zeros_like(ys), ys)[:, 1]
        return pts_x[None, :].astype(np.float32), pts_y[:, None].astype(np.float32)

    def blank(self) -> np.ndarray:
        """A zero coarse field, (h, w) float32."""
        return np.zeros(self.shape, np.float32)

    def ellipse(self, img: np.ndarray, c: tuple[float, float], axes: tuple[float, float], value: float,
                thickness: float = -1) -> None:
        """Draws a filled (thickness -1) or outlined ellipse; sizes in mm."""
        ctr = tuple(int(v) for v in self.px([c])[0])
        ax = (max(1, round(axes[0] * self.cppm)), max(1, round(axes[1] * self.cppm)))
        t = -1 if thickness < 0 else max(1, round(thickness * self.cppm))
        cv2.ellipse(img, ctr, ax, 0.0, 0.0, 360.0, float(value), t, cv2.LINE_AA)

    def polyline(self, img: np.ndarray, pts_mm: np.ndarray, value: float, thickness: float) -> None:
        """Draws an open polyline through (N, 2) mm points, ``thickness`` mm wide."""
        cv2.polylines(img, [self.px(pts_mm)], False, float(value), max(1, round(thickness * self.cppm)), cv2.LINE_AA)

    def blur(self, img: np.ndarray, sigma_mm: float) -> np.ndarray:
        """Gaussian blur with sigma in mm."""
        return cv2.GaussianBlur(img, (0, 0), max(0.3, sigma_mm * self.cppm))


def _smooth_closed(pts: np.ndarray, step_mm: float, sigma_mm: float) -> np.ndarray:
    """Resamples a closed polygon (N, 2) mm at ``step_mm`` along its length and rounds its corners."""
    closed = np.vstack([pts, pts[:1]])
    length = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    t = np.arange(0.0, length[-1], step_mm)
    res = np.stack([np.interp(t, length, closed[:, 0]), np.interp(t, length, closed[:, 1])], 1)
    return ndimage.gaussian_filter1d(res, sigma_mm / step_mm, axis=0, mode="wrap")


def _mandible_outline(rng: np.random.Generator, crest: np.ndarray) -> np.ndarray:
    """Closed outline (mm) of the mandible: alveolar crest (N, 2) left to right, then the right ramus and
    condyle, the lower border through the chin, and the left ramus."""
    x_end = float(np.abs(crest[:, 0]).max())
    chin, angle = float(rng.uniform(55.0, 63.0)), float(rng.uniform(28.0, 38.0))
    xa = x_end + float(rng.uniform(32.0, 40.0))  # gonial angle
    ramus = [(x_end + 4, crest[-1, 1] - 3), (xa - 36, -5), (xa - 33, -26), (xa - 30, -38), (xa - 26, -36),
             (xa - 19, -24), (xa - 11, -33), (xa - 7, -44), (xa + 1, -46), (xa + 4, -38), (xa + 3, -20),
             (xa + 2, 10), (xa, angle - 4), (xa - 5, angle + 4), (xa - 14, angle + 8)]
    right = np.array(ramus)
    xs = np.linspace(xa - 24, -(xa - 24), 30)
    border = np.stack([xs, chin - (chin - angle - 10) * (np.abs(xs) / (xa - 24)) ** 2.2], 1)
    left = right[::-1] * [-1.0, 1.0]
    return _smooth_closed(np.concatenate([crest, right, border, left]), 1.0, 3.0)


def _mandibular_canals(grid: _Coarse, scene: Scene) -> np.ndarray:
    """Coarse bone-equivalent mm of both mandibular canals: a dark band with bright cortical walls running
    below the molar apices from the ramus to the mental foramen below the premolars."""
    lower = scene.rows[1]
    apex = [t.to_canvas([0.0], [t.shape.apex], grid.ppm)[0] for t in lower]
    apex_mm = grid.mm(np.array([a[0] for a in apex]), np.array([a[1] for a in apex]))
    posterior = np.abs(apex_mm[:, 0]) > 30.0
    x_end = float(np.abs(apex_mm[:, 0]).max())
    y_apex = float(np.median(apex_mm[posterior, 1] if posterior.any() else apex_mm[:, 1]))
    canals = grid.blank()
    for sign in (-1.0, 1.0):
        path = np.array([[x_end + 22, y_apex - 20], [x_end + 10, y_apex - 1], [x_end - 15, y_apex + 3],
                         [38.0, y_apex + 3], [30.0, y_apex - 3]]) * [sign, 1.0]
        path = _smooth_closed(np.vstack([path, path[::-1]]), 1.0, 3.0)  # out and back: a smooth open curve
        grid.polyline(canals, path, _CANAL_WALL_MM, 4.4)
        grid.polyline(canals, path, -_CANAL_MM, 2.8)
    return grid.blur(canals, 0.3)


def _bone_fields(
    rng: np.random.Generator, grid: _Coarse, scene: Scene, bone: BoneParams
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse bone presence (maxilla + mandible, 0..1) and cortical bone-equivalent thickness (mm)."""
    xs_full = np.arange(grid.full_shape[1], dtype=np.float32) + 0.5
    upper_crest, lower_crest = (crest_line(r, xs_full, grid.ppm, bone.crest_mm) for r in scene.rows)
    lower_x = [t.x for t in scene.rows[1]]
    sel = np.linspace(min(lower_x), max(lower_x), 40).astype(int)
    crest_mm = grid.mm(xs_full[sel], lower_crest[sel])
    mandible = grid.blank()
    cv2.fillPoly(mandible, [grid.px(_mandible_outline(rng, crest_mm))], 1.0, cv2.LINE_AA)
    dist = cv2.distanceTransform((mandible > 0.5).astype(np.uint8), cv2.DIST_L2, 3) / grid.cppm
    cortex = _CORTEX_MM * np.exp(-((dist / 2.0) ** 2)) + _mandibular_canals(grid, scene)
    cortex = (cortex * (mandible > 0.5)).astype(np.float32)
    xc, yc = grid.coords()
    crest_c = grid.mm(xs_full, upper_crest)[:: grid.factor, 1][: grid.shape[1]]
    d = crest_c[None, :] - yc  # mm above the upper crest
    far = ndimage.gaussian_filter1d(crest_c, 4.0 * grid.cppm, mode="nearest")[None, :] - yc
    maxilla = np.clip(d / 0.4, 0.0, 1.0) * np.exp(-np.clip(far - 12.0, 0.0, None) / 18.0)
    maxilla *= np.exp(-((xc / 88.0) ** 8))
    presence = np.maximum(grid.blur(mandible, 0.3), maxilla.astype(np.float32))
    return presence, grid.blur(cortex, 0.5)


def _air_and_soft(grid: _Coarse, sinuses: list[tuple[float, float]]) -> np.ndarray:
    """Coarse water-equivalent soft tissue (mm) minus air spaces: sinuses, nasal cavity, airway."""
    soft = grid.blank()
    grid.ellipse(soft, (0.0, -5.0), (165.0, 105.0), 45.0)
    grid.ellipse(soft, (0.0, 0.0), (85.0, 28.0), 12.0)  # tongue
    soft = grid.blur(soft, 14.0)
    air = grid.blank()
    for (cx, rx), sign in zip(sinuses, (-1.0, 1.0), strict=True):
        grid.ellipse(air, (cx, _SINUS_Y_MM), (rx, 17.0), _SINUS_AIR_MM)
        grid.polyline(air, np.array([[sign * 100.0, -35.0], [sign * 106.0, 10.0], [sign * 102.0, 60.0]]),
                      _AIRWAY_MM, 9.0)
    grid.ellipse(air, (0.0, -52.0), (16.0, 17.0), _NASAL_AIR_MM)
    xs = np.linspace(-90.0, 90.0, 30)
    grid.polyline(air, np.stack([xs, -24.0 + 7.0 * (xs / 90.0) ** 2], 1), 0.5 * _AIRWAY_MM, 5.0)
    return soft - grid.blur(air, 2.5)


def _dense_structures(grid: _Coarse, sinuses: list[tuple[float, float]]) -> np.ndarray:
    """Coarse bone-equivalent mm of dense structures: palate, septum, sinus rims, zygomatic arches, spine."""
    dense = grid.blank()
    xs = np.linspace(-58.0, 58.0, 30)
    grid.polyline(dense, np.stack([xs, -31.0 + 4.0 * (xs / 58.0) ** 2], 1), _PALATE_MM, 2.5)
    grid.polyline(dense, np.array([[0.0, -70.0], [0.0, -35.0]]), _SEPTUM_MM, 1.5)
    for cx, rx in sinuses:  # cortical rim of each sinus
        grid.ellipse(dense, (cx, _SINUS_Y_MM), (rx, 17.0), 2.0, thickness=1.0)
    dense = grid.blur(dense, 1.2)
    zygoma = grid.blank()
    for sign in (-1.0, 1.0):
        xz = np.linspace(sign * 55.0, sign * 115.0, 20)
        grid.polyline(zygoma, np.stack([xz, -47.0 + 0.05 * (np.abs(xz) - 55.0)], 1), _ZYGOMA_MM, 8.0)
    dense += grid.blur(zygoma, 3.0)
    spine = grid.blank()
    for sign in (-1.0, 1.0):
        grid.polyline(spine, np.array([[sign * 142.0, -80.0], [sign * 139.0, 90.0]]), _SPINE_MM, 16.0)
    return dense + grid.blur(spine, 6.0)


def draw_skull(rng: np.random.Generator, canvas: Canvas, scene: Scene) -> None:
    """Adds soft tissue, air spaces, jaws (trabecular bone displaced by roots, cortices) and skull structures.

    Args:
        rng: random generator.
        canvas: the canvas with the teeth already drawn; modified in place.
        scene: the panoramic scene.
    """
    grid = _Coarse(canvas.attenuation.shape, canvas.px_per_mm)
    bone = BoneParams.sample(rng, BONE_LOSS_PROBABILITY)
    presence, cortex = _bone_fields(rng, grid, scene, bone)
    sinuses = [(sign * float(rng.uniform(45, 55)), float(rng.uniform(24, 32))) for sign in (-1.0, 1.0)]
    soft = _air_and_soft(grid, sinuses) + 2.0 * smooth_noise(rng, grid.shape, 15.0 * grid.cppm)
    dense = _dense_structures(grid, sinuses)
    coarse = MU_SOFT * soft + MU_BONE * (cortex + dense + 0.5 * bone.cortical_mm * presence)
    # central spine ghost: wide and faint
    xs = (np.arange(grid.shape[1]) - grid.shape[1] / 2) / grid.cppm
    coarse += (MU_BONE * 2.0 * np.exp(-((xs / 18.0) ** 2)))[None, :].astype(np.float32)
    stack = resize(np.dstack([coarse, presence]), canvas.attenuation.shape)
    texture = bone_equivalent(rng, canvas, bone, 0.0)
    canvas.attenuation += stack[..., 0] + MU_BONE * stack[..., 1] * texture
