"""``dentalmim pretrain`` (LightningCLI): every config parses and trains a step at tiny size; resume; bad configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dentalmim.errors import ConfigError
from dentalmim.training.pretrain import cli_main

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_expected_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"mae_vit_tiny", "mae_vit_small", "mae_vit_base", "contrastive_vit_small", "hybrid_vit_small"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_prints_resolved_values(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert printed["model"]["objective"] == source["model"]["objective"]
    assert printed["model"]["preset"] == source["model"]["preset"]
    assert printed["data"]["class_path"] == "dentalmim.data.datamodules.PretrainDataModule"
    assert printed["data"]["init_args"]["two_views"] == (source["model"]["objective"] != "mae")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_step_at_tiny_size(config: Path, tiny_run_args: list[str], tmp_path: Path) -> None:
    cli = cli_main(["fit", "--config", str(config), *tiny_run_args, "--trainer.max_steps", "1",
                    "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "1"])  # fmt: skip
    assert cli.trainer.global_step == 1
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1  # the final state is checkpointed, not only every n-th epoch
    assert list((run / "logs").glob("version_*/config.yaml"))  # resolved config saved with the run
    if cli.model.hparams.objective != "contrastive":
        assert list((run / "logs").glob("version_*/previews/epoch_0000.png"))


def test_resume_from_last_continues_the_global_step(tiny_run_args: list[str], tmp_path: Path) -> None:
    config = str(CONFIG_DIR / "mae_vit_tiny.yaml")
    common = ["fit", "--config", config, *tiny_run_args, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0"]
    interrupted = cli_main([*common, "--trainer.max_epochs", "1"])  # stops after one epoch, before max_steps
    done = interrupted.trainer.global_step
    assert 1 <= done < 4
    weights = {k: v.clone() for k, v in interrupted.model.state_dict().items()}
    resumed = cli_main([*common, "--trainer.max_epochs", "-1", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 4
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert any(not torch.equal(weights[k], v) for k, v in resumed.model.state_dict().items())

    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    validated = cli_main(["validate", "--config", config, *tiny_run_args, "--ckpt_path", last,
                          "--trainer.limit_val_batches", "1"])  # fmt: skip
    assert validated.trainer.callback_metrics["val/loss"] > 0


def test_invalid_model_value_fails_before_training_naming_the_field(tiny_run_args: list[str]) -> None:
    config = str(CONFIG_DIR / "mae_vit_tiny.yaml")
    with pytest.raises(ConfigError, match=r"model\.mask_ratio should be in \(0, 1\), got 1\.5"):
        cli_main(["fit", "--config", config, *tiny_run_args, "--model.mask_ratio", "1.5"])


def test_unknown_objective_is_rejected_by_the_parser(capsys: pytest.CaptureFixture) -> None:
    config = str(CONFIG_DIR / "mae_vit_tiny.yaml")
    with pytest.raises(SystemExit) as stop:
        cli_main(["fit", "--config", config, "--model.objective", "byol", "--print_config"])
    assert stop.value.code != 0
    assert "objective" in capsys.readouterr().err


def test_contrastive_without_two_views_fails_before_training(tiny_run_args: list[str]) -> None:
    config = str(CONFIG_DIR / "contrastive_vit_tiny.yaml")
    with pytest.raises(ConfigError, match="data.two_views"):
        cli_main(["fit", "--config", config, *tiny_run_args, "--data.two_views", "false",
                  "--trainer.max_steps", "1"])  # fmt: skip


def test_ddp_by_config_alone_trains_over_two_processes(tiny_run_args: list[str], tmp_path: Path) -> None:
    """``--trainer.strategy ddp --trainer.devices 2`` on CPU (gloo): Lightning relaunches the CLI as a second rank,
    both ranks share the on-disk decoded-image cache, the hybrid objective gathers InfoNCE negatives across
    ranks, and the run checkpoints like a single-process one."""
    cache = tmp_path / "cache"
    config = str(CONFIG_DIR / "hybrid_vit_tiny.yaml")
    cmd = [sys.executable, "-m", "dentalmim.cli", "pretrain", "fit", "--config", config, *tiny_run_args,
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "2", "--trainer.max_epochs",
           "-1", "--trainer.limit_val_batches", "1", "--data.crops_per_image", "4", "--data.cache", "persistent",
           "--data.cache_dir", str(cache)]  # 6 training images x 4 crops: 3 batches of 4 per rank
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert any(p.is_file() for p in cache.rglob("*"))  # the persistent cache was written (once, by both ranks)
