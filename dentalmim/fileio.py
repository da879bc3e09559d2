"""Atomic file writes: the one place that writes a temporary file beside the target and renames it over.

Readers never see a half-written file: the data go to a temporary file in the destination folder (so the
rename stays on one file system), which ``os.replace`` then moves onto the target in one step. On any error the
temporary file is removed and the target is left as it was. New files are private (mode 0600) unless the caller
asks for the usual umask-based mode (reports meant to be shared).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _process_umask() -> int:
    mask = os.umask(0o077)  # read by setting; restored at once (module import, before any worker thread)
    os.umask(mask)
    return mask


#: The process umask at import: the permission bits a plain ``open(path, "w")`` would have left out.
_UMASK = _process_umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False, private: bool = True,
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block ends without error.

    Args:
        path: the target file; its folder must exist.
        mode: ``"wb"`` or ``"w"``.
        fsync: flush the data to disk before the rename (durable writes: stored scans, labels).
        private: keep the file readable by its owner only (0600); False gives ``0666 & ~umask``, as ``open``.
        encoding: text encoding for ``"w"`` (default UTF-8).

    Yields:
        The open temporary file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode should be 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if not private:
            os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else (encoding or "utf-8")) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False, private: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, "wb", fsync=fsync, private=private) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False, private: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically as UTF-8 (see :func:`atomic_open`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync, private=private)
