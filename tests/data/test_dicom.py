"""dentalmim.data.dicom: every transfer syntax, every LUT path, every bad-input class."""

from __future__ import annotations

import io
import time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence

from dentalmim.data import dicom as dicom_module
from dentalmim.data.dicom import DentalDicomReader, read_dicom, read_dicom_header
from dentalmim.data.encode import LOSSY_SYNTAXES, SUPPORTED_TRANSFER_SYNTAXES, image_dataset, save_dicom
from dentalmim.errors import (
    DicomReadError,
    ImageTooLargeError,
    MissingPixelDataError,
    MultiFrameError,
    NonImageObjectError,
    NotDicomError,
    TruncatedDicomError,
    UnsupportedPixelFormatError,
    UnsupportedTransferSyntaxError,
)
from tests.data.conftest import ALL_SYNTAXES, PHI_VALUES, make_dataset, smooth_image


def _norm(stored: np.ndarray) -> np.ndarray:
    stored = stored.astype(np.float64)
    return (stored - stored.min()) / (stored.max() - stored.min())


def _write(tmp_path, ds, name="x.dcm"):
    path = tmp_path / name
    save_dicom(ds, path)
    return path


@pytest.mark.parametrize(("syntax", "bits"), [(s, b) for s in ALL_SYNTAXES for b in (8, 12, 16)
                                               if s != "jpeg_baseline" or b == 8])
def test_every_syntax_reads_exactly(tmp_path, syntax, bits):
    path = _write(tmp_path, make_dataset(48, 64, bits=bits, syntax=syntax))
    image = read_dicom(path)
    assert image.pixels.shape == (48, 64) and image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    tolerance = 0.03 if syntax in LOSSY_SYNTAXES else 1e-6
    assert np.abs(image.pixels - _norm(smooth_image(48, 64, bits))).max() < tolerance
    meta = image.meta
    assert (meta.rows, meta.columns, meta.bits_stored, meta.modality) == (48, 64, bits, "IO")
    assert meta.transfer_syntax_uid == SUPPORTED_TRANSFER_SYNTAXES[syntax]
    assert meta.pixel_spacing_mm == (0.1, 0.1) and meta.spacing_source == "PixelSpacing"
    assert read_dicom_header(path) == meta


