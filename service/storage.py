"""Content-addressed storage of de-identified scans: ``DATA_DIR/scans/ab/abcdef....dcm`` (SHA-256 of the bytes).

Writes are atomic and durable: a temporary file in the destination folder, ``fsync``, ``os.replace``, then an
``fsync`` of the folder. Storing the same bytes twice is a no-op. Files are created with mode 0600 and folders
0700: they hold (de-identified) medical images.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from dentalmim.fileio import atomic_write_bytes


class ScanStore:
    """Scans under ``root/scans``; ``root/tmp`` holds uploads while they are checked.

    Args:
        root: the data folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.scans = self.root / "scans"
        self.tmp = self.root / "tmp"
        for folder in (self.root, self.scans, self.tmp):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    @staticmethod
    def relative_path(sha256: str) -> str:
        """``scans/ab/<sha256>.dcm`` for a hex digest."""
        return f"scans/{sha256[:2]}/{sha256}.dcm"

    def path(self, relative: str) -> Path:
        """Absolute path of a stored file."""
        return self.root / relative

    def put(self, data: bytes) -> tuple[str, str]:
        """Stores ``data`` (atomic, durable, idempotent); returns ``(sha256, relative path)``."""
        digest = hashlib.sha256(data).hexdigest()
        relative = self.relative_path(digest)
        target = self.path(relative)
        if target.is_file() and target.stat().st_size == len(data):
            return digest, relative
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(target, data, fsync=True)
        _fsync_dir(target.parent)
        return digest, relative

    def temp_file(self, data: bytes) -> Path:
        """Writes an upload to a private temporary file (mode 0600) for reading; the caller deletes it."""
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".dcm", dir=self.tmp)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return Path(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
