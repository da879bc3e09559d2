"""Building blocks of the data modules: DICOM discovery, decoded-image caches, sample datasets, collation.

Caching. The deterministic part of loading (``read_dicom`` -> (1, H, W) float16) is cached; crops and
augmentation run afterwards, per epoch. Modes:

* ``persistent``: MONAI ``PersistentDataset`` in ``cache_dir`` (default :func:`default_cache_dir`,
  ``$XDG_CACHE_HOME/dentalmim/decoded`` or ``~/.cache/dentalmim/decoded``: data folders are often read-only).
  The key (:class:`CacheKey`) hashes the absolute path, file size, ``mtime_ns`` and a settings fingerprint
  (``max_pixels``, cache format version, dtype), so a modified file or a changed setting is re-read. Entries are
  keyed by file content, written atomically, and safe to share between runs and between DDP ranks.
* ``memory``: MONAI ``CacheDataset``, filled when the data module is set up, one copy per process (per DDP
  rank; DataLoader workers share it copy-on-write).
* ``none``: decode on every access.

Unreadable files never stop a run: :class:`LoadRadiographd` records the failure, and :class:`RadiographDataset`
logs it once and serves the next readable image instead (training) or raises (evaluation). Read failures are
cached as well, so a bad file is not re-decoded every epoch until it changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.data import CacheDataset, PersistentDataset
from monai.data import Dataset as MonaiDataset
from monai.data.utils import set_rnd
from monai.transforms import Compose

from dentalmim.data import dicom as dicom_io
from dentalmim.data.transforms import (
    BOXES_KEY,
    CROP_ORIGIN_KEY,
    ERROR_KEY,
    IMAGE_2_KEY,
    IMAGE_KEY,
    LABELS_KEY,
    META_KEY,
    PATH_KEY,
    CastArrayd,
    LoadRadiographd,
)
from dentalmim.errors import ConfigError, DicomReadError

log = logging.getLogger(__name__)

CacheMode = Literal["persistent", "memory", "none"]
CACHE_MODES: tuple[str, ...] = ("persistent", "memory", "none")
#: Bump when the cached representation changes; part of every cache key.
CACHE_FORMAT_VERSION = 1
CACHE_DTYPE = "float16"
#: File suffixes taken as DICOM without looking inside; extensionless files need the ``DICM`` magic.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")

__all__ = ["CACHE_MODES", "DICOM_SUFFIXES", "CacheKey", "CacheMode", "MmapPersistentDataset", "RadiographDataset",
           "build_image_dataset",
           "default_cache_dir", "detection_collate", "find_dicom_files", "pretrain_collate", "scan_headers",
           "seed_transforms", "split_files", "worker_init_fn"]


def _has_dicm_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def find_dicom_files(data_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """Find DICOM files recursively: ``*.dcm`` / ``*.dicom`` (any case) and extensionless files with the
    ``DICM`` magic at byte 128. Hidden files and folders (e.g. caches) are skipped.

    Returns:
        Sorted ``(absolute path, path relative to its data_dir in POSIX form)`` pairs, without duplicates.

    Raises:
        ConfigError: if a data_dir is not a folder.
    """
    dirs = [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs)
    found: dict[Path, str] = {}
    for data_dir in dirs:
        root = Path(data_dir).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"data_dir should be an existing folder, got {str(data_dir)!r}.")
        for folder, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in names:
                path = Path(folder) / name
                suffix = path.suffix.lower()
                if name.startswith(".") or not (suffix in DICOM_SUFFIXES or (not suffix and _has_dicm_magic(path))):
                    continue
                found.setdefault(path, path.relative_to(root).as_posix())
    return sorted(found.items())


def split_files(files: Sequence[tuple[Path, str]], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic train/val split of ``find_dicom_files`` output by a seeded hash of the relative path.

    A file's side depends only on its relative path and the seed, so adding files never moves old ones between
    train and val. With ``val_fraction > 0`` and at least 2 files, val gets at least one file.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction should be in [0, 1), got {val_fraction}.")

    def score(rel: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}:{rel}".encode()).digest()[:8], "big") / 2.0**64

    scores = [score(rel) for _, rel in files]
    is_val = [s < val_fraction for s in scores]
    if val_fraction > 0 and len(files) >= 2 and not any(is_val):
        is_val[int(np.argmin(scores))] = True
    if is_val and all(is_val):
        is_val[int(np.argmax(scores))] = False
    return ([p for (p, _), v in zip(files, is_val) if not v], [p for (p, _), v in zip(files, is_val) if v])


def scan_headers(paths: Sequence[Path], max_pixels: int,
                 sizes: Sequence[tuple[int, int]] | None = None) -> tuple[list[Path], dict[str, str]]:
    """Keep the files whose header :func:`read_dicom_header` accepts (no pixel decoding) and, with ``sizes``
    (``(width, height)`` per path, e.g. from the labels), whose Columns x Rows match.

    Returns:
        The readable paths (input order) and ``{path: "<code>: <reason>"}`` of the skipped ones; each skip is
        logged as a warning (the first 10, then a summary).
    """
    readable, skipped = [], {}
    for i, path in enumerate(paths):
        try:
            meta = dicom_io.read_dicom_header(path, max_pixels=max_pixels)
        except (DicomReadError, OSError) as exc:
            code = getattr(exc, "code", "os_error")
            skipped[str(path)] = f"{code}: {getattr(exc, 'reason', type(exc).__name__)}"
        else:
            if sizes is None or (meta.columns, meta.rows) == tuple(sizes[i]):
                readable.append(path)
                continue
            width, height = sizes[i]
            skipped[str(path)] = (f"size_mismatch: the labels give {width}x{height}, the DICOM is "
                                  f"{meta.columns}x{meta.rows} (width x height)")
        if len(skipped) <= 10:
            log.warning("skipping %s (%s)", path, skipped[str(path)])
    if len(skipped) > 10:
        log.warning("skipped %d unreadable files in total", len(skipped))
    return readable, skipped


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dentalmim/decoded`` (or ``~/.cache/dentalmim/decoded``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dentalmim" / "decoded"


class CacheKey:
    """MONAI ``hash_func``: sha256 of the settings fingerprint, absolute path, file size and ``mtime_ns``.

    Args:
        max_pixels: the reader's pixel limit (a different limit can change the outcome).
    """

    def __init__(self, max_pixels: int) -> None:
        self.fingerprint = json.dumps({"format": CACHE_FORMAT_VERSION, "dtype": CACHE_DTYPE,
                                       "max_pixels": int(max_pixels)}, sort_keys=True)

    def __call__(self, item: Mapping[str, Any]) -> bytes:
        path = os.path.abspath(str(item[IMAGE_KEY]))
        try:
            st = os.stat(path)
            state = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            state = "missing"
        return hashlib.sha256(f"{self.fingerprint}|{path}|{state}".encode()).hexdigest().encode()


class MmapPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cache hits are memory-mapped: a crop of a cached 3000 x 1500 panoramic reads
    only the pages it touches (crop before casting). Misses and corrupt files go through MONAI's logic."""

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is not None:
            hashfile = self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
            if hashfile.is_file():
                try:
                    return torch.load(hashfile, weights_only=True, mmap=True)
                except (RuntimeError, OSError, pickle.UnpicklingError):
                    pass  # unreadable entry: MONAI's path below recomputes (and replaces) it
        return super()._cachecheck(item_transformed)


