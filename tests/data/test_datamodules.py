"""Data modules: file discovery, batches, two views, unreadable files, caching and invalidation, splits."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dentalmim.data import dicom as dicom_io
from dentalmim.data.coco import CocoDataset
from dentalmim.data.datamodules import DetectionDataModule, PretrainDataModule
from dentalmim.data.datasets import RadiographDataset, find_dicom_files, seed_transforms, split_files
from dentalmim.errors import ConfigError, DicomReadError
from tests.data._helpers_d import coco_dict, image_spec, lesion_image, patient_specs, write_coco, write_dicom

torch.set_num_threads(1)


def _unlabeled(root: Path, n: int = 5) -> list[Path]:
    sizes = [(40, 50), (100, 120), (64, 64), (90, 70), (120, 100), (80, 80)]
    return [write_dicom(root / f"sub{i % 2}" / f"u{i}.dcm", lesion_image(*sizes[i % 6], [], seed=i)) for i in range(n)]


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every ``read_dicom`` call (path) made through the transforms."""
    calls: list[str] = []
    real = dicom_io.read_dicom

    def counting(path: Any, **kwargs: Any) -> Any:
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(dicom_io, "read_dicom", counting)
    return calls


def test_find_dicom_files_and_split(tmp_path: Path) -> None:
    files = _unlabeled(tmp_path / "a", 3)
    data = files[0].read_bytes()
    (tmp_path / "a" / "UPPER.DICOM").write_bytes(data)
    (tmp_path / "a" / "noext").write_bytes(data)
    (tmp_path / "a" / "notes").write_bytes(b"plain text, no magic" * 10)
    (tmp_path / "a" / "readme.txt").write_bytes(data)
    (tmp_path / "a" / ".cache").mkdir()
    (tmp_path / "a" / ".cache" / "x.dcm").write_bytes(data)
    found = find_dicom_files([tmp_path / "a", str(tmp_path / "a")])
    assert [rel for _, rel in found] == ["UPPER.DICOM", "noext", "sub0/u0.dcm", "sub0/u2.dcm", "sub1/u1.dcm"]
    assert all(p.is_absolute() for p, _ in found)
    with pytest.raises(ConfigError, match="data_dir"):
        find_dicom_files(tmp_path / "missing")
    many = [(Path(f"/x/{i}.dcm"), f"{i}.dcm") for i in range(200)]
    train, val = split_files(many, 0.1, seed=0)
    assert 8 <= len(val) <= 35 and not set(train) & set(val) and len(train) + len(val) == 200
    assert split_files(many[:100], 0.1, seed=0)[1] == [p for p in val if int(p.stem) < 100]  # stable when growing
    assert split_files(many, 0.1, seed=1)[1] != val
    assert len(split_files(many[:3], 0.01, seed=0)[1]) == 1


