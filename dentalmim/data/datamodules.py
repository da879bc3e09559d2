"""Lightning data modules: unlabeled DICOM folders for pretraining, COCO-labelled radiographs for detection.

Both decode each file once into a cache (see :mod:`dentalmim.data.datasets` for the cache modes and keys) and
take random crops at native resolution afterwards, so a 3000 x 1500 panoramic and a 1000 x 800 bitewing keep
their pixel size. DataLoaders use ``persistent_workers`` when ``num_workers > 0``, ``pin_memory`` only with
CUDA, and :func:`~dentalmim.data.datasets.worker_init_fn`, so crops differ between workers and ranks and runs
repeat under ``seed_everything``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from monai.transforms import Compose
from torch.utils.data import DataLoader

from dentalmim.data.coco import CocoDataset, ClassMode, split_by_patient
from dentalmim.data.datasets import (
    CACHE_MODES,
    CacheMode,
    RadiographDataset,
    build_image_dataset,
    detection_collate,
    find_dicom_files,
    pretrain_collate,
    scan_headers,
    seed_transforms,
    split_files,
    worker_init_fn,
)
from dentalmim.data.dicom import DEFAULT_MAX_PIXELS
from dentalmim.data.spacing import check_max_spacing
from dentalmim.data.transforms import (
    IMAGE_2_KEY,
    IMAGE_KEY,
    AlbumentationsBoxd,
    AlbumentationsImaged,
    CastArrayd,
    RandCropWithBoxesd,
    ToGreyTensord,
    detection_augmentation,
    pretrain_augmentation,
)
from dentalmim.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DetectionDataModule", "PretrainDataModule"]


def _check_common(crop_size: int, batch_size: int, num_workers: int, cache: str, max_pixels: int) -> None:
    if crop_size <= 0:
        raise ConfigError(f"crop_size should be positive, got {crop_size}.")
    if batch_size <= 0:
        raise ConfigError(f"batch_size should be positive, got {batch_size}.")
    if num_workers < 0:
        raise ConfigError(f"num_workers should be >= 0, got {num_workers}.")
    if cache not in CACHE_MODES:
        raise ConfigError(f"cache should be one of {CACHE_MODES}, got {cache!r}.")
    if max_pixels <= 0:
        raise ConfigError(f"max_pixels should be positive, got {max_pixels}.")


class _LoaderMixin:
    """Shared DataLoader construction (expects ``batch_size`` and ``num_workers`` attributes)."""

    batch_size: int
    num_workers: int

    def _loader(self, dataset: torch.utils.data.Dataset, *, batch_size: int, shuffle: bool,
                collate_fn: Callable[..., Any], drop_last: bool = False) -> DataLoader:
        if self.num_workers == 0:  # workers seed themselves in worker_init_fn; the main process is seeded here
            seed_transforms(dataset, int(torch.randint(0, 2**31 - 1, (1,)).item()))
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, collate_fn=collate_fn,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          worker_init_fn=worker_init_fn if self.num_workers > 0 else None)


class PretrainDataModule(_LoaderMixin, pl.LightningDataModule):
    """Random native-resolution crops of unlabeled DICOM radiographs for masked image modeling.

    Files: every ``*.dcm`` / ``*.dicom`` (any case) under ``data_dir`` (recursively) plus extensionless files
    with the DICOM ``DICM`` magic; hidden files and folders are ignored. Headers are checked in ``setup``;
    unreadable files are skipped with a warning (:attr:`skipped`), as are files whose pixel data later fails to
    decode. An epoch has ``len(train files) * crops_per_image`` samples.

    Args:
        data_dir: folder, or list of folders, searched recursively.
        crop_size: side ``S`` of the square crops (pixels, native resolution; smaller images are zero-padded).
        batch_size: crops per batch.
        num_workers: DataLoader worker processes.
        crops_per_image: random crops per file and epoch.
        cache: ``persistent`` (decoded float16 images on disk), ``memory`` or ``none``.
        cache_dir: folder of the persistent cache; default ``$XDG_CACHE_HOME/dentalmim/decoded``.
        val_fraction: share of files held out for validation, in [0, 1) (a seeded hash of the relative path
            decides, so adding files never moves old ones).
        max_pixels: largest Rows x Columns read (decompression-bomb guard).
        seed: seed of the train/val split and of the fixed validation crops.
        two_views: also return ``image_2``, a second crop of the same region (origin shifted by up to
            ``view_shift * crop_size``) augmented independently, for contrastive objectives.
        augment: apply the pretraining intensity augmentation (and flips) to training crops.
        view_shift: maximum shift of the second view as a fraction of ``crop_size``, in [0, 1).

    Batches: ``{"image": (B, 1, S, S) float32 in [0, 1]}`` (+ ``"image_2"`` with ``two_views``).
    """

    def __init__(self, data_dir: str | list[str], crop_size: int = 224, batch_size: int = 32, num_workers: int = 2,
                 crops_per_image: int = 4, cache: CacheMode = "persistent", cache_dir: str | None = None,
                 val_fraction: float = 0.05, max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0,
                 two_views: bool = False, augment: bool = True, view_shift: float = 0.25) -> None:
        super().__init__()
        _check_common(crop_size, batch_size, num_workers, cache, max_pixels)
        if crops_per_image < 1:
            raise ConfigError(f"crops_per_image should be >= 1, got {crops_per_image}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction should be in [0, 1), got {val_fraction}.")
        if not 0.0 <= view_shift < 1.0:
            raise ConfigError(f"view_shift should be in [0, 1), got {view_shift}.")
        self.save_hyperparameters()
        self.data_dirs = [data_dir] if isinstance(data_dir, str) else list(data_dir)
        self.crop_size, self.batch_size, self.num_workers = crop_size, batch_size, num_workers
        self.crops_per_image, self.cache, self.cache_dir = crops_per_image, cache, cache_dir
        self.val_fraction, self.max_pixels, self.seed = val_fraction, max_pixels, seed
        self.two_views, self.augment, self.view_shift = two_views, augment, view_shift
        self.skipped: dict[str, str] = {}
        self.train_dataset: RadiographDataset | None = None
        self.val_dataset: RadiographDataset | None = None

    def _transform(self, train: bool) -> Compose:
        views = (IMAGE_KEY, IMAGE_2_KEY) if self.two_views else (IMAGE_KEY,)
        steps: list[Callable[..., Any]] = [  # crop first: a memory-mapped cache entry is then read only in part
            RandCropWithBoxesd(self.crop_size, pos_fraction=0.0, view_shift=self.view_shift,
                               second_view_key=IMAGE_2_KEY if self.two_views else None),
            CastArrayd(views, dtype=np.float32)]
        if train and self.augment:
            steps.append(AlbumentationsImaged(pretrain_augmentation(), keys=views))
        return Compose([*steps, ToGreyTensord(keys=views)])

    def _images(self, paths: list[Path]) -> torch.utils.data.Dataset:
        return build_image_dataset(paths, cache=self.cache, cache_dir=self.cache_dir, max_pixels=self.max_pixels,
                                   num_workers=self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        """Find, check and split the files; build the datasets (idempotent)."""
        if self.train_dataset is not None:
            return
        files = find_dicom_files(self.data_dirs)
        readable, self.skipped = scan_headers([p for p, _ in files], self.max_pixels)
        if not readable:
            raise ConfigError(f"data_dir: no readable DICOM files under {self.data_dirs} ({len(files)} candidate "
                              f"files, {len(self.skipped)} unreadable).")
        ok = set(readable)
        train, val = split_files([f for f in files if f[0] in ok], self.val_fraction, self.seed)
        log.info("pretraining files: %d train, %d val, %d skipped", len(train), len(val), len(self.skipped))
        self.train_dataset = RadiographDataset(self._images(train), None, self._transform(train=True),
                                               repeats=self.crops_per_image)
        self.val_dataset = (RadiographDataset(self._images(val), None, self._transform(train=False),
                                              fixed_seed=self.seed) if val else None)

    def train_dataloader(self) -> DataLoader:
        """Shuffled random crops, ``drop_last`` so every batch has ``batch_size`` crops when possible."""
        assert self.train_dataset is not None, "call setup() first"
        drop = len(self.train_dataset) > self.batch_size
        return self._loader(self.train_dataset, batch_size=self.batch_size, shuffle=True,
                            collate_fn=pretrain_collate, drop_last=drop)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One fixed crop per validation file (the same every epoch); ``[]`` when there is no validation set."""
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, batch_size=self.batch_size, shuffle=False, collate_fn=pretrain_collate)


