"""Export the pretrained encoder of a checkpoint as safetensors + JSON config, and load it back.

``OUT.safetensors`` holds the :class:`~dentalmim.models.vit.ViTEncoder` state dict alone (no decoder, no
projection head, no optimiser state); ``OUT.json`` holds ``{"encoder": <ViTEncoder kwargs>, "source": {...}}`` so
:func:`load_encoder` rebuilds the exact architecture for fine-tuning and analysis.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dentalmim import __version__
from dentalmim.errors import ConfigError, DentalMimError
from dentalmim.models.vit import ViTEncoder


class CheckpointError(DentalMimError, ValueError):
    """A checkpoint or exported encoder cannot be read or is not a dentalmim pretraining checkpoint."""


def _read_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: no such checkpoint file.")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a readable checkpoint"
        raise CheckpointError(f"{ckpt_path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{ckpt_path}: not a Lightning checkpoint (state_dict/hyper_parameters missing).")
    return ckpt


def _module_from_checkpoint(ckpt: dict[str, Any], ckpt_path: Path):
    from dentalmim.training.pretrain import PretrainModule

    accepted = set(inspect.signature(PretrainModule.__init__).parameters) - {"self"}
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k in accepted}
    try:
        module = PretrainModule(**hparams)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{ckpt_path}: not a dentalmim pretraining checkpoint ({exc}).") from None
    module.load_state_dict(ckpt["state_dict"])
    return module


def export_encoder(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Write the encoder of a pretraining checkpoint.

    Args:
        ckpt_path: Lightning checkpoint of :class:`~dentalmim.training.pretrain.PretrainModule`.
        out_path: destination ``.safetensors`` file (folders are created); the config goes next to it with the
            suffix ``.json``.

    Returns:
        The written safetensors path.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable or not a pretraining checkpoint.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    ckpt = _read_checkpoint(ckpt_path)
    encoder = _module_from_checkpoint(ckpt, ckpt_path).encoder
    config = {
        "encoder": encoder.config,
        "source": {
            "checkpoint": ckpt_path.name,
            "objective": ckpt["hyper_parameters"].get("objective"),
            "global_step": ckpt.get("global_step"),
            "epoch": ckpt.get("epoch"),
            "dentalmim_version": __version__,
        },
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(out_path), metadata={"format": "pt", "dentalmim_encoder": json.dumps(encoder.config)})
    out_path.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
    return out_path


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> ViTEncoder:
    """Rebuild an encoder written by :func:`export_encoder`.

    Args:
        path: the ``.safetensors`` file (its ``.json`` config is read from next to it, falling back to the
            config embedded in the safetensors metadata).
        map_location: device of the returned encoder's weights.

    Returns:
        The :class:`ViTEncoder` in eval mode.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such encoder file.")
    config_path = path.with_suffix(".json")
    if config_path.is_file():
        config = json.loads(config_path.read_text())["encoder"]
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            config = json.loads((handle.metadata() or {}).get("dentalmim_encoder", "null"))
        if config is None:
            raise CheckpointError(f"{path}: no encoder config ({config_path.name} missing, none embedded).")
    encoder = ViTEncoder(**config)
    encoder.load_state_dict(load_file(str(path)))
    return encoder.to(map_location).eval()
