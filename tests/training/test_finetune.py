"""Detector fine-tuning: configs, encoder sources, lr decay, operating point, and learning on synthetic data."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from dentalmim.data.synth import generate_corpus
from dentalmim.errors import ConfigError
from dentalmim.evaluation.metrics import EvalImage
from dentalmim.inference.predictor import (Predictor, save_model_bundle, select_operating_point,
                                          threshold_warnings)
from dentalmim.inference.tiling import tile_grid
from dentalmim.models.detector import CariesDetector
from dentalmim.models.vit import ViTEncoder
from dentalmim.training.export import export_encoder
from dentalmim.training.finetune import (FinetuneModule, cli_main, load_pretrained_encoder, param_groups_lrd,
                                         validation_metrics)
from dentalmim.training.pretrain import PretrainModule

torch.set_num_threads(1)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "finetune"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
TINY = {"preset": "nano", "embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 128, "fpn_channels": 32}
TINY_ARGS = [arg for key, value in TINY.items() for arg in (f"--model.{key}", str(value))]


def auroc(prob: torch.Tensor, truth: torch.Tensor) -> float:
    pos, neg = prob[truth], prob[~truth]
    return ((pos[:, None] > neg[None]).float().mean() + 0.5 * (pos[:, None] == neg[None]).float().mean()).item()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 small synthetic radiographs (bitewing / periapical / panoramic) with caries boxes: the COCO path."""
    return generate_corpus(tmp_path_factory.mktemp("synth"), n=16, seed=1, n_unlabeled=0, scale=0.25,
                           progress=False).coco_path


def run_args(coco: Path, root: Path, *extra: str) -> list[str]:
    return [*TINY_ARGS, "--data.coco_path", str(coco), "--data.crop_size", "128", "--data.batch_size", "8",
            "--data.num_workers", "0", "--data.cache", "memory", "--data.val_fraction", "0.25",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
            "--trainer.default_root_dir", str(root), "--trainer.enable_model_summary", "false", *extra]


