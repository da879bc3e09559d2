"""Cross-image tile batching gives exactly what Predictor.predict gives on each image, in shared forward passes;
the inference thread runs them on its own CPU thread count (every core but one by default)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dentalmim.inference.predictor import Predictor
from service import inference
from service.inference import predict_images
from service.main import make_batch_runner

torch.set_num_threads(1)


def test_batched_images_match_one_by_one_prediction(bundle) -> None:
    predictor = Predictor.from_checkpoint(bundle, device="cpu", tile_batch_size=5)
    rng = np.random.default_rng(0)
    images = [rng.random(shape, dtype=np.float32) for shape in ((100, 150), (40, 50), (64, 64), (130, 90))]
    batched = predict_images(predictor, images, threshold=0.05)
    assert len(batched) == len(images)
    for image, got in zip(images, batched):
        want = predictor.predict(image, threshold=0.05)
        assert got.image_size == want.image_size and got.num_tiles == want.num_tiles
        assert got.image_probability == pytest.approx(want.image_probability, abs=1e-5)
        assert len(got.boxes) == len(want.boxes) > 0
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        assert got.model_version == want.model_version and got.threshold == 0.05


def test_a_micro_batch_shares_forward_passes(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = Predictor.from_checkpoint(bundle, device="cpu", tile_batch_size=8)
    calls: list[int] = []
    detect = predictor.detector.detect

    def counting_detect(tiles, **kwargs):
        calls.append(len(tiles))
        return detect(tiles, **kwargs)

    monkeypatch.setattr(predictor.detector, "detect", counting_detect)
    images = [np.random.default_rng(i).random((64, 64), dtype=np.float32) for i in range(6)]  # one tile each
    predict_images(predictor, images, threshold=0.05)
    assert calls == [6]  # all six images in one forward pass, not six passes


def test_inference_threads_leave_a_core_for_the_request_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, want in ((1, 1), (2, 1), (16, 15)):
        monkeypatch.setattr(inference, "usable_cores", lambda cores=cores: cores)
        assert inference.inference_threads() == want
    assert inference.inference_threads(3) == 3
    with pytest.raises(ValueError, match=">= 0"):
        inference.inference_threads(-1)


class _Provider:
    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def current(self):
        return self.predictor, self.predictor.version


def test_the_batch_runner_sets_the_thread_count_on_the_inference_thread(bundle) -> None:
    predictor = Predictor.from_checkpoint(bundle, device="cpu", tile_batch_size=8)
    main_threads = torch.get_num_threads()
    run_batch = make_batch_runner(_Provider(predictor), 0.05, threads=main_threads + 2)
    seen: list[int] = []

    def inference_thread() -> None:
        results = run_batch([np.zeros((64, 64), np.float32)])
        assert len(results) == 1 and results[0][1] == predictor.score_threshold
        seen.append(torch.get_num_threads())

    try:
        worker = threading.Thread(target=inference_thread)
        worker.start()
        worker.join()
        assert seen == [main_threads + 2]  # torch keeps the count per thread: the worker set its own
        assert torch.get_num_threads() == main_threads
    finally:
        torch.set_num_threads(main_threads)  # threads started later use the last count set


def test_batched_images_are_read_at_the_model_spacing_like_one_by_one(bundle) -> None:
    from dentalmim.inference.predictor import load_model

    detector, meta = load_model(bundle)
    predictor = Predictor(detector, {**meta, "max_spacing_mm": 0.05}, device="cpu", tile_batch_size=5)
    rng = np.random.default_rng(1)
    images = [rng.random(shape, dtype=np.float32) for shape in ((100, 150), (60, 80), (64, 64))]
    spacings = [(0.1, 0.1), (0.025, 0.025), None]  # upsampled 2x, finer already, unknown
    batched = predict_images(predictor, images, threshold=0.05, spacings=spacings)
    for image, spacing, got in zip(images, spacings, batched):
        want = predictor.predict(image, threshold=0.05, pixel_spacing_mm=spacing)
        assert got.image_size == want.image_size and got.num_tiles == want.num_tiles
        assert len(got.boxes) == len(want.boxes)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        assert got.image_probability == pytest.approx(want.image_probability, abs=1e-5)
        assert got.warnings == want.warnings
    assert batched[0].num_tiles > predictor.predict(images[0], threshold=0.05).num_tiles  # 2x: more tiles
    run_batch = make_batch_runner(_Provider(predictor), 0.05, threads=1)
    pairs = run_batch([(images[0], spacings[0]), images[2]])  # (image, spacing) pairs or bare images
    assert pairs[0][0].num_tiles == batched[0].num_tiles and pairs[1][0].num_tiles == batched[2].num_tiles
    with pytest.raises(ValueError, match="spacings should match images"):
        predict_images(predictor, images, threshold=0.05, spacings=spacings[:1])
