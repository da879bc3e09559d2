"""``dentalmim label-efficiency`` at tiny size: every cell run, table / plot / JSON written, resumable, validated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from dentalmim.data.coco import CocoDataset
from dentalmim.errors import ConfigError
from dentalmim.label_efficiency import LabelEfficiencyConfig, LabelEfficiencyResult, run_label_efficiency
from dentalmim.models.vit import ViTEncoder

from tests.tiny_study import TINY_FINETUNE, TINY_PRETRAIN, corpus  # noqa: F401 - corpus is a fixture

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


def tiny_config(train: Path, test: Path, out: Path, **changes: object) -> LabelEfficiencyConfig:
    settings = dict(train_coco=train, test_coco=test, out=out, encoders={"scratch": None, "mae": "pretrain"},
                    fractions=[1.0, 0.5], seeds=[0], val_fraction=0.25, finetune_steps=2, val_check_steps=2,
                    finetune_overrides=TINY_FINETUNE, pretrain_steps=2, pretrain_overrides=TINY_PRETRAIN, n_boot=10)
    return LabelEfficiencyConfig(**{**settings, **changes})


def image_files(coco: Path) -> set[str]:
    ds = CocoDataset.load(coco)
    return {str(ds.image_path(im)) for im in ds.images}


@pytest.fixture(scope="module")
def study(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LabelEfficiencyResult]:
    """One tiny study (scratch vs a 2-step MAE, 50 % and 100 % labels, seed 0): its folder and result."""
    train, test = corpus
    out = tmp_path_factory.mktemp("study") / "le"
    return out, run_label_efficiency(tiny_config(train, test, out))


def cells_of(out: Path) -> dict[tuple[str, float, int], dict]:
    doc = json.loads((out / "label_efficiency.json").read_text())
    return {(c["encoder"], c["fraction"], c["seed"]): c for c in doc["cells"]}


def test_every_cell_is_run_and_recorded(study: tuple[Path, LabelEfficiencyResult]) -> None:
    out, result = study
    cells = cells_of(out)
    assert set(cells) == {(e, f, 0) for e in ("scratch", "mae") for f in (0.5, 1.0)}
    expected_order = [(e, f) for e in ("scratch", "mae") for f in (0.5, 1.0)]  # encoders as configured, fractions up
    assert [(c["encoder"], c["fraction"]) for c in result.cells] == expected_order
    for cell in cells.values():
        assert set(cell["metrics"]) >= {"froc_fom", "auroc", "ap50", "sensitivity_at_1fp"}
        assert cell["seconds"] > 0 and cell["machine"]["accelerator"] == "cpu"
    assert cells[("mae", 1.0, 0)]["encoder_path"] == str(out / "encoders" / "mae" / "encoder.safetensors")
    assert cells[("scratch", 1.0, 0)]["encoder_path"] is None
    assert len(list(out.glob("cells/*/*/report/report.html"))) == 4


def test_subsets_are_nested_and_never_hold_test_or_validation_images(
        corpus: tuple[Path, Path], study: tuple[Path, LabelEfficiencyResult]) -> None:
    (train, test), (out, _) = corpus, study
    small, full = (image_files(out / "cells" / "scratch" / f"f{f:g}_s0" / "train.json") for f in (0.5, 1.0))
    val, tests = image_files(out / "splits" / "val.json"), image_files(test)
    assert small < full and not (full & (val | tests)) and len(val) == 1
    assert full == image_files(out / "splits" / "pool.json") and image_files(train) == full | val
    assert cells_of(out)[("scratch", 0.5, 0)]["n_train_images"] == len(small)
    assert small == image_files(out / "cells" / "mae" / "f0.5_s0" / "train.json")  # same subset for every encoder
    staged = {str(p.resolve()) for p in (out / "encoders" / "train_images").rglob("*.dcm")}
    assert staged == image_files(train)  # pretraining saw exactly the training images


def test_table_plot_and_verdict(study: tuple[Path, LabelEfficiencyResult]) -> None:
    out, result = study
    cells = cells_of(out)
    md = (out / "label_efficiency.md").read_text()
    headline = md.split("## froc_fom (headline)")[1].split("##")[0]
    n_small, n_full = (cells[("scratch", f, 0)]["n_train_images"] for f in (0.5, 1.0))
    assert f"| encoder | 50% ({n_small} img) | 100% ({n_full} img) |" in headline
    for name in ("scratch", "mae"):  # one row per encoder, one "mean [low, high]" per fraction
        row = next(line for line in headline.splitlines() if line.startswith(f"| {name} |"))
        assert len(re.findall(r"(?:\d\.\d{3}|n/a) \[", row)) == 2
    assert all(f"## {m}" in md for m in ("auroc", "ap50", "sensitivity_at_1fp"))
    assert (out / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = result.format()
    mae, scratch = (cells[(e, 0.5, 0)]["metrics"]["froc_fom"] for e in ("mae", "scratch"))
    assert None not in (mae, scratch)  # froc_fom is defined whenever the test set has lesions
    assert f"at 50% labels ({n_small} images): mae {mae:.3f} vs scratch {scratch:.3f} ({mae - scratch:+.3f})" in line
    assert line.startswith("froc_fom on the test set") and line == json.loads(
        (out / "label_efficiency.json").read_text())["verdict"]


def test_rerun_skips_finished_cells_and_rejects_changed_settings(
        corpus: tuple[Path, Path], study: tuple[Path, LabelEfficiencyResult], capsys: pytest.CaptureFixture) -> None:
    (train, test), (out, result) = corpus, study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/metrics.json")}
    assert len(stamps) == 4
    capsys.readouterr()
    again = run_label_efficiency(tiny_config(train, test, out))
    assert capsys.readouterr().out.count("finished before") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and again.cells == result.cells
    with pytest.raises(ConfigError, match="finetune_steps should be 2"):
        run_label_efficiency(tiny_config(train, test, out, finetune_steps=3))


def test_config_errors_name_the_field(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = corpus
    with pytest.raises(ConfigError, match=r"encoders\.mae should be null, 'pretrain' or an existing"):
        tiny_config(train, test, tmp_path, encoders={"scratch": None, "mae": str(tmp_path / "missing.safetensors")})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("not an encoder")
    with pytest.raises(ConfigError, match=r"encoders\.mae: .*garbage\.safetensors"):  # before any cell trains
        tiny_config(train, test, tmp_path, encoders={"scratch": None, "mae": str(garbage)})
    with pytest.raises(ConfigError, match=r"encoders\.ssl: 'pretrain' needs a name in"):
        tiny_config(train, test, tmp_path, encoders={"ssl": "pretrain"})
    for bad in ([0.0, 0.5], [1.5], [], [[0.5]]):
        with pytest.raises(ConfigError, match="fractions should"):
            tiny_config(train, test, tmp_path, fractions=bad)
    for bad in ([True], [[0]], [0, 0]):  # YAML's true is not seed 1; a nested list is not a seed
        with pytest.raises(ConfigError, match="seeds should"):
            tiny_config(train, test, tmp_path, seeds=bad)
    with pytest.raises(ConfigError, match="finetune_steps should be an integer"):
        tiny_config(train, test, tmp_path, finetune_steps=True)
    with pytest.raises(ConfigError, match="train_coco should be a path, got 5"):
        tiny_config(5, test, tmp_path)
    with pytest.raises(ConfigError, match="config paths should be strings"):
        tiny_config(train, test, tmp_path, finetune_config=5)
    with pytest.raises(ConfigError, match="val_fraction should be in"):
        tiny_config(train, test, tmp_path, val_fraction=1.0)
    with pytest.raises(ConfigError, match="metric should be one of"):
        tiny_config(train, test, tmp_path, metric="accuracy")
    with pytest.raises(ConfigError, match="train_coco should be an existing file"):
        tiny_config(tmp_path / "nope.json", test, tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="out should be a folder"):
        tiny_config(train, test, tmp_path / "a_file")
    config = tmp_path / "le.yaml"
    config.write_text(yaml.safe_dump({"train_coco": str(train), "test_coco": str(test), "out": str(tmp_path),
                                      "encoders": {"scratch": None}, "steps": 3}))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['steps'\]"):
        run_label_efficiency(config)


def test_rejects_test_data_in_training_or_pretraining(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = corpus
    with pytest.raises(ConfigError, match="test_coco should share no patient with train_coco"):
        run_label_efficiency(tiny_config(train, train, tmp_path / "le", encoders={"scratch": None}))
    with pytest.raises(ConfigError, match=f"unlabeled should not contain test images, got {len(image_files(test))} "):
        run_label_efficiency(tiny_config(train, test, tmp_path / "le", unlabeled=test.parent / "images"))
    assert not list((tmp_path / "le").glob("cells/*"))


@pytest.mark.parametrize("name", ["demo.yaml", "demo_seeds.yaml"])
def test_demo_configs_are_valid(name: str, corpus: tuple[Path, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped examples, with their demo_out paths pointed at the tiny corpus, pass validation from any folder."""
    source = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/label_efficiency" / name).read_text())
    assert source["encoders"]["scratch"] is None and "mae" in source["encoders"]
    train, test = corpus
    encoder = tmp_path / "mae.safetensors"  # a real (tiny) exported encoder: validation reads the file
    tiny = ViTEncoder(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    save_file(tiny.state_dict(), str(encoder), metadata={"dentalmim_encoder": json.dumps(tiny.config)})
    monkeypatch.chdir(tmp_path)  # configs/... paths are found in the repository root
    cfg = LabelEfficiencyConfig.from_dict({**source, "train_coco": str(train), "test_coco": str(test),
                                           "unlabeled": str(tmp_path), "out": str(tmp_path / "le"),
                                           "encoders": {**source["encoders"], "mae": str(encoder)}})
    assert cfg.finetune_config.is_file() and cfg.metric == "froc_fom"
    if name == "demo.yaml":  # all paradigms at four label fractions, one seed
        assert set(source["encoders"]) == {"scratch", "mae", "contrastive", "hybrid"}
        assert cfg.fractions == (0.1, 0.25, 0.5, 1.0) and cfg.seeds == (0,)
        assert all(Path(cfg.pretrain_config.format(objective=o)).is_file() for o in ("mae", "contrastive", "hybrid"))
    else:  # scratch vs MAE, paired over three seeds at 25 %
        assert set(source["encoders"]) == {"scratch", "mae"} and cfg.fractions == (0.25,) and cfg.seeds == (0, 1, 2)
