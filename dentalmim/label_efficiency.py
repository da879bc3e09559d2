"""``dentalmim label-efficiency``: test-set metric versus labelled training images, per encoder initialisation.

Every cell (encoder, label fraction, seed) fine-tunes the caries detector with one recipe and one step budget on a
nested, patient-level subset of the training pool (:meth:`~dentalmim.data.coco.CocoDataset.fraction`; the seed
draws the subset and seeds fine-tuning) and evaluates its best checkpoint on one fixed test set. All cells share
one validation set (checkpoint choice and operating thresholds), held out once from ``train_coco`` by patient, so
cells differ only in encoder initialisation, training labels and seed; the validation labels are not counted in
the labelled-image numbers (the outputs state how many there are). The settings: :class:`LabelEfficiencyConfig`
(example: ``configs/label_efficiency/demo.yaml``).

Outputs: ``OUT/label_efficiency.json`` (config, every cell with metrics, CIs, seconds and machine),
``OUT/label_efficiency.md`` (tables), ``OUT/label_efficiency.png`` (metric vs labelled fraction), and per cell
``OUT/cells/<encoder>/f<fraction>_s<seed>/`` (``train.json``, ``finetune/`` logs, ``model.ckpt`` = the best
checkpoint, ``report/``, ``cell.json``, ``metrics.json``). Resumable: a cell whose ``metrics.json`` exists is
skipped; one made with other settings is an error naming the setting.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dentalmim.errors import ConfigError
from dentalmim.label_efficiency_report import (REPORTED_METRICS, Summary, fmt_value, paired_differences, summarise,
                                               verdict, write_markdown, write_plot)
from dentalmim.pipeline import CONFIGS

OBJECTIVES: tuple[str, ...] = ("mae", "contrastive", "hybrid")
PRETRAIN = "pretrain"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Settings recorded with every cell; a finished cell made with other values is an error, not silently reused.
_CELL_SETTINGS = ("train_coco", "test_coco", "val_fraction", "finetune_config", "finetune_steps", "val_check_steps",
                  "finetune_overrides", "n_boot")


def _fail(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    """An integer and not a bool (YAML's ``true`` would otherwise count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _config_path(path: str | Path) -> Path:
    """Absolute path; a relative one missing from the working directory is looked up in the repository root
    (so ``configs/finetune/caries_vit_tiny.yaml`` works from anywhere)."""
    _fail(isinstance(path, (str, Path)), f"config paths should be strings, got {path!r}.")
    path = Path(path).expanduser()
    fallback = CONFIGS.parent / path
    probe = Path(str(fallback).format(objective=OBJECTIVES[0]))
    if path.is_absolute() or Path(str(path).format(objective=OBJECTIVES[0])).exists() or not probe.exists():
        return path.absolute()
    return fallback


def checked_mapping(data: Any, config_class: type, what: str, required: set[str]) -> dict[str, Any]:
    """``data`` when it is a mapping of ``config_class``'s init fields holding every ``required`` key, else
    ConfigError naming the unknown or missing fields (``what``: e.g. "paradigm config")."""
    _fail(isinstance(data, dict), f"{what} should be a mapping, got {type(data).__name__}.")
    unknown = sorted(set(data) - {f.name for f in fields(config_class) if f.init})
    _fail(not unknown, f"{what} has unknown field(s) {unknown}.")
    missing = sorted(required - set(data))
    _fail(not missing, f"{what} should set {missing}.")
    return data


def read_yaml_config(path: str | Path) -> Any:
    """The parsed content of a YAML config file (``{}`` when empty); ConfigError when missing or invalid."""
    path = Path(path)
    _fail(path.is_file(), f"config should be an existing YAML file, got {str(path)!r}.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML ({exc}).") from None
    return {} if data is None else data


@dataclass(frozen=True)
class LabelEfficiencyConfig:
    """Settings of a label-efficiency study, validated on construction (YAML: :meth:`load`).

    Relative paths are relative to the working directory.

    Args:
        train_coco: COCO file of the training pool the label fractions are drawn from.
        test_coco: COCO file of the fixed test set (no patient shared with ``train_coco``).
        out: output folder (see the module docstring).
        encoders: name -> ``null`` (from scratch), an exported ``.safetensors`` encoder or a pretraining ``.ckpt``,
            or ``"pretrain"`` (names ``mae`` / ``contrastive`` / ``hybrid``): pretrained here, once (seed 0), on
            ``unlabeled`` plus the images of ``train_coco`` (never a test image), as ``dentalmim run`` does.
        unlabeled: folder of unlabeled DICOMs for ``"pretrain"`` encoders (must not hold test images).
        fractions: label fractions of the training pool's patients, each in (0, 1].
        seeds: seeds of the subset draws and of fine-tuning.
        val_fraction: patient share of ``train_coco`` held out once for validation, in [0, 1); 0: none (the last
            checkpoint and the default thresholds are used).
        finetune_config: ``dentalmim finetune`` config.
        finetune_steps: optimiser steps per cell.
        val_check_steps: validate every this many steps (default ``max(1, finetune_steps // 5)``).
        finetune_overrides: extra ``dentalmim finetune fit`` arguments, e.g. ``["--data.batch_size", "8"]``.
        pretrain_config: ``dentalmim pretrain`` config of ``"pretrain"`` encoders; ``{objective}`` is filled in.
        pretrain_steps: pretraining steps of ``"pretrain"`` encoders.
        pretrain_overrides: extra ``dentalmim pretrain fit`` arguments.
        metric: headline metric of the table, plot and verdict (a headline key of ``metrics.json``);
            :data:`REPORTED_METRICS` are always reported too.
        n_boot: bootstrap resamples of each cell's test-set confidence intervals.

    Raises:
        ConfigError: naming the first invalid field.
    """

    train_coco: Path
    test_coco: Path
    out: Path
    encoders: dict[str, str | None]
    unlabeled: Path | None = None
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    seeds: tuple[int, ...] = (0,)
    val_fraction: float = 0.15
    finetune_config: Path = CONFIGS / "finetune" / "caries_vit_tiny.yaml"
    finetune_steps: int = 250
    val_check_steps: int | None = None
    finetune_overrides: tuple[str, ...] = ()
    pretrain_config: str = str(CONFIGS / "pretrain" / "{objective}_vit_tiny.yaml")
    pretrain_steps: int = 200
    pretrain_overrides: tuple[str, ...] = ()
    metric: str = "froc_fom"
    n_boot: int = 200

    def __post_init__(self) -> None:
        for name in ("train_coco", "test_coco", "out") + (("unlabeled",) if self.unlabeled else ()):
            value = getattr(self, name)
            _fail(isinstance(value, (str, Path)), f"{name} should be a path, got {value!r}.")
            object.__setattr__(self, name, Path(value).expanduser().absolute())
        object.__setattr__(self, "finetune_config", _config_path(self.finetune_config))
        object.__setattr__(self, "pretrain_config", str(_config_path(self.pretrain_config)))
        for name in ("fractions", "seeds", "finetune_overrides", "pretrain_overrides"):
            value = getattr(self, name)
            _fail(isinstance(value, (list, tuple)), f"{name} should be a list, got {value!r}.")
            object.__setattr__(self, name, tuple(value))
        numbers = (float(f) if isinstance(f, (int, float)) and not isinstance(f, bool) else f for f in self.fractions)
        object.__setattr__(self, "fractions", tuple(numbers))  # 1 and 1.0 name the same cell
        if self.val_check_steps is None and isinstance(self.finetune_steps, int):
            object.__setattr__(self, "val_check_steps", max(1, self.finetune_steps // 5))
        self._validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelEfficiencyConfig:
        """Build from a mapping (a parsed YAML file); unknown keys are an error."""
        required = {"train_coco", "test_coco", "out", "encoders"}
        return cls(**checked_mapping(data, cls, "label-efficiency config", required))

    @classmethod
    def load(cls, path: str | Path) -> LabelEfficiencyConfig:
        """Read a YAML config file."""
        return cls.from_dict(read_yaml_config(path))

    def _validate(self) -> None:
        for name in ("train_coco", "test_coco", "finetune_config"):
            path = getattr(self, name)
            _fail(path.is_file(), f"{name} should be an existing file, got {str(path)!r}.")
        _fail(self.unlabeled is None or self.unlabeled.is_dir(),
              f"unlabeled should be an existing folder or null, got {str(self.unlabeled)!r}.")
        _fail(not self.out.exists() or self.out.is_dir(), f"out should be a folder, got the file {str(self.out)!r}.")
        self._validate_encoders()
        for frac in self.fractions:
            _fail(isinstance(frac, float) and 0.0 < frac <= 1.0, f"fractions should be in (0, 1], got {frac!r}.")
        _fail(len(self.fractions) > 0 and len(set(self.fractions)) == len(self.fractions),
              f"fractions should be a non-empty list of distinct values, got {list(self.fractions)}.")
        _fail(len(self.seeds) > 0 and all(_is_int(s) and s >= 0 for s in self.seeds)
              and len(set(self.seeds)) == len(self.seeds),
              f"seeds should be a non-empty list of distinct integers >= 0, got {list(self.seeds)}.")
        _fail(isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0,
              f"val_fraction should be in [0, 1), got {self.val_fraction!r}.")
        for name in ("finetune_steps", "val_check_steps", "pretrain_steps"):
            value = getattr(self, name)
            _fail(_is_int(value) and value >= 1, f"{name} should be an integer >= 1, got {value!r}.")
        for name in ("finetune_overrides", "pretrain_overrides"):
            _fail(all(isinstance(a, str) for a in getattr(self, name)), f"{name} should be a list of strings.")
        from dentalmim.evaluation.metrics_summary import HEADLINE_KEYS

        _fail(self.metric in HEADLINE_KEYS, f"metric should be one of {HEADLINE_KEYS}, got {self.metric!r}.")
        _fail(_is_int(self.n_boot) and self.n_boot >= 0,
              f"n_boot should be an integer >= 0, got {self.n_boot!r}.")

    def _validate_encoders(self) -> None:
        _fail(isinstance(self.encoders, dict) and len(self.encoders) > 0,
              f"encoders should be a non-empty mapping name -> path | 'pretrain' | null, got {self.encoders!r}.")
        for name, spec in self.encoders.items():
            _fail(isinstance(name, str) and bool(_NAME.match(name)),
                  f"encoders should have names of letters, digits, '.', '_' or '-', got {name!r}.")
            if spec is None:
                continue
            if spec == PRETRAIN:
                _fail(name in OBJECTIVES, f"encoders.{name}: 'pretrain' needs a name in {OBJECTIVES}, got {name!r}.")
                path = Path(self.pretrain_config.format(objective=name))
                _fail(path.is_file(), f"pretrain_config should name an existing file for {name}, got {str(path)!r}.")
                continue
            path = Path(str(spec)).expanduser()
            _fail(path.suffix in (".safetensors", ".ckpt") and path.is_file(),
                  f"encoders.{name} should be null, 'pretrain' or an existing .safetensors / .ckpt file, got {spec!r}.")
            _check_encoder_file(name, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))


def _check_encoder_file(name: str, path: Path) -> None:
    """The file holds a readable encoder: found now, not when its first cell starts after other cells trained."""
    from dentalmim.training.export import CheckpointError, read_encoder_weights

    try:
        read_encoder_weights(path)
    except CheckpointError as exc:
        raise ConfigError(f"encoders.{name}: {exc}") from None


@dataclass(frozen=True)
class LabelEfficiencyResult:
    """The cells of a study and the files written.

    Attributes:
        config: the settings.
        cells: one record per (encoder, fraction, seed), as in ``label_efficiency.json``.
        summary: per encoder and fraction: ``mean``, ``low`` / ``high`` (bootstrap CI with one seed, mean -/+ sd
            with several), ``spread``, ``n_seeds``, ``n_train_images`` of the configured metric.
        paths: ``json``, ``md`` and ``png`` paths.
    """

    config: LabelEfficiencyConfig
    cells: list[dict[str, Any]]
    summary: Summary
    paths: dict[str, Path] = field(default_factory=dict)

    def format(self) -> str:
        """One factual line: the metric of each encoder against the baseline at the smallest and largest fraction."""
        baseline = _baseline(self.config.encoders)
        return verdict(self.summary, self.config.metric, baseline,
                       paired_differences(self.cells, self.config.metric, baseline))


def _baseline(encoders: dict[str, str | None]) -> str:
    """The from-scratch encoder (``scratch`` if present, else the first null one, else the first)."""
    if "scratch" in encoders:
        return "scratch"
    return next((name for name, spec in encoders.items() if spec is None), next(iter(encoders)))


# ---------------------------------------------------------------------------------------------------- running
def _split_train(cfg: LabelEfficiencyConfig) -> tuple[Any, Path | None]:
    """The training pool and the fixed validation COCO file (None without validation); checks test leakage."""
    from dentalmim.data.coco import CocoDataset, split_by_patient

    train, test = CocoDataset.load(cfg.train_coco), CocoDataset.load(cfg.test_coco)
    shared = set(train.patients()) & set(test.patients())
    _fail(not shared, f"test_coco should share no patient with train_coco, got {len(shared)} shared.")
    if cfg.unlabeled is not None:
        inside = [im for im in test.images if test.image_path(im).resolve().is_relative_to(cfg.unlabeled.resolve())]
        _fail(not inside, f"unlabeled should not contain test images, got {len(inside)} under {cfg.unlabeled}.")
    if cfg.val_fraction == 0:
        return train, None
    pool, val, _ = split_by_patient(train, (1.0 - cfg.val_fraction, cfg.val_fraction, 0.0), seed=0)
    pool.save(cfg.out / "splits" / "pool.json")
    return pool, val.save(cfg.out / "splits" / "val.json")


def _resolve_encoders(cfg: LabelEfficiencyConfig) -> dict[str, Path | None]:
    """Encoder files by name, pretraining the ``"pretrain"`` ones (resumable, via :mod:`dentalmim.pipeline`)."""
    from dentalmim.data.coco import CocoDataset
    from dentalmim.pipeline import Preset, pretrain_encoder, stage_images

    out: dict[str, Path | None] = {}
    staged = None
    for name, spec in cfg.encoders.items():
        if spec != PRETRAIN:
            out[name] = Path(spec).expanduser().absolute() if spec else None
            continue
        if staged is None and not (cfg.out / "encoders" / name / "encoder.safetensors").exists():
            staged = cfg.out / "encoders" / "train_images"  # exactly the training images: never a test image
            stage_images(CocoDataset.load(cfg.train_coco), staged)
        preset = Preset(cfg.pretrain_config, str(cfg.finetune_config), cfg.pretrain_steps, cfg.finetune_steps,
                        extra_pretrain=cfg.pretrain_overrides)
        data = [p for p in (cfg.unlabeled, staged) if p is not None]
        out[name] = pretrain_encoder(name, preset, data, cfg.out / "encoders" / name, seed=0,  # type: ignore[arg-type]
                              steps=cfg.pretrain_steps)
    return out


def _finetune_args(cfg: LabelEfficiencyConfig, val: Path | None) -> tuple[str, ...]:
    if val is None:
        return ("--data.val_fraction", "0", *cfg.finetune_overrides)
    return ("--data.val_coco_path", str(val), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.val_check_interval", str(cfg.val_check_steps), *cfg.finetune_overrides)


def _machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def _cell_settings(cfg: LabelEfficiencyConfig, spec: str | None) -> dict[str, Any]:
    settings = {k: v for k, v in cfg.to_dict().items() if k in _CELL_SETTINGS}
    return {**settings, "encoder": spec}


def _check_finished(cell_dir: Path, settings: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The record of a finished cell (None if unfinished); a finished cell made with other settings is an error."""
    if not (cell_dir / "metrics.json").exists():
        return None
    record = json.loads((cell_dir / "cell.json").read_text())
    for key, value in settings.items():
        was = record["settings"].get(key)
        _fail(was == value, f"{f'encoders.{name}' if key == 'encoder' else key} should be {was!r} as when "
              f"{cell_dir} was run, got {value!r}: use another out folder or delete that cell.")
    return record


def _run_cell(cfg: LabelEfficiencyConfig, key: tuple[str, float, int], encoder: Path | None, pool: Any,
              val: Path | None) -> tuple[dict[str, Any], bool]:
    """Fine-tune and evaluate one (encoder, fraction, seed) cell.

    Returns:
        The cell's record (also in ``cell.json``) and whether it was run now (False: finished before).
    """
    from dentalmim.evaluation.evaluate import evaluate_model
    from dentalmim.inference.predictor import Predictor
    from dentalmim.pipeline import Preset, finetune_detector

    name, frac, seed = key
    cell_dir = cfg.out / "cells" / name / f"f{frac:g}_s{seed}"
    settings = _cell_settings(cfg, cfg.encoders[name])
    done = _check_finished(cell_dir, settings, name)
    if done is not None:
        return done, False
    start = time.perf_counter()
    subset = pool.fraction(frac, seed)
    train = subset.save(cell_dir / "train.json")
    preset = Preset("", str(cfg.finetune_config), cfg.pretrain_steps, cfg.finetune_steps,
                    extra_finetune=_finetune_args(cfg, val))
    model = finetune_detector(encoder, preset, train, cell_dir, seed, cfg.finetune_steps)
    result = evaluate_model(Predictor.from_checkpoint(model), cfg.test_coco, cell_dir / "report", model_path=model,
                            n_boot=cfg.n_boot, seed=seed, progress=False)  # fmt: skip
    keys = dict.fromkeys((*REPORTED_METRICS, cfg.metric))
    record = {"encoder": name, "encoder_path": str(encoder) if encoder else None, "fraction": frac, "seed": seed,
              "n_train_images": len(subset.images), "n_train_patients": len(subset.patients()),
              "n_train_lesions": len(subset.annotations), "metrics": {k: result.metrics.get(k) for k in keys},
              "ci": {k: result.metrics.get("ci", {}).get(k) for k in keys}, "seconds": time.perf_counter() - start,
              "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": _machine(), "model": str(model.relative_to(cfg.out)), "settings": settings}  # fmt: skip
    (cell_dir / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.copyfile(result.paths.metrics_json, cell_dir / "metrics.json")  # written last: marks the cell done
    shutil.rmtree(cell_dir / "finetune" / "checkpoints", ignore_errors=True)  # model.ckpt holds the best one
    return record, True


# ---------------------------------------------------------------------------------------------------- outputs
def _counts(coco: Any) -> dict[str, int]:
    return {"images": len(coco.images), "patients": len(coco.patients()), "lesions": len(coco.annotations)}


def _write_outputs(cfg: LabelEfficiencyConfig, cells: list[dict[str, Any]],
                   data: dict[str, Any]) -> LabelEfficiencyResult:
    """Write ``label_efficiency.json`` / ``.md`` / ``.png`` into ``cfg.out``."""
    from dentalmim import __version__
    from dentalmim.evaluation.metrics_summary import to_jsonable

    baseline = _baseline(cfg.encoders)
    summary, paired = summarise(cells, cfg.metric), paired_differences(cells, cfg.metric, baseline)
    line = verdict(summary, cfg.metric, baseline, paired)
    paths = {"json": cfg.out / "label_efficiency.json", "md": cfg.out / "label_efficiency.md",
             "png": cfg.out / "label_efficiency.png"}
    payload = {"dentalmim_version": __version__, "config": cfg.to_dict(), "data": data, "metric": cfg.metric,
               "verdict": line, "summary": summary, "paired": paired, "cells": cells}
    paths["json"].write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    write_markdown(cfg, cells, data, line, paths["md"], baseline)
    write_plot(summary, cfg.metric, baseline, paths["png"])
    return LabelEfficiencyResult(cfg, cells, summary, paths)


def run_label_efficiency(config: LabelEfficiencyConfig | str | Path) -> LabelEfficiencyResult:
    """Run every (encoder, fraction, seed) cell of a study and write the table, plot and JSON (module docstring).

    Args:
        config: the settings, or the path of a YAML config file.

    Returns:
        The cells, the per-encoder summary and the written paths; ``.format()`` gives the one-line verdict.

    Raises:
        ConfigError: invalid settings (naming the field), train/test patient overlap, test images inside
            ``unlabeled``, or a finished cell made with other settings.
    """
    from dentalmim.data.coco import CocoDataset

    cfg = config if isinstance(config, LabelEfficiencyConfig) else LabelEfficiencyConfig.load(config)
    start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    pool, val = _split_train(cfg)
    data = {"test": _counts(CocoDataset.load(cfg.test_coco)), "pool": _counts(pool),
            "val": _counts(CocoDataset.load(val)) if val else None}
    encoders = _resolve_encoders(cfg)
    keys = [(name, frac, seed) for name in cfg.encoders for frac in sorted(cfg.fractions) for seed in cfg.seeds]
    cells = []
    for i, key in enumerate(keys, 1):
        print(f"\n== cell {i}/{len(keys)}: {key[0]}, {key[1]:.0%} labels, seed {key[2]} "
              f"(elapsed {time.perf_counter() - start:.0f} s)", flush=True)
        record, fresh = _run_cell(cfg, key, encoders[key[0]], pool, val)
        cells.append(record)
        took = f"{record['seconds']:.0f} s" if fresh else "finished before"
        print(f"   {cfg.metric}={fmt_value(record['metrics'].get(cfg.metric))} on {record['n_train_images']} "
              f"labelled images ({took})", flush=True)
    result = _write_outputs(cfg, cells, data)
    print(f"\n{result.format()}\n   table: {result.paths['md']}\n   plot:  {result.paths['png']}", flush=True)
    return result
