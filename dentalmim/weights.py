"""Writing safetensors files byte-reproducibly.

``safetensors.torch.save_file`` writes the metadata map in hash-table order, which changes from call to call: two
saves of the same tensors with the same metadata could differ in bytes, and so in sha256 (the registry stores
files under their sha256, and the README quotes encoder hashes). :func:`save_weights` writes the header with
sorted keys instead; the tensor data and its layout are the library's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save

from dentalmim.fileio import atomic_open


def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state`` (contiguous tensors) and string ``metadata`` to ``path`` atomically; returns the path.

    The same tensors and metadata always give the same bytes.
    """
    raw = save(dict(state), metadata=dict(metadata) if metadata is not None else None)
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header with spaces to 8-byte alignment
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little"))
        fh.write(header)
        fh.write(memoryview(raw)[8 + size:])
    return Path(path)
