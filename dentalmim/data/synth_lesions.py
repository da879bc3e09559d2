"""Caries lesions: where they occur on a tooth, their shape and depth class, and how they darken the image.

A lesion is mineral loss, so it lowers the attenuation along the rays that cross it: inside its mask the line
integral drops by ``strength * mu * min(tooth thickness, buccolingual extent)``, fading towards the advancing
front (demineralisation is strongest at the surface). Shapes follow the radiographic picture: a wedge in the enamel with
its base on the surface and its tip towards the dentino-enamel junction (DEJ); a dentin lesion also spreads along
the DEJ and narrows towards the pulp. Sites are the proximal surfaces just below the contact point (the classic
bitewing site), the occlusal fissures (dentin lesions only) and the cervical region near the CEJ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dentalmim.data.synth_anatomy import (
    ToothShape,
    crown_half_width,
    enamel_thickness,
    occlusal_surface,
    root_half_width,
)
from dentalmim.data.synth_tooth import MU_DENTIN, MU_ENAMEL, ToothPatch

#: Site probabilities (proximal sites are split evenly between the two sides).
SITE_WEIGHTS = {"proximal": 0.7, "occlusal": 0.18, "cervical": 0.12}
#: Probability that a proximal lesion is confined to the enamel.
ENAMEL_FRACTION = 0.5
#: Mineral fraction lost inside a lesion, per depth class: (low, high).
STRENGTH = {"enamel": (0.4, 0.75), "dentin": (0.35, 0.7)}
#: Buccolingual extent (mm) of a lesion along the beam, per depth class: (low, high).
BL_EXTENT_MM = {"enamel": (1.5, 3.5), "dentin": (2.0, 4.5)}
#: Relative loss of contrast from the surface to the advancing front of a lesion.
_FRONT_FADE = 0.5
#: Lateral border zone (fraction of the local half-width) over which the loss ramps from _EDGE_FLOOR to full.
_EDGE_SOFTNESS, _EDGE_FLOOR = 0.6, 0.3
#: Occlusal lesions hide under thick fissure enamel: the enamel part shows only this fraction of its loss.
_OCCLUSAL_ENAMEL_WEIGHT = 0.35
#: With ``contrast > 1`` a lesion removes at most this share of the tooth's attenuation along a ray.
_MAX_LOSS_FRACTION = 0.9
#: Relative amplitude of the boundary irregularity.
_WOBBLE = 0.12


@dataclass(frozen=True)
class Lesion:
    """One carious lesion in tooth coordinates (mm).

    Attributes:
        fdi: tooth number.
        site: "mesial" | "distal" | "occlusal" | "cervical".
        side: -1 or +1: the proximal side (sign of ``u``); 0 for occlusal lesions.
        depth: "enamel" | "dentin".
        iccms: radiographic ICCMS class "RA" (enamel) | "RB" (outer half of dentin) | "RC" (inner half).
        centre: lesion centre along the surface (``v`` for proximal/cervical, ``u`` for occlusal).
        enamel: enamel thickness at the site.
        reach: depth from the surface.
        half_base: half-width of the enamel wedge at the surface.
        dentin_half_base: half-width of the dentin part at the DEJ.
        sharpness: wedge exponent (1 = triangle, < 1 = rounder).
        strength: mineral fraction lost inside the lesion.
        bl_extent: extent of the lesion along the beam (mm).
        phases: four random phases of the boundary irregularity.
        contrast: multiplies the attenuation the lesion removes (1 = the calibrated, subtle default; see
            :func:`apply_lesions`).
    """

    fdi: int
    site: str
    side: float
    depth: str
    iccms: str
    centre: float
    enamel: float
    reach: float
    half_base: float
    dentin_half_base: float
    sharpness: float
    strength: float
    bl_extent: float
    phases: tuple[float, float, float, float]
    contrast: float = 1.0


def _site_name(side: float, distal_sign: float) -> str:
    return "distal" if side == distal_sign else "mesial"


def sample_lesion(
    rng: np.random.Generator, shape: ToothShape, site: str, side: float, distal_sign: float
) -> Lesion:
    """Draws one lesion at ``site`` ("proximal" | "occlusal" | "cervical") of ``shape``.

    Args:
        rng: random generator.
        shape: the tooth.
        site: where on the tooth.
        side: -1 or +1 for proximal and cervical sites (ignored for occlusal ones).
        distal_sign: +1 when the distal side of the tooth is towards +u.

    Returns:
        The lesion (its depth class, ICCMS score and size are drawn here).
    """
    hc, s = shape.crown_height, (shape.width / 7.0)
    dentin_span = 0.5 * shape.cej_ratio * shape.width * 0.55
    depth = "enamel" if site == "proximal" and rng.random() < ENAMEL_FRACTION else "dentin"
    if site == "occlusal":
        centre = float(rng.uniform(-0.2, 0.2) * shape.width * shape.occlusal_ratio)
        enamel, name, side = shape.enamel_occlusal, "occlusal", 0.0
    else:
        if site == "cervical":
            centre, name = hc + float(rng.uniform(-0.8, 0.6)), "cervical"
        else:
            centre, name = float(rng.uniform(shape.contact_frac * hc + 0.4, hc - 1.2)), _site_name(side, distal_sign)
        enamel = float(enamel_thickness(shape, np.array([centre], np.float32))[0])
    frac = float(rng.uniform(0.15, 0.8))
    half_base = float(rng.uniform(0.22, 0.75)) * s * (0.5 if site == "occlusal" else 1.0)
    if depth == "enamel":  # incipient lesions are small both ways: 0.25 mm (about 10 px at scale 1) and up
        reach, iccms = float(rng.uniform(0.2, 0.95)) * enamel, "RA"
        half_base = reach * float(rng.uniform(0.45, 1.1))
    else:
        reach, iccms = enamel + frac * dentin_span, ("RB" if frac < 0.5 else "RC")
    lo, hi = STRENGTH[depth]
    return Lesion(
        fdi=shape.fdi, site=name, side=side, depth=depth,
        iccms=iccms, centre=centre, enamel=enamel, reach=max(reach, 0.25 * s),
        half_base=half_base,
        dentin_half_base=float(rng.uniform(0.45, 1.4)) * s * (1.6 if site == "occlusal" else 1.0),
        sharpness=float(rng.uniform(0.5, 1.1)), strength=float(rng.uniform(lo, hi)),
        bl_extent=float(rng.uniform(*BL_EXTENT_MM[depth])) * s,
        phases=tuple(float(x) for x in rng.uniform(0.0, 2.0 * np.pi, 4)),
    )


def _outline_half_width(shape: ToothShape, v: np.ndarray) -> np.ndarray:
    """Half-width of the tooth outline (crown, trunk or single root) against ``v``, (N,) float32."""
    w = crown_half_width(shape, v)
    if len(shape.roots) == 1:
        w = np.maximum(w, root_half_width(shape.roots[0], v))
    return w


def _profile(lesion: Lesion, p: np.ndarray) -> np.ndarray:
    """Allowed half-width of the lesion at depth ``p`` from the surface (mm), same shape as ``p``."""
    e, reach, g = lesion.enamel, lesion.reach, lesion.sharpness
    if lesion.depth == "enamel":
        return lesion.half_base * np.clip(1.0 - p / reach, 0.0, 1.0) ** g
    enamel_part = lesion.half_base * (1.0 - 0.6 * np.clip(p / max(e, 1e-3), 0.0, 1.0))
    dentin_part = lesion.dentin_half_base * np.clip(1.0 - (p - e) / max(reach - e, 1e-3), 0.0, 1.0) ** g
    return np.where(p < e, enamel_part, dentin_part)


def _wobble(lesion: Lesion, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    a, b, c, d = lesion.phases
    scale = 2.0 * np.pi / max(lesion.reach, 0.2)
    return 1.0 + _WOBBLE * (np.sin(scale * 1.1 * p + a) + np.sin(scale * 0.8 * q + b) * np.cos(scale * 0.6 * p + c))


def lesion_mask(
    lesion: Lesion, shape: ToothShape, u: np.ndarray, v: np.ndarray
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Boolean mask of ``lesion`` on the patch grid, on the sub-window it covers.

    Args:
        lesion: the lesion.
        shape: its tooth.
        u: (w,) patch column coordinates (mm).
        v: (h,) patch row coordinates (mm).

    Returns:
        (rows, cols, mask (r, c) bool, depth below the surface (r, c) mm, loss weight (r, c) in (0, 1]);
        empty arrays when the site misses the patch.
    """
    extent = max(lesion.half_base, lesion.dentin_half_base) * (1.0 + 2.0 * _WOBBLE)
    if lesion.site == "occlusal":
        cs = slice(*np.searchsorted(u, [lesion.centre - extent, lesion.centre + extent]))
        top = occlusal_surface(shape, u[cs])
        rs = slice(0, int(np.searchsorted(v, float(top.max()) + lesion.reach + 0.1)))
        p = v[rs, None] - top[None, :]
        q = u[None, cs] - lesion.centre
    else:
        rs = slice(*np.searchsorted(v, [lesion.centre - extent, lesion.centre + extent]))
        w = _outline_half_width(shape, v[rs])
        if w.size == 0:
            empty = np.zeros((0, 0), np.float32)
            return rs, slice(0, 0), empty.astype(bool), empty, empty
        inner, outer = float(w.min()) - lesion.reach - 0.3, float(w.max()) + 0.3
        lo, hi = sorted((lesion.side * inner, lesion.side * outer))
        cs = slice(*np.searchsorted(u, [lo, hi]))
        p = w[:, None] - lesion.side * u[None, cs]
        q = v[rs, None] - lesion.centre
    allowed = _profile(lesion, p) * _wobble(lesion, p, q)
    mask = (p >= 0.0) & (p <= lesion.reach) & (np.abs(q) <= allowed)
    # demineralisation fades towards the lateral borders and the advancing front: soft-looking, exact mask
    lateral = np.clip((allowed - np.abs(q)) / np.maximum(_EDGE_SOFTNESS * allowed, 1e-3), 0.0, 1.0)
    front = 1.0 - _FRONT_FADE * np.clip(p / lesion.reach, 0.0, 1.0)
    return rs, cs, mask, p, (_EDGE_FLOOR + (1.0 - _EDGE_FLOOR) * lateral) * front


