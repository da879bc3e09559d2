"""Random smooth fields for the synthetic radiographs.

Everything smooth (soft-tissue thickness, bone texture, vignetting) is drawn on a coarse grid and upsampled with
OpenCV, so the cost per image is a few full-resolution passes whatever the feature size.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Standard deviations (coarse-grid pixels) of the difference of Gaussians that shapes trabecular bone.
_TRABECULAR_SIGMAS = (1.0, 2.2)
#: Half-width of a strut, in standard deviations of the band-passed noise.
_RIDGE_WIDTH = 0.6
#: Coarse-grid pixels per trabecular cell (marrow space between struts).
_TRABECULAR_CELL_PX = 5.0


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic Hermite ramp: 0 for x <= 0, 1 for x >= 1, smooth in between (same shape and dtype as ``x``)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def resize(field: np.ndarray, shape: tuple[int, int], *, cubic: bool = False) -> np.ndarray:
    """Resamples a 2-D float32 field to ``shape`` = (H, W)."""
    interp = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(field, np.float32), (shape[1], shape[0]), interpolation=interp)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], feature_px: float) -> np.ndarray:
    """Smooth random field with features about ``feature_px`` pixels across.

    Args:
        rng: random generator.
        shape: (H, W) of the result.
        feature_px: typical distance between extrema, in output pixels.

    Returns:
        (H, W) float32 field, roughly zero mean and unit standard deviation.
    """
    gh = max(2, math.ceil(shape[0] / feature_px) + 2)
    gw = max(2, math.ceil(shape[1] / feature_px) + 2)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    return resize(coarse, shape, cubic=True)


def _ridges(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """One octave of ridge noise: soft bright struts on the zero crossings of band-passed noise, (H, W) in [0, 1]."""
    factor = max(1.0, cell_px / _TRABECULAR_CELL_PX)
    gh, gw = max(8, round(shape[0] / factor)), max(8, round(shape[1] / factor))
    white = rng.standard_normal((gh, gw), dtype=np.float32)
    s1, s2 = _TRABECULAR_SIGMAS
    band = cv2.GaussianBlur(white, (0, 0), s1) - cv2.GaussianBlur(white, (0, 0), s2)
    band *= np.float32(1.0 / (float(band.std()) * _RIDGE_WIDTH + 1e-6))
    ridges = resize(band, shape, cubic=True)  # smooth field first: the ridge non-linearity at full resolution
    ridges *= ridges
    np.negative(ridges, out=ridges)
    np.exp(ridges, out=ridges)
    return ridges


def trabecular_texture(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Trabecular-bone-like texture: an irregular network of bright struts around dark marrow spaces.

    Band-pass filtered noise has its zero crossings on a cellular network; ``exp(-n^2)`` turns them into soft
    ridges. Two octaves (cells of ``cell_px`` and half that) make the network irregular.

    Args:
        rng: random generator.
        shape: (H, W) of the result.
        cell_px: typical marrow-space diameter in output pixels.

    Returns:
        (H, W) float32 texture in [0, 1], mean about 0.35.
    """
    coarse = _ridges(rng, shape, cell_px)
    coarse *= np.float32(0.6)
    coarse += np.float32(0.4) * _ridges(rng, shape, 0.5 * cell_px)
    return coarse


def gain_field(rng: np.random.Generator, shape: tuple[int, int], vignetting: float, heel: float) -> np.ndarray:
    """Detector gain: radial fall-off (vignetting) times a linear anode heel-effect ramp.

    Args:
        rng: random generator (heel direction).
        shape: (H, W).
        vignetting: relative loss in the corners, e.g. 0.1.
        heel: relative peak-to-peak change of the linear ramp, e.g. 0.15.

    Returns:
        (H, W) float32 gain, about 1.
    """
    h, w = shape
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    theta = rng.uniform(0.0, 2.0 * math.pi)
    radial = 1.0 - 0.5 * vignetting * (xx * xx + yy * yy)
    ramp = 1.0 + 0.5 * heel * (math.cos(theta) * xx + math.sin(theta) * yy)
    return (radial * ramp).astype(np.float32)


def blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (the detector point-spread function); a no-op for ``sigma_px`` < 0.3."""
    if sigma_px < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma_px)