@pytest.mark.parametrize("layout", ["no_preamble_with_meta", "implicit_no_meta", "explicit_no_meta"])
def test_files_without_preamble(tmp_path, layout):
    ds = make_dataset(20, 24, bits=12)
    full = io.BytesIO()
    if layout == "no_preamble_with_meta":
        save_dicom(ds, tmp_path / "full.dcm")
        data = (tmp_path / "full.dcm").read_bytes()[132:]
    else:
        ds.file_meta = FileMetaDataset()
        pydicom.dcmwrite(full, ds, implicit_vr=layout.startswith("implicit"), little_endian=True)
        data = full.getvalue()
        assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"
    (tmp_path / "raw").write_bytes(data)
    np.testing.assert_allclose(read_dicom(tmp_path / "raw").pixels, _norm(smooth_image(20, 24, 12)), atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    mono2 = read_dicom(_write(tmp_path, make_dataset(photometric="MONOCHROME2"), "a.dcm")).pixels
    mono1 = read_dicom(_write(tmp_path, make_dataset(photometric="MONOCHROME1"), "b.dcm")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    windowed = read_dicom(_write(tmp_path, make_dataset(photometric="MONOCHROME1", window=(2000, 1001)), "c.dcm"))
    ref = read_dicom(_write(tmp_path, make_dataset(window=(2000, 1001)), "d.dcm"))
    np.testing.assert_allclose(windowed.pixels, 1.0 - ref.pixels, atol=1e-6)  # inverted after the window


def _known_values() -> np.ndarray:
    return np.array([[700, 999, 1000, 1250], [1300, 2000, 4095, 0]], dtype=np.int64)


@pytest.mark.parametrize(
    ("function", "expected"),
    [("LINEAR", [[0, 0.499, 0.501, 1], [1, 1, 1, 0]]),
     ("LINEAR_EXACT", [[0, 0.499, 0.5, 1], [1, 1, 1, 0]]),
     ("SIGMOID", [[1 / (1 + np.exp(2.4)), None, 0.5, 1 / (1 + np.exp(-2.0))], [None, None, None, None]])],
)
def test_window_known_values(tmp_path, function, expected):
    ds = make_dataset(pixels=_known_values(), bits=12, window=(1000, 500 if function != "LINEAR" else 501))
    ds.VOILUTFunction = function
    out = read_dicom(_write(tmp_path, ds)).pixels
    for (i, j), value in np.ndenumerate(np.array(expected, dtype=object)):
        if value is not None:
            assert out[i, j] == pytest.approx(value, abs=1e-3), (function, i, j)


def test_multi_valued_and_invalid_windows(tmp_path):
    ds = make_dataset(pixels=_known_values(), bits=12)
    ds.WindowCenter, ds.WindowWidth = ["1000", "3000"], ["501", "100"]
    assert read_dicom(_write(tmp_path, ds, "a.dcm")).pixels[0, 2] == pytest.approx(0.501, abs=1e-4)
    ds.WindowCenter, ds.WindowWidth = "1000", "0"  # invalid width -> min-max of the data
    out = read_dicom(_write(tmp_path, ds, "b.dcm")).pixels
    np.testing.assert_allclose(out, _norm(_known_values()), atol=1e-6)


def test_rescale_then_window(tmp_path):
    # stored 500 * 2 + 0 = 1000 -> the window centre (in modality units) -> 0.501
    ds = make_dataset(pixels=np.array([[500, 0], [2047, 300]]), bits=12, rescale=(2.0, 0.0), window=(1000, 501))
    assert read_dicom(_write(tmp_path, ds, "a.dcm")).pixels[0, 0] == pytest.approx(0.501, abs=1e-4)
    flipped = read_dicom(_write(tmp_path, make_dataset(rescale=(-1.0, 100.0)), "b.dcm")).pixels
    np.testing.assert_allclose(flipped, 1.0 - _norm(smooth_image(64, 80, 12)), atol=1e-6)


def test_modality_and_voi_lut_sequences(tmp_path):
    stored = smooth_image(16, 16, 12)
    ds = make_dataset(pixels=stored, bits=12)
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor
    lut.add_new(0x00283006, "US", list(range(4095, -1, -1)))  # LUTData
    lut.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([lut])
    np.testing.assert_allclose(read_dicom(_write(tmp_path, ds, "m.dcm")).pixels, 1 - _norm(stored), atol=1e-6)
    ds = make_dataset(pixels=stored, bits=12, window=(10, 2))  # the VOI LUT takes precedence over the window
    voi = Dataset()
    voi.add_new(0x00283002, "US", [4096, 0, 16])
    voi.add_new(0x00283006, "US", [v * 16 for v in range(4096)])
    ds.VOILUTSequence = Sequence([voi])
    np.testing.assert_allclose(read_dicom(_write(tmp_path, ds, "v.dcm")).pixels, stored / 4095, atol=1e-6)
    voi.LUTData = [0, 16]  # 2 entries where the descriptor promises 4096
    with pytest.raises(DicomReadError, match=r"VOI LUT or window of the header could not be applied \(\w+\)"):
        read_dicom(_write(tmp_path, ds, "short_lut.dcm"))


def test_bits_stored_garbage_high_bits_ignored(tmp_path):
    clean = make_dataset(bits=12)
    dirty = make_dataset(bits=12)
    dirty.PixelData = (np.frombuffer(dirty.PixelData, "<u2") | 0xB000).tobytes()
    np.testing.assert_array_equal(read_dicom(_write(tmp_path, dirty, "d.dcm")).pixels,
                                  read_dicom(_write(tmp_path, clean, "c.dcm")).pixels)


def test_signed_data(tmp_path):
    stored = smooth_image(16, 20, 12) - 2048
    out = read_dicom(_write(tmp_path, make_dataset(pixels=stored, bits=12, signed=True), "s.dcm")).pixels
    np.testing.assert_allclose(out, _norm(stored), atol=1e-6)
    ds = make_dataset(pixels=stored, bits=12, signed=True)
    ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") & 0x0FFF).tobytes()  # sign bits missing above bit 11
    np.testing.assert_allclose(read_dicom(_write(tmp_path, ds, "t.dcm")).pixels, _norm(stored), atol=1e-6)
    windowed = make_dataset(pixels=np.array([[-100, 0], [100, 2000]]), bits=12, signed=True, window=(0, 201))
    assert read_dicom(_write(tmp_path, windowed, "w.dcm")).pixels[0, 1] == pytest.approx(0.5025, abs=1e-3)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_becomes_grey(tmp_path, photometric):
    grey = smooth_image(16, 24, 8)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=2).astype(np.uint8)
    stored = convert_color_space(rgb, "RGB", "YBR_FULL") if photometric == "YBR_FULL" else rgb
    ds = image_dataset(stored, bits_stored=8, photometric=photometric)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    out = read_dicom(_write(tmp_path, ds)).pixels
    assert out.shape == (16, 24)
    np.testing.assert_allclose(out, expected, atol=2.5 / 255)


def test_jpeg_baseline_ybr_422_becomes_grey(tmp_path):
    grey = smooth_image(32, 40, 8)
    ds = make_dataset(pixels=np.repeat(grey[..., None], 3, 2), bits=8, photometric="RGB", syntax="jpeg_baseline")
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert np.abs(read_dicom(_write(tmp_path, ds)).pixels - grey / 255).mean() < 0.01


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [({"PixelSpacing": ["0.1", "0.2"]}, ((0.1, 0.2), "PixelSpacing")),
     ({"ImagerPixelSpacing": ["0.035", "0.035"]}, ((0.035, 0.035), "ImagerPixelSpacing")),
     ({"PixelSpacing": ["0.1", "0.1"], "ImagerPixelSpacing": ["0.2", "0.2"]}, ((0.1, 0.1), "PixelSpacing")),
     ({"PixelSpacing": ["0", "0"], "ImagerPixelSpacing": ["0.2", "0.3"]}, ((0.2, 0.3), "ImagerPixelSpacing")),
     ({"PixelSpacing": "0.05"}, ((0.05, 0.05), "PixelSpacing")),
     ({"PixelSpacing": ["-1", "0.1"]}, (None, None)),
     ({"PixelSpacing": ["1e30", "0.1"]}, (None, None)),  # implausible (> 5 mm): mm boxes would be nonsense
     ({"PixelSpacing": ["100", "100"], "ImagerPixelSpacing": ["0.1", "0.1"]}, ((0.1, 0.1), "ImagerPixelSpacing")),
     ({}, (None, None))],
)
def test_spacing_sources(tmp_path, attrs, expected):
    ds = make_dataset(16, 16, spacing=None)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    meta = read_dicom(_write(tmp_path, ds)).meta
    assert (meta.pixel_spacing_mm, meta.spacing_source) == expected
    assert meta.to_dict()["pixel_spacing_mm"] == (list(expected[0]) if expected[0] else None)


