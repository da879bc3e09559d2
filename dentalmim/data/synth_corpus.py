"""Planning a synthetic corpus: which image is which kind, patient, study and file format; COCO records.

Every image gets its own random stream (``image_rng(seed, split, index)``), so an image does not depend on the
others and a test can regenerate any file's ground truth. Patients own several images over one or two studies
(visits), so patient-level splits matter; labeled and unlabeled images never share a patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dentalmim.data.synth_dicom import (
    SYNTAX_CYCLE,
    DicomIds,
    FileFormat,
    choose_format,
    patient_id,
    study_date,
    synth_uid,
)
from dentalmim.data.synth_lesions import Lesion

#: Codes of the two corpus parts in the random streams.
SPLIT_CODES = {"labeled": 1, "unlabeled": 2}
#: File name stem per split.
FILE_PREFIX = {"labeled": "img", "unlabeled": "unl"}
#: Share of periapicals among intraoral images.
PERIAPICAL_SHARE = 0.2
#: Images per patient (inclusive range) and probability of a second visit.
IMAGES_PER_PATIENT = (2, 5)
SECOND_STUDY_PROBABILITY = 0.4
#: Series number per image kind.
_SERIES = {"bitewing": 1, "periapical": 2, "panoramic": 3}
#: COCO category of every lesion.
CARIES_CATEGORY = {"id": 1, "name": "caries"}


@dataclass(frozen=True)
class ImagePlan:
    """Everything decided about one corpus image before it is drawn.

    Attributes:
        split: "labeled" | "unlabeled".
        index: position in its split (0-based).
        name: file name, e.g. ``img_00007.dcm``.
        kind: "bitewing" | "periapical" | "panoramic".
        caries_free: draw no lesion.
        fmt: storage format.
        ids: DICOM identifiers.
    """

    split: str
    index: int
    name: str
    kind: str
    caries_free: bool
    fmt: FileFormat
    ids: DicomIds


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator that draws image ``index`` of ``split`` in the corpus of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], 1, index]))


def _kind(rng: np.random.Generator, panoramic_fraction: float) -> str:
    if rng.random() < panoramic_fraction:
        return "panoramic"
    return "periapical" if rng.random() < PERIAPICAL_SHARE else "bitewing"


def _patient_ids(rng: np.random.Generator, seed: int, split: str, patient: int, count: int) -> list[DicomIds]:
    """Identifiers of ``count`` images of one patient spread over one or two studies."""
    birth = f"{int(rng.integers(1940, 2010))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    sex = str(rng.choice(["F", "M", "O"], p=[0.49, 0.49, 0.02]))
    n_studies = 2 if count >= 3 and rng.random() < SECOND_STUDY_PROBABILITY else 1
    dates = sorted(study_date(rng) for _ in range(n_studies))
    out = []
    for j in range(count):
        study = j * n_studies // count
        out.append(DicomIds(
            patient_number=patient, patient_birth_date=birth, patient_sex=sex,
            study_uid=synth_uid(seed, split, patient, "study", study), study_date=dates[study],
            study_number=patient * 10 + study, series_uid="", series_number=0,
            sop_uid=synth_uid(seed, split, patient, "instance", j), instance_number=j + 1,
        ))
    return out


def plan_split(
    seed: int, split: str, n: int, first_patient: int, *, panoramic_fraction: float, caries_free_fraction: float,
    syntaxes: Sequence[str] | None, images_per_patient: tuple[int, int] = IMAGES_PER_PATIENT,
) -> list[ImagePlan]:
    """Plans the ``n`` images of one split; patients are numbered from ``first_patient`` and own
    ``images_per_patient`` (inclusive range) images each, the last one possibly fewer.

    The transfer syntaxes cycle through ``syntaxes`` (default :data:`SYNTAX_CYCLE`) in a shuffled order, so every
    syntax of the cycle occurs once ``n`` reaches the cycle length.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], 0]))
    cycle = tuple(syntaxes) if syntaxes else SYNTAX_CYCLE
    order = rng.permutation(max(n, len(cycle)))
    schedule = [cycle[int(k) % len(cycle)] for k in order[:n]]
    ids: list[DicomIds] = []
    patient = first_patient
    while len(ids) < n:
        ids.extend(_patient_ids(rng, seed, split, patient, int(rng.integers(images_per_patient[0],
                                                                               images_per_patient[1] + 1))))
        patient += 1
    plans = []
    for i in range(n):
        kind = _kind(rng, panoramic_fraction)
        series_uid = synth_uid(seed, split, ids[i].study_uid, "series", kind)
        plan_ids = DicomIds(**{**ids[i].__dict__, "series_uid": series_uid, "series_number": _SERIES[kind]})
        plans.append(ImagePlan(split, i, f"{FILE_PREFIX[split]}_{i:05d}.dcm", kind,
                               bool(rng.random() < caries_free_fraction), choose_format(rng, schedule[i]), plan_ids))
    return plans


def coco_image(image_id: int, file_name: str, plan: ImagePlan, shape: tuple[int, int]) -> dict:
    """COCO ``images[]`` entry."""
    return {"id": image_id, "file_name": file_name, "width": int(shape[1]), "height": int(shape[0]),
            "patient_id": patient_id(plan.ids.patient_number), "kind": plan.kind}


def coco_annotations(first_id: int, image_id: int, boxes: np.ndarray, lesions: list[Lesion]) -> list[dict]:
    """COCO ``annotations[]`` entries of one image: ``bbox`` [x, y, w, h] from xyxy ``boxes`` (N, 4)."""
    out = []
    for k, (box, lesion) in enumerate(zip(boxes.tolist(), lesions, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append({"id": first_id + k, "image_id": image_id, "category_id": CARIES_CATEGORY["id"],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                    "tooth": str(lesion.fdi), "attributes": {"depth": lesion.depth, "iccms": lesion.iccms}})
    return out