def build_image_dataset(paths: Sequence[str | os.PathLike[str]], *, cache: CacheMode = "persistent",
                        cache_dir: str | os.PathLike[str] | None = None, max_pixels: int,
                        num_workers: int = 0) -> torch.utils.data.Dataset:
    """Dataset of decoded images ``{"image": (1, H, W) float16, "meta": dict}`` (or an error record).

    Args:
        paths: DICOM files.
        cache: ``persistent``, ``memory`` or ``none`` (see the module docstring).
        cache_dir: folder of the persistent cache (default :func:`default_cache_dir`).
        max_pixels: the reader's pixel limit.
        num_workers: threads filling the memory cache.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache should be one of {CACHE_MODES}, got {cache!r}.")
    data = [{IMAGE_KEY: str(p)} for p in paths]
    load = Compose([LoadRadiographd(IMAGE_KEY, max_pixels=max_pixels, on_error="record"),
                    CastArrayd(IMAGE_KEY, dtype=CACHE_DTYPE)])
    if cache == "persistent":
        return MmapPersistentDataset(data, load, cache_dir=Path(cache_dir or default_cache_dir()),
                                 hash_func=CacheKey(max_pixels))
    if cache == "memory":
        return CacheDataset(data, load, num_workers=max(num_workers, 1), progress=False, copy_cache=False)
    return MonaiDataset(data, load)


class RadiographDataset(torch.utils.data.Dataset):
    """Decoded images + per-image records -> random or fixed transform -> sample dict.

    Index ``i`` maps to image ``i // repeats`` (``repeats`` random crops per image and epoch), or, with one
    count per image, to the image whose block of indices holds ``i``.

    Args:
        images: dataset from :func:`build_image_dataset`.
        records: per-image fields merged into each sample (boxes, labels, image_id, ...); None for image-only.
        transform: applied to ``{**record, "image": (1, H, W), "meta": dict}``.
        repeats: samples per image and epoch, >= 1: one count for all, or one per image.
        skip_failures: serve the next readable image instead of an unreadable one (else raise DicomReadError).
        fixed_seed: if set, re-seed ``transform`` with ``fixed_seed + index`` per sample (stable validation crops).
    """

    def __init__(self, images: torch.utils.data.Dataset, records: Sequence[Mapping[str, Any]] | None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]], *, repeats: int | Sequence[int] = 1,
                 skip_failures: bool = True, fixed_seed: int | None = None) -> None:
        n_images = len(images)  # type: ignore[arg-type]
        if isinstance(repeats, (int, np.integer)):
            counts = [int(repeats)] * n_images
            ok = repeats >= 1
        else:
            counts = [int(r) for r in repeats]
            ok = len(counts) == n_images and all(c >= 1 for c in counts)
        if not ok:
            raise ValueError(f"repeats should be >= 1: one count, or one per image ({n_images}), got {repeats}.")
        if records is not None and len(records) != n_images:
            raise ValueError(f"records should match images, got {len(records)} and {n_images}.")
        self.images, self.records, self.transform = images, records, transform
        self.repeats, self.skip_failures, self.fixed_seed = repeats, skip_failures, fixed_seed
        self._ends = np.cumsum(counts)  # image k owns indices [ends[k-1], ends[k])
        self.failed: dict[int, str] = {}  # image index -> reason, in this process

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def image_index(self, index: int) -> int:
        """The image that sample ``index`` crops."""
        return int(np.searchsorted(self._ends, index, side="right"))

    def _load(self, index: int) -> tuple[int, Mapping[str, Any]]:
        n = len(self.images)  # type: ignore[arg-type]
        for k in (index + step for step in range(n)):
            item = self.images[k % n]
            if ERROR_KEY not in item:
                return k % n, item
            if k % n not in self.failed:
                self.failed[k % n] = str(item[ERROR_KEY])
                log.warning("skipping unreadable DICOM %s (%s); %d unreadable so far", item[PATH_KEY],
                            item[ERROR_KEY], len(self.failed))
            if not self.skip_failures:
                raise DicomReadError(item[PATH_KEY], str(item[ERROR_KEY]))
        raise ConfigError(f"images: none of the {n} files is readable.")

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, item = self._load(self.image_index(index))
        sample = dict(self.records[k]) if self.records is not None else {}
        sample[IMAGE_KEY], sample[META_KEY] = item[IMAGE_KEY], item.get(META_KEY)
        if self.fixed_seed is not None:
            seed_transforms(self.transform, self.fixed_seed + index)
        return self.transform(sample)


def seed_transforms(obj: object, seed: int) -> None:
    """Seed every MONAI ``Randomizable`` reachable from ``obj`` (a transform, a dataset)."""
    set_rnd(obj, seed=seed % (2**32))


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def worker_init_fn(worker_id: int) -> None:
    """DataLoader hook: seed the worker's transforms from its torch seed and the DDP rank.

    Torch derives worker seeds from the main process generator, so runs repeat under ``seed_everything`` while
    workers (and ranks) draw different crops.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None:
        seed_transforms(info.dataset, info.seed + 1_000_003 * _rank())


