"""``dentalmim run`` end to end at tiny size: ingest only what the labels reference, pretrain, fine-tune, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dentalmim.data.coco import CocoDataset, split_by_patient
from dentalmim.data.synth import generate_corpus
from dentalmim.errors import ConfigError
from dentalmim.pipeline import run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    summary = generate_corpus(root, n=10, seed=3, n_unlabeled=4, scale=0.2, progress=False)
    train, _, test = split_by_patient(CocoDataset.load(summary.coco_path), (0.6, 0.0, 0.4), seed=0)
    return summary.unlabeled_dir, train.save(root / "labeled" / "train.json"), test.save(root / "labeled" / "test.json")


def test_run_pipeline_tiny(corpus: tuple[Path, Path, Path], tmp_path: Path) -> None:
    unlabeled, train, test = corpus
    out, salt = tmp_path / "run", tmp_path / "clinic.salt"
    metrics = run_pipeline(unlabeled, train, test, out, pretrain="mae", seed=0, pretrain_steps=2, finetune_steps=2,
                           salt_file=salt)
    for key in ("froc_fom", "sensitivity_at_1fp", "ap50", "auroc", "auroc_image_size_baseline"):
        assert key in metrics
    assert json.loads((out / "metrics.json").read_text())["froc_fom"] == metrics["froc_fom"]
    assert (out / "report" / "report.html").exists() and (out / "report" / "report.pdf").exists()
    # only the images each COCO file references were ingested: no test image in the pretraining data
    n_train, n_test = (len(CocoDataset.load(p).images) for p in (train, test))
    assert len(list((out / "ingested" / "labeled" / "images").iterdir())) == n_train
    assert len(list((out / "ingested" / "test" / "images").iterdir())) == n_test
    labeled = CocoDataset.load(out / "ingested" / "labeled" / "annotations.json")
    assert all(labeled.image_path(im).exists() for im in labeled.images)
    # resumable: a second run finds the model and the encoder and only re-evaluates
    stamp = (out / "model.ckpt").stat().st_mtime_ns
    run_pipeline(unlabeled, train, test, out, pretrain="mae", seed=0, pretrain_steps=2, finetune_steps=2,
                 salt_file=salt)
    assert (out / "model.ckpt").stat().st_mtime_ns == stamp
    assert salt.exists() and not (out / "ingested" / ".deid_salt").exists()


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_same_salt_and_seed_repeat_a_run_exactly(corpus: tuple[Path, Path, Path], tmp_path: Path) -> None:
    unlabeled, train, test = corpus
    salt, runs = tmp_path / "clinic.salt", [tmp_path / "a", tmp_path / "b"]
    metrics = [run_pipeline(unlabeled, train, test, out, pretrain="mae", seed=1, pretrain_steps=3, finetune_steps=3,
                            salt_file=salt) for out in runs]
    assert metrics[0] == metrics[1]
    a, b = (_weights(out / "model.ckpt") for out in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(out / "encoder.safetensors") for out in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_passes_are_spread_over_the_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dentalmim.training.finetune as finetune
    from dentalmim.pipeline import PRESETS, finetune_detector

    seen: list[list[str]] = []

    def fake_cli(args: list[str]) -> object:
        seen.append(args)
        raise RuntimeError("stop")

    monkeypatch.setattr(finetune, "cli_main", fake_cli)
    for preset, steps, interval in (("cpu-small", 1500, "300"), ("cpu-tiny", 300, "300"), ("gpu-base", 5000, "1000")):
        with pytest.raises(RuntimeError, match="stop"):
            finetune_detector(None, PRESETS[preset], tmp_path / "train.json", tmp_path / preset, 0, steps)
        args = seen[-1]
        assert args[args.index("--trainer.check_val_every_n_epoch") + 1] == "null"
        assert args[args.index("--trainer.val_check_interval") + 1] == interval
        key = "--trainer.num_sanity_val_steps"
        sanity = args[args.index(key) + 1] if key in args else None
        assert sanity == ("0" if preset == "cpu-tiny" else None)  # the demo's budget skips the sanity check


def test_run_pipeline_rejects_unknown_preset(corpus: tuple[Path, Path, Path], tmp_path: Path) -> None:
    unlabeled, train, test = corpus
    with pytest.raises(ConfigError, match="preset"):
        run_pipeline(unlabeled, train, test, tmp_path, preset="huge")
    for steps in (0, -3):
        with pytest.raises(ConfigError, match="pretrain_steps should be >= 1"):
            run_pipeline(unlabeled, train, test, tmp_path, pretrain_steps=steps)
    with pytest.raises(ConfigError, match="finetune_steps should be >= 1"):
        run_pipeline(unlabeled, train, test, tmp_path, finetune_steps=0)
    with pytest.raises(ConfigError, match="held-out"):  # evaluating on the training labels
        run_pipeline(unlabeled, train, train, tmp_path)
    assert not (tmp_path / "ingested").exists()  # refused before any work


def test_configs_folder_can_be_named_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dentalmim.pipeline as pipeline

    (tmp_path / "configs").mkdir()
    monkeypatch.setenv("DENTALMIM_CONFIGS", str(tmp_path / "configs"))
    assert pipeline._find_configs() == tmp_path / "configs"
    monkeypatch.delenv("DENTALMIM_CONFIGS")
    assert (pipeline._find_configs() / "finetune" / "caries_vit_tiny.yaml").exists()  # the repository's
