"""Export the pretrained encoder of a checkpoint as safetensors + JSON config, and load it back.

``OUT.safetensors`` holds the :class:`~dentalmim.models.vit.ViTEncoder` state dict alone (no decoder, no
projection head, no optimiser state); ``OUT.json`` holds ``{"encoder": <ViTEncoder kwargs>, "source": {...}}`` so
:func:`load_encoder` rebuilds the exact architecture for fine-tuning and analysis.

:func:`read_encoder_weights` reads the encoder of any dentalmim weight file (exported encoder, pretraining
checkpoint, detector bundle, fine-tuning checkpoint) and :func:`init_encoder_from` copies it into an encoder of the
same architecture (``dentalmim pretrain --model.init_encoder``: continued pretraining).
"""

from __future__ import annotations

import contextvars
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dentalmim import __version__
from dentalmim.errors import ConfigError, DentalMimError
from dentalmim.models.pos_embed import resize_pos_embed
from dentalmim.models.vit import ViTEncoder
from dentalmim.weights import save_weights

#: Encoder settings a weight file must share with the encoder it initialises (``img_size`` may differ: a learnable
#: positional embedding is resized to the new patch grid, a sin-cos one is recomputed).
ARCH_FIELDS = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "pos_embed",
               "stem")
#: Value of an architecture field that files written before it existed lack.
ARCH_DEFAULTS = {"stem": "linear"}


class CheckpointError(DentalMimError, ValueError):
    """A checkpoint or exported encoder cannot be read or is not a dentalmim pretraining checkpoint."""


def _read_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: no such checkpoint file.")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a readable checkpoint"
        raise CheckpointError(f"{ckpt_path}: cannot be read as a checkpoint ({type(exc).__name__}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{ckpt_path}: not a Lightning checkpoint (state_dict/hyper_parameters missing).")
    return ckpt


