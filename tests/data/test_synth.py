"""Tests of the synthetic radiograph generator: geometry, ground truth, DICOM output, COCO, determinism."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dentalmim.data.encode import (
    DX_PRESENTATION_SOP_CLASS,
    IO_PRESENTATION_SOP_CLASS,
    LOSSY_SYNTAXES,
    SUPPORTED_TRANSFER_SYNTAXES,
)
from dentalmim.data.synth import IMAGE_KINDS, SynthImage, generate_corpus, generate_image, render_preview
from dentalmim.data.synth_anatomy import sample_tooth_shape
from dentalmim.data.synth_corpus import image_rng, plan_split
from dentalmim.data.synth_lesions import lesion_mask, sample_lesion
from dentalmim.data.synth_tooth import patch_grid

SCALE = 0.2
PLAN_OPTS = {"panoramic_fraction": 0.25, "caries_free_fraction": 0.3, "syntaxes": None}


def _image(kind: str, seed: int, scale: float = SCALE, **kwargs) -> SynthImage:
    return generate_image(np.random.default_rng(seed), kind, scale, **kwargs)  # type: ignore[arg-type]


def _carious(kind: str, scale: float = SCALE, start: int = 0) -> tuple[int, SynthImage]:
    """First seed from ``start`` whose image has lesions."""
    for seed in range(start, start + 20):
        img = _image(kind, seed, scale)
        if len(img.lesions) > 0:
            return seed, img
    raise AssertionError("no carious image in 20 seeds")


def _tight(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synth") / "corpus"
    return generate_corpus(root, n=12, seed=3, n_unlabeled=5, scale=0.15, progress=False)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_generate_image_outputs(kind: str) -> None:
    seed, img = _carious(kind)
    h, w = img.pixels.shape
    assert img.pixels.dtype == np.float32 and 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0  # display spans the full range
    assert img.labels.shape == img.tooth_mask.shape == (h, w)
    assert img.boxes.dtype == np.float32 and img.boxes.shape == (len(img.lesions), 4)
    assert 0.2 < img.tooth_mask.mean() < 0.9 if kind != "panoramic" else 0.05 < img.tooth_mask.mean() < 0.5
    assert len(img.teeth) >= 3 and all(11 <= t <= 48 for t in img.teeth)
    assert img.spacing_mm > 0.0
    for k, (box, lesion) in enumerate(zip(img.boxes, img.lesions, strict=True)):
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        assert box.tolist() == _tight(img.labels == k + 1)  # exact tight box of the final mask
        assert lesion.fdi in img.teeth
        assert (lesion.depth, lesion.iccms) in {("enamel", "RA"), ("dentin", "RB"), ("dentin", "RC")}
    assert img.labels.max() == len(img.lesions)


def test_image_sizes_at_full_scale() -> None:
    bitewing = _image("bitewing", 0, 1.0)
    assert 1.0e6 <= bitewing.pixels.size <= 3.0e6
    assert 0.019 <= bitewing.spacing_mm <= 0.03
    pano = _image("panoramic", 0, 0.25)
    h, w = pano.pixels.shape
    assert 2650 <= 4 * w <= 3200 and 1.8 < w / h < 2.2 and 0.38 <= pano.spacing_mm <= 0.42


@pytest.mark.parametrize("kind", ["bitewing", "periapical", "panoramic"])
def test_lesions_are_radiolucent(kind: str) -> None:
    """Same random state without lesions: every lesion is darker; and darker than the tooth around it."""
    seed, img = _carious(kind, 0.3)
    sound = _image(kind, seed, 0.3, caries_free=True)
    assert len(sound.lesions) == 0 and not sound.labels.any()
    contrasts = []
    for k in range(len(img.lesions)):
        mask = img.labels == k + 1
        assert sound.pixels[mask].mean() - img.pixels[mask].mean() > 0.01
        ring = ndimage.binary_dilation(mask, iterations=3) & (img.labels == 0) & img.tooth_mask
        contrasts.append(img.pixels[ring].mean() - img.pixels[mask].mean())
    assert np.mean(contrasts) > 0.0


def test_lesion_contrast_is_subtle() -> None:
    """Lesions are not the darkest thing in the image: thresholding cannot find them."""
    for seed in range(3):
        _, img = _carious("bitewing", 0.3, start=10 * seed)
        lesion = img.pixels[img.labels > 0]
        assert np.median(lesion) > np.percentile(img.pixels, 10)


def test_lesion_contrast_darkens_only_the_lesions() -> None:
    """Same random state at contrast 3: same anatomy and boxes, lesions several times darker than at 1."""
    seed, subtle = _carious("bitewing", 0.3)
    strong = _image("bitewing", seed, 0.3, lesion_contrast=3.0)
    sound = _image("bitewing", seed, 0.3, caries_free=True)
    np.testing.assert_array_equal(strong.boxes, subtle.boxes)
    np.testing.assert_array_equal(strong.labels, subtle.labels)
    lesion = subtle.labels > 0
    drop_subtle = sound.pixels[lesion].mean() - subtle.pixels[lesion].mean()
    drop_strong = sound.pixels[lesion].mean() - strong.pixels[lesion].mean()
    assert drop_strong > 2.0 * drop_subtle > 0
    far = ~ndimage.binary_dilation(lesion, iterations=3)
    assert np.abs(strong.pixels[far] - subtle.pixels[far]).mean() < 0.1 * drop_subtle


def test_caries_free_and_determinism() -> None:
    a, b = _image("bitewing", 5), _image("bitewing", 5)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    c = _image("bitewing", 6)
    assert a.pixels.shape != c.pixels.shape or not np.array_equal(a.pixels, c.pixels)
    free = _image("periapical", 5, caries_free=True)
    assert free.boxes.shape == (0, 4) and free.lesions == [] and not free.labels.any()


def test_small_lesions_occur_at_full_scale() -> None:
    """Geometry only: lesion masks drawn on a tooth grid at a realistic 0.022 mm pixel."""
    rng = np.random.default_rng(0)
    sides = []
    for i in range(60):
        shape = sample_tooth_shape(rng, [16, 15, 46, 45, 36][i % 5], 1.0, 1.0)
        lesion = sample_lesion(rng, shape, ["proximal", "occlusal", "cervical"][i % 3], float(rng.choice([-1, 1])), 1.0)
        u, v = patch_grid(shape, 1 / 0.022, (-1.0, 12.0))
        _, _, mask, _, _ = lesion_mask(lesion, shape, u, v)
        if mask.any():
            rows, cols = np.nonzero(mask)
            sides.append(max(np.ptp(rows), np.ptp(cols)) + 1)
    assert min(sides) < 30 and max(sides) > 60
    assert sum(s < 30 for s in sides) >= 3


def test_invalid_arguments(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind should be one of"):
        generate_image(rng, "cephalometric", 0.2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale should be in"):
        generate_image(rng, "bitewing", 0.0)
    with pytest.raises(ValueError, match="caries_free_fraction should be in"):
        generate_corpus(tmp_path, n=1, caries_free_fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="syntaxes should be among"):
        generate_corpus(tmp_path, n=1, syntaxes=["jpeg_xl"], progress=False)
    for bad in (0.0, 6.0):
        with pytest.raises(ValueError, match="lesion_contrast should be in"):
            generate_image(rng, "bitewing", 0.2, lesion_contrast=bad)
        with pytest.raises(ValueError, match="lesion_contrast should be in"):
            generate_corpus(tmp_path, n=1, lesion_contrast=bad, progress=False)


def test_corpus_layout_and_coco(corpus) -> None:
    coco = json.loads(corpus.coco_path.read_text())
    assert corpus.coco_path == corpus.labeled_dir / "annotations.json"
    assert len(coco["images"]) == corpus.n_labeled == 12
    assert len(list(corpus.unlabeled_dir.glob("*.dcm"))) == corpus.n_unlabeled == 5
    assert coco["categories"] == [{"id": 1, "name": "caries"}]
    assert len({im["id"] for im in coco["images"]}) == 12
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) == corpus.n_lesions > 0
    plans = plan_split(3, "labeled", 12, 1, **PLAN_OPTS)
    by_image: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1 and ann["tooth"].isdigit()
    for im, plan in zip(coco["images"], plans, strict=True):
        assert (corpus.labeled_dir / im["file_name"]).is_file() and im["file_name"].startswith("images/")
        img = generate_image(image_rng(3, "labeled", plan.index), plan.kind, 0.15, caries_free=plan.caries_free)
        assert (im["height"], im["width"]) == img.pixels.shape and im["kind"] == plan.kind
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in by_image[im["id"]]]
        assert boxes == img.boxes.tolist()
        if plan.caries_free:
            assert boxes == []
    assert "12 labeled" in corpus.format() and str(corpus.n_lesions) in corpus.format()


def test_corpus_validates_with_coco_loader(corpus) -> None:
    from dentalmim.data.coco import CocoDataset

    ds = CocoDataset.load(corpus.coco_path)
    records = ds.to_records()
    assert len(records) == 12 and sum(len(r["boxes"]) for r in records) == corpus.n_lesions


def test_corpus_patients_and_dicom_attributes(corpus) -> None:
    files = sorted(corpus.labeled_dir.glob("images/*.dcm")) + sorted(corpus.unlabeled_dir.glob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    labeled_patients = {h.PatientID for h in headers[:12]}
    assert labeled_patients.isdisjoint({h.PatientID for h in headers[12:]})
    assert len(labeled_patients) < 12  # several images per patient
    studies = [h.StudyInstanceUID for h in headers]
    assert len(set(studies)) < len(studies) and len({h.SOPInstanceUID for h in headers}) == len(headers)
    assert all(str(h.PatientName).startswith("SYNTH^PATIENT^") and h.StudyDate for h in headers)
    for h in headers:
        assert (h.Modality, h.SOPClassUID) in {("IO", IO_PRESENTATION_SOP_CLASS), ("PX", DX_PRESENTATION_SOP_CLASS)}
        assert ("PixelSpacing" in h) != ("ImagerPixelSpacing" in h)
    assert {h.Modality for h in headers} == {"IO", "PX"}
    assert {"PixelSpacing" in h for h in headers} == {True, False}  # both spacing attributes occur


def test_images_per_patient_sets_the_patient_count(tmp_path: Path) -> None:
    opts = {"panoramic_fraction": 0.25, "caries_free_fraction": 0.3, "syntaxes": None}
    for lo, hi in ((1, 1), (1, 3), (2, 5)):
        plans = plan_split(0, "labeled", 40, 1, images_per_patient=(lo, hi), **opts)
        per_patient = np.bincount([p.ids.patient_number for p in plans])[1:]
        assert len(plans) == 40 and per_patient.min() >= 1
        assert per_patient[:-1].min() >= lo and per_patient.max() <= hi  # the last patient may be cut short
    assert len({p.ids.patient_number for p in plan_split(0, "labeled", 40, 1, images_per_patient=(1, 1),
                                                         **opts)}) == 40
    with pytest.raises(ValueError, match=r"images_per_patient should be a range \(lo, hi\) with 1 <= lo <= hi"):
        generate_corpus(tmp_path, n=2, images_per_patient=(3, 2))


def test_every_syntax_reads_back(tmp_path: Path) -> None:
    """Each syntax once: pixel_array decodes, stored bits / photometric as planned, MONOCHROME1 inverted."""
    syntaxes = list(SUPPORTED_TRANSFER_SYNTAXES)
    summary = generate_corpus(tmp_path, n=len(syntaxes), seed=8, n_unlabeled=0, scale=0.12, syntaxes=syntaxes,
                              caries_free_fraction=0.0, progress=False)
    plans = plan_split(8, "labeled", len(syntaxes), 1, panoramic_fraction=0.25, caries_free_fraction=0.0,
                       syntaxes=syntaxes)
    seen, photometrics = set(), set()
    for plan in plans:
        ds = pydicom.dcmread(summary.labeled_dir / "images" / plan.name)
        stored = ds.pixel_array.astype(np.int64)
        assert ds.file_meta.TransferSyntaxUID == SUPPORTED_TRANSFER_SYNTAXES[plan.fmt.syntax]
        assert (ds.BitsStored, ds.BitsAllocated, ds.PhotometricInterpretation) == (
            plan.fmt.bits_stored, plan.fmt.bits_allocated, plan.fmt.photometric)
        img = generate_image(image_rng(8, "labeled", plan.index), plan.kind, 0.12)
        top = (1 << plan.fmt.bits_stored) - 1
        expected = np.rint(img.pixels * top).astype(np.int64)
        if plan.fmt.photometric == "MONOCHROME1":
            expected = top - expected
        tol = 0.1 * top if plan.fmt.syntax in LOSSY_SYNTAXES else 0
        assert np.abs(stored - expected).mean() <= tol + 1e-9
        seen.add(plan.fmt.syntax)
        photometrics.add(plan.fmt.photometric)
    assert seen == set(syntaxes)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_monochrome1_and_bit_depths_mixed() -> None:
    plans = plan_split(0, "labeled", 200, 1, **PLAN_OPTS)
    fmts = [p.fmt for p in plans]
    share = np.mean([f.photometric == "MONOCHROME1" for f in fmts])
    assert 0.08 < share < 0.3
    assert {f.bits_stored for f in fmts} == {8, 10, 12, 14, 16} and {f.bits_allocated for f in fmts} == {8, 16}
    assert any(f.window for f in fmts) and any(f.rescale for f in fmts)
    assert {p.fmt.syntax for p in plans} == set(SUPPORTED_TRANSFER_SYNTAXES)
    assert all(f.bits_stored == 8 for f in fmts if f.syntax == "jpeg_baseline")


def test_corpus_is_byte_identical_for_a_seed(corpus, tmp_path: Path) -> None:
    again = generate_corpus(tmp_path / "again", n=12, seed=3, n_unlabeled=5, scale=0.15, progress=False)
    cmp = filecmp.dircmp(corpus.root, again.root)
    files = [*(corpus.labeled_dir / "images").glob("*.dcm"), corpus.coco_path, *corpus.unlabeled_dir.glob("*.dcm")]
    for f in files:
        assert filecmp.cmp(f, again.root / f.relative_to(corpus.root), shallow=False), f
    assert not cmp.left_only and not cmp.right_only
    other = generate_corpus(tmp_path / "other", n=2, seed=4, n_unlabeled=0, scale=0.15, progress=False)
    first = corpus.labeled_dir / "images" / "img_00000.dcm"
    assert first.read_bytes() != (other.labeled_dir / "images" / "img_00000.dcm").read_bytes()


def test_read_dicom_chain_shows_the_lesions(corpus) -> None:
    """The project reader renders each file like the generator did (MONOCHROME1, windows and rescale included)."""
    from dentalmim.data.dicom import read_dicom

    plans = plan_split(3, "labeled", 12, 1, **PLAN_OPTS)
    n_lesions = 0
    for plan in plans:
        shown = read_dicom(corpus.labeled_dir / "images" / plan.name).pixels
        img = generate_image(image_rng(3, "labeled", plan.index), plan.kind, 0.15, caries_free=plan.caries_free)
        tol = 0.06 if plan.fmt.syntax in LOSSY_SYNTAXES else 1.0 / (1 << plan.fmt.bits_stored) + 1e-4
        assert np.abs(shown - img.pixels).mean() <= tol, plan.fmt
        sound = generate_image(image_rng(3, "labeled", plan.index), plan.kind, 0.15, caries_free=True)
        for k in range(len(img.lesions)):
            mask = img.labels == k + 1
            assert shown[mask].mean() < sound.pixels[mask].mean()
            n_lesions += 1
    assert n_lesions > 0


def test_render_preview(tmp_path: Path) -> None:
    _, img = _carious("bitewing", 0.3)
    path = render_preview(img, tmp_path / "p.png", max_width=200, inset_side=60)
    from PIL import Image

    with Image.open(path) as im:
        assert im.width == 200 and im.mode == "P"
        colours = {tuple(im.getpalette()[3 * i : 3 * i + 3]) for _, i in im.getcolors()}
    assert (255, 40, 40) in colours or (255, 210, 0) in colours  # a box was drawn