def apply_lesions(patch: ToothPatch, shape: ToothShape, lesions: list[Lesion]) -> list[int]:
    """Darkens ``patch`` inside each lesion and records lesion ids (1-based, in order) in ``patch.labels``.

    Args:
        patch: the rendered tooth, modified in place.
        shape: its shape.
        lesions: lesions of this tooth.

    A lesion's ``contrast`` multiplies the loss; above 1 (advanced, cavitated-looking lesions) the loss is capped at
    ``_MAX_LOSS_FRACTION`` of the tooth's own attenuation along each ray.

    Returns:
        Pixel counts of each lesion's mask inside the tooth (0 when a lesion fell outside the patch).
    """
    if patch.labels is None:
        patch.labels = np.zeros(patch.attenuation.shape, np.uint8)
    counts = []
    for idx, lesion in enumerate(lesions, start=1):
        rs, cs, mask, p, weight = lesion_mask(lesion, shape, patch.u, patch.v)
        thick = patch.thickness[rs, cs]
        mask &= thick > 0.0
        enamel_mu = MU_ENAMEL * (_OCCLUSAL_ENAMEL_WEIGHT if lesion.site == "occlusal" else 1.0)
        mu = np.where(p < lesion.enamel, enamel_mu, MU_DENTIN)
        loss = lesion.contrast * lesion.strength * mu * np.minimum(thick, lesion.bl_extent) * weight
        if lesion.contrast > 1.0:  # a lesion cannot remove more than the tooth there: keep 10 % of it
            loss = np.minimum(loss, _MAX_LOSS_FRACTION * patch.attenuation[rs, cs])
        patch.attenuation[rs, cs] -= np.where(mask, loss, 0.0).astype(np.float32)
        patch.labels[rs, cs][mask] = idx
        counts.append(int(mask.sum()))
    return counts