@pytest.mark.parametrize(("raw", "expected"), [(b"abc\\def", None), (b"nan\\nan", None), (b"inf\\1.0", None),
                                             (b"0,1\\0,2", (0.1, 0.2))])
def test_spacing_parsing_is_robust(tmp_path, raw, expected):
    ds = make_dataset(16, 16, spacing=(0.5, 0.5), spacing_tag="ImagerPixelSpacing")
    path = _write(tmp_path, ds)
    data = path.read_bytes()
    assert data.count(b"0.5\\0.5") == 1
    path.write_bytes(data.replace(b"0.5\\0.5", raw))  # values pydicom would refuse to write
    assert read_dicom(path).meta.pixel_spacing_mm == expected


def test_monai_reader_no_swap(tmp_path):
    from monai.transforms import LoadImage

    paths = [_write(tmp_path, make_dataset(30, 50, seed=i, spacing=(0.1, 0.2)), f"{i}.dcm") for i in range(2)]
    tensor = LoadImage(reader=DentalDicomReader(), image_only=True)(paths[0])
    assert tuple(tensor.shape) == (30, 50)
    np.testing.assert_allclose(tensor.numpy(), read_dicom(paths[0]).pixels)
    np.testing.assert_allclose(tensor.meta["spacing"], [0.1, 0.2])
    np.testing.assert_allclose(np.diag(tensor.affine.numpy()), [0.1, 0.2, 1.0])
    stacked, meta = DentalDicomReader().get_data(DentalDicomReader().read(paths))
    assert stacked.shape == (2, 30, 50) and meta["original_channel_dim"] == 0
    other = _write(tmp_path, make_dataset(10, 10), "small.dcm")
    with pytest.raises(ValueError, match="share one shape"):
        DentalDicomReader().get_data(DentalDicomReader().read([paths[0], other]))


