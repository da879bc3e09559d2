"""dentalmim.weights: safetensors files whose bytes depend only on the tensors and the metadata."""

from __future__ import annotations

import hashlib

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dentalmim.weights import save_weights


def test_same_content_same_bytes_and_it_loads_back(tmp_path):
    state = {"b.weight": torch.randn(3, 5), "a.bias": torch.arange(7, dtype=torch.int64), "c": torch.ones(2, 2).half()}
    # six keys: the library's own writer orders them by hash, so two saves agreeing by chance is about 1 in 720
    metadata = {"format": "pt", **{f"key{i}": f"value {i}" for i in range(5)}}
    digests = {hashlib.sha256(save_weights(state, tmp_path / f"{i}.safetensors", metadata).read_bytes()).hexdigest()
               for i in range(3)}
    assert len(digests) == 1
    loaded = load_file(tmp_path / "0.safetensors")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(tmp_path / "0.safetensors", "pt") as fh:
        assert fh.metadata() == metadata
    assert (tmp_path / "0.safetensors").read_bytes()[8:].startswith(b'{"__metadata__":{"format":"pt","key0"')
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
