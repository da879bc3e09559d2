"""dentalmim.data.deid: nothing identifying survives; what training needs does; mapping is consistent."""

from __future__ import annotations

import stat

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from dentalmim.data.deid import Deidentifier, load_or_create_salt
from dentalmim.data.dicom import read_dicom
from dentalmim.data.encode import save_dicom
from dentalmim.errors import ConfigError
from tests.data.conftest import PHI_VALUES, make_dataset

SALT = b"0123456789abcdef-test-salt"


def _phi_dataset(syntax: str = "explicit_le", study_uid: str = "1.2.826.0.1.3680043.2.1125.77.1") -> Dataset:
    ds = make_dataset(40, 48, syntax=syntax, phi=True, window=(2000, 3000))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".5"
    person = Dataset()  # a nested sequence with a name, a date and a UID
    person.PersonName, person.ObservationDateTime = "Watson^Ella", "20230301101010"
    person.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.77.9"
    person.TextValue = "Ella's opinion on Doe Jane"
    ds.ContentSequence = Sequence([person])
    ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)  # overlay data
    ds.add_new(0x60004000, "LT", "overlay comment Doe")  # overlay comments
    ds.add_new(0x50000000, "US", 1)  # curve group
    ds.file_meta.SourceApplicationEntityTitle = "CLINIC_PACS7"
    return ds


def _originals(ds: Dataset) -> list[str]:
    return [*PHI_VALUES.values(), "Watson", "Ella", "CLINIC_PACS7", "ACME DENTAL", "private note", ds.SOPInstanceUID,
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID,
            ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID, "1.2.826.0.1.3680043.2.1125.77.9", "overlay"]


@pytest.mark.parametrize("syntax", ["explicit_le", "implicit_le", "jpeg_lossless_sv1"])
def test_no_original_value_survives(tmp_path, syntax):
    ds = _phi_dataset(syntax)
    save_dicom(ds, tmp_path / "in.dcm")
    source = pydicom.dcmread(tmp_path / "in.dcm")  # raw, unconverted elements as in ingest
    save_dicom(Deidentifier(SALT).apply(source), tmp_path / "out.dcm")
    data = (tmp_path / "out.dcm").read_bytes()
    for value in _originals(ds):
        assert value.encode() not in data, value
    for value in ("Doe", "Jane", "Springfield", "Hibbert", "Molar", "Nancy"):
        assert value.encode() not in data, value
    # The study year, in any element but the new UIDs: these are hashes written in decimal, and about one in 200
    # of them contains the digits 2023 by chance (the source UIDs are random).
    for elem in pydicom.dcmread(tmp_path / "out.dcm").iterall():
        if elem.VR not in ("UI", "SQ") and elem.keyword != "PixelData":  # iterall visits the items
            assert "2023" not in str(elem.value), elem


def test_training_attributes_and_pixels_survive(tmp_path):
    ds = _phi_dataset("rle")
    save_dicom(ds, tmp_path / "in.dcm")
    out = Deidentifier(SALT).apply(pydicom.dcmread(tmp_path / "in.dcm"))
    save_dicom(out, tmp_path / "out.dcm")
    before, after = read_dicom(tmp_path / "in.dcm"), read_dicom(tmp_path / "out.dcm")
    np.testing.assert_array_equal(before.pixels, after.pixels)
    assert out.PixelData == ds.PixelData
    assert after.meta.pixel_spacing_mm == (0.1, 0.1) and after.meta.modality == "IO"
    assert after.meta.sop_class_uid == ds.SOPClassUID
    assert after.meta.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    for keyword in ("WindowCenter", "WindowWidth", "BodyPartExamined", "ImageLaterality", "PatientOrientation",
                    "BitsStored", "PhotometricInterpretation"):
        assert out[keyword].value == ds[keyword].value, keyword
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.SOPClassUID


