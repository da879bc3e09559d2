"""``PretrainModule(init_encoder=...)``: continued pretraining from an exported encoder, a pretraining checkpoint, a
detector bundle or a fine-tuning checkpoint; architecture checks; positional-embedding resizing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dentalmim.errors import ConfigError
from dentalmim.inference.predictor import load_model, save_model_bundle
from dentalmim.models.detector import CariesDetector
from dentalmim.models.pos_embed import resize_pos_embed
from dentalmim.models.vit import ViTEncoder
from dentalmim.training.export import export_encoder, read_encoder_weights
from dentalmim.training.finetune import FinetuneModule
from dentalmim.training.pretrain import PretrainModule
from tests.training.test_pretrain import TinyDataModule, make_trainer

#: A 2-block, 32-wide MAE on 32 px images with 16 px patches (a detector-compatible patch size).
SMALL = {"preset": "nano", "img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
         "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "lr": 1e-3}  # fmt: skip
ENCODER = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _pretrain_ckpt(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(11)
    module = PretrainModule(**SMALL)
    trainer = make_trainer(tmp_path / "src", max_steps=1)
    trainer.fit(module, datamodule=TinyDataModule(batch_size=4))
    path = tmp_path / "mae.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in module.encoder.state_dict().items()}


def _detector(seed: int = 12, **encoder) -> CariesDetector:
    torch.manual_seed(seed)
    return CariesDetector(ViTEncoder(**{**ENCODER, **encoder}), num_classes=1, fpn_channels=16, head_convs=1)


def _source(kind: str, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A weight file of ``kind`` and the encoder weights it holds."""
    if kind in ("exported encoder", "pretraining checkpoint"):
        ckpt, state = _pretrain_ckpt(tmp_path)
        return (export_encoder(ckpt, tmp_path / "enc.safetensors") if kind == "exported encoder" else ckpt), state
    if kind == "detector bundle":
        detector = _detector()
        return save_model_bundle(detector, tmp_path / "model.safetensors"), detector.encoder.state_dict()
    module = FinetuneModule(**ENCODER, preset="nano", fpn_channels=16, head_convs=1, tile_size=32)
    path = tmp_path / "finetune.ckpt"  # what Lightning writes for a FinetuneModule (state, hparams, metadata)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0,
                "global_step": 0, "dentalmim": module.model_metadata()}, path)
    assert load_model(path)[0].config == module.detector.config  # a real fine-tuning checkpoint for the predictor
    return path, module.detector.encoder.state_dict()


@pytest.mark.parametrize("kind", ["exported encoder", "pretraining checkpoint", "detector bundle",
                                  "fine-tuning checkpoint"])
def test_init_encoder_loads_exactly_the_files_encoder_and_trains(kind: str, tmp_path: Path) -> None:
    path, expected = _source(kind, tmp_path)
    assert read_encoder_weights(path)[2] == kind
    torch.manual_seed(99)  # a fresh encoder would differ from every source
    module = PretrainModule(**SMALL, init_encoder=str(path))
    state = module.encoder.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    fresh = PretrainModule(**SMALL).encoder
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, expected["blocks.0.attn.qkv.weight"])
    trainer = make_trainer(tmp_path / "run", max_steps=1)
    trainer.fit(module, datamodule=TinyDataModule(batch_size=4))
    assert trainer.global_step == 1
    assert not torch.equal(module.encoder.blocks[0].attn.qkv.weight, expected["blocks.0.attn.qkv.weight"])


def test_checkpoint_of_a_continued_run_exports_without_its_init_file(tmp_path: Path) -> None:
    source = save_model_bundle(_detector(), tmp_path / "model.safetensors")
    module = PretrainModule(**SMALL, init_encoder=str(source))
    trainer = make_trainer(tmp_path / "run", max_steps=1)
    trainer.fit(module, datamodule=TinyDataModule(batch_size=4))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    source.unlink()  # the checkpoint's own weights are used, not the (gone) init file
    exported = read_encoder_weights(export_encoder(tmp_path / "run.ckpt", tmp_path / "enc.safetensors"))[1]
    assert all(torch.equal(v, exported[k]) for k, v in module.encoder.state_dict().items())


@pytest.mark.parametrize(("encoder", "field"), [({"embed_dim": 64}, "embed_dim"), ({"depth": 3}, "depth"),
                                                ({"num_heads": 4}, "num_heads"), ({"patch_size": 8}, "patch_size"),
                                                ({"pos_embed": "learnable"}, "pos_embed"),
                                                ({"stem": "conv"}, "stem")])
def test_architecture_mismatch_names_the_field(encoder: dict, field: str, tmp_path: Path) -> None:
    path = save_model_bundle(_detector(**encoder), tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match=rf"model\.init_encoder should have the model's encoder architecture.*"
                                          rf"{field}=.* in the file but .* here.*Set model\.{field}"):
        PretrainModule(**SMALL, init_encoder=str(path))


def test_missing_or_foreign_file_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.init_encoder should be an existing .*nope\.ckpt"):
        PretrainModule(**SMALL, init_encoder=str(tmp_path / "nope.ckpt"))
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"model\.init_encoder: .*junk\.ckpt: cannot be read as a checkpoint"):
        PretrainModule(**SMALL, init_encoder=str(tmp_path / "junk.ckpt"))


def test_learnable_pos_embed_of_another_grid_is_resized(tmp_path: Path) -> None:
    detector = _detector(img_size=64, pos_embed="learnable")
    path = save_model_bundle(detector, tmp_path / "model.safetensors")
    module = PretrainModule(**SMALL, pos_embed="learnable", init_encoder=str(path))  # 2x2 grid from 4x4
    expected = resize_pos_embed(detector.encoder.pos_embed.detach(), (4, 4), (2, 2))
    assert module.encoder.pos_embed.shape == (1, 4, 32)
    assert torch.allclose(module.encoder.pos_embed, expected)
    assert torch.equal(module.encoder.patch_embed.proj.weight, detector.encoder.patch_embed.proj.weight)