class DetectionDataModule(_LoaderMixin, pl.LightningDataModule):
    """COCO-labelled radiographs for caries detection: random lesion-aware crops for training, full images for
    evaluation.

    Args:
        coco_path: COCO file of the training labels (``file_name`` relative to its folder).
        val_coco_path: validation COCO file; None: split ``coco_path`` by patient (``val_fraction``).
        test_coco_path: test COCO file; None: take ``test_fraction`` of the patients (0: no test set).
        crop_size: side ``S`` of training crops (native resolution).
        batch_size: training crops per batch (evaluation uses batches of one full image).
        num_workers: DataLoader worker processes.
        pos_fraction: probability that a training crop contains a whole, randomly chosen lesion, in [0, 1].
        dense_fraction: probability that any other training crop contains one of the brightest pixels (teeth,
            restorations) instead of lying anywhere, in [0, 1] (:class:`~dentalmim.data.transforms.RandCropWithBoxesd`).
        zoom_fraction: probability that a training crop is zoomed out (a window up to ``1 / zoom_min`` times the
            crop size, resized to it), in [0, 1]: intraoral images are also seen at panoramic scale.
        zoom_min: smallest zoom factor, in (0, 1].
        max_spacing_mm: crop images whose pixels are coarser than this spacing (mm) as if upsampled to it, and
            the others at native resolution (:mod:`dentalmim.data.spacing`); linked to ``model.max_spacing_mm``,
            which validation and prediction use; None = all native.
        augment: apply :func:`detection_augmentation` to training crops.
        class_mode: ``caries`` (1 class), ``depth`` (enamel/dentin) or ``category`` (one per COCO category).
        val_fraction: patient share for validation when ``val_coco_path`` is None, in [0, 1).
        test_fraction: patient share for testing when ``test_coco_path`` is None, in [0, 1).
        seed: seed of the patient split, the label fraction and the fixed evaluation order.
        label_fraction: keep this share of the training patients (nested subsets), in (0, 1].
        crops_per_image: training crops per image and epoch (the mean, with ``crops_by_area``).
        crops_by_area: give each training image crops in proportion to its pixel count (at least 1, on average
            ``crops_per_image``), so every pixel is about as likely to be seen: a 4 MP panoramic gets about 3
            times the crops of a 1.4 MP bitewing. Off: the same count for every image.
        cache: ``persistent``, ``memory`` or ``none`` (see :mod:`dentalmim.data.datasets`).
        cache_dir: folder of the persistent cache; default ``$XDG_CACHE_HOME/dentalmim/decoded``.
        max_pixels: largest Rows x Columns read.

    Train batches: ``{"image": (B, 1, S, S), "boxes": [(Ni, 4) float32 xyxy], "labels": [(Ni,) int64],
    "image_id": (B,), "meta": [...], "crop_origin": (B, 2)}``; val/test batches hold one full (1, 1, H, W) image
    with its boxes in original pixels.
    """

    def __init__(self, coco_path: str, val_coco_path: str | None = None, test_coco_path: str | None = None,
                 crop_size: int = 384, batch_size: int = 8, num_workers: int = 2, pos_fraction: float = 0.5,
                 augment: bool = True, class_mode: ClassMode = "caries", val_fraction: float = 0.15,
                 test_fraction: float = 0.0, seed: int = 0, label_fraction: float = 1.0, crops_per_image: int = 1,
                 cache: CacheMode = "persistent", cache_dir: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, dense_fraction: float = 0.0, zoom_fraction: float = 0.0,
                 zoom_min: float = 0.35, max_spacing_mm: float | None = None, crops_by_area: bool = False) -> None:
        super().__init__()
        _check_common(crop_size, batch_size, num_workers, cache, max_pixels)
        self.max_spacing_mm = check_max_spacing(max_spacing_mm)
        for name, value, ok, rule in (("dense_fraction", dense_fraction, 0.0 <= dense_fraction <= 1.0, "[0, 1]"),
                                      ("zoom_fraction", zoom_fraction, 0.0 <= zoom_fraction <= 1.0, "[0, 1]"),
                                      ("zoom_min", zoom_min, 0.0 < zoom_min <= 1.0, "(0, 1]")):
            if not ok:
                raise ConfigError(f"{name} should be in {rule}, got {value}.")
        self.dense_fraction, self.zoom_fraction, self.zoom_min = dense_fraction, zoom_fraction, zoom_min
        _check_detection(pos_fraction, class_mode, val_fraction, test_fraction, label_fraction, crops_per_image)
        self.save_hyperparameters()
        self.coco_path, self.val_coco_path, self.test_coco_path = coco_path, val_coco_path, test_coco_path
        self.crop_size, self.batch_size, self.num_workers = crop_size, batch_size, num_workers
        self.pos_fraction, self.augment, self.class_mode = pos_fraction, augment, class_mode
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.label_fraction, self.crops_per_image, self.crops_by_area = label_fraction, crops_per_image, crops_by_area
        self.cache, self.cache_dir, self.max_pixels = cache, cache_dir, max_pixels
        self.splits: dict[str, CocoDataset] = {}
        self.datasets: dict[str, RadiographDataset] = {}
        self.skipped: dict[str, str] = {}

    @property
    def num_classes(self) -> int:
        """Number of label classes the detector needs (1 for ``caries``, 2 for ``depth``)."""
        if self.class_mode == "category":
            return len(self.splits["train"].categories) if self.splits else len(self._load(self.coco_path).categories)
        return 1 if self.class_mode == "caries" else 2

    def _load(self, path: str) -> CocoDataset:
        return CocoDataset.load(path, check_files=True)

    def _split(self) -> dict[str, CocoDataset]:
        """train / val / test CocoDatasets: explicit files, else patient-level splits of ``coco_path``."""
        full = self._load(self.coco_path)
        val_share = self.val_fraction if self.val_coco_path is None else 0.0
        test_share = self.test_fraction if self.test_coco_path is None else 0.0
        train, val, test = split_by_patient(full, (1.0 - val_share - test_share, val_share, test_share), self.seed)
        splits = {"train": train, "val": self._load(self.val_coco_path) if self.val_coco_path else val}
        if self.test_coco_path or test_share > 0:
            splits["test"] = self._load(self.test_coco_path) if self.test_coco_path else test
        names = list(splits)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                shared = set(splits[first].patients()) & set(splits[second].patients())
                if shared:
                    raise ConfigError(f"{second}_coco_path: {len(shared)} patient(s) also in the {first} split.")
        if self.label_fraction < 1.0:
            splits["train"] = train.fraction(self.label_fraction, self.seed)
        return splits

    def _readable(self, name: str, ds: CocoDataset) -> CocoDataset:
        """Drop images whose DICOM header is unreadable or whose size differs from the labels' (their boxes would
        be in other pixels; logged, recorded in :attr:`skipped`)."""
        paths = [ds.image_path(im) for im in ds.images]
        readable, skipped = scan_headers(paths, self.max_pixels, sizes=[(im.width, im.height) for im in ds.images])
        self.skipped.update(skipped)
        if not readable:
            raise ConfigError(f"coco_path: no readable images in the {name} split ({len(paths)} listed).")
        ok = set(readable)
        return ds.subset(im.id for im, p in zip(ds.images, paths) if p in ok)

    def _eval_transform(self) -> Compose:
        return Compose([CastArrayd(IMAGE_KEY, dtype=np.float32), ToGreyTensord(IMAGE_KEY)])

    def _train_transform(self) -> Compose:
        crop = RandCropWithBoxesd(self.crop_size, pos_fraction=self.pos_fraction, dense_fraction=self.dense_fraction,
                                  zoom_fraction=self.zoom_fraction, zoom_min=self.zoom_min,
                                  max_spacing_mm=self.max_spacing_mm)
        steps: list[Callable[..., Any]] = [crop, CastArrayd(IMAGE_KEY, dtype=np.float32)]
        if self.augment:
            steps.append(AlbumentationsBoxd(detection_augmentation()))
        return Compose([*steps, ToGreyTensord(IMAGE_KEY)])

    def setup(self, stage: str | None = None) -> None:
        """Load and split the labels, drop unreadable images, build the datasets (idempotent)."""
        if self.datasets:
            return
        for name, part in self._split().items():
            if not part.images:
                log.warning("the %s split is empty", name)
                continue
            part = self._readable(name, part)
            if name == "train" and not part.annotations:
                log.warning("the training split has no lesion boxes (%d caries-free images): the detector can only "
                            "learn background from it", len(part.images))
            self.splits[name] = part
            records = part.to_records(self.class_mode)
            images = build_image_dataset([r["image"] for r in records], cache=self.cache, cache_dir=self.cache_dir,
                                         max_pixels=self.max_pixels, num_workers=self.num_workers)
            train = name == "train"
            self.datasets[name] = RadiographDataset(
                images, records, self._train_transform() if train else self._eval_transform(),
                repeats=self._crop_counts(records) if train else 1, skip_failures=train)
        log.info("detection splits: %s", {k: v.summary().to_dict()["images"] for k, v in self.splits.items()})

    def _crop_counts(self, records: list[dict[str, Any]]) -> int | list[int]:
        """Training crops per image and epoch: ``crops_per_image``, or shares of the total by pixel count."""
        if not self.crops_by_area or not records:
            return self.crops_per_image
        areas = np.asarray([float(r["width"]) * float(r["height"]) for r in records])
        return [max(1, round(c)) for c in self.crops_per_image * areas / areas.mean()]

    def _eval_loader(self, name: str) -> DataLoader | list[DataLoader]:
        if name not in self.datasets:
            return []
        return self._loader(self.datasets[name], batch_size=1, shuffle=False, collate_fn=detection_collate)

    def train_dataloader(self) -> DataLoader:
        """Shuffled random crops (see the class docstring for the batch layout)."""
        if "train" not in self.datasets:
            raise ConfigError(f"coco_path: no training images in {self.coco_path!r} after splitting.")
        return self._loader(self.datasets["train"], batch_size=self.batch_size, shuffle=True,
                            collate_fn=detection_collate, drop_last=len(self.datasets["train"]) > self.batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Full validation images, one per batch, boxes in original pixels; ``[]`` without a validation set."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Full test images, one per batch; ``[]`` without a test set."""
        return self._eval_loader("test")


def _check_detection(pos_fraction: float, class_mode: str, val_fraction: float, test_fraction: float,
                     label_fraction: float, crops_per_image: int) -> None:
    if not 0.0 <= pos_fraction <= 1.0:
        raise ConfigError(f"pos_fraction should be in [0, 1], got {pos_fraction}.")
    if class_mode not in ("caries", "depth", "category"):
        raise ConfigError(f"class_mode should be one of ('caries', 'depth', 'category'), got {class_mode!r}.")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} should be in [0, 1), got {value}.")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction should be < 1, got {val_fraction + test_fraction}.")
    if not 0.0 < label_fraction <= 1.0:
        raise ConfigError(f"label_fraction should be in (0, 1], got {label_fraction}.")
    if crops_per_image < 1:
        raise ConfigError(f"crops_per_image should be >= 1, got {crops_per_image}.")