def test_profile_markers_and_emptied_type2(tmp_path):
    out = Deidentifier(SALT).apply(_phi_dataset())
    assert out.PatientIdentityRemoved == "YES" and out.DeidentificationMethod
    code = out.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert out.StudyDate == "" and out.AccessionNumber == "" and out.PatientBirthDate == ""
    for keyword in ("InstitutionName", "OperatorsName", "StudyDescription", "AcquisitionDateTime", "ImageComments",
                    "OtherPatientIDs", "DeviceSerialNumber", "PatientAge"):
        assert keyword not in out, keyword
    assert not any(elem.tag.is_private for elem in out)
    assert not any(0x5000 <= elem.tag.group <= 0x60FF for elem in out)
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_uids_consistent_across_files_and_runs():
    first, second = _phi_dataset(), _phi_dataset()  # same study, different instances
    deid = Deidentifier(SALT)
    a, b = deid.apply(first), deid.apply(second)
    assert a.StudyInstanceUID == b.StudyInstanceUID != first.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID == deid.map_uid(first.SOPInstanceUID)
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == deid.map_uid("1.2.826.0.1.3680043.2.1125.999.1")
    assert Deidentifier(SALT).apply(first).SOPInstanceUID == a.SOPInstanceUID  # re-runs are identical
    assert Deidentifier(b"another-salt-of-16+bytes").map_uid(first.SOPInstanceUID) != a.SOPInstanceUID
    assert first.PatientName == PHI_VALUES["PatientName"]  # the input is untouched


def test_map_uid_format():
    deid = Deidentifier(SALT)
    for uid in ("1.2.3", "1.2.826.0.1.3680043.2.1125." + "9" * 30, "2.25.1"):
        mapped = deid.map_uid(uid)
        assert mapped.startswith("2.25.") and len(mapped) <= 64 and UID(mapped).is_valid
        assert deid.map_uid(uid + "\x00") == mapped
    assert deid.map_uid("1.2.840.10008.1.2.4.70") == "1.2.840.10008.1.2.4.70"  # registered UIDs are kept


def test_pseudonyms():
    deid = Deidentifier(SALT)
    one, two, other = _phi_dataset(), _phi_dataset(), _phi_dataset()
    other.PatientID = "PID-SOMEONE-ELSE"
    a, b, c = deid.apply(one), deid.apply(two), deid.apply(other)
    assert a.PatientID == b.PatientID == str(a.PatientName) == deid.pseudonym(PHI_VALUES["PatientID"])
    assert c.PatientID != a.PatientID
    assert deid.patient_pseudonym(one) == a.PatientID
    anonymous = make_dataset(8, 8)
    assert deid.patient_pseudonym(anonymous) == deid.pseudonym("unknown")
    anonymous.PatientName = "Roe^Richard"
    assert deid.patient_pseudonym(anonymous) != deid.pseudonym("unknown")


def test_identity_values_are_never_converted(tmp_path, monkeypatch):
    """pydicom validates (and may log, quoting the value) when it converts a raw element: deid must not do it."""
    import pydicom.dataset as pydicom_dataset

    save_dicom(_phi_dataset(), tmp_path / "in.dcm")
    source = pydicom.dcmread(tmp_path / "in.dcm")
    converted = []
    original = pydicom_dataset.convert_raw_data_element

    def _spy(raw, *args, **kwargs):
        converted.append(pydicom.datadict.keyword_for_tag(raw.tag))
        return original(raw, *args, **kwargs)

    monkeypatch.setattr(pydicom_dataset, "convert_raw_data_element", _spy)
    Deidentifier(SALT).apply(source)
    touched = set(converted) & (set(PHI_VALUES) | {"PatientName", "PatientID", "PatientSex"})
    assert not touched, touched
    source.InstitutionName  # noqa: B018  (the spy works: a plain access converts)
    assert converted[-1] == "InstitutionName"


def test_salt_file(tmp_path):
    path = tmp_path / "secrets" / "salt.bin"
    salt = load_or_create_salt(path)
    assert len(salt) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_salt(path) == salt
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_or_create_salt(tmp_path / "short")
    with pytest.raises(ConfigError, match="salt"):
        Deidentifier(b"short")
