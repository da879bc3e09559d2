"""The re-identification link: the original identifiers an SR needs to be filed with its study, kept encrypted.

Stored scans are de-identified (UIDs remapped, patient replaced by a pseudonym). A findings SR that a PACS files
with the *original* study must, however, carry the original StudyInstanceUID, reference the original image
(Series/SOP Instance UIDs) and repeat the patient module. The resolution (documented in the README):

* the original values of :data:`LINK_KEYWORDS` are sealed with Fernet (AES-128-CBC + HMAC-SHA256) under a key
  kept outside the database (``DATA_DIR/.link_key``, mode 0600, or ``DENTALMIM_LINK_KEY_FILE``), and stored with
  the prediction only (never logged, never in a response other than the SR);
* only the clinician who uploaded the scan can download the SR, and by default it is the *original-study* SR
  (``GET /v1/predictions/{id}/sr.dcm``); ``?variant=deidentified`` gives the SR of the de-identified scan
  (remapped UIDs, pseudonym), e.g. for research export;
* the sealed link is deleted after ``DENTALMIM_LINK_RETENTION_HOURS`` (0: never stored); after that only the
  de-identified SR is available (the original variant answers 410).

Without the key file the tokens are useless, so a copy of the database alone does not re-identify anyone.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from pydicom.dataset import Dataset

from dentalmim.errors import DentalMimError

#: Attributes restored in the original-study SR (study, series and instance identity, patient module).
LINK_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID", "PatientName",
                 "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                 "ReferringPhysicianName")


class LinkError(DentalMimError):
    """A sealed link could not be opened (wrong key or corrupted token)."""


def _load_or_create_key(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
    return path.read_bytes().strip()


class LinkVault:
    """Seals and opens the original identifiers of one image.

    Args:
        key: a Fernet key (urlsafe base64 of 32 bytes).
    """

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise LinkError(f"the link key should be a Fernet key (44 base64 characters): {exc}") from None

    @classmethod
    def from_file(cls, path: Path) -> LinkVault:
        """The vault of the key in ``path`` (created, mode 0600, when missing)."""
        return cls(_load_or_create_key(Path(path)))

    def seal(self, ds: Dataset) -> str:
        """Encrypts the :data:`LINK_KEYWORDS` values of ``ds`` (those present)."""
        values = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for keyword in LINK_KEYWORDS:
                if keyword in ds:
                    value = ds[keyword].value
                    values[keyword] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(
                        value if value is not None else "")
        return self._fernet.encrypt(json.dumps(values).encode()).decode("ascii")

    def open(self, token: str) -> dict[str, str]:
        """The original values sealed in ``token``."""
        try:
            return json.loads(self._fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, ValueError) as exc:
            raise LinkError(f"the re-identification link cannot be opened ({type(exc).__name__}).") from None


def reidentify(header: Dataset, originals: dict[str, str]) -> Dataset:
    """A copy of a de-identified header with the original identifiers put back (for the original-study SR)."""
    out = Dataset()
    for elem in header:
        out.add(elem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in originals.items():
            setattr(out, keyword, value)
        for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence"):
            if keyword in out:
                delattr(out, keyword)
    return out
