"""Dental work seen on radiographs: amalgam and composite fillings, metal crowns, root canal fillings.

Restorations are much denser than enamel (amalgam and metal saturate the image) and sharp-edged, so a detector
must learn that "very bright" is not "caries". A restored surface gets no lesion in this simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dentalmim.data.synth_anatomy import ToothShape
from dentalmim.data.synth_tooth import MU_ENAMEL, MU_SOFT, ToothPatch, pulp_thickness

#: Attenuation (1/mm) of restorative materials.
MU_MATERIAL = {"amalgam": 1.4, "composite": 0.22, "metal": 1.6}
MU_GUTTA_PERCHA = 0.5
#: Probability of each restoration kind given that a tooth is restored.
KIND_WEIGHTS = {"occlusal": 0.45, "proximal": 0.4, "crown": 0.15}
#: Along-beam depth of a filled cavity, as a fraction of the crown's buccolingual size.
_CAVITY_DEPTH = 0.45


@dataclass(frozen=True)
class Restoration:
    """One restoration in tooth coordinates (mm).

    Attributes:
        kind: "occlusal" (class I) | "proximal" (class II: occlusal + proximal box) | "crown".
        side: proximal side (-1/+1) of a class II filling, else 0.
        material: "amalgam" | "composite" | "metal".
        half_width: half-width of the occlusal box.
        floor: depth of the occlusal box below the cusp tips.
        box_floor: ``v`` of the floor of the proximal box.
        root_filled: root canals filled with gutta-percha.
    """

    kind: str
    side: float
    material: str
    half_width: float
    floor: float
    box_floor: float
    root_filled: bool

    def blocks(self, site: str, side: float) -> bool:
        """Whether a lesion at ``site``/``side`` would sit on this restoration."""
        if self.kind == "crown":
            return True
        if site == "occlusal":
            return True
        return self.kind == "proximal" and site != "cervical" and side == self.side


def sample_restoration(rng: np.random.Generator, shape: ToothShape) -> Restoration:
    """Draws a restoration suited to ``shape`` (crowns and class II boxes on posterior teeth only)."""
    kinds = list(KIND_WEIGHTS)
    probs = np.array([KIND_WEIGHTS[k] for k in kinds])
    if shape.kind in ("incisor", "canine"):
        probs[kinds.index("occlusal")] = 0.0
    kind = str(rng.choice(kinds, p=probs / probs.sum()))
    material = "metal" if kind == "crown" else str(rng.choice(["amalgam", "composite"], p=[0.6, 0.4]))
    if shape.kind in ("incisor", "canine") and kind != "crown":
        material = "composite"  # front teeth get tooth-coloured fillings
    hc = shape.crown_height
    return Restoration(
        kind=kind, side=float(rng.choice([-1.0, 1.0])) if kind == "proximal" else 0.0, material=material,
        half_width=float(rng.uniform(0.15, 0.3)) * shape.width, floor=float(rng.uniform(0.3, 0.5)) * hc,
        box_floor=float(rng.uniform(0.6, 0.85)) * hc, root_filled=kind == "crown" and rng.random() < 0.7,
    )


def restoration_mask(rest: Restoration, shape: ToothShape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean (h, w) mask of the filled region on the patch grid (before clipping to the tooth)."""
    uu, vv = u[None, :], v[:, None]
    if rest.kind == "crown":
        return np.broadcast_to(vv <= shape.crown_height + 0.3, (v.size, u.size))
    box = (uu / rest.half_width) ** 4 + (np.maximum(vv, 0.0) / rest.floor) ** 4 <= 1.0
    if rest.kind == "proximal":
        lateral = rest.side * uu - 0.5 * rest.half_width
        reach = shape.width / 2 + 0.5 - 0.5 * rest.half_width
        box |= (lateral >= 0) & ((lateral / reach) ** 4 + (np.maximum(vv, 0.0) / rest.box_floor) ** 4 <= 1.0)
    return box & (vv >= -1.0)


def apply_restoration(patch: ToothPatch, shape: ToothShape, rest: Restoration) -> None:
    """Adds the restoration to ``patch`` in place (filled cavity replaces enamel/dentin along the beam)."""
    mask = restoration_mask(rest, shape, patch.u, patch.v) & (patch.thickness > 0.0)
    mu = MU_MATERIAL[rest.material]
    if rest.kind == "crown":
        fill = np.minimum(patch.thickness, 3.0)
    else:
        fill = np.minimum(patch.thickness, _CAVITY_DEPTH * shape.bl_ratio * shape.width)
    patch.attenuation += np.where(mask, (mu - MU_ENAMEL) * fill, 0.0).astype(np.float32)
    if rest.root_filled:
        canal = pulp_thickness(shape, patch.u, patch.v) * (patch.v[:, None] > 0.6 * shape.crown_height)
        patch.attenuation += (MU_GUTTA_PERCHA - MU_SOFT) * canal