# ----------------------------------------------------------------------------------------------- bad input


def _non_image(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, pydicom.uid.generate_uid(), modality
    ds.PatientName, ds.PatientID = PHI_VALUES["PatientName"], PHI_VALUES["PatientID"]
    if modality == "DOC":
        ds.MIMETypeOfEncapsulatedDocument, ds.EncapsulatedDocument = "application/pdf", b"%PDF-1.4 fake"
    return ds


def _bad_files(tmp_path) -> dict[str, tuple[bytes | Dataset, type]]:
    good = _write(tmp_path, make_dataset(64, 80, phi=True), "good.dcm").read_bytes()
    ls = _write(tmp_path, make_dataset(64, 80, syntax="jpeg_ls", phi=True), "ls.dcm").read_bytes()
    deflated = _write(tmp_path, make_dataset(64, 80, syntax="deflated", phi=True), "dfl.dcm").read_bytes()
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    no_pixels = make_dataset(phi=True)
    del no_pixels.PixelData
    short = make_dataset(phi=True)
    short.PixelData = short.PixelData[:-100]
    too_few_columns = make_dataset(phi=True)  # read as declared, the image would come out sheared
    too_few_columns.Columns -= 1
    huge = make_dataset(8, 8, phi=True)
    huge.Rows = huge.Columns = 50000  # 2.5 GP claimed, 128 bytes present
    zero = make_dataset(8, 8, phi=True)
    zero.Rows = 0
    multi = make_dataset(8, 8, phi=True)
    multi.NumberOfFrames = 2
    palette = make_dataset(8, 8, phi=True)
    palette.PhotometricInterpretation = "PALETTE COLOR"
    mpeg = make_dataset(40, 40, syntax="jpeg_ls", phi=True)
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    return {
        "random": (np.random.default_rng(0).bytes(3000), NotDicomError),
        "png": (png, NotDicomError),
        "text": (b"Patient Doe^Jane: see attached X-ray\n" * 20, NotDicomError),
        "empty": (b"", TruncatedDicomError),
        "preamble_only": (bytes(100), TruncatedDicomError),
        "cut_in_meta": (good[:150], TruncatedDicomError),
        "cut_in_header": (good[:700], TruncatedDicomError),
        "cut_in_pixels": (good[:-500], TruncatedDicomError),
        "cut_in_jpeg_ls": (ls[:-300], TruncatedDicomError),
        "cut_in_deflate": (deflated[:-300], TruncatedDicomError),
        "no_pixel_data": (no_pixels, MissingPixelDataError),
        "short_pixel_data": (short, MissingPixelDataError),
        "sr": (_non_image("1.2.840.10008.5.1.4.1.1.88.11", "SR"), NonImageObjectError),
        "presentation_state": (_non_image("1.2.840.10008.5.1.4.1.1.11.1", "PR"), NonImageObjectError),
        "pdf": (_non_image("1.2.840.10008.5.1.4.1.1.104.1", "DOC"), NonImageObjectError),
        "no_pixel_module": (_non_image("1.2.840.10008.5.1.4.1.1.1.3", "IO"), NonImageObjectError),
        "mpeg": (mpeg, UnsupportedTransferSyntaxError),
        "huge": (huge, ImageTooLargeError),
        "zero_rows": (zero, UnsupportedPixelFormatError),
        "columns_too_few": (too_few_columns, UnsupportedPixelFormatError),
        "multi_frame": (multi, MultiFrameError),
        "palette": (palette, UnsupportedPixelFormatError),
    }


def test_every_bad_input_has_its_error(tmp_path):
    for name, (content, error) in _bad_files(tmp_path).items():
        path = tmp_path / f"{name}.bin"
        if isinstance(content, Dataset):
            save_dicom(content, path)
        else:
            path.write_bytes(content)
        for reader in (read_dicom, read_dicom_header):
            with pytest.raises(error) as info:
                reader(path)
            assert type(info.value) is error, (name, reader.__name__, info.value)
            message = str(info.value)
            assert str(path) in message and info.value.code == error.code
            assert not any(value in message for value in PHI_VALUES.values()), (name, message)


def test_size_guard_runs_before_decoding(tmp_path, monkeypatch):
    ds = make_dataset(8, 8)
    ds.Rows = ds.Columns = 65535  # the largest US value: 4.3 GP claimed, 128 bytes present
    path = _write(tmp_path, ds)
    monkeypatch.setattr(dicom_module, "_render", lambda *a: pytest.fail("decoded"))
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="65535 x 65535"):
        read_dicom(path)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ImageTooLargeError):
        read_dicom(_write(tmp_path, make_dataset(64, 80), "ok.dcm"), max_pixels=64 * 80 - 1)
    monkeypatch.setattr(dicom_module, "_max_file_bytes", lambda max_pixels: 100)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        read_dicom(tmp_path / "ok.dcm")


