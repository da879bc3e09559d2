"""Encoder export (safetensors + JSON) and loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from dentalmim.errors import ConfigError
from dentalmim.training.export import CheckpointError, export_encoder, load_encoder
from dentalmim.training.pretrain import PretrainModule

TINY = {
    "preset": "nano", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "proj_hidden_dim": 32, "proj_dim": 16,
}  # fmt: skip


def save_checkpoint(module: PretrainModule, path: Path) -> Path:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         max_steps=0)  # fmt: skip
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("objective", ["mae", "hybrid", "contrastive"])
def test_export_then_load_gives_identical_outputs(tmp_path: Path, objective: str) -> None:
    torch.manual_seed(0)
    module = PretrainModule(objective=objective, pos_embed="learnable", **TINY)
    with torch.no_grad():
        module.encoder.pos_embed.add_(0.5)  # a trained-looking, non-default state
    ckpt = save_checkpoint(module, tmp_path / "model.ckpt")
    out = export_encoder(ckpt, tmp_path / "export" / "encoder.safetensors")
    assert out == tmp_path / "export" / "encoder.safetensors" and out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["encoder"]["embed_dim"] == 32 and meta["source"]["objective"] == objective

    encoder = load_encoder(out)
    x = torch.rand(2, 1, 32, 32)
    module.eval()
    with torch.no_grad():
        assert torch.equal(encoder.forward_features(x), module.encoder.forward_features(x))
        other_size = torch.rand(1, 1, 48, 40)  # interpolated positional embeddings
        assert torch.equal(encoder(other_size), module.encoder(other_size))
    from safetensors.torch import load_file

    keys = load_file(str(out)).keys()
    assert "cls_token" in keys and not any("decoder" in k or "head" in k for k in keys)


def test_load_uses_embedded_config_without_json(tmp_path: Path) -> None:
    module = PretrainModule(**TINY)
    out = export_encoder(save_checkpoint(module, tmp_path / "m.ckpt"), tmp_path / "enc.safetensors")
    out.with_suffix(".json").unlink()
    assert load_encoder(out).config == module.encoder.config


def test_bad_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export_encoder(tmp_path / "missing.ckpt", tmp_path / "out.safetensors")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        export_encoder(junk, tmp_path / "out.safetensors")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        export_encoder(other, tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match="no such encoder"):
        load_encoder(tmp_path / "nothing.safetensors")


def test_export_inside_a_lightning_cli_build_keeps_the_checkpoints_own_hyperparameters(tmp_path: Path) -> None:
    # `dentalmim finetune --model.encoder run.ckpt` exports while LightningCLI builds the fine-tuning module, which
    # hands its hyperparameters to every LightningModule created meanwhile
    from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters_context

    ckpt = save_checkpoint(PretrainModule(**TINY), tmp_path / "m.ckpt")
    with _given_hyperparameters_context({"encoder": "x", "lr": 1e-3}, "FinetuneModule"):
        out = export_encoder(ckpt, tmp_path / "enc.safetensors")
    assert load_encoder(out).config["embed_dim"] == 32


def test_unusable_inputs_and_destinations_are_named_errors(tmp_path: Path) -> None:
    module = PretrainModule(**TINY)
    ckpt = save_checkpoint(module, tmp_path / "m.ckpt")
    wrong = torch.load(ckpt, weights_only=True)
    wrong["state_dict"] = {"detector.head.weight": torch.zeros(1)}  # e.g. a fine-tuning checkpoint's weights
    torch.save(wrong, tmp_path / "wrong.ckpt")
    with pytest.raises(CheckpointError, match="not a dentalmim pretraining checkpoint"):
        export_encoder(tmp_path / "wrong.ckpt", tmp_path / "out.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("this is text")
    with pytest.raises(CheckpointError, match="not a dentalmim encoder"):
        load_encoder(garbage)
    good = export_encoder(ckpt, tmp_path / "enc.safetensors")
    good.with_suffix(".json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a dentalmim encoder"):
        load_encoder(good)
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(ConfigError, match="should be a file path"):
        export_encoder(ckpt, tmp_path / "folder.safetensors")
    with pytest.raises(ConfigError, match="should end in .safetensors"):
        export_encoder(ckpt, tmp_path / "enc.json")  # the JSON config would overwrite the weights
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot write the encoder"):
        export_encoder(ckpt, tmp_path / "a_file" / "enc.safetensors")