def test_pretrain_batches_and_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _unlabeled(tmp_path / "data", 5)
    (tmp_path / "data" / "broken.dcm").write_bytes(b"\x00" * 10)
    dm = PretrainDataModule(str(tmp_path / "data"), crop_size=32, batch_size=4, num_workers=0, crops_per_image=3,
                            cache="none", val_fraction=0.2, seed=0)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert list(dm.skipped) == [str((tmp_path / "data" / "broken.dcm").resolve())]
    assert "broken.dcm" in caplog.text
    assert len(dm.train_dataset) == 4 * 3 and len(dm.val_dataset) == 1
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image"}
    assert batch["image"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    val = [b["image"] for b in dm.val_dataloader()]
    assert torch.equal(val[0], next(iter(dm.val_dataloader()))["image"])  # fixed validation crops


def test_two_views(tmp_path: Path) -> None:
    _unlabeled(tmp_path / "data", 3)
    same = PretrainDataModule(str(tmp_path / "data"), crop_size=32, batch_size=3, num_workers=0, cache="none",
                              val_fraction=0.0, two_views=True, augment=False, view_shift=0.0)
    same.setup()
    batch = next(iter(same.train_dataloader()))
    assert batch["image_2"].shape == batch["image"].shape == (3, 1, 32, 32)
    assert torch.equal(batch["image"], batch["image_2"])
    assert same.val_dataloader() == []
    jittered = PretrainDataModule(str(tmp_path / "data"), crop_size=32, batch_size=3, num_workers=0, cache="none",
                                  val_fraction=0.0, two_views=True, augment=False, view_shift=0.25)
    jittered.setup()
    ds = jittered.train_dataset
    shifts = []
    for i in range(0, len(ds), ds.repeats):
        sample, source = ds[i], ds.images[i // ds.repeats]["image"][0].astype(np.float32)
        (x0, y0), view2 = sample["crop_origin"].tolist(), sample["image_2"][0].numpy()
        h, w = source.shape
        shifts.append([(dx, dy) for dy in range(-8, 9) for dx in range(-8, 9)  # at most 0.25 * 32 pixels
                       if 0 <= y0 + dy <= h - 32 and 0 <= x0 + dx <= w - 32
                       and np.array_equal(source[y0 + dy:y0 + dy + 32, x0 + dx:x0 + dx + 32], view2)])
    assert all(len(found) == 1 for found in shifts), shifts  # each second view is one nearby window
    assert any(found != [(0, 0)] for found in shifts)


def test_unreadable_everything_and_decode_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.dcm").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="data_dir.*bad"):
        PretrainDataModule(str(tmp_path / "bad"), num_workers=0, cache="none").setup()
    files = _unlabeled(tmp_path / "data", 3)
    real = dicom_io.read_dicom

    def failing(path: Any, **kwargs: Any) -> Any:
        if Path(path).name == files[0].name:
            raise DicomReadError(path, "pixel data could not be decoded (ValueError)")
        return real(path, **kwargs)

    monkeypatch.setattr(dicom_io, "read_dicom", failing)
    dm = PretrainDataModule(str(tmp_path / "data"), crop_size=16, batch_size=2, num_workers=0, cache="none",
                            val_fraction=0.0, crops_per_image=1)
    dm.setup()
    samples = [dm.train_dataset[i] for i in range(3)]  # the failing file is replaced by the next readable one
    assert all(s["image"].shape == (1, 16, 16) for s in samples)
    assert len(dm.train_dataset.failed) == 1 and "decoded" in next(iter(dm.train_dataset.failed.values()))


@pytest.mark.parametrize("mode", ["persistent", "memory", "none"])
def test_cache_hits_and_invalidation(tmp_path: Path, count_reads: list[str], mode: str) -> None:
    files = _unlabeled(tmp_path / "data", 3)
    cache_dir = str(tmp_path / "cache")

    def run(**kwargs: Any) -> tuple[PretrainDataModule, torch.Tensor]:
        dm = PretrainDataModule(str(tmp_path / "data"), crop_size=16, num_workers=0, cache=mode, cache_dir=cache_dir,
                                val_fraction=0.0, crops_per_image=1, **kwargs)
        dm.setup()
        seed_transforms(dm.train_dataset, 0)
        return dm, torch.stack([dm.train_dataset[i]["image"] for i in range(len(dm.train_dataset))])

    _, first = run()
    assert len(count_reads) == 3 and first.shape == (3, 1, 16, 16)
    count_reads.clear()
    dm, second = run()
    expected = {"persistent": 0, "memory": 3, "none": 3}[mode]  # memory: a new process/module re-reads once
    assert len(count_reads) == expected
    assert torch.equal(first, second)  # cached data give the same crops
    if mode == "memory":
        count_reads.clear()
        dm.train_dataset[0]
        assert count_reads == []
    if mode != "persistent":
        return
    count_reads.clear()
    os.utime(files[1], ns=(1_000_000_000, 1_000_000_000))  # modified file -> re-read
    run()
    assert [Path(p).name for p in count_reads] == [files[1].name]
    count_reads.clear()
    run(max_pixels=10_000_000)  # changed setting -> re-read everything
    assert len(count_reads) == 3
    entries = sorted(Path(cache_dir).glob("*.pt"))
    assert len(entries) == 7  # 3 + 1 modified + 3 with the other setting
    for entry in entries:
        entry.write_bytes(b"corrupt")
    count_reads.clear()
    with pytest.warns(UserWarning, match="Corrupt cache"):
        assert torch.equal(run()[1], first)  # corrupt entries are recomputed
    assert len(count_reads) == 3


def _detection(tmp_path: Path, positive_every: int = 2, **kwargs: Any) -> DetectionDataModule:
    specs = patient_specs(12, positive_every=positive_every, size=(80, 120))
    path = write_coco(tmp_path / "labeled", specs)
    args: dict[str, Any] = {"crop_size": 48, "batch_size": 4, "num_workers": 0, "cache": "none", "val_fraction": 0.25,
                            "pos_fraction": 1.0, "seed": 0}
    dm = DetectionDataModule(str(path), **{**args, **kwargs})
    dm.setup("fit")
    return dm


def test_detection_train_batch(tmp_path: Path) -> None:
    dm = _detection(tmp_path, positive_every=1, augment=True)
    assert dm.num_classes == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["image_id"].shape == (4,) and batch["image_id"].dtype == torch.int64
    assert len(batch["boxes"]) == len(batch["labels"]) == 4
    inside, ring = [], []
    for image, boxes, labels in zip(batch["image"], batch["boxes"], batch["labels"]):
        assert boxes.dtype == torch.float32 and boxes.shape[1:] == (4,) and labels.dtype == torch.int64
        assert len(boxes) == len(labels)
        for x1, y1, x2, y2 in boxes.round().int().tolist():
            inside.append(image[0, y1 + 2:y2 - 2, x1 + 2:x2 - 2].mean())
            outer = image[0, max(y1 - 4, 0):y2 + 4, max(x1 - 4, 0):x2 + 4]
            ring.append((outer.sum() - image[0, y1:y2, x1:x2].sum()) / (outer.numel() - (y2 - y1) * (x2 - x1)))
    assert len(inside) >= 3  # every image has a lesion and pos_fraction=1 puts one in each crop (unless augmented away)
    assert float(torch.stack(inside).mean()) < float(torch.stack(ring).mean()) - 0.2


def test_detection_val_full_images_and_splits(tmp_path: Path) -> None:
    dm = _detection(tmp_path)
    train_p, val_p = set(dm.splits["train"].patients()), set(dm.splits["val"].patients())
    assert not train_p & val_p and len(train_p) + len(val_p) == 12 and "test" not in dm.splits
    coco = {r["image_id"]: r for r in dm.splits["val"].to_records()}
    loader = dm.val_dataloader()
    assert dm.test_dataloader() == []
    n = 0
    for batch in loader:
        rec = coco[int(batch["image_id"][0])]
        assert batch["image"].shape == (1, 1, rec["height"], rec["width"])
        np.testing.assert_array_equal(batch["boxes"][0].numpy(), rec["boxes"])
        assert batch["meta"][0]["rows"] == rec["height"]
        n += 1
    assert n == len(coco) > 0
    dm2 = _detection(tmp_path / "again", label_fraction=0.5, test_fraction=0.2)
    small = set(dm2.splits["train"].patients())
    full = set(split_fractions_train(dm2))
    assert small < full and abs(len(small) - len(full) / 2) <= 1
    assert set(dm2.splits["test"].patients()).isdisjoint(full)


def split_fractions_train(dm: DetectionDataModule) -> list[str]:
    """Patients of the full training split (label_fraction=1) with the same seed and fractions."""
    again = DetectionDataModule(dm.coco_path, val_fraction=dm.val_fraction, test_fraction=dm.test_fraction,
                                seed=dm.seed, num_workers=0, cache="none")
    again.setup()
    return list(again.splits["train"].patients())


def test_detection_explicit_val_with_leak_is_rejected(tmp_path: Path) -> None:
    specs = patient_specs(4, size=(80, 120))
    train = write_coco(tmp_path / "train", specs)
    val = write_coco(tmp_path / "val", specs[:2])
    dm = DetectionDataModule(str(train), val_coco_path=str(val), num_workers=0, cache="none")
    with pytest.raises(ConfigError, match="val_coco_path: 1 patient"):
        dm.setup()
    missing = tmp_path / "nofiles"
    missing.mkdir()
    (missing / "annotations.json").write_text(__import__("json").dumps(coco_dict(specs)))
    with pytest.raises(Exception, match="not found"):
        DetectionDataModule(str(missing / "annotations.json"), num_workers=0, cache="none").setup()
    assert CocoDataset.load(train).summary().images == 8


def test_worker_loading_is_reproducible(tmp_path: Path) -> None:
    dm = _detection(tmp_path, num_workers=1, augment=True, cache="memory")
    batches = []
    for _ in range(2):
        pl.seed_everything(3, verbose=False)
        loader = dm.train_dataloader()
        assert loader.persistent_workers and loader.worker_init_fn is not None
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0]["image"], batches[1]["image"])
    pl.seed_everything(4, verbose=False)
    assert not torch.equal(next(iter(dm.train_dataloader()))["image"], batches[0]["image"])


