"""Projected attenuation of one tooth in its own axis-aligned frame (a "patch"), ready to be placed in an image.

The X-ray beam crosses the tooth buccolingually, so each part (crown, enamel-free dentin core, roots, pulp) is
drawn as the chord length through a rounded cross-section: ``t(u, v) = 2 k w(v) sqrt(1 - (du / w(v))^n)``. The
enamel cap is the crown minus its dentin core, the pulp is subtracted, and overlapping parts combine with ``max``.
Each part is computed only on the rows and columns it covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dentalmim.data.synth_anatomy import (
    Root,
    ToothShape,
    crown_half_width,
    enamel_thickness,
    occlusal_surface,
    root_centre,
    root_half_width,
)
from dentalmim.data.synth_fields import smoothstep

#: Linear attenuation coefficients (1/mm) for an effective intraoral spectrum; only ratios matter. MU_BONE is
#: compact bone; trabecular bone is MU_BONE times its bone volume fraction.
MU_SOFT = 0.020
MU_DENTIN = 0.085
MU_ENAMEL = 0.160
MU_BONE = 0.075
#: Bone-equivalent thickness (mm) of the periodontal ligament gap (dark) and lamina dura (bright) seen edge-on.
PDL_MM, LAMINA_MM = 1.5, 2.0
#: Radius (mm) over which the occlusal surface and the dentino-enamel junction round off.
_CUSP_ROUNDING_MM = 0.6
_DEJ_ROUNDING_MM = 0.5
#: Rows over which a root of a multi-rooted tooth fades in below its start (mm), and its relative depth.
_ROOT_FADE_MM = 1.2
_MULTI_ROOT_DEPTH = 0.7
#: Columns kept beyond a band's outline so the lamina dura fits (mm).
_BAND_MARGIN_MM = 0.6


@dataclass
class ToothPatch:
    """One rendered tooth in its own frame.

    Attributes:
        u: (w,) float32 column centres in mm (tooth frame).
        v: (h,) float32 row centres in mm.
        attenuation: (h, w) float32 line integral of the tooth (1/mm x mm).
        thickness: (h, w) float32 projected tooth thickness (mm), 0 outside the tooth.
        bone: (h, w) float32 bone-equivalent change around the roots (lamina dura +, ligament gap -), mm.
        labels: (h, w) uint8 lesion ids (1..k, 0 = none) or None.
    """

    u: np.ndarray
    v: np.ndarray
    attenuation: np.ndarray
    thickness: np.ndarray
    bone: np.ndarray
    labels: np.ndarray | None = None


def patch_grid(shape: ToothShape, px_per_mm: float, v_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (mm) of the patch covering the tooth within ``v_range``.

    Returns:
        (u (w,), v (h,)) float32; either may be empty when the range misses the tooth.
    """
    half = shape.width / 2 + _BAND_MARGIN_MM
    for root in shape.roots:
        ends = root_centre(root, np.array([root.v0, root.v1], np.float32))
        half = max(half, float(np.abs(ends).max()) + root.width + _BAND_MARGIN_MM)
    v_lo, v_hi = max(v_range[0], -0.3), min(v_range[1], shape.apex + 0.3)
    step = 1.0 / px_per_mm
    u = (np.arange(int(np.ceil(2 * half * px_per_mm)), dtype=np.float32) + 0.5) * step - half
    v = (np.arange(max(0, int(np.ceil((v_hi - v_lo) * px_per_mm))), dtype=np.float32) + 0.5) * step + v_lo
    return u.astype(np.float32), v.astype(np.float32)


