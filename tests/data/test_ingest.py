"""dentalmim.data.ingest: a mixed folder in, de-identified images + manifest out, idempotent re-runs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dentalmim.data.deid import Deidentifier
from dentalmim.data.dicom import read_dicom
from dentalmim.data.encode import save_dicom
from dentalmim.data.ingest import ingest
from dentalmim.errors import ConfigError
from tests.data.conftest import PHI_VALUES, make_dataset

GOOD = {"a/bitewing_le.dcm": "explicit_le", "a/b/pa_ls.dcm": "jpeg_ls", "c/pano_deflated": "deflated",
        "c/old_be.dcm": "explicit_be", "c/sv1.dcm": "jpeg_lossless_sv1"}
EXPECTED_REJECTS = {"export.dat": "not_dicom", "a/cut.dcm": "truncated", "a/report_sr.dcm": "non_image",
                    "c/huge.dcm": "too_large", "z_copy.dcm": "duplicate_instance"}  # sorted by path: a/ before z_


def _build_source(root: Path) -> dict[str, np.ndarray]:
    """Writes the mixed folder; returns the expected pixels per good file."""
    expected = {}
    for i, (rel, syntax) in enumerate(GOOD.items()):
        ds = make_dataset(40, 48 + 8 * i, syntax=syntax, phi=True, seed=i)
        if rel.startswith("a/"):
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.5.5"  # two files of one study
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_dicom(ds, root / rel)
        expected[rel] = read_dicom(root / rel).pixels
    (root / "export.dat").write_text(f"call {PHI_VALUES['PatientName']} tomorrow\n")
    (root / "notes.txt").write_text("sidecar: ignored, not rejected\n")
    (root / "a" / "annotations.json").write_text('{"images": []}')
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: skipped
    (root / "a/cut.dcm").write_bytes((root / "a/bitewing_le.dcm").read_bytes()[:-700])
    shutil.copyfile(root / "a/bitewing_le.dcm", root / "z_copy.dcm")
    sr = pydicom.Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID, sr.Modality = "1.2.840.10008.5.1.4.1.1.88.22", "1.2.3.4.99", "SR"
    sr.PatientName = PHI_VALUES["PatientName"]
    save_dicom(sr, root / "a/report_sr.dcm")
    huge = make_dataset(8, 8, phi=True)
    huge.Rows = huge.Columns = 65535
    save_dicom(huge, root / "c/huge.dcm")
    return expected


@pytest.fixture
def source(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "src"
    root.mkdir()
    return root, _build_source(root)


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_mixed_folder(source, tmp_path):
    src, expected = source
    out = tmp_path / "out"
    summary = ingest(src, out, progress=False)
    assert (summary.ingested, summary.skipped_existing) == (len(GOOD), 0)
    assert {r["file"]: r["code"] for r in summary.rejected} == EXPECTED_REJECTS
    assert summary.ignored == 2  # notes.txt, a/annotations.json
    assert summary.format() == (
        f"5 ingested, 0 already present, 5 rejected (see {out / 'rejected.json'}), 2 sidecar files ignored"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "rejected.json").read_text()) == sorted(summary.rejected, key=lambda r: r["file"])
    assert sorted(r["source"] for r in manifest) == sorted(GOOD)
    for record in manifest:
        written = out / record["file"]
        clean = pydicom.dcmread(written)
        assert record["file"] == f"images/{clean.SOPInstanceUID}.dcm" and record["study_uid"] == clean.StudyInstanceUID
        assert record["transfer_syntax_uid"] == clean.file_meta.TransferSyntaxUID
        assert record["pixel_spacing_mm"] == [0.1, 0.1] and record["modality"] == "IO"
        np.testing.assert_array_equal(read_dicom(written).pixels, expected[record["source"]])
    by_source = {r["source"]: r for r in manifest}
    assert by_source["a/bitewing_le.dcm"]["study_uid"] == by_source["a/b/pa_ls.dcm"]["study_uid"]
    assert len({r["patient_pseudonym"] for r in manifest}) == 1  # one (planted) patient


def test_no_phi_in_outputs(source, tmp_path):
    src, _ = source
    out = tmp_path / "out"
    ingest(src, out, progress=False)
    original_uids = {str(pydicom.dcmread(src / rel).SOPInstanceUID) for rel in GOOD}
    for path in [out / "manifest.json", out / "rejected.json", *(out / "images").iterdir()]:
        data = path.read_bytes()
        for value in [*PHI_VALUES.values(), *original_uids]:
            assert value.encode() not in data, (path.name, value)


def test_rerun_is_idempotent_and_rewrites_nothing(source, tmp_path):
    src, _ = source
    out = tmp_path / "out"
    ingest(src, out, progress=False)
    before = _snapshot(out)
    summary = ingest(src, out, progress=False)
    assert (summary.ingested, summary.skipped_existing, len(summary.rejected)) == (0, len(GOOD), 5)
    after = _snapshot(out)
    for name in before:
        if name.startswith("images/"):
            assert after[name] == before[name], name  # same bytes, same mtime: not re-written
        else:
            assert after[name][0] == before[name][0], name  # manifest and rejections byte-identical
    assert set(after) == set(before)


def test_one_salt_per_output_folder(source, tmp_path, caplog):
    src, _ = source
    out, salt_a, salt_b = tmp_path / "out", tmp_path / "a.salt", tmp_path / "b.salt"
    ingest(src, out, salt_path=salt_a, progress=False)
    before = {name: content for name, (content, _) in _snapshot(out).items()}
    with pytest.raises(ConfigError, match="another salt"):
        ingest(src, out, salt_path=salt_b, progress=False)
    assert {name: content for name, (content, _) in _snapshot(out).items()} == before  # nothing touched
    # the same salt elsewhere gives the same names and pseudonyms (what lets `dentalmim run` repeat a run)
    ingest(src, tmp_path / "again", salt_path=salt_a, progress=False)
    assert (tmp_path / "again" / "manifest.json").read_text() == (out / "manifest.json").read_text()
    # a folder ingested before fingerprints existed is checked against its own salt file
    legacy = tmp_path / "legacy"
    ingest(src, legacy, progress=False)
    (legacy / ".deid_salt_id").unlink()
    with pytest.raises(ConfigError, match="another salt"):
        ingest(src, legacy, salt_path=salt_a, progress=False)
    ingest(src, legacy, progress=False)  # its own salt: fine
    # ... and one whose salt was kept elsewhere cannot be checked: a warning, and no fingerprint that would vouch for it
    elsewhere = tmp_path / "elsewhere"
    ingest(src, elsewhere, salt_path=salt_a, progress=False)
    (elsewhere / ".deid_salt_id").unlink()
    with caplog.at_level(logging.WARNING, logger="dentalmim.data.ingest"):
        ingest(src, elsewhere, salt_path=salt_b, progress=False)
    assert "cannot check" in caplog.text and not (elsewhere / ".deid_salt_id").exists()


def test_changed_missing_and_deleted_files(source, tmp_path):
    src, _ = source
    out = tmp_path / "out"
    ingest(src, out, progress=False)
    save_dicom(make_dataset(40, 40, phi=True, seed=9), src / "a/bitewing_le.dcm")  # changed content, new UID
    (src / "c/old_be.dcm").unlink()  # source gone
    damaged = json.loads((out / "manifest.json").read_text())
    victim = next(r for r in damaged if r["source"] == "c/sv1.dcm")
    (out / victim["file"]).write_bytes(b"tampered")  # output damaged -> re-written
    summary = ingest(src, out, progress=False)
    # z_copy.dcm now holds the only copy of the old bitewing content: it keeps that output
    assert (summary.ingested, summary.skipped_existing) == (2, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(r["source"] for r in manifest) == sorted(set(GOOD) - {"c/old_be.dcm"} | {"z_copy.dcm"})
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(r["file"]).name for r in manifest)
    assert read_dicom(out / victim["file"]).pixels.shape == (40, 80)


def test_internal_errors_do_not_stop_the_batch(source, tmp_path, monkeypatch):
    src, _ = source
    original = Deidentifier.apply

    def flaky(self, ds):
        if ds.Columns == 56:  # the second good file
            raise RuntimeError(PHI_VALUES["PatientName"])
        return original(self, ds)

    monkeypatch.setattr(Deidentifier, "apply", flaky)
    summary = ingest(src, tmp_path / "out", progress=False)
    assert summary.ingested == len(GOOD) - 1
    failed = [r for r in summary.rejected if r["code"] == "internal_error"]
    assert failed == [{"file": "a/b/pa_ls.dcm", "code": "internal_error", "reason": "RuntimeError"}]


def test_out_dir_inside_src_and_workers(source, tmp_path):
    src, _ = source
    salt = tmp_path / "salt.bin"
    parallel = ingest(src, tmp_path / "par", progress=False, salt_path=salt, workers=2)
    inside = ingest(src, src / "ingested", progress=False, salt_path=salt)
    again = ingest(src, src / "ingested", progress=False, salt_path=salt)
    assert parallel.ingested == inside.ingested == again.skipped_existing == len(GOOD)
    assert len(again.rejected) == 5  # the outputs inside src are not inputs
    assert (tmp_path / "par/manifest.json").read_bytes() == (src / "ingested/manifest.json").read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="src_dir"):
        ingest(tmp_path / "missing", tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="workers"):
        ingest(tmp_path, tmp_path / "out", progress=False, workers=0)
    with pytest.raises(ConfigError, match="max_pixels"):
        ingest(tmp_path, tmp_path / "out", progress=False, max_pixels=0)
    with pytest.raises(ConfigError, match="should not be src_dir"):  # each rerun would ingest its own outputs
        ingest(tmp_path, tmp_path, progress=False)
    (tmp_path / "a_file").write_bytes(b"x")
    with pytest.raises(ConfigError, match="should be a folder"):
        ingest(tmp_path, tmp_path / "a_file", progress=False)
    (tmp_path / "salt_dir").mkdir()
    with pytest.raises(ConfigError, match="should be a file"):
        ingest(tmp_path, tmp_path / "out", progress=False, salt_path=tmp_path / "salt_dir")


def test_links_to_nothing_are_reported_not_silently_skipped(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    save_dicom(make_dataset(40, 48, phi=True), src / "good.dcm")
    (src / "dangling.dcm").symlink_to(src / "gone.dcm")
    (src / "loop.dcm").symlink_to(src / "loop.dcm")
    (src / "d" / "dirloop").symlink_to(src / "d" / "dirloop")  # a folder link to itself: not walked, not fatal
    summary = ingest(src, tmp_path / "out", progress=False)
    assert summary.ingested == 1
    assert {r["file"]: r["code"] for r in summary.rejected} == {"dangling.dcm": "broken_link",
                                                                "d/dirloop": "broken_link", "loop.dcm": "broken_link"}
