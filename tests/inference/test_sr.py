"""Findings SR: DICOM structure, references, codes, round trip through read_findings_sr, validation."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dentalmim.errors import DentalMimError
from dentalmim.inference.sr import (
    COMPREHENSIVE_3D_SR_UID,
    SRReadError,
    SRWriteError,
    read_findings_sr,
    write_findings_sr,
)
from tests.data.conftest import make_dataset

BOXES = np.array([[10.25, 5.5, 20.75, 15.125], [30.0, 40.0, 50.5, 60.0625]], dtype=np.float32)
SCORES = np.array([0.91, 0.66], dtype=np.float32)
CLASSES = ["enamel_caries", "dentin_caries"]


def _walk(items: pydicom.Sequence):
    """All content items of a ContentSequence tree, depth first."""
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def _codes(ds: Dataset) -> set[str]:
    found = set()
    for item in _walk(ds.ContentSequence):
        for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            if key in item:
                found.add(item[key][0].CodeValue)
    return found


@pytest.fixture(scope="module")
def source() -> Dataset:
    ds = make_dataset(64, 80)
    ds.PatientID, ds.StudyDate = "PSEUDO-7", "20240101"
    return ds


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, source: Dataset) -> tuple[Path, Dataset]:
    path = tmp_path_factory.mktemp("sr") / "nested" / "findings.dcm"
    write_findings_sr(source, BOXES, SCORES, CLASSES, 0.83, algorithm_name="dentalmim-vit",
                      algorithm_version="2.1.0", threshold=0.5, out_path=path)
    return path, pydicom.dcmread(path)


def test_sr_identity_and_evidence(written: tuple[Path, Dataset], source: Dataset) -> None:
    _, ds = written
    assert ds.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_3D_SR_UID
    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR_UID and ds.Modality == "SR"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.PatientID == "PSEUDO-7" and ds.StudyDate == "20240101"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "PixelData" not in ds


def test_sr_content_codes_and_algorithm(written: tuple[Path, Dataset], source: Dataset) -> None:
    _, ds = written
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert {"80967001", "111012", "122157", "DEPTH", "ENAMEL", "DENTIN"} <= _codes(ds)
    texts = {str(item.TextValue) for item in _walk(ds.ContentSequence) if "TextValue" in item}
    assert {"dentalmim-vit", "2.1.0", "threshold=0.5", "finding 1", "finding 2"} <= texts
    scoords = [item for item in _walk(ds.ContentSequence) if item.ValueType == "SCOORD"]
    assert len(scoords) == 2 and all(s.GraphicType == "POLYLINE" for s in scoords)
    # closed rectangle, (column, row) pairs: x along Columns first
    np.testing.assert_allclose(np.reshape(scoords[0].GraphicData, (5, 2)),
                               [[10.25, 5.5], [20.75, 5.5], [20.75, 15.125], [10.25, 15.125], [10.25, 5.5]])
    refs = [s.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for s in scoords]
    assert refs == [source.SOPInstanceUID] * 2


def test_sr_round_trip(written: tuple[Path, Dataset], source: Dataset) -> None:
    path, ds = written
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert len(sr.content.get_planar_roi_measurement_groups()) == 2
    records = read_findings_sr(path)
    image, findings = records[0], records[1:]
    assert image["kind"] == "image" and image["caries_present"] is True
    assert image["probability"] == pytest.approx(0.83)
    assert image["threshold"] == pytest.approx(0.5)
    assert image["source_sop_instance_uid"] == source.SOPInstanceUID
    np.testing.assert_allclose([f["box"] for f in findings], BOXES, atol=1e-3)
    np.testing.assert_allclose([f["score"] for f in findings], SCORES, atol=1e-6)
    assert [f["class_name"] for f in findings] == CLASSES
    assert [f["depth"] for f in findings] == ["enamel", "dentin"]
    assert {f["algorithm_version"] for f in records} == {"2.1.0"}
    assert [f["tracking_id"] for f in findings] == ["finding 1", "finding 2"]
    assert len({f["tracking_uid"] for f in records}) == 3
    assert read_findings_sr(ds) == records  # a data set reads the same as its file


def test_sr_threshold_filters_and_empty_report(source: Dataset, tmp_path: Path) -> None:
    sr = write_findings_sr(source, BOXES, SCORES, ["caries", "caries"], 0.4, algorithm_version="1",
                           threshold=0.7, out_path=tmp_path / "one.dcm")
    records = read_findings_sr(tmp_path / "one.dcm")
    assert [r["kind"] for r in records] == ["image", "finding"]
    assert records[1]["score"] == pytest.approx(0.91) and records[1]["depth"] is None
    assert records[1]["class_name"] == "caries"
    assert sr.StudyInstanceUID == source.StudyInstanceUID

    empty = write_findings_sr(source, np.zeros((0, 4)), np.zeros(0), [], 0.05, algorithm_version="1",
                              threshold=0.5, out_path=tmp_path / "empty.dcm")
    reread = pydicom.dcmread(tmp_path / "empty.dcm")
    hd.sr.Comprehensive3DSR.from_dataset(reread)
    (image,) = read_findings_sr(reread)
    assert image["caries_present"] is False and image["probability"] == pytest.approx(0.05)
    assert "272519000" in _codes(empty)  # SCT "Absent"
    assert not [i for i in _walk(reread.ContentSequence) if i.ValueType == "SCOORD"]


def test_sr_boxes_clipped_to_image(source: Dataset) -> None:
    sr = write_findings_sr(source, np.array([[-3.0, 2.0, 90.0, 70.0]]), np.array([0.8]), ["caries"], 0.8,
                           algorithm_version="1", threshold=0.5)
    (finding,) = read_findings_sr(sr)[1:]
    assert finding["box"] == pytest.approx([0.0, 2.0, 80.0, 64.0])  # Columns = 80, Rows = 64


def test_sr_source_without_pixels_or_patient_module(source: Dataset) -> None:
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows",
                    "Columns"):
        setattr(header, keyword, source[keyword].value)
    sr = write_findings_sr(header, BOXES, SCORES, CLASSES, 0.5, algorithm_version="1", threshold=0.5)
    assert sr.PatientID == "" and sr.StudyInstanceUID == source.StudyInstanceUID
    assert "PatientID" not in header  # the caller's data set is not modified


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boxes": np.zeros((2, 3))}, "boxes should have shape"),
        ({"scores": np.array([0.9])}, "scores should have shape"),
        ({"class_names": ["caries"]}, "class_names should have 2"),
        ({"boxes": np.array([[5.0, 5.0, 1.0, 9.0], [0, 0, 1, 1]])}, r"boxes\[0\]"),
        ({"scores": np.array([0.5, 1.5])}, "scores should be in"),
        ({"image_probability": float("nan")}, "image_probability should be in"),
        ({"threshold": -0.1}, "threshold should be in"),
        ({"algorithm_version": ""}, "algorithm_version"),
    ],
)
def test_sr_invalid_arguments(source: Dataset, kwargs: dict, match: str) -> None:
    args = {"boxes": BOXES, "scores": SCORES, "class_names": CLASSES, "image_probability": 0.5,
            "algorithm_version": "1", "threshold": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        write_findings_sr(source, **args)


def test_sr_errors_are_domain_errors(source: Dataset, tmp_path: Path) -> None:
    assert issubclass(SRWriteError, DentalMimError) and issubclass(SRReadError, DentalMimError)
    no_study = Dataset()
    no_study.SOPClassUID, no_study.SOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    with pytest.raises(SRWriteError, match="StudyInstanceUID, SeriesInstanceUID, Modality"):
        write_findings_sr(no_study, BOXES, SCORES, CLASSES, 0.5, algorithm_version="1", threshold=0.5)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SRWriteError, match="could not write"):
        write_findings_sr(source, BOXES, SCORES, CLASSES, 0.5, algorithm_version="1", threshold=0.5,
                          out_path=blocker / "sr.dcm")
    bad_value = copy.deepcopy(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid DA as it is set
        bad_value.PatientBirthDate = "JANE DOE 1970"  # highdicom's message would quote it
    with pytest.raises(SRWriteError, match="could not build the findings SR") as exc:
        write_findings_sr(bad_value, BOXES, SCORES, CLASSES, 0.5, algorithm_version="1", threshold=0.5)
    assert "JANE" not in str(exc.value) and exc.value.__cause__ is None
    with pytest.raises(SRReadError, match="Comprehensive 3D SR"):
        read_findings_sr(source)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(SRReadError, match="cannot read DICOM"):
        read_findings_sr(tmp_path / "junk.dcm")


def test_sr_writes_other_class_names_as_caries_without_depth(source: Dataset) -> None:
    sr = write_findings_sr(source, BOXES, SCORES, ["caries_RA", "caries_RB"], 0.7, algorithm_version="1",
                           threshold=0.0)
    findings = [r for r in read_findings_sr(sr) if r["kind"] == "finding"]
    assert len(findings) == 2 and all(f["depth"] is None for f in findings)
