"""The ``dentalmim`` command: every subcommand answers ``--help``; domain errors exit 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dentalmim.cli import build_parser, main
from dentalmim.training.finetune import FinetuneCLI
from dentalmim.training.pretrain import PretrainCLI

SUBCOMMANDS = ["synth", "ingest", "export-encoder", "predict", "evaluate", "run", "label-efficiency", "demo"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("dentalmim")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_subcommand() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for name in [*SUBCOMMANDS, "pretrain", "finetune"]:
        assert name in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: dentalmim " + command in capsys.readouterr().out


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_lightning_commands_help(command: str) -> None:
    result = _run(command, "fit", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--trainer" in result.stdout


def test_domain_error_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "missing"
    assert main(["ingest", str(src), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dentalmim: error:") and "missing" in err


def test_parser_rejects_unknown_command() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["frobnicate"])
    assert exc.value.code == 2


def test_synth_images_per_patient_reaches_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path), "--n", "4", "--unlabeled", "0", "--scale", "0.1",
                 "--images-per-patient", "1", "1", "--no-progress"]) == 0
    coco = json.loads((tmp_path / "labeled" / "annotations.json").read_text())
    assert len({im["patient_id"] for im in coco["images"]}) == 4  # one image per patient
    assert coco["info"]["images_per_patient"] == [1, 1]
    assert "4 patients" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--lesion-contrast", "0"], ["--scale", "0"], ["--panoramic-fraction", "2"],
                                 ["--images-per-patient", "3", "2"]])
def test_synth_out_of_range_values_exit_2_with_one_line(bad: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path), "--n", "2", "--no-progress", *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dentalmim: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_lightning_commands_offer_only_the_subcommands_their_module_supports() -> None:
    pretrain = _run("pretrain", "test")  # the pretraining module has no test or predict step
    assert pretrain.returncode == 2 and "invalid choice: 'test'" in pretrain.stderr
    assert "usage: dentalmim pretrain" in pretrain.stderr
    assert set(PretrainCLI.subcommands()) == {"fit", "validate"}
    assert set(FinetuneCLI.subcommands()) == {"fit", "validate", "test"}


def test_a_data_module_error_inside_lightning_cli_is_one_line(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "mae_vit_tiny.yaml"
    result = _run("pretrain", "fit", "--config", str(config), "--data.data_dir", str(tmp_path),
                  "--data.batch_size", "0", "--trainer.default_root_dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "dentalmim: error: batch_size should be positive" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_ckpt_path_fails_before_training(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "mae_vit_tiny.yaml"
    result = _run("pretrain", "fit", "--config", str(config), "--data.data_dir", str(tmp_path),
                  "--ckpt_path", str(tmp_path / "nope.ckpt"), "--trainer.default_root_dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "dentalmim: error: ckpt_path should be a checkpoint file or 'last'" in result.stderr


def test_service_commands_name_bad_settings_and_databases_in_one_line(tmp_path: Path, monkeypatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("DENTALMIM_DATA_DIR", str(tmp_path / "a_file"))  # a file where the data folder should be
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["keys", "list"]) == 2
    assert "the service database cannot be opened" in capsys.readouterr().err
    assert main(["keys", "--database-url", "postgresql://u:secret@notaurl:x/db", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dentalmim: error:") and "secret" not in err
    monkeypatch.setenv("DENTALMIM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DENTALMIM_PORT", "abc")
    assert main(["serve"]) == 2 and "service setting DENTALMIM_PORT" in capsys.readouterr().err
    monkeypatch.setenv("DENTALMIM_PORT", "8000")
    monkeypatch.setenv("DENTALMIM_TILE_BATCH_SIZE", "0")
    for command in (["serve"], ["worker", "--once"]):  # checked before the server or the queue starts
        assert main(command) == 2
        assert "DENTALMIM_TILE_BATCH_SIZE" in capsys.readouterr().err
    monkeypatch.delenv("DENTALMIM_TILE_BATCH_SIZE")
    monkeypatch.setenv("DENTALMIM_RETRAIN_CONFIG", str(tmp_path / "nope.yaml"))  # every job would fail on it
    assert main(["worker", "--once"]) == 2 and "DENTALMIM_RETRAIN_CONFIG" in capsys.readouterr().err
