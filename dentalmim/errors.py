"""Domain errors raised by the dentalmim library.

Every error the library raises on purpose is a subclass of :class:`DentalMimError`, so callers (the CLI, the
service) can tell expected failures (bad input) from bugs. Messages name the file and the reason and never
contain patient data.
"""

from __future__ import annotations


class DentalMimError(Exception):
    """Base class of every expected dentalmim failure."""


class ConfigError(DentalMimError, ValueError):
    """An invalid setting or argument; the message names the field."""


class DicomReadError(DentalMimError):
    """A DICOM file could not be turned into a radiograph.

    Args:
        path: the file, as given by the caller (never patient data).
        reason: a short human-readable reason.
    """

    #: Short machine-readable code for reports (``rejected.json``) and the API.
    code = "dicom_read_error"

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NotDicomError(DicomReadError):
    """The file is not DICOM (no preamble/prefix and no parsable data set)."""

    code = "not_dicom"


class TruncatedDicomError(DicomReadError):
    """The file is empty or ends before the data set does."""

    code = "truncated"


class MissingPixelDataError(DicomReadError):
    """Pixel Data is absent, or shorter than Rows x Columns x samples x bits demand."""

    code = "missing_pixel_data"


class NonImageObjectError(DicomReadError):
    """The object is not an image (structured report, presentation state, encapsulated PDF, ...)."""

    code = "non_image"


class UnsupportedTransferSyntaxError(DicomReadError):
    """No installed decoder handles the file's transfer syntax."""

    code = "unsupported_transfer_syntax"


class ImageTooLargeError(DicomReadError):
    """Rows x Columns exceeds the configured pixel limit (decompression-bomb guard)."""

    code = "too_large"


class MultiFrameError(DicomReadError):
    """A multi-frame object where a single-frame radiograph is expected."""

    code = "multi_frame"


class UnsupportedPixelFormatError(DicomReadError):
    """Pixel attributes the reader cannot interpret (e.g. unknown photometric interpretation)."""

    code = "unsupported_pixel_format"


class CocoValidationError(DentalMimError, ValueError):
    """A COCO annotation file is malformed; ``problems`` lists every issue found."""

    def __init__(self, path: object, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        shown = "; ".join(self.problems[:10])
        more = f" (+{len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"{self.path}: {len(self.problems)} problem(s): {shown}{more}")
