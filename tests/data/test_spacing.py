"""Reading coarse radiographs at a finer pixel spacing: factors, validation, resampling."""

from __future__ import annotations

import math

import pytest
import torch

from dentalmim.data.spacing import (MAX_FACTOR, check_max_spacing, resample_image, resampled_size,
                                    spacing_factors, valid_spacing)


def test_factors_upsample_coarse_axes_and_never_downsample() -> None:
    assert spacing_factors((0.1, 0.1), 0.05) == pytest.approx((2.0, 2.0))  # panoramic: upsampled
    assert spacing_factors((0.025, 0.02), 0.05) == (1.0, 1.0)  # intraoral: already finer, kept native
    assert spacing_factors((0.1, 0.04), 0.05) == pytest.approx((2.0, 1.0))  # per axis (row, column)
    assert spacing_factors([0.1, 0.1], None) == (1.0, 1.0)  # no maximum: native
    assert spacing_factors((0.5, 1e-3), 0.05) == pytest.approx((MAX_FACTOR, 1.0))  # capped: at most 4x per axis
    for unknown in (None, (0.0, 0.1), (math.nan, 0.1), (0.1,), ("a", "b"), (-0.1, 0.1), (1e30, 0.1), (100.0, 100.0)):
        assert spacing_factors(unknown, 0.05) == (1.0, 1.0)
        assert valid_spacing(unknown) is None
    assert valid_spacing(["0.1", 0.2]) == (0.1, 0.2)


def test_max_spacing_is_checked_with_the_field_named() -> None:
    assert check_max_spacing(None) is None and check_max_spacing(0.05) == 0.05
    for bad in (0, -0.1, math.inf, 6.0):
        with pytest.raises(ValueError, match=r"data.max_spacing_mm should be null or in \(0, 5.0\] mm"):
            check_max_spacing(bad, "data.max_spacing_mm")


def test_resampling_keeps_content_in_place() -> None:
    image = torch.zeros(40, 60)
    image[10:20, 30:40] = 1.0
    assert resampled_size((40, 60), (2.0, 0.5)) == (80, 30) and resampled_size((3, 3), (0.1, 0.1)) == (1, 1)
    up = resample_image(image, (80, 120))
    ys, xs = torch.nonzero(up > 0.5, as_tuple=True)
    assert (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1) == (20, 40, 60, 80)
    down = resample_image(image, (20, 30))  # antialiased: the square's mean survives
    assert float(down.sum()) == pytest.approx(float(image.sum()) / 4, rel=1e-4)
    assert resample_image(image, (40, 60)) is image
