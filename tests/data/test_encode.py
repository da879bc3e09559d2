"""Round trips of dentalmim.data.encode through pydicom's own decoders."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dentalmim.data.encode import (
    LOSSY_SYNTAXES,
    SUPPORTED_TRANSFER_SYNTAXES,
    encode_dataset,
    image_dataset,
    save_dicom,
)
from dentalmim.data.jpeg_lossless import _code_lengths, encode_jpeg_lossless
from tests.data.conftest import ALL_SYNTAXES, smooth_image

CASES = [(s, b) for s in ALL_SYNTAXES for b in (8, 12, 16) if not (s == "jpeg_baseline" and b != 8)]


def _roundtrip(tmp_path, pixels, bits, syntax, signed=False, **kw):
    ds = image_dataset(pixels, bits_stored=bits, signed=signed)
    encode_dataset(ds, syntax, **kw)
    save_dicom(ds, tmp_path / "x.dcm")
    back = pydicom.dcmread(tmp_path / "x.dcm")
    return back, back.pixel_array.astype(np.int64)


def test_names_match_contract():
    assert set(ALL_SYNTAXES) == set(SUPPORTED_TRANSFER_SYNTAXES)
    assert SUPPORTED_TRANSFER_SYNTAXES["jpeg_lossless_sv1"] == "1.2.840.10008.1.2.4.70"
    assert SUPPORTED_TRANSFER_SYNTAXES["jpeg_lossless"] == "1.2.840.10008.1.2.4.57"


@pytest.mark.parametrize(("syntax", "bits"), CASES)
def test_roundtrip_every_syntax(tmp_path, syntax, bits):
    pixels = smooth_image(40, 56, bits, seed=bits)
    pixels[0:4, 0:4] = (1 << bits) - 1  # a hard edge and the extremes of the range
    pixels[4:8, 0:4] = 0
    back, out = _roundtrip(tmp_path, pixels, bits, syntax)
    assert back.file_meta.TransferSyntaxUID == SUPPORTED_TRANSFER_SYNTAXES[syntax]
    assert out.shape == pixels.shape
    if syntax in LOSSY_SYNTAXES:
        err = np.abs(out - pixels)
        assert err.mean() < 0.01 * (1 << bits)
        assert back.LossyImageCompression == "01"
        assert float(back.LossyImageCompressionRatio) > 1.0
    else:
        np.testing.assert_array_equal(out, pixels)
        assert "LossyImageCompression" not in back


@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpeg_lossless_sv1", "rle", "explicit_be", "jpeg2000_lossless"])
@pytest.mark.parametrize("bits", [12, 16])
def test_roundtrip_signed(tmp_path, syntax, bits):
    rng = np.random.default_rng(1)
    half = 1 << (bits - 1)
    pixels = rng.integers(-half, half, size=(33, 37))
    back, out = _roundtrip(tmp_path, pixels, bits, syntax, signed=True)
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpeg_lossless_sv1"])
def test_jpeg_lossless_extreme_differences(tmp_path, syntax):
    """Differences of exactly 32768 (category 16, no extra bits) and wrap-around modulo 2**16."""
    pixels = np.tile(np.array([0, 32768, 65535, 0, 1, 40000]), (5, 3))
    _, out = _roundtrip(tmp_path, pixels, 16, syntax)
    np.testing.assert_array_equal(out, pixels)


def test_jpeg_lossless_noise_and_low_precision(tmp_path):
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 4096, size=(31, 45))
    np.testing.assert_array_equal(_roundtrip(tmp_path, noise, 12, "jpeg_lossless_sv1")[1], noise)
    tiny = rng.integers(0, 4, size=(3, 5))
    np.testing.assert_array_equal(_roundtrip(tmp_path, tiny, 2, "jpeg_lossless")[1], tiny)


def test_jpeg_lossless_stream_structure():
    stream = encode_jpeg_lossless(np.full((4, 4), 255, dtype=np.uint16), 8)
    assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"
    assert b"\xff\xc3" in stream and b"\xff\xc4" in stream and b"\xff\xda" in stream
    scan = stream[stream.index(b"\xff\xda") + 10 : -2]
    # every 0xFF in the entropy-coded segment is followed by a stuffed zero byte
    for i in np.flatnonzero(np.frombuffer(scan, np.uint8) == 0xFF):
        assert scan[i + 1] == 0


def test_huffman_lengths_limited_and_prefix_free():
    fib = [1, 1]
    while len(fib) < 17:
        fib.append(fib[-1] + fib[-2])
    lengths = _code_lengths(np.array(fib[::-1], dtype=np.int64))
    assert lengths.max() <= 16 and lengths.min() >= 1
    kraft = float(np.sum(2.0 ** -lengths))
    assert kraft < 1.0  # strictly: the all-ones code word stays reserved


def test_rgb_baseline_becomes_ybr(tmp_path):
    grey = smooth_image(32, 48, 8)
    ds = image_dataset(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8), bits_stored=8, photometric="RGB")
    encode_dataset(ds, "jpeg_baseline", quality=95)
    save_dicom(ds, tmp_path / "c.dcm")
    back = pydicom.dcmread(tmp_path / "c.dcm")
    assert back.PhotometricInterpretation == "YBR_FULL_422"
    assert np.abs(back.pixel_array[..., 0].astype(int) - grey).mean() < 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"syntax": "mpeg2"}, "syntax should be one of"), ({"syntax": "rle", "quality": 0}, "quality"),
     ({"syntax": "jpeg_baseline"}, "8-bit"), ({"syntax": "jpeg2000"}, ">= 32")],
)
def test_encode_validates_arguments(kwargs, match):
    ds = image_dataset(smooth_image(8, 8, 12), bits_stored=12)
    with pytest.raises(ValueError, match=match):
        encode_dataset(ds, **kwargs)


def test_encode_rejects_compressed_and_multiframe():
    ds = encode_dataset(image_dataset(smooth_image(8, 8, 12), bits_stored=12), "rle")
    with pytest.raises(ValueError, match="uncompressed"):
        encode_dataset(ds, "jpeg_ls")
    multi = image_dataset(smooth_image(8, 8, 12), bits_stored=12)
    multi.NumberOfFrames = 2
    with pytest.raises(ValueError, match="single-frame"):
        encode_dataset(multi, "rle")


def test_image_dataset_validates():
    with pytest.raises(ValueError, match="bits_stored"):
        image_dataset(np.zeros((4, 4)), bits_stored=17)
    with pytest.raises(ValueError, match="shape"):
        image_dataset(np.zeros((4, 4, 2)), bits_stored=8)


def test_save_dicom_atomic_overwrite(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(b"old")
    save_dicom(image_dataset(smooth_image(8, 8, 8), bits_stored=8), path)
    assert pydicom.dcmread(path).Rows == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError):
        save_dicom(image_dataset(smooth_image(8, 8, 8), bits_stored=8), tmp_path / "missing" / "b.dcm")
