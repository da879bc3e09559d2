"""The evaluation report renders, is self-contained, escapes metadata, and the gallery picks the worst cases."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from dentalmim.evaluation.metrics import EvalImage, compute_curves, evaluate_detections
from dentalmim.evaluation.report import GalleryItem, select_gallery, write_report
from dentalmim.evaluation.report_gallery import GT_COLOUR, PRED_COLOUR, render_gallery_item

DATA_PNG = '<img src="data:image/png;base64,'
SIZE = 96


def _images(seed: int = 0, n: int = 16) -> list[EvalImage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(0, 3))
        xy = rng.uniform(0, SIZE - 30, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(6, 28, (k, 2))], axis=1)
        found = gt[rng.random(k) < 0.6]
        fxy = rng.uniform(0, SIZE - 20, (int(rng.integers(0, 3)), 2))
        pred = np.concatenate([found, np.concatenate([fxy, fxy + 12], axis=1)])
        scores = np.concatenate([rng.uniform(0.4, 1, len(found)), rng.uniform(0, 0.9, len(fxy))])
        out.append(EvalImage(gt_boxes=gt, pred_boxes=pred, pred_scores=scores, image_id=f"img<{i}>",
                             image_prob=float(np.clip(0.2 + 0.5 * (k > 0) + rng.normal(0, 0.15), 0, 1))))
    return out


def _load(im: EvalImage) -> np.ndarray:
    pixels = np.full((SIZE, SIZE), 0.6, np.float32)
    for x1, y1, x2, y2 in im.gt_boxes.astype(int):
        pixels[y1:y2, x1:x2] = 0.3
    return pixels


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object, list[GalleryItem]]:
    images = _images()
    metrics = evaluate_detections(images, score_threshold=0.5, n_boot=100, seed=0)
    curves = compute_curves(images, score_threshold=0.5, n_boot=50)
    gallery = select_gallery(images, 2, _load, score_threshold=0.5)
    provenance = {"model_version": "det-1.2.0", "model_sha256": "ab" * 32, "dataset_sha256": "cd" * 32,
                  "config": {"lr": 1e-4, "note": '<script>alert("x")</script>', "price": "$5 $x^2$"}}
    out = tmp_path_factory.mktemp("report")
    paths = write_report(out, metrics, curves, gallery=gallery, provenance=provenance, title="Caries <eval>")
    return metrics, paths, gallery


def test_report_files_and_headline_metrics(report) -> None:
    metrics, paths, _ = report
    assert paths.html.is_file() and paths.pdf.is_file() and paths.metrics_json.is_file()
    page = paths.html.read_text(encoding="utf-8")
    for key in ("froc_fom", "sensitivity_at_1fp", "ap50", "auroc", "sensitivity", "specificity", "ece"):
        assert f"<td>{key}</td>" in page
        assert f"{metrics[key]:.3f}" in page
    assert f"{metrics['ci']['froc_fom'][0]:.3f} - {metrics['ci']['froc_fom'][1]:.3f}" in page
    assert "Per lesion size (largest box side, pixels)" in page and "Per class" in page
    assert "det-1.2.0" in page and "ab" * 32 in page


def test_report_is_self_contained_and_escaped(report) -> None:
    _, paths, gallery = report
    page = paths.html.read_text(encoding="utf-8")
    assert len(gallery) >= 2
    assert page.count(DATA_PNG) == 5 + 2 * len(gallery)  # 5 plots, then crop + context per case
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(uri)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(" in page and "&lt;/script&gt;" in page
    assert "Caries &lt;eval&gt;" in page and "img&lt;" in page and "img<" not in page


def test_report_pdf_pages(report) -> None:
    _, paths, gallery = report
    data = paths.pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    assert pages == 2 + 5 + int(np.ceil(len(gallery) / 3))  # summary, breakdowns, plots, gallery


def test_metrics_json(report) -> None:
    metrics, paths, _ = report
    doc = json.loads(paths.metrics_json.read_text())
    for key in ("froc_fom", "sensitivity_at_1fp", "ap50"):
        assert doc[key] == pytest.approx(metrics[key]) and len(doc["ci"][key]) == 2
    assert doc["provenance"]["model_version"] == "det-1.2.0" and doc["provenance"]["date"]
    assert doc["provenance"]["dentalmim_version"]


def _gallery_case() -> list[EvalImage]:
    big, small, lowhit, found = [0, 0, 40, 30], [50, 50, 58, 58], [60, 0, 80, 20], [0, 60, 20, 80]
    return [EvalImage(gt_boxes=np.array([small, big, lowhit, found], float),
                      pred_boxes=np.array([[61, 1, 79, 19], [1, 61, 19, 79]], float),
                      pred_scores=np.array([0.2, 0.9]), image_id="a"),
            EvalImage(gt_boxes=np.zeros((0, 4)), pred_boxes=np.array([[0, 0, 9, 9], [20, 20, 29, 29],
                                                                      [40, 40, 49, 49]], float),
                      pred_scores=np.array([0.6, 0.95, 0.3]), image_id="b")]


def test_select_gallery_orders_worst_cases_and_loads_each_image_once() -> None:
    calls: list[str] = []

    def load(im: EvalImage) -> np.ndarray:
        calls.append(str(im.image_id))
        return np.zeros((SIZE, SIZE))

    items = select_gallery(_gallery_case(), 5, load, score_threshold=0.5)
    assert [g.kind for g in items] == ["FN", "FN", "FN", "FP", "FP"]
    # unmarked lesions first (largest first), then the one only hit at score 0.2; the found lesion is not listed
    assert [g.focus.tolist() for g in items[:3]] == [[0, 0, 40, 30], [50, 50, 58, 58], [60, 0, 80, 20]]
    assert "best overlapping score 0.20" in items[2].title
    assert [g.focus.tolist() for g in items[3:]] == [[20, 20, 29, 29], [0, 0, 9, 9]]  # 0.95 then 0.6; 0.3 is below
    assert sorted(calls) == ["a", "b"]
    assert len(select_gallery(_gallery_case(), 1, load, score_threshold=0.5)) == 2


def test_render_gallery_item_native_crop_with_overlays() -> None:
    image = np.full((64, 64), 0.5, np.float32)
    item = GalleryItem(image, np.array([[20, 20, 30, 30]]), np.array([[40, 40, 50, 50]]), np.array([0.7]),
                       "t", "FN")
    crop, thumb = render_gallery_item(item, min_context_px=48, display_px=320)
    assert crop.size == (320, 320)  # the whole 64 px region enlarged x5 (nearest)
    px = np.asarray(crop)
    assert tuple(px[100, 100]) == GT_COLOUR and tuple(px[220, 200]) == PRED_COLOUR
    assert tuple(px[5, 5]) == (128, 128, 128)  # untouched pixels keep their grey value
    assert thumb.size == (64, 64)
    with pytest.raises(ValueError, match="kind should be"):
        GalleryItem(image, np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0), "t", "TP")
    with pytest.raises(ValueError, match="image should have shape"):
        GalleryItem(np.zeros((2, 2, 3)), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0), "t", "FP")


def test_report_without_normals_or_gallery_marks_missing_values(tmp_path: Path) -> None:
    images = [EvalImage(gt_boxes=[[5, 5, 20, 20]], pred_boxes=[[5, 5, 20, 20]], pred_scores=[0.8]),
              EvalImage(gt_boxes=[[30, 30, 40, 40]], pred_boxes=np.zeros((0, 4)), pred_scores=[])]
    metrics = evaluate_detections(images, score_threshold=0.5, n_boot=0)
    paths = write_report(tmp_path, metrics, compute_curves(images, score_threshold=0.5, n_boot=0))
    page = paths.html.read_text(encoding="utf-8")
    assert page.count(DATA_PNG) == 5 and "n/a" in page and "No cases selected for the gallery." in page
    doc = json.loads(paths.metrics_json.read_text())
    assert doc["afroc_fom"] is None and doc["specificity"] is None and doc["froc_fom"] == pytest.approx(0.5)


def test_render_gallery_item_small_box_on_a_large_image() -> None:
    """A 4 px lesion on a 1400 px radiograph shrinks below one thumbnail pixel; it is drawn as a dot, not an error."""
    image = np.full((1000, 1400), 0.5, np.float32)
    box = np.array([[700.0, 500.0, 704.0, 503.0]], np.float32)
    item = GalleryItem(image=image, gt_boxes=box, pred_boxes=box + 1, pred_scores=np.array([0.9], np.float32),
                       title="tiny", kind="FN", focus=box[0])
    crop, thumb = render_gallery_item(item)
    assert max(thumb.size) == 320 and crop.size[0] >= 48
    pixels = np.asarray(thumb)
    assert (pixels == np.array(PRED_COLOUR, np.uint8)).all(-1).any()  # the marks are there


def test_image_size_baseline_auroc_ranks_images_by_pixel_count() -> None:
    from dentalmim.data.coco import CocoDataset
    from dentalmim.data.coco_schema import CocoImage
    from dentalmim.evaluation.evaluate import image_size_baseline_auroc

    sizes = {1: (100, 100), 2: (300, 200), 3: (200, 200), 4: (50, 80)}  # id -> (width, height)
    coco = CocoDataset([CocoImage(i, f"{i}.dcm", w, h, "p") for i, (w, h) in sizes.items()])
    box = np.array([[1.0, 1.0, 5.0, 5.0]])

    def item(image_id: int, caries: bool) -> EvalImage:
        return EvalImage(gt_boxes=box if caries else np.zeros((0, 4)), pred_boxes=np.zeros((0, 4)),
                         pred_scores=np.zeros(0), image_id=str(image_id), image_prob=0.5)

    # the two largest images hold caries: size alone separates them perfectly
    assert image_size_baseline_auroc(coco, [item(1, False), item(2, True), item(3, True), item(4, False)]) == 1.0
    # the largest and the smallest hold caries: areas 60000, 4000 vs 10000, 40000 -> 2 of 4 pairs
    assert image_size_baseline_auroc(coco, [item(1, False), item(2, True), item(3, False), item(4, True)]) == 0.5
    assert image_size_baseline_auroc(coco, [item(1, True), item(2, True)]) is None  # no caries-free image


def test_report_shows_the_image_size_baseline(tmp_path: Path) -> None:
    images = _images()
    metrics = {**evaluate_detections(images, score_threshold=0.5, n_boot=20, seed=0),
               "auroc_image_size_baseline": 0.8125}
    paths = write_report(tmp_path, metrics, compute_curves(images, score_threshold=0.5, n_boot=10),
                         gallery=[], provenance={}, title="t")
    page = paths.html.read_text()
    assert "Image-level AUROC of image size alone" in page and "0.812" in page
    assert json.loads(paths.metrics_json.read_text())["auroc_image_size_baseline"] == 0.8125


def test_evaluation_warnings_and_their_place_in_the_report(tmp_path: Path) -> None:
    from dentalmim.evaluation.evaluate import evaluation_warnings

    support = {"image_threshold": 0.727, "threshold_val_caries_images": 4, "threshold_val_caries_free_images": 1}
    warnings = evaluation_warnings({"auroc": 0.70, "auroc_image_size_baseline": 0.83}, support)
    assert len(warnings) == 2 and "provisional" in warnings[0] and "does not beat image size" in warnings[1]
    well_supported = {**support, "threshold_val_caries_free_images": 6, "threshold_val_caries_images": 9}
    assert evaluation_warnings({"auroc": 0.95, "auroc_image_size_baseline": 0.83}, well_supported) == []
    assert evaluation_warnings({"auroc": None, "auroc_image_size_baseline": None}, well_supported) == []
    few_normals = evaluation_warnings({"counts": {"positive_images": 10, "negative_images": 4}}, well_supported)
    assert len(few_normals) == 1 and "10 caries and 4 caries-free test image(s)" in few_normals[0]
    assert evaluation_warnings({"counts": {"positive_images": 5, "negative_images": 5}}, well_supported) == []
    typed = {**well_supported, "threshold_val_image_types": {"intraoral": [8, 5], "panoramic": [1, 1]}}
    (pano,) = evaluation_warnings({}, typed, ["intraoral", "panoramic", "panoramic"])  # once per type
    assert pano.startswith("panoramic image:") and "only 1 panoramic validation image(s)" in pano
    assert evaluation_warnings({}, typed, ["intraoral"]) == evaluation_warnings({}, well_supported, ["PX"]) == []
    images = _images()
    metrics = {**evaluate_detections(images, score_threshold=0.5, n_boot=20, seed=0),
               "warnings": ["threshold <rests> on 1 image"]}
    paths = write_report(tmp_path, metrics, compute_curves(images, score_threshold=0.5, n_boot=10),
                         gallery=[], provenance={}, title="t")
    page = paths.html.read_text()
    assert page.index("Read this first") < page.index("Headline metrics")
    assert "threshold &lt;rests&gt; on 1 image" in page
    assert json.loads(paths.metrics_json.read_text())["warnings"] == ["threshold <rests> on 1 image"]
    plain = write_report(tmp_path / "plain", {k: v for k, v in metrics.items() if k != "warnings"},
                         compute_curves(images, score_threshold=0.5, n_boot=10), gallery=[], provenance={}, title="t")
    assert "Read this first" not in plain.html.read_text()


def test_per_image_type_breakdown_exposes_a_probability_that_only_separates_image_types(tmp_path: Path) -> None:
    from dentalmim.evaluation.evaluate import evaluation_warnings, per_image_type

    def image(i: int, caries: bool, prob: float) -> EvalImage:
        gt = np.array([[10.0, 10.0, 30.0, 30.0]]) if caries else np.zeros((0, 4))
        return EvalImage(gt_boxes=gt, pred_boxes=gt.copy(), pred_scores=np.full(len(gt), 0.9), image_id=str(i),
                         image_prob=prob, patient_id=f"p{i}")

    # panoramics all score high whatever their truth, intraorals low: AUROC 0.75 overall, chance within panoramics
    pano = [image(0, True, 0.90), image(1, True, 0.93), image(2, False, 0.91), image(3, False, 0.92)]
    intra = [image(4, True, 0.60), image(5, False, 0.20), image(6, False, 0.30)]
    types = {**{str(i): "panoramic" for i in range(4)}, **{str(i): "intraoral" for i in range(4, 7)}}
    groups = per_image_type(pano + intra, types, score_threshold=0.5, image_threshold=0.5)
    assert list(groups) == ["intraoral", "panoramic"]
    assert groups["panoramic"]["auroc"] == 0.5 and groups["panoramic"]["specificity"] == 0.0
    assert groups["intraoral"]["auroc"] == 1.0 and groups["intraoral"]["caries_free_images"] == 2
    assert groups["panoramic"]["name"] == "4 images: 2 caries, 2 caries-free" and groups["panoramic"]["lesions"] == 2
    assert per_image_type(pano, types, score_threshold=0.5, image_threshold=0.5) == {}  # one type: no breakdown
    support = {"image_threshold": 0.5, "threshold_val_caries_images": 9, "threshold_val_caries_free_images": 9}
    warned = evaluation_warnings({"per_image_type": groups}, support)
    assert len(warned) == 1 and "within the panoramic images (2 caries, 2 caries-free)" in warned[0]
    groups["panoramic"]["auroc"] = 0.75
    assert evaluation_warnings({"per_image_type": groups}, support) == []
    metrics = {**evaluate_detections(pano + intra, score_threshold=0.5, image_threshold=0.5, n_boot=0),
               "per_image_type": groups}
    paths = write_report(tmp_path, metrics, compute_curves(pano + intra, score_threshold=0.5, n_boot=0),
                         gallery=[], provenance={}, title="t")
    page = paths.html.read_text()
    assert "Per image type" in page and "4 images: 2 caries, 2 caries-free" in page and "Image AUROC" in page
