"""De-identification of radiographs: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile.

:class:`Deidentifier` applies the profile's action table (:mod:`dentalmim.data.deid_profile`) plus catch-all
rules (every person name, date/time, free-text and unknown-VR element, all private tags, overlay and curve
groups), and keeps what training and display need (Image Pixel module, spacing, modality, LUTs and windows,
laterality, orientation, body part). Choices:

* **UIDs** (every UI element naming an instance, study, series, frame of reference, device ..., at any depth,
  and the file meta MediaStorageSOPInstanceUID) become ``2.25.<first 128 bits of sha256(salt, uid)>``, the
  UUID-derived form of PS3.5 B.2 (at most 44 characters). The same original UID maps to the same new UID for the
  same salt, so study/series grouping and references survive, and re-runs are byte-identical. Class and
  transfer syntax UIDs and well-known (registered) UIDs are kept.
* **PatientID and PatientName** both become one salted pseudonym of the original PatientID (else of
  PatientName + PatientBirthDate, else the constant "unknown" patient, which groups every unidentified image
  into one patient: conservative for patient-level splits).
* **Dates and times** are emptied (type 2 ones the profile zeroes) or removed; none are kept or shifted, and
  LongitudinalTemporalInformationModified is REMOVED.
* PatientIdentityRemoved = YES, DeidentificationMethod and DeidentificationMethodCodeSequence (DCM 113100).

Element values are never converted or logged while de-identifying: decisions use tags, keywords and VRs, and
only PatientID/PatientName and UIDs are read (raw), so pydicom's validation warnings cannot leak identities.
Pixel data is not inspected; burned-in text (BurnedInAnnotation YES) is the caller's concern.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

from dentalmim.data.deid_profile import ACTIONS, CATCH_ALL_VRS, KEEP, KEEP_UIDS, PROFILE_CODE
from dentalmim.errors import ConfigError

#: Written to DeidentificationMethod (LO, at most 64 characters).
METHOD = "dentalmim PS3.15 E.1 basic profile; salted UID/ID hashing"
_MIN_SALT = 16
_PATIENT_NAME, _PATIENT_ID, _BIRTH_DATE = BaseTag(0x00100010), BaseTag(0x00100020), BaseTag(0x00100030)
_FILE_META_REMOVE = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                     "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation")


class Deidentifier:
    """Salted, deterministic de-identification (see the module docstring).

    Args:
        salt: secret bytes (at least 16); keep it to map future files consistently, never publish it.
    """

    def __init__(self, salt: bytes) -> None:
        if not isinstance(salt, bytes) or len(salt) < _MIN_SALT:
            raise ConfigError(f"salt should be at least {_MIN_SALT} bytes, got {len(salt) if salt else 0}.")
        self._salt = salt

    def _digest(self, domain: bytes, value: str) -> bytes:
        return hashlib.sha256(self._salt + b"\x00" + domain + b"\x00" + value.encode("utf-8")).digest()

    def map_uid(self, uid: str) -> str:
        """Maps one UID to ``2.25.<int>`` (same input and salt -> same output; well-known UIDs unchanged)."""
        uid = uid.strip("\x00 ")
        if not uid or uid in UID_dictionary:
            return uid
        return f"2.25.{int.from_bytes(self._digest(b'uid', uid)[:16], 'big')}"

    def pseudonym(self, patient_id: str) -> str:
        """Salted pseudonym of a patient identifier, e.g. ``PSN-3F2A...`` (20 characters)."""
        return "PSN-" + self._digest(b"patient", patient_id.strip("\x00 ")).hex()[:16].upper()

    def patient_pseudonym(self, ds: Dataset) -> str:
        """The pseudonym :meth:`apply` gives the patient of ``ds`` (from PatientID, else name + birth date)."""
        patient_id = _raw_text(ds, _PATIENT_ID)
        if patient_id:
            return self.pseudonym(patient_id)
        name = _raw_text(ds, _PATIENT_NAME)
        return self.pseudonym(f"name:{name}|{_raw_text(ds, _BIRTH_DATE)}" if name else "unknown")

    def apply(self, ds: Dataset) -> Dataset:
        """Returns a de-identified deep copy of ``ds`` (``ds`` itself is not modified).

        Args:
            ds: a data set, e.g. from ``pydicom.dcmread`` (with ``file_meta``) or built in memory.

        Returns:
            The de-identified copy, ready for :func:`dentalmim.data.encode.save_dicom`.
        """
        pseudonym = self.patient_pseudonym(ds)
        out = copy.deepcopy(ds)
        self._clean(out, top=True)
        out[_PATIENT_NAME] = DataElement(_PATIENT_NAME, "PN", pseudonym)
        out[_PATIENT_ID] = DataElement(_PATIENT_ID, "LO", pseudonym)
        _mark(out)
        if getattr(out, "file_meta", None) is not None:
            self._clean_file_meta(out)
        return out

    def _clean(self, ds: Dataset, *, top: bool) -> None:
        """Applies the actions to every element of ``ds``, recursing into kept sequences."""
        for tag in list(ds.keys()):
            elem = ds.get_item(tag)
            keyword = keyword_for_tag(tag)
            vr = _vr(elem, tag, keyword)
            action = _action(tag, keyword, vr, top)
            if action == "X":
                del ds[tag]
            elif action == "Z":
                ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else "")
            elif action == "U":
                ds[tag] = DataElement(tag, "UI", self._mapped_values(elem))
            elif vr == "SQ":
                for item in ds[tag].value:
                    self._clean(item, top=False)

    def _mapped_values(self, elem: Any) -> str | list[str]:
        value = elem.value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        values = [value] if isinstance(value, str) else [str(v) for v in (value or [])]
        parts = [self.map_uid(p) for v in values for p in str(v).split("\\")]
        return parts[0] if len(parts) == 1 else parts

    def _clean_file_meta(self, ds: Dataset) -> None:
        meta = ds.file_meta
        for keyword in _FILE_META_REMOVE:
            if keyword in meta:
                delattr(meta, keyword)
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.map_uid(str(meta.MediaStorageSOPInstanceUID))


def _vr(elem: Any, tag: BaseTag, keyword: str) -> str:
    """The element's VR: the dictionary's for known public tags (files sometimes say UN), else the stored one."""
    if keyword:
        try:
            vr = dictionary_VR(tag)
            if " or " not in vr:
                return vr
        except KeyError:
            pass
    return str(elem.VR) if elem.VR else "UN"


def _action(tag: BaseTag, keyword: str, vr: str, top: bool) -> str:
    """X (remove), Z (empty), U (map UIDs) or K (keep) for one element."""
    if tag.is_private or 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
        return "X"
    action = ACTIONS.get(keyword)
    if action == "D":
        return "K" if top else "X"  # top-level patient name/ID are replaced by the pseudonym afterwards
    if action is not None:
        return action
    if vr == "UI":
        return "K" if keyword in KEEP_UIDS else "U"
    if vr in CATCH_ALL_VRS and keyword not in KEEP:
        return "X"
    return "K"


def _mark(ds: Dataset) -> None:
    """Records the de-identification (PS3.3 C.7.1.1 / C.12.1 attributes)."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _raw_text(ds: Dataset, tag: BaseTag) -> str:
    """An element's value as text without pydicom value conversion ('' when absent)."""
    if tag not in ds:
        return ""
    value = ds.get_item(tag).value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value or "").strip("\x00 ")


def load_or_create_salt(path: str | os.PathLike) -> bytes:
    """Reads the de-identification salt, creating 32 random bytes (file mode 0600) when the file is missing.

    Args:
        path: the salt file; its folder is created when needed.

    Returns:
        The salt bytes.

    Raises:
        ConfigError: the path is not a file, or the existing file holds fewer than 16 bytes.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created concurrently: read it below
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
    if not path.is_file():
        raise ConfigError(f"salt file {path} should be a file, got a folder or another non-file.")
    salt = path.read_bytes()
    if len(salt) < _MIN_SALT:
        raise ConfigError(f"salt file {path} should hold at least {_MIN_SALT} bytes, got {len(salt)}.")
    return salt


#: Third-party loggers whose messages quote DICOM header values (pydicom's invalid-value warnings name the value,
#: highdicom's INFO lines the source's UIDs), and the lowest level they keep.
IDENTIFYING_LOGGERS = {"pydicom": logging.ERROR, "highdicom": logging.WARNING}


def quiet_identifying_loggers() -> None:
    """Raise the level of :data:`IDENTIFYING_LOGGERS`, so no patient data reaches a log (the CLI and the service
    call this once at start)."""
    for name, level in IDENTIFYING_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