# ------------------------------------------------------------------------------------------------------ configs
def test_the_expected_configs_exist() -> None:
    assert {p.stem for p in CONFIGS} >= {"caries_vit_tiny", "caries_vit_small", "caries_vit_base"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_prints_resolved_values(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert printed["model"]["preset"] == source["model"]["preset"]
    assert printed["model"]["layer_decay"] == source["model"]["layer_decay"]
    assert printed["data"]["crop_size"] == source["data"]["crop_size"]
    monitors = [cb["init_args"].get("monitor") for cb in printed["trainer"]["callbacks"]]
    assert monitors.count("val/score") == 2  # best checkpoint and early stopping


def test_ddp_by_config_alone_fine_tunes_and_validates_over_two_processes(corpus: Path, tmp_path: Path) -> None:
    """``--trainer.strategy ddp --trainer.devices 2`` on CPU (gloo): both ranks train, the tiled validation of the
    whole images is gathered across ranks for one val/score, and the checkpoint carries the operating point."""
    config = str(CONFIG_DIR / "caries_vit_tiny.yaml")
    cmd = [sys.executable, "-m", "dentalmim.cli", "finetune", "fit", "--config", config,
           *run_args(corpus, tmp_path / "run"), "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--data.crops_per_image", "2", "--trainer.max_steps", "2", "--trainer.max_epochs", "-1",
           "--trainer.num_sanity_val_steps", "0", "--trainer.val_check_interval", "null",
           "--trainer.check_val_every_n_epoch", "1"]  # fmt: skip
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and 0.0 <= ckpt["dentalmim"]["image_threshold"] <= 1.0
    with open(next((tmp_path / "run" / "logs").glob("version_*/metrics.csv")), newline="") as fh:
        assert any(row.get("val/score") for row in csv.DictReader(fh))  # the gathered validation ran and logged


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_step_at_tiny_size(config: Path, corpus: Path, tmp_path: Path) -> None:
    cli = cli_main(["fit", "--config", str(config), *run_args(corpus, tmp_path / "run"), "--data.batch_size", "16",
                    "--data.crops_per_image", "1", "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
                    "--trainer.num_sanity_val_steps", "0", "--trainer.check_val_every_n_epoch", "1",
                    "--trainer.log_every_n_steps", "1"])  # one batch per epoch
    assert cli.trainer.global_step == 1 and cli.model.tile_size == 128  # linked from data.crop_size
    assert cli.model.class_names == ["caries"] and cli.model.hparams.num_classes == 1
    assert "val/score" in cli.trainer.callback_metrics
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["dentalmim"]["tile_size"] == 128 and ckpt["dentalmim"]["class_names"] == ["caries"]
    assert list((tmp_path / "run" / "logs").glob("version_*/config.yaml"))
    if config.stem == "caries_vit_tiny":  # the test subcommand evaluates a checkpoint on a held-out split
        tested = cli_main(["test", "--config", str(config), *run_args(corpus, tmp_path / "test"),
                           "--data.test_fraction", "0.25", "--ckpt_path", str(tmp_path / "run" / "checkpoints" /
                                                                                  "last.ckpt")])
        assert "test/score" in tested.trainer.callback_metrics
        kept = ("score_threshold", "image_threshold", "threshold_val_caries_images", "threshold_val_caries_free_images",
                "threshold_val_image_types")
        assert tested.model.operating_point == {k: ckpt["dentalmim"][k] for k in kept}


def test_invalid_values_fail_before_training_naming_the_field(corpus: Path, tmp_path: Path) -> None:
    config = str(CONFIG_DIR / "caries_vit_tiny.yaml")
    with pytest.raises(ConfigError, match=r"model\.layer_decay should be in \(0, 1\], got 0\.0"):
        cli_main(["fit", "--config", config, *run_args(corpus, tmp_path), "--model.layer_decay", "0"])
    with pytest.raises(ConfigError, match=r"model\.encoder should be an existing file"):
        FinetuneModule(encoder=str(tmp_path / "missing.safetensors"), **TINY)
    with pytest.raises(ConfigError, match=r"model\.encoder should be a \.safetensors"):
        FinetuneModule(encoder=str(corpus), **TINY)
    with pytest.raises(ConfigError, match="model.pyramid_strides should be patch_size=16 times a power of 2"):
        FinetuneModule(pyramid_strides=(4, 12), **TINY)
    with pytest.raises(ConfigError, match=r"model\.class_names should be null or 1 names"):
        FinetuneModule(class_names=["a", "b"], **TINY)
    with pytest.raises(ConfigError, match=r"model\.nms_iou should be in \(0, 1\], got 0"):
        FinetuneModule(nms_iou=0, **TINY)
    with pytest.raises(ConfigError, match=r"model\.detail_channels should be >= 0, got -8"):
        FinetuneModule(detail_channels=-8, **TINY)
    with pytest.raises(ConfigError, match=r"model\.embed_dim should be divisible by num_heads=3, got 64"):
        FinetuneModule(**{**TINY, "num_heads": 3})


# ------------------------------------------------------------------------------------------- encoder sources
def test_encoder_loads_from_an_export_and_from_a_pretraining_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pretrain = PretrainModule(preset="nano", img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                              decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(pretrain)
    trainer.save_checkpoint(tmp_path / "pretrain.ckpt")
    exported = export_encoder(tmp_path / "pretrain.ckpt", tmp_path / "encoder.safetensors")
    reference = pretrain.encoder.state_dict()
    for source in (exported, tmp_path / "pretrain.ckpt"):
        encoder = load_pretrained_encoder(source, drop_path_rate=0.2)
        assert encoder.config["drop_path_rate"] == 0.2 and encoder.blocks[-1].drop_path.drop_prob == 0.2
        assert all(torch.equal(v, reference[k]) for k, v in encoder.state_dict().items())
        module = FinetuneModule(encoder=str(source), preset="base", fpn_channels=32)  # the file's architecture wins
        assert module.detector.encoder.embed_dim == 64
        assert torch.equal(module.detector.encoder.blocks[1].mlp.fc2.weight, reference["blocks.1.mlp.fc2.weight"])
    # tiles must split into the loaded encoder's 16 px patches, whatever the config's patch_size says
    with pytest.raises(ConfigError, match=r"model\.tile_size should be a multiple of the encoder's patch size 16"):
        FinetuneModule(encoder=str(exported), patch_size=8, tile_size=40, fpn_channels=32)


def test_layerwise_lr_decay_and_frozen_encoder() -> None:
    module = FinetuneModule(**TINY)
    groups = param_groups_lrd(module.detector, lr=1.0, weight_decay=0.05, layer_decay=0.5, depth=2)
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    decay_of = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert lr_of["encoder.blocks.1.attn.qkv.weight"] == 0.5  # block i of depth d: decay ** (d - i)
    assert lr_of["encoder.blocks.0.attn.qkv.weight"] == 0.25
    assert lr_of["encoder.patch_embed.proj.weight"] == lr_of["encoder.cls_token"] == 0.125
    assert lr_of["head.cls_logits.weight"] == lr_of["encoder.norm.weight"] == lr_of["image_head.fc.weight"] == 1.0
    assert decay_of["head.cls_logits.weight"] == 0.05 and decay_of["head.cls_logits.bias"] == 0.0
    assert decay_of["encoder.cls_token"] == 0.0 and decay_of["encoder.blocks.0.norm1.weight"] == 0.0
    assert len(lr_of) == sum(1 for _ in module.detector.parameters())
    frozen = FinetuneModule(freeze_encoder=True, **TINY)
    names = [n for g in param_groups_lrd(frozen.detector, 1.0, 0.05, 0.5, 2) for n in g["names"]]
    assert names and not any(n.startswith("encoder.") for n in names)


# ------------------------------------------------------------------------------------ validation and threshold
def test_operating_point_and_metrics_on_a_hand_made_validation_set() -> None:
    lesion = np.array([[10.0, 10.0, 20.0, 20.0]])
    hit, miss = np.array([[11.0, 11.0, 19.0, 19.0]]), np.array([[50.0, 50.0, 60.0, 60.0]])
    images = [  # lesions found at 0.9 and 0.6; false positives at 0.8, 0.7 and 0.3
        EvalImage(lesion, hit, np.array([0.9]), image_prob=0.9),
        EvalImage(lesion, np.concatenate([hit, miss]), np.array([0.6, 0.3]), image_prob=0.7),
        EvalImage(np.zeros((0, 4)), miss, np.array([0.8]), image_prob=0.4),
        EvalImage(np.zeros((0, 4)), miss, np.array([0.7]), image_prob=0.2),
    ]
    point = select_operating_point(images, target_fp=0.25)  # 1 FP over 4 images allowed
    assert point["score_threshold"] == 0.9  # sensitivity 0.5 with 0 FP (0.8 adds an FP, 0.6 has 2 FP / 4 images)
    assert point["image_threshold"] == pytest.approx(0.7)  # separates 0.9, 0.7 from 0.4, 0.2
    assert (point["threshold_val_caries_images"], point["threshold_val_caries_free_images"]) == (2, 2)
    assert select_operating_point(images, target_fp=1.0)["score_threshold"] == 0.6
    kinds = ["panoramic", "intraoral", "intraoral", "panoramic"]
    by_type = select_operating_point(images, 0.25, kinds)["threshold_val_image_types"]
    assert by_type == {"panoramic": [1, 1], "intraoral": [1, 1]}  # [caries, caries-free] per type
    with pytest.raises(ValueError, match="one entry per image"):
        select_operating_point(images, 0.25, kinds[:3])
    metrics = validation_metrics(images, target_fp=0.25)
    assert metrics["sens_1fp"] == 0.5 and metrics["image_auroc"] == 1.0 and metrics["score"] == 0.75
    empty = [EvalImage(np.zeros((0, 4)), miss, np.array([0.8]), image_prob=0.4)]
    assert select_operating_point(empty, 1.0) == {"score_threshold": 0.3, "image_threshold": 0.5,
                                                  "threshold_val_caries_images": 0,
                                                  "threshold_val_caries_free_images": 0}
    assert select_operating_point(empty, 1.0, ["intraoral"])["threshold_val_image_types"] == {}  # default stays
    assert validation_metrics(empty, 1.0)["score"] == 0.0


def test_threshold_warnings_name_the_validation_support() -> None:
    keys = ("threshold_val_caries_images", "threshold_val_caries_free_images")
    meta = {"image_threshold": 0.727, "threshold_rule": "Youden"}
    (few,) = threshold_warnings({**meta, **dict(zip(keys, (4, 1)))})
    assert "0.727" in few and "4 caries and 1 caries-free" in few and "provisional" in few
    assert threshold_warnings({**meta, **dict(zip(keys, (5, 5)))}) == []
    assert threshold_warnings(meta) == []  # a model from before the record: nothing to say
    (default,) = threshold_warnings({**meta, **dict(zip(keys, (0, 0)))})
    assert "default" in default
    bare = CariesDetector(ViTEncoder(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2), fpn_channels=16)
    assert "default" in threshold_warnings(Predictor(bare, {}, device="cpu").metadata)[0]  # no validation pass


# -------------------------------------------------------------------------------------------- learning signal
def blob_batch(gen: torch.Generator, n: int, size: int = 64) -> tuple[torch.Tensor, list, list]:
    """Smooth texture; every other image has a dark disc (radius 3-7 px) with its tight box."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    imgs, boxes, labels = [], [], []
    for i in range(n):
        f = torch.rand(3, generator=gen)
        img = 0.6 + 0.1 * torch.sin(xx / (3 + 4 * f[0]) + 6 * f[1]) * torch.cos(yy / (3 + 4 * f[2]))
        img = img + 0.03 * torch.randn(size, size, generator=gen)
        box = torch.zeros(0, 4)
        if i % 2 == 0:
            r = 3 + 4 * float(torch.rand(1, generator=gen))
            cx, cy = (8 + (size - 16) * torch.rand(2, generator=gen)).tolist()
            img = torch.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, img - 0.3, img)
            box = torch.tensor([[cx - r, cy - r, cx + r, cy + r]])
        imgs.append(img.clamp(0, 1))
        boxes.append(box)
        labels.append(torch.zeros(len(box), dtype=torch.long))
    return torch.stack(imgs)[:, None], boxes, labels


def test_detector_learns_to_find_dark_blobs() -> None:
    torch.manual_seed(0)
    det = CariesDetector(ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2), fpn_channels=32)
    opt = torch.optim.AdamW(det.parameters(), lr=2e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        terms = det.forward_loss(*blob_batch(gen, 16))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    det.eval()
    images, boxes, _ = blob_batch(torch.Generator().manual_seed(123), 40)  # unseen images
    dets, prob = det.detect(images, score_threshold=0.0)
    truth = torch.tensor([len(b) > 0 for b in boxes])
    assert auroc(prob, truth) > 0.85
    hits = []
    for d, b in zip(dets, boxes):
        if len(b):  # does the best detection's centre lie in the lesion box?
            centre = (d.boxes[0, :2] + d.boxes[0, 2:]) / 2
            hits.append(bool((b[0, :2] <= centre).all() and (centre <= b[0, 2:]).all()))
    assert np.mean(hits) > 0.4  # a random box centre lands in the lesion ~2 % of the time


def lesion_above_background(detector: CariesDetector, out, boxes: list[torch.Tensor]) -> list[bool]:
    """Per crop with lesions: is the mean dense lesion probability at points inside lesion boxes higher than at the
    points outside them?"""
    dense = detector.flatten(out)
    prob = dense.cls_logits.sigmoid().amax(dim=-1)  # (B, P)
    x, y = dense.points[:, None, 0], dense.points[:, None, 1]
    result = []
    for b, bb in enumerate(boxes):
        if len(bb):
            inside = ((x >= bb[:, 0]) & (x <= bb[:, 2]) & (y >= bb[:, 1]) & (y <= bb[:, 3])).any(dim=1)
            result.append(bool(prob[b][inside].mean() > prob[b][~inside].mean()))
    return result


def test_finetuning_on_synthetic_radiographs_beats_chance(corpus: Path, tmp_path: Path) -> None:
    config = str(CONFIG_DIR / "caries_vit_tiny.yaml")
    cli = cli_main(["fit", "--config", config, *run_args(corpus, tmp_path / "run"), "--data.crops_per_image", "8",
                    "--data.augment", "false", "--model.lr", "2e-3", "--model.drop_path_rate", "0",
                    "--trainer.max_steps", "100", "--trainer.log_every_n_steps", "1",
                    "--trainer.check_val_every_n_epoch", "6", "--trainer.num_sanity_val_steps", "0"])
    rows = list(csv.DictReader(next((tmp_path / "run" / "logs").glob("version_*/metrics.csv")).open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 100 and np.mean(losses[-10:]) < 0.9 * np.mean(losses[:5])
    assert any(r.get("val/sens_1fp") for r in rows) and any(r.get("val/image_auroc") for r in rows)

    detector, datamodule = cli.model.detector.eval(), cli.datamodule
    probs, truth, ranked = [], [], []
    with torch.no_grad():
        for batch in datamodule.train_dataloader():  # fresh random crops of the training images
            out = detector(batch["image"])
            probs.append(out.image_logit.sigmoid())
            truth += [len(b) > 0 for b in batch["boxes"]]
            ranked += lesion_above_background(detector, out, batch["boxes"])
    assert 0.25 < np.mean(truth) < 0.75 and auroc(torch.cat(probs), torch.tensor(truth)) > 0.5
    assert len(ranked) > 30 and np.mean(ranked) > 0.6  # chance: 0.5

    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 100  # the final state, although max_steps stopped inside an epoch
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.name.startswith("best-")
    predictor = Predictor.from_checkpoint(best, device="cpu")
    assert predictor.metadata["tile_size"] == 128 and 0.0 < predictor.score_threshold < 1.0
    assert predictor.version.startswith(best.stem)
    meta = predictor.metadata  # the validation images behind the threshold, also counted per DICOM Modality
    if meta["threshold_val_caries_images"]:
        support = predictor.type_support
        assert set(support) <= {"intraoral", "panoramic"} and support
        assert sum(c for c, _ in support.values()) == meta["threshold_val_caries_images"]
        assert sum(f for _, f in support.values()) == meta["threshold_val_caries_free_images"]
    val_image = datamodule.splits["val"].image_path(datamodule.splits["val"].images[0])
    pred = predictor.predict(val_image)
    assert pred.pixel_spacing_mm is not None and pred.to_findings()["model_version"] == predictor.version
    bundle = Predictor.from_checkpoint(save_model_bundle(best, tmp_path / "bundle" / "m.safetensors"), device="cpu")
    assert bundle.metadata["score_threshold"] == predictor.score_threshold and bundle.version == predictor.version
    again = bundle.predict(val_image)
    assert np.array_equal(again.boxes, pred.boxes) and again.image_probability == pred.image_probability
    module_bundle = save_model_bundle(cli.model, tmp_path / "bundle" / "final.safetensors", {"version": "v9"})
    assert Predictor.from_checkpoint(module_bundle).metadata["class_names"] == ["caries"]


def test_step_based_validation_runs_at_the_interval_and_the_final_step(corpus: Path, tmp_path: Path) -> None:
    """What ``dentalmim run`` relies on (``Preset.validations``): passes every N optimiser steps across epochs."""
    config = str(CONFIG_DIR / "caries_vit_tiny.yaml")
    cli_main(["fit", "--config", config, *run_args(corpus, tmp_path / "run"), "--trainer.max_steps", "4",
              "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "2",
              "--trainer.num_sanity_val_steps", "0", "--data.crops_per_image", "1"])
    with next((tmp_path / "run" / "logs").glob("version_*/metrics.csv")).open() as handle:
        val_steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("val/score")]
    assert val_steps == [1, 3]  # after optimiser steps 2 and 4 (0-based step column)
    assert len(list((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))) == 1


def test_a_max_spacing_reaches_validation_and_the_saved_model(corpus: Path, tmp_path: Path) -> None:
    """``data.max_spacing_mm`` reaches the training crops, is linked to the model, which validates coarse images
    upsampled to it and stores it for prediction."""
    config = str(CONFIG_DIR / "caries_vit_tiny.yaml")
    cli = cli_main(["fit", "--config", config, *run_args(corpus, tmp_path / "run"), "--trainer.max_steps", "1",
                    "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "1",
                    "--trainer.num_sanity_val_steps", "0", "--data.crops_per_image", "1",
                    "--data.max_spacing_mm", "0.2"])
    assert cli.model.hparams.max_spacing_mm == 0.2 and cli.datamodule.max_spacing_mm == 0.2
    assert cli.datamodule.datasets["train"].transform.transforms[0].max_spacing_mm == 0.2
    assert "val/score" in cli.trainer.callback_metrics
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["dentalmim"]["max_spacing_mm"] == 0.2
    assert Predictor.from_checkpoint(ckpt, device="cpu").max_spacing_mm == 0.2
    module, seen = cli.model, []
    detect = module.detect_image
    module.detect_image = lambda image, **kw: (seen.append(kw.get("spacing_mm")), detect(image, **kw))[1]
    cli.trainer.validate(module, datamodule=cli.datamodule, verbose=False)
    assert seen and all(len(s) == 2 for s in seen)  # every validation image passes its DICOM spacing
    module.eval()
    with torch.no_grad():  # a 0.4 mm image (a panoramic at scale 0.25) is read at 0.2 mm: twice the grid
        res = detect(torch.rand(100, 150), spacing_mm=[0.4, 0.4])
        assert res.num_tiles == len(tile_grid(200, 300, 128, 0.25).origins)
        assert detect(torch.rand(100, 150)).num_tiles == len(tile_grid(100, 150, 128, 0.25).origins)
    with pytest.raises(ConfigError, match=r"model\.max_spacing_mm should be null or in \(0, 5.0\] mm"):
        FinetuneModule(max_spacing_mm=-0.1, **TINY)
    with pytest.warns(UserWarning, match=r"fine-tuned with max_spacing_mm=0.2; this run uses None"):
        FinetuneModule(init_detector=str(ckpt), **TINY)  # retraining without the setting says so


def test_best_checkpoint_moves_to_a_later_validation_on_a_tie(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import ModelCheckpoint

    from dentalmim.training.callbacks import LatestOnTiesCheckpoint

    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision: decision))
    for cls, on_tie in ((ModelCheckpoint, False), (LatestOnTiesCheckpoint, True)):
        cb = cls(dirpath=tmp_path, monitor="val/score", mode="max", save_top_k=1)
        assert cb.check_monitor_top_k(trainer, torch.tensor(0.4))  # nothing kept yet
        cb.best_k_models, cb.kth_best_model_path = {"first.ckpt": torch.tensor(0.425)}, "first.ckpt"
        assert cb.check_monitor_top_k(trainer, torch.tensor(0.425)) is on_tie
        assert cb.check_monitor_top_k(trainer, torch.tensor(0.5))
        assert not cb.check_monitor_top_k(trainer, torch.tensor(0.4))
        assert not cb.check_monitor_top_k(trainer, None)
