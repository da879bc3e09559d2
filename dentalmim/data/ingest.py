"""``dentalmim ingest SRC_DIR OUT_DIR``: validate, de-identify and index a folder of DICOM radiographs.

Every regular, non-hidden file under SRC_DIR (recursively, in sorted order; OUT_DIR is skipped when it lies
inside SRC_DIR) is fully read with :func:`dentalmim.data.dicom.read_dicom_dataset` (so corrupt pixel data is
caught here, not during training), de-identified with :class:`dentalmim.data.deid.Deidentifier` and written in
its original transfer syntax to ``OUT_DIR/images/<new SOPInstanceUID>.dcm`` (atomically). Outputs:

* ``OUT_DIR/manifest.json``: a list of records, one per image, sorted by ``file`` (see :func:`_record`); no
  original identifier is stored except the source path relative to SRC_DIR (keep folder names free of names);
* ``OUT_DIR/rejected.json``: ``[{file, code, reason}]`` for every file that is not a usable radiograph;
* ``OUT_DIR/.deid_salt`` (unless ``salt_path`` is given): the secret behind pseudonyms and UIDs. Keep it to map
  later batches consistently; do not publish it with the data.
* ``OUT_DIR/.deid_salt_id``: a one-way fingerprint of that salt. A re-run with another salt is refused while
  OUT_DIR holds images: kept and new files would carry pseudonyms of two salts, one patient under two names.

OUT_DIR mirrors SRC_DIR: a re-run skips files whose content (sha256) is already ingested with an intact output,
re-ingests changed files and drops records (and output files) of sources that are gone, so re-running on the same
source is a no-op that yields byte-identical outputs and the same manifest. One bad file never stops the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dentalmim.data.deid import Deidentifier, load_or_create_salt
from dentalmim.data.dicom import DEFAULT_MAX_PIXELS, read_dicom_dataset
from dentalmim.data.encode import save_dicom
from dentalmim.errors import ConfigError, DicomReadError
from dentalmim.fileio import atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST_NAME, REJECTED_NAME, IMAGES_DIR, SALT_NAME = "manifest.json", "rejected.json", "images", ".deid_salt"
SALT_ID_NAME = ".deid_salt_id"
#: Sidecar files that travel with exports (labels, notes, media directories): ignored, neither read nor rejected.
SIDECAR_SUFFIXES = frozenset({".json", ".txt", ".csv", ".md", ".yaml", ".yml", ".xml", ".html", ".htm", ".log"})
SIDECAR_NAMES = frozenset({"DICOMDIR"})


@dataclass
class IngestSummary:
    """What one :func:`ingest` run did."""

    ingested: int
    skipped_existing: int
    rejected: list[dict[str, str]] = field(default_factory=list)
    manifest_path: Path = Path(MANIFEST_NAME)
    rejected_path: Path = Path(REJECTED_NAME)
    ignored: int = 0

    def format(self) -> str:
        """One line: ``N ingested, K already present, M rejected (see OUT_DIR/rejected.json)``."""
        ignored = f", {self.ignored} sidecar files ignored" if self.ignored else ""
        return (f"{self.ingested} ingested, {self.skipped_existing} already present, {len(self.rejected)} rejected "
                f"(see {self.rejected_path}){ignored}")


@dataclass(frozen=True)
class _Task:
    path: str
    rel: str
    source_sha256: str
    images_dir: str
    salt: bytes
    max_pixels: int


def ingest(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    salt_path: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int = 1,
) -> IngestSummary:
    """Ingests every file under ``src_dir`` into ``out_dir`` (see the module docstring).

    Args:
        src_dir: folder of DICOM files (any names, nested folders).
        out_dir: destination; created when missing.
        max_pixels: largest accepted Rows x Columns.
        salt_path: de-identification salt file; default ``out_dir/.deid_salt`` (created once).
        progress: show a tqdm bar (only on a terminal).
        workers: processes decoding in parallel (1: in this process).

    Returns:
        The counts, the rejections and the paths of the two JSON files.
    """
    src, out = Path(src_dir).resolve(), Path(out_dir).resolve()
    if not src.is_dir():
        raise ConfigError(f"src_dir should be an existing folder, got {src_dir}.")
    if workers < 1:
        raise ConfigError(f"workers should be >= 1, got {workers}.")
    if max_pixels < 1:
        raise ConfigError(f"max_pixels should be >= 1, got {max_pixels}.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir should be a folder, got the file {out_dir}.")
    if out == src or src.is_relative_to(out / IMAGES_DIR):
        raise ConfigError(f"out_dir should not be src_dir (or hold it in {IMAGES_DIR}/): each run would ingest "
                          f"the previous run's outputs again, got {out_dir}.")
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    salt = load_or_create_salt(salt_path if salt_path is not None else out / SALT_NAME)
    old = _load_manifest(out / MANIFEST_NAME)
    _claim_salt(out, salt, has_images=bool(old))
    _remove_stale_temporaries(out / IMAGES_DIR)
    records, rejected, tasks, skipped, seen = [], [], [], 0, {}
    files, broken = _walk(src, out)
    rejected += [{"file": p.relative_to(src).as_posix(), "code": "broken_link",
                  "reason": "a symbolic link to nothing (missing target or a loop)"} for p in broken]
    sidecars = [p for p in files if _is_sidecar(p)]
    for path in (p for p in files if not _is_sidecar(p)):
        rel, digest = path.relative_to(src).as_posix(), _sha256_file(path)
        kept = _intact_record(out, old.get(digest))
        if digest in seen:  # byte-identical copy: same SOP instance
            rejected.append(_duplicate(rel, seen[digest]))
            continue
        seen[digest] = rel
        if kept is not None:
            records.append({**kept, "source": rel})
            skipped += 1
        else:
            tasks.append(_Task(str(path), rel, digest, str(out / IMAGES_DIR), salt, max_pixels))
    results = _run(tasks, workers, progress)
    new_records = _commit(out, results, records, rejected)
    _prune(out, old.values(), records + new_records)
    summary = IngestSummary(
        len(new_records), skipped, rejected, out / MANIFEST_NAME, out / REJECTED_NAME, ignored=len(sidecars)
    )
    _write_json(summary.manifest_path, sorted(records + new_records, key=lambda r: r["file"]))
    _write_json(summary.rejected_path, sorted(rejected, key=lambda r: r["file"]))
    logger.debug(summary.format())  # callers print it; keep INFO logs free of duplicates
    return summary


def _walk(src: Path, out: Path) -> tuple[list[Path], list[Path]]:
    """Regular, non-hidden files under ``src`` sorted by relative path, skipping ``out`` and symlinked folders;
    and the links among them that lead nowhere (missing target, loop), to be reported."""
    found, broken = [], []
    for root, dirs, files in os.walk(src):
        here = Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and _resolved_or_none(here / d) != out]
        for name in (n for n in files if not n.startswith(".")):
            path = here / name
            if path.is_file():
                found.append(path)
            elif path.is_symlink() and not path.exists():
                broken.append(path)

    def key(path: Path) -> str:
        return path.relative_to(src).as_posix()

    return sorted(found, key=key), sorted(broken, key=key)


def _resolved_or_none(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop
        return None


def _is_sidecar(path: Path) -> bool:
    """Label, note and media-directory files that sit beside the images (see :data:`SIDECAR_SUFFIXES`)."""
    return path.suffix.lower() in SIDECAR_SUFFIXES or path.name in SIDECAR_NAMES


def _duplicate(rel: str, first: str) -> dict[str, str]:
    return {"file": rel, "code": "duplicate_instance", "reason": f"same SOP Instance UID as {first}"}


def _remove_stale_temporaries(images: Path) -> None:
    """Temporary outputs left by an interrupted run."""
    for tmp in images.glob(".ingest.*"):
        tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _salt_id(salt: bytes) -> str:
    return hashlib.sha256(b"dentalmim de-identification salt id\0" + salt).hexdigest()[:16]


def _claim_salt(out: Path, salt: bytes, has_images: bool) -> None:
    """Record the salt's fingerprint in ``out``; raise :class:`ConfigError` if ``out`` holds images of another salt.

    Folders ingested before fingerprints were written are checked against their own ``.deid_salt`` when it is there;
    one whose salt was kept elsewhere cannot be checked, so it gets a warning and no fingerprint (which would vouch
    for images of an unknown salt).
    """
    marker = out / SALT_ID_NAME
    if marker.exists():
        recorded = marker.read_text().strip()
    elif (out / SALT_NAME).exists():
        recorded = _salt_id((out / SALT_NAME).read_bytes())
    else:
        recorded = None
    if has_images and recorded is None:
        logger.warning("%s holds images ingested without a salt fingerprint and without its own %s: cannot check "
                       "that they were made with this salt (re-ingest into a new folder to be sure).", out, SALT_NAME)
        return
    if has_images and recorded != _salt_id(salt):
        raise ConfigError(f"{out} was de-identified with another salt: its files and the new ones would give one "
                          f"patient two pseudonyms. Pass the salt file it was made with (--salt-file), or ingest "
                          f"into a new folder.")
    marker.write_text(_salt_id(salt) + "\n")


def _load_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Previous records by source sha256 ({} when absent or unreadable)."""
    try:
        records = json.loads(path.read_text())
        return {r["source_sha256"]: r for r in records if isinstance(r, dict) and "source_sha256" in r}
    except (OSError, ValueError, TypeError):
        return {}


