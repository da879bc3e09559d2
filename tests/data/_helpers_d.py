"""Tiny DICOM + COCO fixtures for the dataset tests (coco, transforms, datamodules).

Files are uncompressed explicit-VR little-endian MONOCHROME2 written with pydicom directly, so these tests do not
depend on the encoders. Lesions are dark squares on a brighter, mildly textured background, so a test can check
that a box still sits on its lesion after cropping and augmentation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tests.dicom_files import write_dicom as write_tiny_dicom

BITS = 12
BACKGROUND = 0.7  # of full scale
LESION = 0.15


def write_dicom(path: Path, pixels: np.ndarray, *, bits: int = BITS) -> Path:
    """Write ``pixels`` (H, W) unsigned stored values as a single-frame MONOCHROME2 DICOM file."""
    return write_tiny_dicom(path, pixels, bits=bits)


def lesion_image(height: int, width: int, boxes: Sequence[Sequence[float]], *, seed: int = 0,
                 bits: int = BITS) -> np.ndarray:
    """(H, W) uint16 stored values: textured bright background, dark squares filling each xyxy integer box."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    img = BACKGROUND + 0.05 * rng.standard_normal((height, width))
    for x1, y1, x2, y2 in boxes:
        img[int(y1):int(y2), int(x1):int(x2)] = LESION
    return np.clip(np.round(img * top), 0, top).astype(np.uint16)


def image_spec(image_id: int, patient: str, size: tuple[int, int], boxes: Sequence[Sequence[int]] = (),
               **extra: Any) -> dict[str, Any]:
    """A compact description of one image for :func:`write_coco` (size is (H, W), boxes xyxy)."""
    return {"id": image_id, "patient_id": patient, "size": size, "boxes": [list(b) for b in boxes], **extra}


def coco_dict(specs: Sequence[dict[str, Any]], *, categories: Sequence[str] = ("caries",)) -> dict[str, Any]:
    """The COCO object for ``specs`` (file names ``images/<id>.dcm``)."""
    images, anns = [], []
    for spec in specs:
        h, w = spec["size"]
        images.append({"id": spec["id"], "file_name": f"images/{spec['id']}.dcm", "width": w, "height": h,
                       "patient_id": spec["patient_id"], **({"kind": spec["kind"]} if "kind" in spec else {})})
        for k, (x1, y1, x2, y2) in enumerate(spec["boxes"]):
            ann = {"id": len(anns) + 1, "image_id": spec["id"], "category_id": 1 + spec.get("cats", [0] * 99)[k],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if "depths" in spec:
                ann["attributes"] = {"depth": spec["depths"][k]}
            anns.append(ann)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
    return {"images": images, "annotations": anns, "categories": cats}


def write_coco(root: Path, specs: Sequence[dict[str, Any]], *, write_images: bool = True,
               categories: Sequence[str] = ("caries",)) -> Path:
    """Write ``root/annotations.json`` and (optionally) one lesion DICOM per image; returns the JSON path."""
    root.mkdir(parents=True, exist_ok=True)
    if write_images:
        for spec in specs:
            h, w = spec["size"]
            write_dicom(root / "images" / f"{spec['id']}.dcm", lesion_image(h, w, spec["boxes"], seed=spec["id"]))
    path = root / "annotations.json"
    path.write_text(json.dumps(coco_dict(specs, categories=categories)))
    return path


def patient_specs(n_patients: int, *, positive_every: int = 2, images_per_patient: int = 2,
                  size: tuple[int, int] = (64, 96)) -> list[dict[str, Any]]:
    """Specs for ``n_patients`` patients; every ``positive_every``-th patient has one lesion per image."""
    specs = []
    for p in range(n_patients):
        for k in range(images_per_patient):
            boxes = [(10 + 3 * k, 12, 26 + 3 * k, 28)] if p % positive_every == 0 else []
            specs.append(image_spec(len(specs) + 1, f"P{p:03d}", size, boxes))
    return specs
