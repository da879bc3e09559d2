"""The attenuation canvas of one synthetic radiograph: teeth placed into it, global rotation, exposure, boxes.

Teeth are rendered in their own axis-aligned frame (:mod:`dentalmim.data.synth_tooth`) and warped into the canvas
with one affine resampling each; their lesion ids are warped with nearest-neighbour sampling into a label map.
The canvas is larger than the final image by a margin, so the final small rotation never shows empty corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from dentalmim.data.synth_anatomy import ToothShape
from dentalmim.data.synth_fields import blur, gain_field
from dentalmim.data.synth_lesions import Lesion, apply_lesions
from dentalmim.data.synth_restorations import Restoration, apply_restoration
from dentalmim.data.synth_tooth import ToothPatch, render_tooth

#: Percentiles of the log image mapped to black and white before the tone curve (so every image spans exactly
#: [0, 1], and a min-max stretch by a DICOM viewer shows the same picture as the stored VOI window).
_WINDOW_PERCENTILES = (0.1, 99.9)
#: Line integral above which a pixel counts as metal when choosing the display window.
METAL_LEVEL = 3.2
#: Sub-sampling step when estimating the window percentiles.
_PERCENTILE_STEP = 7


@dataclass
class PlacedTooth:
    """A tooth and its pose in the canvas.

    Attributes:
        shape: the tooth.
        x, y: canvas position (pixels, continuous) of the tooth origin (middle of the cusp-tip line).
        angle: tilt of the long axis from vertical (radians, positive turns the roots towards +x for lower teeth).
        upward: True when the roots point up (maxillary teeth).
        distal_sign: +1 when the distal side is towards +x.
        lesions: lesions of this tooth.
        restoration: its restoration, if any.
    """

    shape: ToothShape
    x: float
    y: float
    angle: float
    upward: bool
    distal_sign: float
    lesions: list[Lesion] = field(default_factory=list)
    restoration: Restoration | None = None

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors (x, y) of the tooth's ``u`` and ``v`` axes in the canvas."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        if self.upward:
            return np.array([c, s]), np.array([s, -c])
        return np.array([c, -s]), np.array([s, c])

    def to_canvas(self, u: np.ndarray, v: np.ndarray, px_per_mm: float) -> np.ndarray:
        """Canvas (x, y) pixels of tooth-frame points (mm); (N, 2)."""
        e_u, e_v = self.axes()
        pts = np.outer(np.asarray(u, float), e_u) + np.outer(np.asarray(v, float), e_v)
        return np.array([self.x, self.y]) + px_per_mm * pts


@dataclass
class Canvas:
    """Accumulated line integrals, (H, W) each.

    Attributes:
        attenuation: float32 line integral (everything drawn so far).
        thickness: float32 projected tooth thickness (mm), used to displace bone and as the tooth mask.
        bone: float32 bone-equivalent change around roots (lamina dura, ligament gap), mm.
        labels: uint16 lesion ids (1-based index into ``lesions``, 0 = none).
        px_per_mm: resolution.
        lesions: the lesions drawn, in label order.
    """

    attenuation: np.ndarray
    thickness: np.ndarray
    bone: np.ndarray
    labels: np.ndarray
    px_per_mm: float
    lesions: list[Lesion] = field(default_factory=list)

    @classmethod
    def empty(cls, shape: tuple[int, int], px_per_mm: float) -> Canvas:
        """A blank canvas of ``shape`` = (H, W)."""
        zeros = lambda: np.zeros(shape, np.float32)  # noqa: E731
        return cls(zeros(), zeros(), zeros(), np.zeros(shape, np.uint16), px_per_mm)


def _visible_v(tooth: PlacedTooth, shape: tuple[int, int], ppm: float) -> tuple[float, float]:
    """Range of ``v`` (mm) the canvas can show for this tooth (projection of the canvas corners)."""
    _, e_v = tooth.axes()
    h, w = shape
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float) - [tooth.x, tooth.y]
    proj = corners @ e_v / ppm
    return float(proj.min()), float(proj.max())


def _inverse_affine(tooth: PlacedTooth, patch: ToothPatch, ppm: float, x0: int, y0: int) -> np.ndarray:
    """2x3 matrix mapping window pixel (x, y) to patch pixel (col, row), centres at integers."""
    e_u, e_v = tooth.axes()
    offset = np.array([x0 + 0.5 - tooth.x, y0 + 0.5 - tooth.y])
    u0, v0 = float(patch.u[0]) * ppm, float(patch.v[0]) * ppm  # centres of patch pixel (0, 0)
    return np.array([[e_u[0], e_u[1], offset @ e_u - u0], [e_v[0], e_v[1], offset @ e_v - v0]], np.float64)


def draw_tooth(canvas: Canvas, tooth: PlacedTooth) -> None:
    """Renders ``tooth`` (with its restoration and lesions) and adds it to ``canvas`` in place."""
    ppm, shape = canvas.px_per_mm, canvas.attenuation.shape
    patch = render_tooth(tooth.shape, ppm, _visible_v(tooth, shape, ppm))
    if patch.attenuation.size == 0:
        return
    if tooth.restoration is not None:
        apply_restoration(patch, tooth.shape, tooth.restoration)
    if tooth.lesions:
        apply_lesions(patch, tooth.shape, tooth.lesions)
    h, w = patch.attenuation.shape
    corners = tooth.to_canvas(patch.u[[0, -1, 0, -1]], patch.v[[0, 0, -1, -1]], ppm)
    x0, y0 = np.floor(corners.min(0) - 2).astype(int)
    x1, y1 = np.ceil(corners.max(0) + 2).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    m = _inverse_affine(tooth, patch, ppm, x0, y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    stack = np.dstack([patch.attenuation, patch.thickness, patch.bone])
    warped = cv2.warpAffine(stack, m, (x1 - x0, y1 - y0), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    canvas.attenuation[y0:y1, x0:x1] += warped[..., 0]
    canvas.thickness[y0:y1, x0:x1] += warped[..., 1]
    canvas.bone[y0:y1, x0:x1] += warped[..., 2]
    if patch.labels is not None:
        lab = cv2.warpAffine(patch.labels, m, (x1 - x0, y1 - y0), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
        base = len(canvas.lesions)
        view = canvas.labels[y0:y1, x0:x1]
        view[lab > 0] = lab[lab > 0].astype(np.uint16) + base
        canvas.lesions.extend(tooth.lesions)


def rotate_crop(
    images: list[np.ndarray], angle_deg: float, out_shape: tuple[int, int], *, nearest: tuple[bool, ...]
) -> list[np.ndarray]:
    """Rotates each canvas array about its centre and crops the central ``out_shape`` = (H, W).

    Args:
        images: (Hc, Wc) arrays of the same shape.
        angle_deg: counter-clockwise rotation in degrees.
        out_shape: final (H, W), at most the canvas shape.
        nearest: per array, nearest-neighbour (labels) instead of bilinear sampling.

    Returns:
        The rotated, cropped arrays, (H, W) each, same dtypes.
    """
    hc, wc = images[0].shape
    m = cv2.getRotationMatrix2D((wc / 2 - 0.5, hc / 2 - 0.5), angle_deg, 1.0)
    m[0, 2] -= (wc - out_shape[1]) / 2
    m[1, 2] -= (hc - out_shape[0]) / 2
    out = []
    for img, near in zip(images, nearest, strict=True):
        flags = cv2.INTER_NEAREST if near else cv2.INTER_LINEAR
        out.append(cv2.warpAffine(img, m, (out_shape[1], out_shape[0]), flags=flags, borderMode=cv2.BORDER_REFLECT))
    return out


@dataclass(frozen=True)
class Exposure:
    """Acquisition parameters of the detector chain.

    Attributes:
        photons: mean quanta per pixel reaching an unattenuated detector pixel.
        psf_px: Gaussian sigma (pixels) of the detector blur.
        vignetting: relative corner fall-off of the gain.
        heel: relative linear gain ramp (anode heel effect).
        electronic: electronic noise (quanta per pixel, standard deviation).
        gamma: display tone-curve exponent.
    """

    photons: float
    psf_px: float
    vignetting: float
    heel: float
    electronic: float
    gamma: float


def expose(rng: np.random.Generator, attenuation: np.ndarray, exp: Exposure) -> np.ndarray:
    """Simulates the detector: quanta, gain, quantum + electronic noise, blur, log and windowing.

    Args:
        rng: random generator.
        attenuation: (H, W) float32 line integrals.
        exp: acquisition parameters.

    Returns:
        (H, W) float32 display image in [0, 1], bright = dense (MONOCHROME2 sense).
    """
    gain = gain_field(rng, attenuation.shape, exp.vignetting, exp.heel)
    quanta = np.exp(-attenuation) * gain
    quanta *= np.float32(exp.photons)
    noise = rng.standard_normal(attenuation.shape, dtype=np.float32)
    quanta += noise * np.sqrt(quanta + np.float32(exp.electronic**2))
    quanta = blur(quanta, exp.psf_px)
    log = -np.log(np.maximum(quanta, np.float32(0.5)) / np.float32(exp.photons))
    sample = log[:: _PERCENTILE_STEP, :: _PERCENTILE_STEP]
    sample = sample[sample < METAL_LEVEL]  # metal saturates: it must not set the window
    lo, hi = np.percentile(sample, _WINDOW_PERCENTILES) if sample.size else (0.0, METAL_LEVEL)
    display = np.clip((log - np.float32(lo)) / np.float32(max(hi - lo, 1e-3)), 0.0, 1.0)
    if abs(exp.gamma - 1.0) > 1e-3:
        display **= np.float32(exp.gamma)
    return display.astype(np.float32)


def lesion_boxes(labels: np.ndarray, n: int, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes of each visible lesion id in ``labels``.

    A lesion is visible when it has at least one pixel and not all of its pixels are saturated white (a lesion
    inside a clipped region cannot be seen, so it gets no label).

    Args:
        labels: (H, W) uint16 lesion ids, 1..n.
        n: number of lesions drawn.
        pixels: (H, W) display image in [0, 1].

    Returns:
        (boxes (M, 4) float32 x1, y1, x2, y2 with x2 = last column + 1, ids (M,) int64 of the visible lesions).
    """
    boxes, ids = [], []
    for idx, sl in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if sl is not None and (pixels[sl][labels[sl] == idx] < 1.0).any():
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            ids.append(idx)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(ids, np.int64)