def band_thickness(
    u: np.ndarray, v: np.ndarray, half_width: np.ndarray, centre: np.ndarray, k: float, *, flat: bool = False
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Chord length through a band of half-width ``half_width(v)`` around ``centre(v)``.

    Args:
        u: (w,) column coordinates (mm).
        v: (h,) row coordinates (mm).
        half_width: (h,) half-width per row, 0 where the band is absent (its rows must be contiguous).
        centre: (h,) centre per row.
        k: depth / width ratio of the cross-section.
        flat: flat-topped cross-section (crowns) instead of elliptical (roots, pulp).

    Returns:
        (rows, cols, thickness (r, c), outside distance (r, c) in mm, < 0 inside) or None when empty.
    """
    rows = np.flatnonzero(half_width > 0)
    if rows.size == 0 or u.size == 0:
        return None
    rs = slice(int(rows[0]), int(rows[-1]) + 1)
    w, c = half_width[rs, None], centre[rs, None]
    lo, hi = float((c - w).min()) - _BAND_MARGIN_MM, float((c + w).max()) + _BAND_MARGIN_MM
    cs = slice(int(np.searchsorted(u, lo)), int(np.searchsorted(u, hi)))
    w = np.maximum(w, 1e-3)
    x = (u[None, cs] - c) / w
    x2 = x * x
    chord = np.sqrt(np.maximum(1.0 - (x2 * x2 if flat else x2), 0.0))
    return rs, cs, (2.0 * k) * w * chord, (np.abs(x) - 1.0) * w


def _paste_max(dst: np.ndarray, band: tuple | None) -> tuple | None:
    if band is not None:
        rs, cs, t, _ = band
        np.maximum(dst[rs, cs], t, out=dst[rs, cs])
    return band


def _fade_in(band: tuple, v: np.ndarray, v0: float) -> None:
    """Ramps a band's thickness up from 0 over the first ``_ROOT_FADE_MM`` below ``v0``, in place."""
    rs, _, thick, _ = band
    thick *= smoothstep((v[rs, None] - v0) / _ROOT_FADE_MM)


def _round_top(t: np.ndarray, u: np.ndarray, v: np.ndarray, top: np.ndarray, radius: float) -> None:
    """Fades ``t`` (h, w) to 0 above the surface ``v = top(u)`` over ``radius`` mm, in place."""
    r1 = int(np.searchsorted(v, float(top.max()) + radius))
    if r1 > 0:
        t[:r1] *= smoothstep((v[:r1, None] - top[None, :]) / radius)


def crown_thickness(shape: ToothShape, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projected thickness of the whole crown and of its dentin core (mm), each (h, w) float32."""
    outer = np.zeros((v.size, u.size), np.float32)
    core = np.zeros_like(outer)
    w = crown_half_width(shape, v)
    zeros = np.zeros_like(w)
    _paste_max(outer, band_thickness(u, v, w, zeros, shape.bl_ratio))
    _paste_max(core, band_thickness(u, v, np.maximum(w - enamel_thickness(shape, v), 0.0), zeros,
                                    shape.bl_ratio))
    top = occlusal_surface(shape, u)
    _round_top(outer, u, v, top, _CUSP_ROUNDING_MM)
    _round_top(core, u, v, top + shape.enamel_occlusal, _DEJ_ROUNDING_MM)
    return outer, core


def roots_thickness(shape: ToothShape, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projected thickness of the roots (mm) and the lamina dura / ligament bone change around them (mm)."""
    t = np.zeros((v.size, u.size), np.float32)
    bone = np.zeros_like(t)
    half_cej = shape.cej_ratio * shape.width / 2
    for root in shape.roots:
        # ribbon-like roots of multi-rooted teeth are as deep buccolingually as the trunk they leave
        k = shape.bl_ratio * (1.0 if len(shape.roots) == 1 else _MULTI_ROOT_DEPTH * half_cej / root.width)
        band = band_thickness(u, v, root_half_width(root, v), root_centre(root, v), k)
        if band is None:
            continue
        if len(shape.roots) > 1:
            _fade_in(band, v, root.v0)  # emerge smoothly from the trunk
        _paste_max(t, band)
        rs, cs, _, dist = band
        ring = LAMINA_MM * np.exp(-(((dist - 0.3) / 0.12) ** 2)) - PDL_MM * np.exp(-(((dist - 0.08) / 0.08) ** 2))
        bone[rs, cs] += ring * (dist > 0)
    return t, bone


def pulp_thickness(shape: ToothShape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Projected thickness of the pulp chamber and root canals (mm), (h, w) float32."""
    t = np.zeros((v.size, u.size), np.float32)
    hc, cej, ps = shape.crown_height, shape.cej_ratio * shape.width / 2, shape.pulp_scale
    if len(shape.roots) == 1:
        root = shape.roots[0]
        roof = hc * (0.3 if shape.kind in ("incisor", "canine") else 0.45)
        canal = Root(roof, root.v1 - 0.7, 0.0, 0.0, root.curve, 0.3 * cej * ps)
        w = root_half_width(canal, v, taper=0.85)
        w = np.where(v < hc, w * np.sqrt(np.clip((v - roof) / (0.35 * hc), 0, 1)), w)
        _paste_max(t, band_thickness(u, v, w, root_centre(canal, v), shape.bl_ratio))
        return t
    roof, floor = 0.62 * hc, hc + shape.trunk - 0.6
    mid, half_h = (roof + floor) / 2, (floor - roof) / 2
    w = 0.42 * cej * ps * np.sqrt(np.clip(1.0 - ((v - mid) / half_h) ** 4, 0.0, 1.0))
    _paste_max(t, band_thickness(u, v, w.astype(np.float32), np.zeros_like(w), 0.8 * shape.bl_ratio))
    horns = occlusal_surface(shape, u) * 0.6 + roof - 0.6 * shape.cusp_depth
    _round_top(t, u, v, horns, 0.4)
    for root in shape.roots:
        canal = Root(floor - 1.2, root.v1 - 0.7, root.c0, root.spread, root.curve, 0.3 * root.width * ps)
        band = band_thickness(u, v, root_half_width(canal, v, taper=0.8), root_centre(canal, v), 1.5)
        if band is not None:
            _fade_in(band, v, canal.v0)
            _paste_max(t, band)
    return t


def render_tooth(shape: ToothShape, px_per_mm: float, v_range: tuple[float, float]) -> ToothPatch:
    """Renders one sound tooth (no lesion, no restoration) between ``v_range`` in its own frame.

    Args:
        shape: the tooth.
        px_per_mm: output resolution.
        v_range: (min, max) ``v`` (mm) worth drawing (the part inside the image).

    Returns:
        The patch; its arrays are empty when the range misses the tooth.
    """
    u, v = patch_grid(shape, px_per_mm, v_range)
    outer, core = crown_thickness(shape, u, v)
    roots, bone = roots_thickness(shape, u, v)
    np.maximum(outer, roots, out=outer)
    np.maximum(core, roots, out=core)
    pulp = np.minimum(pulp_thickness(shape, u, v), 0.85 * core)
    attenuation = MU_DENTIN * core + MU_ENAMEL * (outer - core) - (MU_DENTIN - MU_SOFT) * pulp
    bone *= outer <= 0.0
    return ToothPatch(u=u, v=v, attenuation=attenuation.astype(np.float32), thickness=outer, bone=bone)
