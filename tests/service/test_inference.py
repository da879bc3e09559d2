"""Cross-image tile batching gives exactly what Predictor.predict gives on each image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dentalmim.inference.predictor import Predictor
from service.inference import predict_images

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
