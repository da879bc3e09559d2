"""Structural check of a DICOM file's bytes before pydicom parses it.

pydicom is deliberately lenient: it accepts arbitrary bytes with ``force=True`` and silently drops an element
whose value is cut short, so a truncated file reads as a smaller, apparently valid data set. This module walks
the top-level elements itself (descending only into undefined-length sequences and encapsulated Pixel Data) and
checks that every declared length fits in the file. It also sniffs files without the 128-byte preamble (common
in older dental software), inflates Deflated Explicit VR Little Endian data with a size cap (a deflate bomb
would otherwise be inflated whole by pydicom), and records where the Pixel Data is.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from dentalmim.errors import DicomReadError, ImageTooLargeError, NotDicomError, TruncatedDicomError

#: The file content: bytes, or a read-only memory map of the file (no copy).
Buffer = bytes | mmap.mmap

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"

_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
                 b"US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())


@dataclass(frozen=True)
class DicomLayout:
    """What the byte-level walk learned about a file.

    Attributes:
        transfer_syntax_uid: from the File Meta Information, or the encoding guessed when there is none.
        has_file_meta: whether a (0002,xxxx) group was present.
        has_pixel_data: whether a top-level (7FE0,0010) Pixel Data element exists.
        pixel_data_length: its value length in bytes; None when encapsulated (undefined length).
        inflated: for Deflated Explicit VR Little Endian, the inflated data set (so it is inflated only once).
    """

    transfer_syntax_uid: str
    has_file_meta: bool
    has_pixel_data: bool
    pixel_data_length: int | None
    inflated: bytes | None = field(default=None, repr=False, compare=False)


class _Truncated(Exception):
    pass


class _Malformed(Exception):
    pass


def inspect_layout(path: str | Path, data: Buffer, max_inflated: int) -> DicomLayout:
    """Validates the structure of a DICOM file held in memory.

    Args:
        path: the file, only for error messages.
        data: the complete file content (bytes or a read-only ``mmap``).
        max_inflated: largest accepted size of an inflated deflated data set, in bytes.

    Raises:
        NotDicomError, TruncatedDicomError, ImageTooLargeError, DicomReadError (malformed structure).
    """
    try:
        return _inspect(path, data, max_inflated)
    except _Truncated as exc:
        raise TruncatedDicomError(path, f"file ends inside {exc}") from None
    except _Malformed as exc:
        raise DicomReadError(path, f"malformed data set: {exc}") from None


def _inspect(path: str | Path, data: Buffer, max_inflated: int) -> DicomLayout:
    if not data:
        raise TruncatedDicomError(path, "empty file")
    pos = _start_of_content(path, data)
    ts, pos = _read_file_meta(data, pos)
    if pos >= len(data):
        raise _Truncated("the file meta information (no data set follows)")
    has_meta = ts is not None
    if ts is None:
        ts = _guess_encoding(data, pos)
    inflated = None
    if ts == DEFLATED_LE:
        data = inflated = _inflate(path, data[pos:], max_inflated)
        pos = 0
    walker = _Walker(data, little=ts != EXPLICIT_BE, implicit=ts == IMPLICIT_LE)
    pixel = walker.walk_top_level(pos)
    length = None if pixel in (None, _UNDEFINED) else pixel
    return DicomLayout(ts, has_meta, pixel is not None, length, inflated)


def _start_of_content(path: str | Path, data: Buffer) -> int:
    """Offset after the preamble and 'DICM' prefix, or 0 for a raw data set; NotDicomError otherwise."""
    if data[128:132] == b"DICM":
        return 132
    if len(data) <= 132 and not any(data[:128]):
        raise TruncatedDicomError(path, "file ends inside the 128-byte preamble")
    if len(data) >= 4 and data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):
        if len(data) < 8:
            raise TruncatedDicomError(path, "file ends inside the first element")
        return 0
    raise NotDicomError(path, "no DICM prefix and no recognisable data set at the start")


def _read_file_meta(data: Buffer, pos: int) -> tuple[str | None, int]:
    """Walks the (always explicit little endian) group 0002; returns (TransferSyntaxUID or None, end offset)."""
    walker = _Walker(data, little=True, implicit=False)
    ts: str | None = None
    while pos + 2 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        tag, _, length, value_pos = walker.header(pos)
        if length == _UNDEFINED:
            raise _Malformed("undefined length in the file meta information")
        end = walker.check_fits(value_pos, length, "the file meta information")
        if tag == 0x00020010:
            ts = data[value_pos:end].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = end
    return ts, pos


def _guess_encoding(data: Buffer, pos: int) -> str:
    """Encoding of a data set without file meta: big endian if the first group reads 0x0008 big-endian."""
    if data[pos : pos + 2] == b"\x00\x08":
        return EXPLICIT_BE
    return EXPLICIT_LE if data[pos + 4 : pos + 6] in _VRS else IMPLICIT_LE


def _inflate(path: str | Path, payload: bytes, max_inflated: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(payload, max_inflated)
    except zlib.error:
        raise DicomReadError(path, "deflated data set is corrupt") from None
    if inflater.unconsumed_tail:
        raise ImageTooLargeError(path, f"deflated data set inflates beyond {max_inflated} bytes")
    if not inflater.eof:
        raise TruncatedDicomError(path, "deflated data set ends early")
    return out


class _Walker:
    """Reads element headers and skips values, checking every length against the end of the buffer."""

    def __init__(self, data: Buffer, *, little: bool, implicit: bool) -> None:
        self.data, self.implicit, self.end = data, implicit, len(data)
        self.tag_fmt, self.u16, self.u32 = ("<HH", "<H", "<I") if little else (">HH", ">H", ">I")

    def header(self, pos: int, implicit: bool | None = None) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element at ``pos``."""
        if pos + 8 > self.end:
            raise _Truncated("an element header")
        group, elem = struct.unpack_from(self.tag_fmt, self.data, pos)
        tag = (group << 16) | elem
        vr = self.data[pos + 4 : pos + 6]
        if group == 0xFFFE or (self.implicit if implicit is None else implicit) or vr not in _VRS:
            return tag, None, struct.unpack_from(self.u32, self.data, pos + 4)[0], pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > self.end:
                raise _Truncated("an element header")
            return tag, vr, struct.unpack_from(self.u32, self.data, pos + 8)[0], pos + 12
        return tag, vr, struct.unpack_from(self.u16, self.data, pos + 6)[0], pos + 8

    def check_fits(self, value_pos: int, length: int, where: str) -> int:
        if value_pos + length > self.end:
            raise _Truncated(where)
        return value_pos + length

    def walk_top_level(self, pos: int) -> int | None:
        """Walks the main data set; returns the Pixel Data value length (or _UNDEFINED), None if absent."""
        pixel: int | None = None
        while pos < self.end:
            if self.end - pos < 8 and not any(self.data[pos:]):
                break  # trailing zero padding
            tag, vr, length, value_pos = self.header(pos)
            if tag in (_ITEM, _ITEM_END, _SEQ_END):
                raise _Malformed("item tag at the top level")
            if tag == _PIXEL_DATA:
                pixel = length
            pos = self._skip_value(value_pos, length, vr == b"UN", depth=0, where=_where(tag))
        return pixel

    def _skip_value(self, value_pos: int, length: int, implicit_items: bool, depth: int, where: str) -> int:
        if length != _UNDEFINED:
            return self.check_fits(value_pos, length, where)
        if depth >= _MAX_DEPTH:
            raise _Malformed("sequences nested too deeply")
        return self._skip_items(value_pos, implicit_items, depth + 1, where)

    def _skip_items(self, pos: int, implicit_items: bool, depth: int, where: str) -> int:
        """Skips items until the sequence delimiter; returns the offset after it."""
        while True:
            tag, _, length, value_pos = self.header(pos)
            if tag == _SEQ_END:
                return value_pos
            if tag != _ITEM:
                raise _Malformed(f"expected an item in {where}")
            if length != _UNDEFINED:
                pos = self.check_fits(value_pos, length, where)
            else:
                pos = self._skip_nested(value_pos, implicit_items, depth, where)

    def _skip_nested(self, pos: int, implicit: bool, depth: int, where: str) -> int:
        """Skips the elements of an undefined-length item; returns the offset after its delimiter."""
        while True:
            tag, vr, length, value_pos = self.header(pos, implicit=implicit or None)
            if tag == _ITEM_END:
                return value_pos
            if tag in (_ITEM, _SEQ_END):
                raise _Malformed(f"unexpected delimiter in {where}")
            pos = self._skip_value(value_pos, length, implicit or vr == b"UN", depth, where)


def _where(tag: int) -> str:
    return "the pixel data" if tag == _PIXEL_DATA else f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