def _module_from_checkpoint(ckpt: dict[str, Any], ckpt_path: Path):
    from dentalmim.training.pretrain import PretrainModule

    accepted = set(inspect.signature(PretrainModule.__init__).parameters) - {"self"}
    # init_encoder is dropped: the checkpoint's own weights replace it, and its file may be gone by now
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k in accepted and k != "init_encoder"}
    try:
        # a fresh context: while LightningCLI builds a module it hands that module's hyperparameters (a context
        # variable) to every LightningModule created meanwhile, so this one would save the fine-tuning module's
        module = contextvars.Context().run(PretrainModule, **hparams)
        module.load_state_dict(ckpt["state_dict"])
    except (ConfigError, TypeError, KeyError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{ckpt_path}: not a dentalmim pretraining checkpoint ({reason}).") from None
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
    if out_path.suffix != ".safetensors":  # the config goes to OUT.json: OUT.json itself would lose the weights
        raise ConfigError(f"the encoder's destination should end in .safetensors, got {out_path}.")
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
    if out_path.is_dir():
        raise ConfigError(f"the encoder's destination should be a file path, got the folder {out_path}.")
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(state, out_path, metadata={"format": "pt", "dentalmim_encoder": json.dumps(encoder.config)})
        out_path.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the encoder to {out_path} ({exc.strerror or type(exc).__name__}).") from None
    return out_path


def _not_an_encoder(path: str | Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: not a dentalmim encoder ({type(exc).__name__}); export one with "
                           f"`dentalmim export-encoder`.")


def encoder_config(path: str | Path) -> dict[str, Any]:
    """The :class:`ViTEncoder` arguments of an encoder written by :func:`export_encoder`, read without its weights:
    the ``.json`` beside it, else the config embedded in the safetensors header (whose validity is checked either
    way, so a garbage file fails here, cheaply).

    Raises:
        CheckpointError: the file is missing or is not a dentalmim encoder.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such encoder file.")
    config_path = path.with_suffix(".json")
    try:
        with safe_open(str(path), framework="pt") as handle:
            embedded = (handle.metadata() or {}).get("dentalmim_encoder", "null")
        config = json.loads(config_path.read_text())["encoder"] if config_path.is_file() else json.loads(embedded)
    except Exception as exc:  # noqa: BLE001 - a malformed file or config: any failure means "not an encoder"
        raise _not_an_encoder(path, exc) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: no encoder config ({config_path.name} missing, none embedded).")
    return config


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> ViTEncoder:
    """Rebuild an encoder written by :func:`export_encoder`.

    Args:
        path: the ``.safetensors`` file (its config: see :func:`encoder_config`).
        map_location: device of the returned encoder's weights.

    Returns:
        The :class:`ViTEncoder` in eval mode.
    """
    config = encoder_config(path)
    try:
        encoder = ViTEncoder(**config)
        encoder.load_state_dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - a config or weights that do not fit: not a usable encoder
        raise _not_an_encoder(path, exc) from None
    return encoder.to(map_location).eval()


def read_encoder_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """The encoder of any dentalmim weight file.

    Args:
        path: an exported encoder ``.safetensors`` (:func:`export_encoder`), a pretraining ``.ckpt``, a detector
            model bundle ``.safetensors`` (:func:`~dentalmim.inference.predictor.save_model_bundle`, also the files
            of the model registry) or a fine-tuning ``.ckpt`` (the detector's ``encoder.*`` weights).

    Returns:
        ``(ViTEncoder kwargs, encoder state dict on CPU, kind)``; kind names the file type for messages.

    Raises:
        CheckpointError: the file is missing, unreadable or none of these.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        if _is_model_bundle(path):
            from dentalmim.inference.predictor import load_model

            detector, _ = load_model(path)
            return dict(detector.encoder.config), detector.encoder.state_dict(), "detector bundle"
        encoder = load_encoder(path)
        return dict(encoder.config), encoder.state_dict(), "exported encoder"
    ckpt = _read_checkpoint(path)
    meta = ckpt.get("dentalmim")
    if isinstance(meta, dict) and isinstance(meta.get("detector"), dict):
        prefix = "detector.encoder."
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        return dict(meta["detector"]["encoder"]), state, "fine-tuning checkpoint"
    encoder = _module_from_checkpoint(ckpt, path).encoder
    return dict(encoder.config), encoder.state_dict(), "pretraining checkpoint"


def _is_model_bundle(path: Path) -> bool:
    """Whether a ``.safetensors`` file is a detector bundle (sidecar JSON or embedded metadata says so)."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text()).get("format") == "dentalmim-detector"
        except (ValueError, AttributeError):
            return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return "dentalmim_bundle" in (handle.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: load_encoder reports it
        return False


def init_encoder_from(encoder: ViTEncoder, path: str | Path, field: str = "model.init_encoder") -> str:
    """Copy the encoder weights of a file (see :func:`read_encoder_weights`) into ``encoder``.

    The architecture (:data:`ARCH_FIELDS`) must match. A learnable positional embedding of another base grid
    (another ``img_size``) is resized bicubically to ``encoder``'s grid; a sin-cos one is not stored and stays the
    encoder's own.

    Args:
        encoder: the encoder to initialise (changed in place).
        path: the weight file.
        field: config field named in error messages.

    Returns:
        The kind of file read (``exported encoder``, ``pretraining checkpoint``, ``detector bundle``,
        ``fine-tuning checkpoint``).

    Raises:
        ConfigError: the file cannot be read, or its encoder architecture differs (the message names the field).
    """
    try:
        config, state, kind = read_encoder_weights(path)
    except DentalMimError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    config = {**ARCH_DEFAULTS, **config}
    differing = [name for name in ARCH_FIELDS if config.get(name) != encoder.config[name]]
    if differing:
        shown = ", ".join(f"{name}={config.get(name)!r} in the file but {encoder.config[name]!r} here"
                          for name in differing)
        raise ConfigError(f"{field} should have the model's encoder architecture; {path} ({kind}) differs: {shown}. "
                          f"Set model.{differing[0]} (and the other fields) to the file's values.")
    state = dict(state)
    if "pos_embed" in state:
        old = (config["img_size"] // config["patch_size"],) * 2
        if state["pos_embed"].shape[1] != old[0] * old[1]:
            raise ConfigError(f"{field}: {path} has a positional embedding of {state['pos_embed'].shape[1]} "
                              f"entries, not the {old[0]}x{old[1]} grid of its img_size={config['img_size']}.")
        state["pos_embed"] = resize_pos_embed(state["pos_embed"].detach(), old, encoder.grid_size)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{field}: the encoder weights of {path} do not fit ({exc}).") from None
    return kind
