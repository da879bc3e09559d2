"""``dentalmim predict``: DICOM files or folders in; findings JSON, overlay PNG and DICOM SR out, per image.

Each input is read once (pixels for the model and the overlay, the data set for the SR). A file that cannot be
read is reported and skipped; the batch goes on.

Outputs, for an input ``scan.dcm``: ``OUT/scan.findings.json`` (boxes in pixels and in mm where the spacing is
known, scores, classes, image-level probability, model version, timing), ``OUT/scan.overlay.png`` (the radiograph
with the findings at or above the operating threshold) and, with ``write_sr``, ``OUT/scan.sr.dcm`` (TID 1500
Comprehensive 3D SR in the same study as the input).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from dentalmim.data.datasets import find_dicom_files
from dentalmim.data.dicom import read_dicom_dataset
from dentalmim.errors import ConfigError, DicomReadError
from dentalmim.inference.overlay import save_overlay_png
from dentalmim.inference.sr import SRWriteError, write_findings_sr

if TYPE_CHECKING:
    from dentalmim.inference.predictor import Prediction, Predictor

log = logging.getLogger(__name__)


@dataclass
class PredictSummary:
    """What :func:`predict_files` wrote."""

    written: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    #: image-specific warnings (e.g. an image type the threshold saw few validation images of), each once, in
    #: the order first met; the model-wide ones are :attr:`Predictor.warnings`.
    image_warnings: list[str] = field(default_factory=list)

    def format(self) -> str:
        """One line: counts of predicted and unreadable inputs."""
        failed = f", {len(self.failed)} unreadable" if self.failed else ""
        positives = sum(1 for w in self.written if w["caries_present"] == "yes")
        return f"{len(self.written)} images predicted ({positives} with caries){failed}"


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (searched recursively for DICOM files) into a sorted, de-duplicated file list."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(path for path, _ in find_dicom_files(item))
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"input should be a DICOM file or a folder, got {item} (not found).")
    return sorted(dict.fromkeys(_resolved(p) for p in files))


def _resolved(path: Path) -> Path:
    """``path`` resolved; a dangling link or a link loop stays as named (absolute), so reading it reports the
    problem under the name the user gave."""
    if not path.exists():
        return path.absolute()
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _stem(path: Path, taken: set[str]) -> str:
    """Output name stem: the file name without ``.dcm``, made unique within one run."""
    base = path.name[:-4] if path.name.lower().endswith(".dcm") else path.name
    stem, n = base, 1
    while stem in taken:
        n += 1
        stem = f"{base}_{n}"
    taken.add(stem)
    return stem


def write_outputs(pred: Prediction, pixels, dataset, out_dir: Path, stem: str, *, write_sr: bool) -> dict[str, str]:
    """Write findings JSON, overlay PNG and optionally the SR of one prediction; returns their paths."""
    findings = pred.to_findings()
    findings_path = out_dir / f"{stem}.findings.json"
    findings_path.write_text(json.dumps(findings, indent=2))
    written = {"findings": str(findings_path), "caries_present": "yes" if pred.caries_present else "no"}
    names = [pred.class_names[i] for i in pred.labels]
    written["overlay"] = str(
        save_overlay_png(
            pixels, pred.boxes, pred.scores, names, out_dir / f"{stem}.overlay.png", threshold=pred.threshold,
            image_probability=pred.image_probability, model_version=pred.model_version,
        )
    )  # fmt: skip
    if write_sr:
        sr_path = out_dir / f"{stem}.sr.dcm"
        write_findings_sr(
            dataset, pred.boxes, pred.scores, names, pred.image_probability,
            algorithm_version=pred.model_version, threshold=pred.threshold, out_path=sr_path,
        )  # fmt: skip
        written["sr"] = str(sr_path)
    return written


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    write_sr: bool = True,
    progress: bool = True,
) -> PredictSummary:
    """Predict every DICOM in ``inputs`` and write its outputs into ``out_dir``.

    Args:
        predictor: the loaded model.
        inputs: DICOM files and/or folders.
        out_dir: output folder (created when missing).
        threshold: box score threshold; default the model's operating threshold.
        write_sr: also write a DICOM SR per image.
        progress: show a progress bar.
    """
    files = collect_inputs(inputs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out should be a folder, got the file {out_dir}.")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:  # before any image is read
        raise ConfigError(f"threshold should be in [0, 1], got {threshold}.")
    out.mkdir(parents=True, exist_ok=True)
    summary, taken = PredictSummary(), set()
    for path in tqdm(files, desc="predict", unit="img", disable=not progress):
        try:
            image, dataset = read_dicom_dataset(path)
        except DicomReadError as exc:
            log.warning("skipped %s", exc)
            summary.failed.append({"file": str(path), "code": exc.code, "reason": exc.reason})
            continue
        stem = _stem(path, taken)
        try:
            pred = predictor.predict(image.pixels, threshold=threshold,
                                     pixel_spacing_mm=image.meta.pixel_spacing_mm)
            pred.note_image_type(image.meta.modality)
            written = write_outputs(pred, image.pixels, dataset, out, stem, write_sr=write_sr)
        except SRWriteError as exc:  # e.g. a header without the UIDs an SR must reference
            _remove_outputs(out, stem)
            log.warning("skipped %s: %s", path, exc)
            summary.failed.append({"file": str(path), "code": "sr_failed",
                                   "reason": f"{exc} (--no-sr writes the findings and overlay without an SR)"})
            continue
        summary.image_warnings += [w for w in pred.warnings
                                   if w not in predictor.warnings and w not in summary.image_warnings]
        summary.written.append({"file": str(path), **written})
    return summary


def _remove_outputs(out: Path, stem: str) -> None:
    """Deletes what :func:`write_outputs` wrote for ``stem`` before it failed: no half set of outputs is left."""
    for suffix in (".findings.json", ".overlay.png", ".sr.dcm"):
        (out / f"{stem}{suffix}").unlink(missing_ok=True)
