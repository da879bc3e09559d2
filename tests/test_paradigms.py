"""``dentalmim benchmark-paradigms`` at tiny size: every stage run once, leaderboard written, resumable, validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from dentalmim.cli import main
from dentalmim.data.coco import CocoDataset
from dentalmim.errors import ConfigError
from dentalmim.paradigms import ParadigmConfig, ParadigmResult, run_paradigm_benchmark

from tests.tiny_study import TINY_FINETUNE, TINY_PRETRAIN, corpus  # noqa: F401 - corpus is a fixture

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def tiny_config(train: Path, test: Path, out: Path, **changes: object) -> ParadigmConfig:
    settings = dict(train_coco=train, test_coco=test, out=out,
                    paradigms={"mae": None, "simmim": {"config": "configs/pretrain/mae_vit_tiny.yaml",
                                                       "overrides": ["--model.mask_ratio", "0.6"]}},
                    pretrain_steps=2, pretrain_overrides=TINY_PRETRAIN, label_fraction=1.0, val_fraction=0.25,
                    finetune_steps=2, val_check_steps=2, finetune_overrides=TINY_FINETUNE, probe_crop_size=32,
                    probe_crops_per_image=2, probe_folds=2, n_boot=10)
    return ParadigmConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def bench(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ParadigmResult]:
    out = tmp_path_factory.mktemp("bench") / "pb"
    return out, run_paradigm_benchmark(tiny_config(*corpus, out))


def test_every_paradigm_runs_the_whole_protocol(bench: tuple[Path, ParadigmResult]) -> None:
    out, result = bench
    rows = {r["paradigm"]: r for r in result.rows}
    assert set(rows) == {"mae", "simmim", "scratch"}
    for name in ("mae", "simmim"):
        row = rows[name]
        enc = out / "paradigms" / name / "encoder.safetensors"
        assert row["encoder_path"] == str(enc) and enc.is_file()
        assert json.loads(enc.with_suffix(".json").read_text())["source"]["objective"] == name
        pre = row["pretrain"]
        assert pre["steps"] == 2 and pre["batch_size"] == 4 and pre["images"] == 8
        assert pre["images_per_s"] == pytest.approx(8 / pre["wall_s"]) and pre["cpu_hours"] > 0
        assert pre["gpu_hours"] == 0 and pre["machine"]["accelerator"] == "cpu"
        assert 1 <= row["probe_best_layer"] <= 2 and 0 <= row["probe_best_linear_acc"] <= 1
        assert 0 <= row["last_attention_nmi"] <= 1
    assert "--model.mask_ratio" in rows["simmim"]["pretrain"]["overrides"]
    assert rows["scratch"]["pretrain"] is None and rows["scratch"]["encoder_path"] is None
    assert 0 <= rows["scratch"]["probe_best_linear_acc"] <= 1  # probes of a random-init encoder: the baseline
    for row in rows.values():
        assert set(row["metrics"]) >= {"froc_fom", "auroc", "ap50", "sensitivity_at_1fp"}
        assert row["finetune"]["images_per_s"] > 0 and row["evaluate"]["wall_s"] > 0
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert set(analysis["encoders"]) == {"mae", "simmim", "scratch"} and (out / "analysis" / "report.html").is_file()
    assert analysis["encoders"]["scratch"]["config"] == analysis["encoders"]["mae"]["config"]


def test_same_label_budget_for_every_paradigm(corpus: tuple[Path, Path], bench: tuple[Path, ParadigmResult]) -> None:
    (_, test), (out, _) = corpus, bench
    used = CocoDataset.load(out / "splits" / "train.json")
    val = CocoDataset.load(out / "splits" / "val.json")
    test_patients = set(CocoDataset.load(test).patients())
    assert not set(used.patients()) & (test_patients | set(val.patients()))
    for name in ("mae", "simmim", "scratch"):
        args = (out / "paradigms" / name / "finetune").rglob("config.yaml")
        data = yaml.safe_load(next(iter(args)).read_text())["data"]
        assert Path(data.get("init_args", data)["coco_path"]) == out / "splits" / "train.json"
    staged = {p.name for p in (out / "train_images").rglob("*.dcm")}
    assert staged and not staged & {Path(im.file_name).name for im in CocoDataset.load(test).images}


def test_leaderboard_markdown_json_and_plot(bench: tuple[Path, ParadigmResult]) -> None:
    out, result = bench
    doc = json.loads((out / "leaderboard.json").read_text())
    values = [(r["paradigm"], r["metrics"]["froc_fom"]) for r in doc["rows"]]
    expected = [n for n, _ in sorted(values, key=lambda nv: -(nv[1] if nv[1] is not None else -1))]
    assert doc["ranking"][:len(expected)] == expected or len({v for _, v in values}) < len(values)
    md = (out / "leaderboard.md").read_text()
    for needle in ("| rank | paradigm | objective | froc_fom [95% CI] |", "## Representations", "## Compute",
                   "| simmim | simmim |", "pretrain images/s"):
        assert needle in md
    assert md.count("| scratch |") == 3  # accuracy, representation (random-init encoder) and compute tables
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.format().startswith("froc_fom on the test set: ")


def test_rerun_skips_finished_stages(corpus: tuple[Path, Path], bench: tuple[Path, ParadigmResult],
                                     capsys: pytest.CaptureFixture) -> None:
    out, result = bench
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("paradigms/*/metrics.json"),
                                                *out.glob("paradigms/*/encoder.safetensors"),
                                                out / "analysis" / "analysis.json"]}
    assert len(stamps) == 6
    again = run_paradigm_benchmark(tiny_config(*corpus, out))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [r["metrics"] for r in again.rows] == [r["metrics"] for r in result.rows]
    with pytest.raises(ConfigError, match="finetune_steps should be 2 as when"):
        run_paradigm_benchmark(tiny_config(*corpus, out, finetune_steps=3))
    with pytest.raises(ConfigError, match="pretrain_steps should be 2 as when"):
        run_paradigm_benchmark(tiny_config(*corpus, out, pretrain_steps=3))


def test_config_errors_name_the_field(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = corpus
    with pytest.raises(ConfigError, match=r"paradigms\.byol\.objective should be one of \('mae', 'contrastive', "
                                          r"'hybrid', 'simmim'"):
        tiny_config(train, test, tmp_path, paradigms=["byol"])
    with pytest.raises(ConfigError, match=r"paradigms\.simmim: pretrain config should be an existing file"):
        tiny_config(train, test, tmp_path, paradigms=["simmim"])
    with pytest.raises(ConfigError, match="label_fraction should be in"):
        tiny_config(train, test, tmp_path, label_fraction=0.0)
    with pytest.raises(ConfigError, match="not 'scratch'"):
        tiny_config(train, test, tmp_path, paradigms=["scratch"])
    for changes, message in (({"include_scratch": "no"}, "include_scratch should be true or false"),
                             ({"probe_folds": 1}, "probe_folds should be an integer >= 2"),
                             ({"probe_crop_size": 36}, "probe_crop_size should be a multiple of the patch size 16"),
                             ({"paradigms": {"x": {"objective": ["mae"]}}}, r"paradigms\.x\.objective should be"),
                             ({"seed": True}, "seed should be an integer")):
        with pytest.raises(ConfigError, match=message):
            tiny_config(train, test, tmp_path, **changes)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="out should be a folder"):
        tiny_config(train, test, tmp_path / "a_file")
    config = tmp_path / "pb.yaml"
    config.write_text(yaml.safe_dump({"train_coco": str(train), "test_coco": str(test), "out": str(tmp_path),
                                      "paradigms": ["mae"], "steps": 3}))
    assert main(["benchmark-paradigms", "--config", str(config)]) == 2


def test_demo_config_is_valid(corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped example, pointed at the tiny corpus, passes validation from any folder."""
    source = yaml.safe_load((REPO / "configs" / "paradigms" / "demo.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    cfg = ParadigmConfig.from_dict({**source, "train_coco": str(corpus[0]), "test_coco": str(corpus[1]),
                                    "unlabeled": str(tmp_path), "out": str(tmp_path / "pb")})
    assert [p.objective for p in cfg.resolved] == ["mae", "contrastive", "hybrid", "simmim"]
    assert all(p.config.is_file() for p in cfg.resolved) and cfg.include_scratch