def test_argument_validation(tmp_path: Path) -> None:
    for kwargs, name in [({"crop_size": 0}, "crop_size"), ({"cache": "disk"}, "cache"),
                         ({"crops_per_image": 0}, "crops_per_image"), ({"val_fraction": 1.0}, "val_fraction")]:
        with pytest.raises(ValueError, match=name):
            PretrainDataModule(str(tmp_path), **kwargs)
    for kwargs, name in [({"pos_fraction": 1.5}, "pos_fraction"), ({"label_fraction": 0.0}, "label_fraction"),
                         ({"class_mode": "x"}, "class_mode"),
                         ({"val_fraction": 0.6, "test_fraction": 0.5}, "test_fraction"),
                         ({"dense_fraction": -0.1}, "dense_fraction"), ({"zoom_fraction": 2.0}, "zoom_fraction"),
                         ({"zoom_min": 1.5}, "zoom_min")]:
        with pytest.raises(ValueError, match=name):
            DetectionDataModule("x.json", **kwargs)
    crop = DetectionDataModule("x.json", dense_fraction=0.5, zoom_fraction=0.3, zoom_min=0.4)._train_transform()
    assert (crop.transforms[0].dense_fraction, crop.transforms[0].zoom_fraction, crop.transforms[0].zoom_min) == (
        0.5, 0.3, 0.4)


