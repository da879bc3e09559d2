"""synth -> ingest (de-identify) -> COCO remap -> data module: pixels and boxes survive exactly.

The synth tests prove each COCO box is the tight box of its lesion mask in the generated image. Here the chain
after it must change neither the pixels nor the boxes, so the boxes still land on the lesions: the full-size test
images equal the source decoding pixel for pixel with identical boxes, and every training crop is the exact image
window at its origin with the boxes shifted by that origin.
"""

from __future__ import annotations


import numpy as np
import pydicom
import pytest

from dentalmim.data.coco import CocoDataset, split_by_patient
from dentalmim.data.datamodules import DetectionDataModule
from dentalmim.data.dicom import read_dicom
from dentalmim.data.synth import generate_corpus
from dentalmim.pipeline import ingest_labeled


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[CocoDataset, CocoDataset]:
    root = tmp_path_factory.mktemp("rt")
    summary = generate_corpus(root / "corpus", n=6, seed=11, n_unlabeled=0, scale=0.2, progress=False)
    coco_path = ingest_labeled(summary.coco_path, root / "ingested", root / "salt")
    return CocoDataset.load(summary.coco_path), CocoDataset.load(coco_path)


def test_ingest_keeps_pixels_and_boxes_and_drops_identity(ingested: tuple[CocoDataset, CocoDataset]) -> None:
    source, deid = ingested
    assert [im.id for im in deid.images] == [im.id for im in source.images]
    by_id = {im.id: im for im in source.images}
    for im in deid.images:
        original, copy = source.image_path(by_id[im.id]), deid.image_path(im)
        np.testing.assert_array_equal(read_dicom(copy).pixels, read_dicom(original).pixels)
        src, out = pydicom.dcmread(original), pydicom.dcmread(copy)
        assert out.PatientName != src.PatientName and out.StudyInstanceUID != src.StudyInstanceUID
    assert [a.bbox for a in deid.annotations] == [a.bbox for a in source.annotations]


def test_data_module_boxes_land_where_the_labels_put_them(ingested: tuple[CocoDataset, CocoDataset]) -> None:
    source, deid = ingested
    train, _, held_out = split_by_patient(deid, (0.5, 0.0, 0.5), seed=0)
    train_path, val_path = train.save(deid.root / "train.json"), held_out.save(deid.root / "val.json")
    dm = DetectionDataModule(str(train_path), val_coco_path=str(val_path), crop_size=128, batch_size=2,
                             num_workers=0, pos_fraction=1.0, augment=False, cache="none", seed=0)
    dm.setup("fit")
    expected = {r["image_id"]: r for r in source.to_records(class_mode="caries")}
    for batch in dm.val_dataloader():
        rec = expected[int(batch["image_id"][0])]
        np.testing.assert_allclose(batch["image"][0, 0].numpy(), read_dicom(rec["image"]).pixels, atol=1e-3)
        np.testing.assert_allclose(batch["boxes"][0].numpy(), rec["boxes"])
    checked = 0
    for batch in dm.train_dataloader():
        for i, (x0, y0) in enumerate(batch["crop_origin"].tolist()):  # (x, y) of the crop's top-left pixel
            rec = expected[int(batch["image_id"][i])]
            full = read_dicom(rec["image"]).pixels
            window = np.zeros((128, 128), np.float32)
            part = full[max(y0, 0):y0 + 128, max(x0, 0):x0 + 128]
            window[max(-y0, 0):max(-y0, 0) + part.shape[0], max(-x0, 0):max(-x0, 0) + part.shape[1]] = part
            np.testing.assert_allclose(batch["image"][i, 0].numpy(), window, atol=1e-3)  # float16 cache tolerance
            shifted = batch["boxes"][i].numpy() + np.array([x0, y0, x0, y0], np.float32)
            for box in shifted:  # every crop box is one of the image's labelled boxes (clipped to the crop)
                inside = (box[:2] >= rec["boxes"][:, :2] - 1e-3).all(1) & (box[2:] <= rec["boxes"][:, 2:] + 1e-3).all(1)
                assert inside.any()
            checked += len(shifted)
    assert checked > 0