def _pick(samples: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    return [s[key] for s in samples]


def pretrain_collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``image`` (and ``image_2`` when present) into (B, 1, S, S) float32."""
    out = {IMAGE_KEY: torch.stack(_pick(samples, IMAGE_KEY))}
    if IMAGE_2_KEY in samples[0]:
        out[IMAGE_2_KEY] = torch.stack(_pick(samples, IMAGE_2_KEY))
    return out


def detection_collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch detection samples.

    Returns:
        ``image`` (B, 1, H, W) float32, ``boxes`` list of (Ni, 4) float32 xyxy, ``labels`` list of (Ni,) int64,
        ``image_id`` (B,) int64, ``meta`` list of DICOM meta dicts, and ``crop_origin`` (B, 2) int64 ``(x0, y0)``
        for cropped samples.
    """
    out: dict[str, Any] = {IMAGE_KEY: torch.stack(_pick(samples, IMAGE_KEY)), BOXES_KEY: _pick(samples, BOXES_KEY),
                           LABELS_KEY: _pick(samples, LABELS_KEY),
                           "image_id": torch.as_tensor([int(s["image_id"]) for s in samples], dtype=torch.int64),
                           META_KEY: [s.get(META_KEY) for s in samples]}
    if CROP_ORIGIN_KEY in samples[0]:
        out[CROP_ORIGIN_KEY] = torch.as_tensor(np.stack(_pick(samples, CROP_ORIGIN_KEY)), dtype=torch.int64)
    return out