def _window(full: np.ndarray, origin: tuple[int, int], size: int) -> np.ndarray:
    """(size, size) window of a (H, W) image at ``origin`` = (x0, y0), zero outside the image."""
    x0, y0 = origin
    out = np.zeros((size, size), dtype=full.dtype)
    ys, xs = slice(max(y0, 0), y0 + size), slice(max(x0, 0), x0 + size)
    part = full[ys, xs]
    out[max(-y0, 0):max(-y0, 0) + part.shape[0], max(-x0, 0):max(-x0, 0) + part.shape[1]] = part
    return out


def test_synthetic_corpus_end_to_end(tmp_path: Path) -> None:
    from dentalmim.data.synth import generate_corpus

    corpus = generate_corpus(tmp_path / "corpus", n=6, seed=0, n_unlabeled=2, scale=0.25, panoramic_fraction=0.0,
                             caries_free_fraction=0.0, syntaxes=["explicit_le"], progress=False)
    coco = CocoDataset.load(corpus.coco_path)
    assert coco.summary().lesions == corpus.n_lesions > 0
    dm = DetectionDataModule(str(corpus.coco_path), crop_size=64, batch_size=3, num_workers=0, cache="memory",
                             val_fraction=0.0, pos_fraction=1.0, augment=False)
    dm.setup()
    records = {r["image_id"]: r for r in coco.to_records()}
    full = {i: dicom_io.read_dicom(r["image"]).pixels for i, r in records.items()}
    n_boxes = 0
    for batch in dm.train_dataloader():
        for image, boxes, origin, image_id in zip(batch["image"], batch["boxes"], batch["crop_origin"],
                                                  batch["image_id"].tolist()):
            x0, y0 = origin.tolist()
            source = full[image_id].astype(np.float16).astype(np.float32)  # the cache holds float16
            np.testing.assert_array_equal(image[0].numpy(), _window(source, (x0, y0), 64))
            assert len(boxes) >= 1  # pos_fraction=1: a whole lesion in every crop
            for box in boxes.numpy():
                back = box + [x0, y0, x0, y0]  # maps back onto an annotated lesion (clipped to the crop)
                clipped = np.clip(records[image_id]["boxes"], [x0, y0, x0, y0], [x0 + 64, y0 + 64] * 2)
                assert np.abs(clipped - back).max(axis=1).min() <= 1.0
                n_boxes += 1
    assert n_boxes >= len(records)
    pre = PretrainDataModule([str(corpus.unlabeled_dir), str(corpus.labeled_dir)], crop_size=32, batch_size=4,
                             num_workers=0, cache="none", val_fraction=0.2, two_views=True)
    pre.setup()
    assert len(pre.train_dataset) + len(pre.val_dataset) * pre.crops_per_image == 8 * pre.crops_per_image
    batch = next(iter(pre.train_dataloader()))
    assert batch["image"].shape == batch["image_2"].shape == (4, 1, 32, 32)


