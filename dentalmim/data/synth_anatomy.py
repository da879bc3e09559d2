"""Tooth anatomy for the synthetic radiographs: tooth types (FDI), per-tooth random shape, 1-D profiles.

A tooth lives in its own frame, in millimetres: ``u`` across the tooth (mesiodistal, +u is +x in the image) and
``v`` along the long axis from the cusp tips (v = 0) towards the apex. Its outline is described by 1-D profiles
(half-width against ``v``, occlusal surface against ``u``) that :mod:`dentalmim.data.synth_tooth` turns into
projected thickness maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Length (mm) by which the crown outline of a single-rooted tooth reaches into its root.
_NECK_OVERLAP_MM = 0.5
#: Exponent shaping the cusps on the occlusal outline (< 1: broad rounded tips, narrow fissures).
_CUSP_SHARPNESS = 0.7


@dataclass(frozen=True)
class ToothType:
    """Average dimensions (mm) of one tooth position.

    Attributes:
        name: "incisor" | "canine" | "premolar" | "molar".
        width: mesiodistal crown width.
        crown_height: cusp tip to cemento-enamel junction (CEJ).
        root_length: CEJ to apex.
        n_roots: roots seen in a buccal projection (3: two buccal + palatal superimposed).
        n_cusps: cusps on the projected occlusal outline (0: incisal edge, 1: canine tip).
        bl_ratio: buccolingual / mesiodistal crown dimension (sets the projected thickness).
    """

    name: str
    width: float
    crown_height: float
    root_length: float
    n_roots: int
    n_cusps: int
    bl_ratio: float


_UPPER = {
    1: ToothType("incisor", 8.5, 10.5, 13.0, 1, 0, 0.85),
    2: ToothType("incisor", 6.5, 9.0, 13.0, 1, 0, 0.95),
    3: ToothType("canine", 7.5, 10.0, 17.0, 1, 1, 1.05),
    4: ToothType("premolar", 7.0, 8.5, 14.0, 1, 2, 1.30),
    5: ToothType("premolar", 6.5, 8.5, 14.0, 1, 2, 1.35),
    6: ToothType("molar", 10.0, 7.5, 12.5, 3, 2, 1.10),
    7: ToothType("molar", 9.0, 7.0, 11.5, 3, 2, 1.15),
    8: ToothType("molar", 8.5, 6.5, 11.0, 3, 2, 1.15),
}
_LOWER = {
    1: ToothType("incisor", 5.0, 9.0, 12.5, 1, 0, 1.20),
    2: ToothType("incisor", 5.5, 9.5, 14.0, 1, 0, 1.15),
    3: ToothType("canine", 7.0, 11.0, 16.0, 1, 1, 1.10),
    4: ToothType("premolar", 7.0, 8.5, 14.0, 1, 2, 1.10),
    5: ToothType("premolar", 7.0, 8.0, 14.5, 1, 2, 1.15),
    6: ToothType("molar", 11.0, 7.5, 14.0, 2, 3, 0.95),
    7: ToothType("molar", 10.5, 7.0, 13.0, 2, 2, 0.95),
    8: ToothType("molar", 10.0, 7.0, 11.0, 2, 2, 0.95),
}


def is_upper(fdi: int) -> bool:
    """True for maxillary teeth (FDI quadrants 1 and 2, permanent dentition)."""
    return fdi // 10 in (1, 2)


def tooth_type(fdi: int) -> ToothType:
    """Dimensions of the permanent tooth with FDI number ``fdi`` (11..18, 21..28, 31..38, 41..48)."""
    quadrant, position = divmod(fdi, 10)
    if quadrant not in (1, 2, 3, 4) or not 1 <= position <= 8:
        raise ValueError(f"fdi should be a permanent-tooth FDI number (11..48), got {fdi}.")
    return (_UPPER if quadrant in (1, 2) else _LOWER)[position]


@dataclass(frozen=True)
class Root:
    """One root (or root canal) as a tapering band: centre ``c0 + spread * t + curve * t**2``, t = v - v0.

    Attributes are in mm; ``width`` is the half-width at ``v0``.
    """

    v0: float
    v1: float
    c0: float
    spread: float
    curve: float
    width: float


@dataclass(frozen=True)
class ToothShape:
    """One tooth with its random variations (all lengths in mm, in the tooth frame).

    Attributes:
        fdi: FDI tooth number.
        kind: "incisor" | "canine" | "premolar" | "molar".
        width: crown mesiodistal width (max, at the contact points).
        crown_height: cusp tip to CEJ.
        root_length: CEJ to the apex of the longest root.
        cej_ratio: width at the CEJ / crown width.
        contact_frac: height of the contact point / crown height.
        occlusal_ratio: width of the occlusal table / crown width.
        cusp_depth: depth of the fissures between cusp tips.
        n_cusps: cusps on the projected outline.
        cusp_tilt: linear tilt of the occlusal outline (mm per mm of u).
        enamel_side: proximal enamel thickness at the contact point.
        enamel_occlusal: enamel thickness under the cusps.
        bl_ratio: buccolingual / mesiodistal ratio of the crown.
        roots: the roots seen in projection.
        trunk: root trunk length below the CEJ (0 for single-rooted teeth).
        pulp_scale: pulp size factor (young teeth > 1).
    """

    fdi: int
    kind: str
    width: float
    crown_height: float
    root_length: float
    cej_ratio: float
    contact_frac: float
    occlusal_ratio: float
    cusp_depth: float
    n_cusps: int
    cusp_tilt: float
    enamel_side: float
    enamel_occlusal: float
    bl_ratio: float
    roots: tuple[Root, ...]
    trunk: float
    pulp_scale: float

    @property
    def apex(self) -> float:
        """Deepest ``v`` of the tooth (mm)."""
        return max(r.v1 for r in self.roots)


_CUSP_DEPTH = {"incisor": 0.2, "canine": 2.0, "premolar": 1.5, "molar": 1.3}
_ENAMEL_OCCLUSAL = {"incisor": 1.0, "canine": 1.4, "premolar": 1.8, "molar": 2.1}
_CEJ_RATIO = {"incisor": 0.68, "canine": 0.72, "premolar": 0.70, "molar": 0.76}


def sample_tooth_shape(
    rng: np.random.Generator, fdi: int, size: float, distal_sign: float, width_scale: float = 1.0
) -> ToothShape:
    """Draws one tooth: the type's dimensions times ``size`` with a few percent of individual variation.

    Args:
        rng: random generator.
        fdi: FDI tooth number.
        size: patient size factor (about 1; includes any projection magnification).
        distal_sign: +1 when the distal side of this tooth is towards +u (+x in the image), else -1.
        width_scale: extra factor on mesiodistal sizes only (panoramic projections narrow the front teeth).

    Returns:
        The tooth shape.
    """
    t = tooth_type(fdi)
    jit = lambda s: float(rng.normal(1.0, s))  # noqa: E731 - tiny local helper
    width = t.width * size * width_scale * jit(0.04)
    crown, root = t.crown_height * size * jit(0.05), t.root_length * size * jit(0.07)
    cej = _CEJ_RATIO[t.name] * jit(0.04)
    trunk = float(rng.uniform(2.5, 4.0)) * size if t.n_roots > 1 else 0.0
    roots = _sample_roots(rng, t.n_roots, width * cej / 2, crown, root, trunk, distal_sign)
    return ToothShape(
        fdi=fdi, kind=t.name, width=width, crown_height=crown, root_length=root, cej_ratio=cej,
        contact_frac=float(rng.uniform(0.22, 0.38)) if t.name in ("premolar", "molar") else 0.25,
        occlusal_ratio=float(rng.uniform(0.72, 0.86)), cusp_depth=_CUSP_DEPTH[t.name] * size * jit(0.15),
        n_cusps=t.n_cusps, cusp_tilt=float(rng.normal(0.0, 0.04)),
        enamel_side=float(rng.uniform(1.0, 1.5)) * size if t.name != "incisor" else 0.8 * size,
        enamel_occlusal=_ENAMEL_OCCLUSAL[t.name] * size * jit(0.1), bl_ratio=t.bl_ratio * jit(0.05),
        roots=roots, trunk=trunk, pulp_scale=float(rng.uniform(0.7, 1.3)),
    )


def _sample_roots(
    rng: np.random.Generator, n: int, half_cej: float, crown: float, length: float, trunk: float, distal: float
) -> tuple[Root, ...]:
    """Roots of one tooth; a single root continues the crown outline, several roots start in the trunk."""
    curve = distal * float(rng.uniform(0.0, 0.012))
    if n == 1:
        return (Root(crown, crown + length, 0.0, 0.0, curve, half_cej),)
    start = crown + trunk - 1.2
    width = 0.42 * half_cej if n == 2 else 0.38 * half_cej
    roots = []
    for side in (-1.0, 1.0):
        end = crown + length * float(rng.uniform(0.9, 1.0))
        spread = side * float(rng.uniform(0.0, 0.06))
        roots.append(Root(start, end, side * (half_cej - width), spread, curve, width))
    if n == 3:
        roots.append(Root(start, crown + length * 1.05, 0.0, 0.0, curve, 0.9 * width))
    return tuple(roots)


def crown_half_width(shape: ToothShape, v: np.ndarray) -> np.ndarray:
    """Half-width of the crown outline against ``v``; 0 outside it.

    Args:
        shape: the tooth.
        v: (N,) positions along the long axis (mm).

    Returns:
        (N,) float32 half-widths (mm) of the crown (plus the root trunk of multi-rooted teeth).
    """
    half, cej, hc = shape.width / 2, shape.cej_ratio * shape.width / 2, shape.crown_height
    s = np.clip(v / hc, 0.0, 1.0)
    sc, k0 = shape.contact_frac, shape.occlusal_ratio
    top = half * np.sqrt(1.0 - (1.0 - k0 * k0) * np.clip((sc - s) / sc, 0.0, 1.0) ** 2)
    neck = cej + (half - cej) * np.cos(0.5 * np.pi * np.clip((s - sc) / (1.0 - sc), 0.0, 1.0))
    w = np.where(s < sc, top, neck)
    below = v - hc
    if shape.trunk > 0.0:  # root trunk, closed by a rounded furcation roof between the roots
        close = 0.6 * cej
        tail = cej * np.sqrt(np.clip(1.0 - (np.clip(below - shape.trunk, 0.0, None) / close) ** 2, 0.0, 1.0))
        w = np.where(below > 0, tail, w)
    else:  # the single root is drawn separately; overlap it a little so the outline has no seam
        w = np.where(below > _NECK_OVERLAP_MM, 0.0, w)
    return np.where(v >= 0.0, w, 0.0).astype(np.float32)


def enamel_thickness(shape: ToothShape, v: np.ndarray) -> np.ndarray:
    """Proximal enamel thickness against ``v``: full near the contact, thinning to 0 at the CEJ. (N,) float32."""
    hc = shape.crown_height
    ramp = np.clip((hc - v) / (0.6 * hc), 0.0, 1.0) ** 0.7
    return (shape.enamel_side * ramp).astype(np.float32)


def occlusal_surface(shape: ToothShape, u: np.ndarray) -> np.ndarray:
    """``v`` of the occlusal (incisal) outline against ``u``: 0 at the cusp tips, ``cusp_depth`` at fissures.

    Args:
        shape: the tooth.
        u: (N,) positions across the tooth (mm).

    Returns:
        (N,) float32.
    """
    occ = shape.occlusal_ratio * shape.width
    x = np.clip(u / occ + 0.5, -0.25, 1.25)
    n = max(shape.n_cusps, 1)
    if shape.n_cusps == 0:  # incisal edge with faint mamelons
        n = 3
    # rounded cusps, V-shaped fissures: 1 - |sin|^0.7 is flat-topped at the tips and pointed at the fissures
    profile = shape.cusp_depth * (1.0 - np.abs(np.sin(np.pi * n * x)) ** _CUSP_SHARPNESS)
    edge = np.clip(np.abs(u) - occ / 2, 0.0, None)  # marginal ridges fall off beyond the occlusal table
    return (profile + 0.9 * edge * edge + shape.cusp_tilt * u).astype(np.float32)


def root_centre(root: Root, v: np.ndarray) -> np.ndarray:
    """Centre line ``u`` of a root against ``v`` (mm). (N,) float32."""
    t = np.clip(v - root.v0, 0.0, None)
    return (root.c0 + root.spread * t + root.curve * t * t).astype(np.float32)


def root_half_width(root: Root, v: np.ndarray, taper: float = 0.65) -> np.ndarray:
    """Half-width of a tapering root with a rounded apex against ``v``; 0 outside [v0, v1]. (N,) float32."""
    t = (v - root.v0) / (root.v1 - root.v0)
    w = root.width * (1.0 - taper * np.clip(t, 0, 1) ** 1.2) * np.sqrt(np.clip(1.0 - np.clip(t, 0, 1) ** 6, 0, 1))
    return np.where((t >= 0.0) & (t <= 1.0), w, 0.0).astype(np.float32)