def _intact_record(out: Path, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The old record when its output file still exists with the recorded sha256."""
    if record is None:
        return None
    target = out / str(record.get("file", ""))
    if not target.is_file() or _sha256_file(target) != record.get("sha256"):
        return None
    return record


def _run(tasks: list[_Task], workers: int, progress: bool) -> list[dict[str, Any]]:
    """Processes the tasks (in order), with a progress bar on terminals."""
    show = progress and sys.stderr.isatty()
    if workers == 1 or len(tasks) < 2:
        return [_ingest_one(t) for t in tqdm(tasks, disable=not show, unit="file", desc="ingest")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_ingest_one, tasks, chunksize=4)
        return list(tqdm(results, total=len(tasks), disable=not show, unit="file", desc="ingest"))


def _ingest_one(task: _Task) -> dict[str, Any]:
    """Reads, de-identifies and writes one file to a temporary name; returns {record, tmp} or {rejected}."""
    try:
        image, ds = read_dicom_dataset(task.path, max_pixels=task.max_pixels)
        deid = Deidentifier(task.salt)
        clean = deid.apply(ds)
        if "SOPInstanceUID" not in clean:
            clean.SOPInstanceUID = deid.map_uid(f"dentalmim.source.{task.source_sha256}")
        fd, tmp = tempfile.mkstemp(prefix=".ingest.", suffix=".dcm", dir=task.images_dir)
        os.close(fd)
        save_dicom(clean, tmp)
        record = _record(task, image.meta, clean, deid.patient_pseudonym(ds), _sha256_file(Path(tmp)))
        return {"record": record, "tmp": tmp}
    except DicomReadError as exc:
        return {"rejected": {"file": task.rel, "code": exc.code, "reason": exc.reason}}
    except Exception as exc:  # one bad file never stops the batch; the message may quote data: log the type only
        logger.error("internal error while ingesting %s (%s)", task.rel, type(exc).__name__)
        return {"rejected": {"file": task.rel, "code": "internal_error", "reason": type(exc).__name__}}


def _record(task: _Task, meta: Any, clean: Any, pseudonym: str, sha256: str) -> dict[str, Any]:
    """One manifest entry: only de-identified values and header facts."""
    return {
        "file": f"{IMAGES_DIR}/{clean.SOPInstanceUID}.dcm", "source": task.rel, "source_sha256": task.source_sha256,
        "sha256": sha256, "rows": meta.rows, "columns": meta.columns, "bits_stored": meta.bits_stored,
        "modality": meta.modality, "sop_class_uid": meta.sop_class_uid, "photometric": meta.photometric,
        "transfer_syntax_uid": meta.transfer_syntax_uid,
        "pixel_spacing_mm": list(meta.pixel_spacing_mm) if meta.pixel_spacing_mm else None,
        "patient_pseudonym": pseudonym, "study_uid": str(clean.get("StudyInstanceUID", "")),
    }


def _commit(out: Path, results: list[dict[str, Any]], kept: list[dict], rejected: list[dict]) -> list[dict]:
    """Moves temporary outputs into place in source order; a second file with the same SOP instance is rejected."""
    claimed = {r["file"]: r["source"] for r in kept}
    new_records = []
    for result in results:
        if "rejected" in result:
            rejected.append(result["rejected"])
            continue
        record, tmp = result["record"], result["tmp"]
        if record["file"] in claimed:
            Path(tmp).unlink(missing_ok=True)
            rejected.append(_duplicate(record["source"], claimed[record["file"]]))
            continue
        os.replace(tmp, out / record["file"])
        claimed[record["file"]] = record["source"]
        new_records.append(record)
    return new_records


def _prune(out: Path, old: Any, current: list[dict[str, Any]]) -> None:
    """Deletes outputs that only records of vanished or changed sources referenced."""
    keep = {r["file"] for r in current}
    for record in old:
        name = str(record.get("file", ""))
        if name == f"{IMAGES_DIR}/{Path(name).name}" and name not in keep:
            (out / name).unlink(missing_ok=True)


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