def test_crops_by_area_give_large_images_more_crops(tmp_path: Path) -> None:
    specs = [image_spec(i + 1, f"P{i:03d}", (60, 80), [(10, 12, 26, 28)]) for i in range(4)]  # 4800 px each
    specs.append(image_spec(5, "P900", (120, 160), [(10, 12, 26, 28)]))  # 19200 px: 4x
    path = write_coco(tmp_path / "labeled", specs)
    args: dict[str, Any] = {"crop_size": 32, "batch_size": 4, "num_workers": 0, "cache": "none", "val_fraction": 0.0,
                            "crops_per_image": 4}
    even = DetectionDataModule(str(path), **args)
    even.setup("fit")
    assert len(even.datasets["train"]) == 20 and even.datasets["train"].repeats == 4
    by_area = DetectionDataModule(str(path), crops_by_area=True, **args)
    by_area.setup("fit")
    ds = by_area.datasets["train"]
    ids = [int(r["image_id"]) for r in ds.records]
    counts = {i: sum(ds.image_index(k) == n for k in range(len(ds))) for n, i in enumerate(ids)}
    assert counts == {1: 2, 2: 2, 3: 2, 4: 2, 5: 10}  # mean area 7680 px: 4 * 4800 / 7680 = 2.5 -> 2, 4 * 2.5 -> 10
    assert sorted(int(ds[k]["image_id"]) for k in range(len(ds))) == sorted(i for i, c in counts.items()
                                                                            for _ in range(c))
    with pytest.raises(ValueError, match="repeats should be >= 1: one count, or one per image"):
        RadiographDataset(ds.images, ds.records, ds.transform, repeats=[1] * (len(ids) - 1))
    with pytest.raises(ValueError, match="repeats should be >= 1"):
        RadiographDataset(ds.images, ds.records, ds.transform, repeats=0)


def test_detection_skips_images_whose_size_differs_from_the_labels(tmp_path: Path) -> None:
    specs = patient_specs(12, positive_every=2, size=(80, 120))
    path = write_coco(tmp_path / "labeled", specs)
    coco = json.loads(path.read_text())
    coco["images"][0]["width"] += 8  # boxes drawn on another size than the DICOM's
    path.write_text(json.dumps(coco))
    dm = DetectionDataModule(str(path), crop_size=48, batch_size=4, num_workers=0, cache="none", val_fraction=0.25,
                             seed=0)
    dm.setup("fit")
    mismatched = str(CocoDataset.load(path).image_path(CocoDataset.load(path).images[0]))
    assert dm.skipped[mismatched].startswith("size_mismatch: the labels give 128x80, the DICOM is 120x80")
    kept = [im.id for split in dm.splits.values() for im in split.images]
    assert coco["images"][0]["id"] not in kept and len(kept) == len(coco["images"]) - 1


def test_a_training_split_without_lesions_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_coco(tmp_path / "labeled", patient_specs(8, size=(80, 120)))
    coco = json.loads(path.read_text())
    coco["annotations"] = []  # every image caries-free
    path.write_text(json.dumps(coco))
    dm = DetectionDataModule(str(path), crop_size=48, batch_size=4, num_workers=0, cache="none", seed=0)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert not dm.splits["train"].annotations
    assert "no lesion boxes" in caplog.text