def test_deflate_bomb_is_capped(tmp_path):
    from dentalmim.data.dicom_layout import inspect_layout

    data = _write(tmp_path, make_dataset(64, 80, syntax="deflated")).read_bytes()
    with pytest.raises(ImageTooLargeError, match="inflates"):
        inspect_layout("x.dcm", data, max_inflated=1000)


def test_made_up_transfer_syntax_and_missing_decoder(tmp_path, monkeypatch):
    ds = make_dataset(40, 40, syntax="jpeg_ls")
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    pydicom.dcmwrite(tmp_path / "private.dcm", ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    with pytest.raises(UnsupportedTransferSyntaxError, match="1.2.3.4.5.6"):
        read_dicom(tmp_path / "private.dcm")

    class _Missing:
        is_available = False

    path = _write(tmp_path, make_dataset(40, 40, syntax="jpeg2000"), "j2k.dcm")
    monkeypatch.setattr(dicom_module, "get_decoder", lambda uid: _Missing())
    with pytest.raises(UnsupportedTransferSyntaxError, match="no installed decoder"):
        read_dicom(path)


def test_corrupt_compressed_data_is_wrapped(tmp_path):
    ds = make_dataset(64, 80, syntax="jpeg_ls", phi=True)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    garbage = frame[:4] + np.random.default_rng(1).bytes(len(frame) - 4)
    ds.PixelData = encapsulate([garbage])
    path = _write(tmp_path, ds)
    assert read_dicom_header(path).rows == 64  # the header alone is fine
    with pytest.raises(DicomReadError, match=r"could not be decoded \(\w+\)"):
        read_dicom(path)


def test_fuzzed_files_raise_only_dicom_read_errors(tmp_path):
    rng = np.random.default_rng(7)
    sources = [_write(tmp_path, make_dataset(32, 40, syntax=s, phi=True), f"{s}.dcm").read_bytes()
               for s in ("explicit_le", "implicit_le", "rle", "jpeg_lossless", "deflated")]
    outcomes = set()
    for i in range(60):
        data = bytearray(sources[i % len(sources)])
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"fuzz{i}.dcm"
        path.write_bytes(bytes(data[: int(rng.integers(len(data) // 2, len(data) + 1))]))
        try:
            image = read_dicom(path)
            assert image.pixels.dtype == np.float32 and np.isfinite(image.pixels).all()
            outcomes.add("ok")
        except DicomReadError as exc:
            outcomes.add(exc.code)
    assert len(outcomes) >= 2
