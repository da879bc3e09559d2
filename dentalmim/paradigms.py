"""``dentalmim benchmark-paradigms``: one protocol for every pretraining objective, and a leaderboard.

For each paradigm (a registered objective, :mod:`dentalmim.models.objectives`, with optional config overrides):

1. **pretrain** on the unlabeled scans plus the training images (never a test image) with the same base config,
   step budget and seed, and export the encoder (:func:`dentalmim.pipeline.pretrain_encoder`);
2. **layer probes**: :func:`dentalmim.analyze.analyze_encoders` on native-resolution crops of the labelled pool
   (linear-probe and k-NN caries accuracy per layer, cross-validated by patient; attention distance / NMI);
3. **fine-tune** the caries detector on one fixed, patient-level label budget (the same subset for every
   paradigm) with one recipe and step budget (:func:`dentalmim.pipeline.finetune_detector`);
4. **evaluate** on the fixed test set (FROC, AUROC, AP with bootstrap CIs).

Compute is recorded per stage: wall seconds, process CPU hours (dataloader worker processes are not counted),
GPU hours (wall time x GPUs used) and images/s (steps x batch size / wall time). A ``scratch`` row (fine-tuning
from random initialisation) is the baseline. Outputs in ``OUT``: ``leaderboard.md``, ``leaderboard.json``,
``leaderboard.png``, ``analysis/`` (the probe report) and per paradigm ``paradigms/<name>/`` (encoder, fine-tuned
model, report, ``pretrain.json``, ``cell.json``). Resumable: finished stages are skipped. Settings:
:class:`ParadigmConfig` (example: ``configs/paradigms/demo.yaml``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dentalmim.errors import ConfigError
from dentalmim.label_efficiency import (_config_path, _finetune_args, _is_int, _machine, _split_train,
                                        checked_mapping, read_yaml_config)
from dentalmim.pipeline import CONFIGS

SCRATCH = "scratch"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _fail(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class Paradigm:
    """One benchmarked pretraining: a registered objective, its base config and extra overrides."""

    name: str
    objective: str
    config: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParadigmConfig:
    """Settings of a paradigm benchmark, validated on construction (YAML: :meth:`load`).

    Relative paths are relative to the working directory (config files also to the repository root).

    Args:
        train_coco: labelled training pool (the label budget is drawn from it; probes are cross-validated on it).
        test_coco: fixed test set (no patient shared with ``train_coco``).
        out: output folder.
        paradigms: a list of registered objective names, or name -> ``{objective, config, overrides}``
            (``objective`` defaults to the name, ``config`` to ``pretrain_config``).
        unlabeled: folder of unlabeled DICOMs added to the pretraining data (must not hold test images).
        include_scratch: also fine-tune from random initialisation (the ``scratch`` baseline row); its layer
            probes use a randomly initialised encoder of the pretrained encoders' architecture.
        pretrain_config: base ``dentalmim pretrain`` config; ``{objective}`` is filled in. ``--model.objective``
            and ``--data.two_views`` are always set from the registry.
        pretrain_steps: pretraining steps of every paradigm.
        pretrain_overrides: extra ``dentalmim pretrain fit`` arguments for every paradigm.
        label_fraction: share of the training pool's patients used to fine-tune, in (0, 1].
        seed: seed of pretraining, the label subset and fine-tuning.
        val_fraction: patient share of ``train_coco`` held out once for validation, in [0, 1).
        finetune_config: ``dentalmim finetune`` config.
        finetune_steps: fine-tuning steps of every paradigm.
        val_check_steps: validate every this many steps (default ``max(1, finetune_steps // 5)``).
        finetune_overrides: extra ``dentalmim finetune fit`` arguments.
        probe_crop_size: crop side of the layer probes (a multiple of the patch size).
        probe_crops_per_image: crops per radiograph of the layer probes.
        probe_max_images: radiographs read for the layer probes at most.
        probe_folds: patient-grouped cross-validation folds of the probes.
        metric: headline metric of the leaderboard (a headline key of ``metrics.json``).
        n_boot: bootstrap resamples of the test-set confidence intervals.
    """

    train_coco: Path
    test_coco: Path
    out: Path
    paradigms: dict[str, Any] | list[str]
    unlabeled: Path | None = None
    include_scratch: bool = True
    pretrain_config: str = str(CONFIGS / "pretrain" / "{objective}_vit_tiny.yaml")
    pretrain_steps: int = 200
    pretrain_overrides: tuple[str, ...] = ()
    label_fraction: float = 0.25
    seed: int = 0
    val_fraction: float = 0.15
    finetune_config: Path = CONFIGS / "finetune" / "caries_vit_tiny.yaml"
    finetune_steps: int = 250
    val_check_steps: int | None = None
    finetune_overrides: tuple[str, ...] = ()
    probe_crop_size: int = 224
    probe_crops_per_image: int = 2
    probe_max_images: int = 64
    probe_folds: int = 5
    metric: str = "froc_fom"
    n_boot: int = 200
    resolved: tuple[Paradigm, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        for name in ("train_coco", "test_coco", "out") + (("unlabeled",) if self.unlabeled else ()):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser().absolute())
        object.__setattr__(self, "finetune_config", _config_path(self.finetune_config))
        for name in ("pretrain_overrides", "finetune_overrides"):
            value = getattr(self, name)
            _fail(isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value),
                  f"{name} should be a list of strings, got {value!r}.")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.label_fraction, int) and not isinstance(self.label_fraction, bool):
            object.__setattr__(self, "label_fraction", float(self.label_fraction))
        if self.val_check_steps is None and isinstance(self.finetune_steps, int):
            object.__setattr__(self, "val_check_steps", max(1, self.finetune_steps // 5))
        object.__setattr__(self, "resolved", self._resolve_paradigms())
        self._validate()

    def _resolve_paradigms(self) -> tuple[Paradigm, ...]:
        from dentalmim.models.objectives import OBJECTIVE_REGISTRY

        items = self.paradigms
        if isinstance(items, (list, tuple)):
            items = {name: {} for name in items}
        _fail(isinstance(items, dict) and len(items) > 0,
              f"paradigms should be a non-empty list of objectives or a mapping, got {self.paradigms!r}.")
        out = []
        for name, spec in items.items():
            spec = spec or {}
            _fail(isinstance(name, str) and bool(_NAME.match(name)) and name != SCRATCH,
                  f"paradigms should have names of letters, digits, '.', '_' or '-' (not {SCRATCH!r}), got {name!r}.")
            _fail(isinstance(spec, dict) and not set(spec) - {"objective", "config", "overrides"},
                  f"paradigms.{name} should be a mapping with objective / config / overrides, got {spec!r}.")
            objective = spec.get("objective", name)
            _fail(isinstance(objective, str) and objective in OBJECTIVE_REGISTRY,
                  f"paradigms.{name}.objective should be one of {tuple(OBJECTIVE_REGISTRY)}, got {objective!r}.")
            config = _config_path(spec.get("config") or self.pretrain_config.format(objective=objective))
            _fail(config.is_file(), f"paradigms.{name}: pretrain config should be an existing file, got "
                  f"{str(config)!r} (set paradigms.{name}.config).")
            overrides = spec.get("overrides", [])
            _fail(isinstance(overrides, list) and all(isinstance(a, str) for a in overrides),
                  f"paradigms.{name}.overrides should be a list of strings, got {overrides!r}.")
            out.append(Paradigm(name, objective, config, tuple(overrides)))
        return tuple(out)

    def _validate(self) -> None:
        for name in ("train_coco", "test_coco", "finetune_config"):
            path = getattr(self, name)
            _fail(path.is_file(), f"{name} should be an existing file, got {str(path)!r}.")
        _fail(self.unlabeled is None or self.unlabeled.is_dir(),
              f"unlabeled should be an existing folder or null, got {str(self.unlabeled)!r}.")
        _fail(not self.out.exists() or self.out.is_dir(), f"out should be a folder, got the file {str(self.out)!r}.")
        _fail(isinstance(self.label_fraction, float) and 0.0 < self.label_fraction <= 1.0,
              f"label_fraction should be in (0, 1], got {self.label_fraction!r}.")
        _fail(isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0,
              f"val_fraction should be in [0, 1), got {self.val_fraction!r}.")
        for name, low in (("pretrain_steps", 1), ("finetune_steps", 1), ("val_check_steps", 1),
                          ("probe_crop_size", 1), ("probe_crops_per_image", 1), ("probe_max_images", 1),
                          ("probe_folds", 2), ("seed", 0), ("n_boot", 0)):
            value = getattr(self, name)
            _fail(_is_int(value) and value >= low, f"{name} should be an integer >= {low}, got {value!r}.")
        _fail(isinstance(self.include_scratch, bool), f"include_scratch should be true or false, "
                                                      f"got {self.include_scratch!r}.")
        for paradigm in self.resolved:  # probes run after every pretraining: a bad crop size would fail only then
            patch = _config_patch_size(paradigm.config)
            _fail(self.probe_crop_size % patch == 0,
                  f"probe_crop_size should be a multiple of the patch size {patch} of paradigms.{paradigm.name}, "
                  f"got {self.probe_crop_size}.")
        from dentalmim.evaluation.metrics_summary import HEADLINE_KEYS

        _fail(self.metric in HEADLINE_KEYS, f"metric should be one of {HEADLINE_KEYS}, got {self.metric!r}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParadigmConfig:
        """Build from a mapping (a parsed YAML file); unknown keys are an error."""
        required = {"train_coco", "test_coco", "out", "paradigms"}
        return cls(**checked_mapping(data, cls, "paradigm config", required))

    @classmethod
    def load(cls, path: str | Path) -> ParadigmConfig:
        """Read a YAML config file."""
        return cls.from_dict(read_yaml_config(path))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))


def _config_patch_size(config: Path) -> int:
    """``model.patch_size`` of a pretraining YAML (16, the encoders' default, when it does not say)."""
    data = yaml.safe_load(config.read_text()) or {}
    model = data.get("model") if isinstance(data, dict) else None
    value = (model.get("init_args", model) if isinstance(model, dict) else {}).get("patch_size", 16)
    return value if _is_int(value) and value > 0 else 16


#: Settings recorded with each stage; a finished stage made with other values is an error, not silently reused.
_PRETRAIN_SETTINGS = ("pretrain_steps", "pretrain_overrides", "seed")
_CELL_SETTINGS = ("train_coco", "test_coco", "label_fraction", "seed", "val_fraction", "finetune_config",
                  "finetune_steps", "val_check_steps", "finetune_overrides", "n_boot")


def _settings(cfg: ParadigmConfig, names: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    return {**{k: v for k, v in cfg.to_dict().items() if k in names}, **json.loads(json.dumps(extra, default=str))}


def _check_settings(record: dict[str, Any], settings: dict[str, Any], where: Path) -> dict[str, Any]:
    """``record`` if it was made with ``settings``; else :class:`ConfigError` naming the first changed one."""
    for key, value in settings.items():
        was = record.get("settings", {}).get(key)
        _fail(was == value, f"{key} should be {was!r} as when {where} was run, got {value!r}: use another out "
              "folder or delete that folder.")
    return record


# ----------------------------------------------------------------------------------------------------- compute
def _batch_size(run_dir: Path) -> int | None:
    """``data.batch_size`` of the newest resolved ``config.yaml`` LightningCLI saved under ``run_dir``."""
    configs = sorted(run_dir.rglob("config.yaml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        return None
    data = (yaml.safe_load(configs[-1].read_text()) or {}).get("data") or {}
    value = (data.get("init_args") or data).get("batch_size")
    return int(value) if isinstance(value, int) else None


def _timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn``; return its result and ``wall_s``, ``cpu_hours`` (this process) and ``gpu_hours``."""
    import torch

    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return result, {"wall_s": wall, "cpu_hours": cpu / 3600, "gpu_hours": wall * gpus / 3600}


def _throughput(compute: dict[str, float], steps: int, batch: int | None) -> dict[str, Any]:
    images = steps * batch if batch else None
    rate = images / compute["wall_s"] if images and compute["wall_s"] > 0 else None
    return {**compute, "steps": steps, "batch_size": batch, "images": images, "images_per_s": rate}


# ------------------------------------------------------------------------------------------------------ stages
def _pretrain(cfg: ParadigmConfig, par: Paradigm, data: list[Path]) -> tuple[Path, dict[str, Any]]:
    """Pretrain + export one paradigm's encoder (skipped when ``pretrain.json`` exists)."""
    from dentalmim.models.objectives import objective_spec
    from dentalmim.pipeline import Preset, pretrain_encoder

    out = cfg.out / "paradigms" / par.name
    record_path = out / "pretrain.json"
    settings = _settings(cfg, _PRETRAIN_SETTINGS, objective=par.objective, config=par.config,
                         paradigm_overrides=par.overrides)
    if record_path.exists() and (out / "encoder.safetensors").exists():
        return out / "encoder.safetensors", _check_settings(json.loads(record_path.read_text()), settings, out)
    shutil.rmtree(out / "pretrain", ignore_errors=True)  # an unfinished run restarts (timings stay honest)
    (out / "encoder.safetensors").unlink(missing_ok=True)
    two_views = "true" if objective_spec(par.objective).two_views else "false"
    extra = ("--model.objective", par.objective, "--data.two_views", two_views, *cfg.pretrain_overrides,
             *par.overrides)
    preset = Preset(str(par.config), str(cfg.finetune_config), cfg.pretrain_steps, cfg.finetune_steps,
                    extra_pretrain=extra)
    encoder, compute = _timed(lambda: pretrain_encoder(par.objective, preset, data, out, cfg.seed,  # type: ignore[arg-type]
                                                       cfg.pretrain_steps))
    record = {"paradigm": par.name, "objective": par.objective, "config": str(par.config), "overrides": list(extra),
              **_throughput(compute, cfg.pretrain_steps, _batch_size(out / "pretrain")), "machine": _machine(),
              "settings": settings}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return encoder, record


def _probes(cfg: ParadigmConfig, encoders: dict[str, Path]) -> dict[str, Any]:
    """Layer probes and attention measures of every encoder (one shared report, skipped when done)."""
    from dentalmim.analyze import analyze_encoders

    out = cfg.out / "analysis"
    done = out / "analysis.json"
    if done.exists():
        previous = json.loads(done.read_text())
        if {k: v["path"] for k, v in previous["encoders"].items()} == {k: str(v) for k, v in encoders.items()}:
            return previous
    result, _ = _timed(lambda: analyze_encoders(
        encoders, cfg.train_coco, out, crop_size=cfg.probe_crop_size, crops_per_image=cfg.probe_crops_per_image,
        max_images=cfg.probe_max_images, n_folds=cfg.probe_folds, seed=cfg.seed, device="auto"))
    return json.loads(result.paths["json"].read_text())


def _random_encoder(like: Path, out: Path, seed: int) -> Path:
    """A randomly initialised encoder with the architecture of ``like``, exported next to ``out`` (probe baseline)."""
    import torch
    from dentalmim.weights import save_weights

    from dentalmim.models.vit import ViTEncoder

    path = out / "random_encoder.safetensors"
    config = json.loads(like.with_suffix(".json").read_text())["encoder"]
    if path.exists() and json.loads(path.with_suffix(".json").read_text())["encoder"] == config:
        return path
    torch.manual_seed(seed)
    encoder = ViTEncoder(**config)
    out.mkdir(parents=True, exist_ok=True)
    save_weights({k: v.contiguous() for k, v in encoder.state_dict().items()}, path)
    path.with_suffix(".json").write_text(json.dumps({"encoder": config, "source": {"objective": None,
                                                                                   "random_init_seed": seed}}) + "\n")
    return path


def _probe_summary(analysis: dict[str, Any] | None) -> dict[str, Any]:
    if not analysis:
        return {}
    layers = analysis["layers"]
    scored = [r for r in layers if r.get("linear_probe_acc") is not None]
    best = max(scored, key=lambda r: r["linear_probe_acc"]) if scored else None
    last = layers[-1]
    return {"probe_best_layer": best["layer"] if best else None,
            "probe_best_linear_acc": best["linear_probe_acc"] if best else None,
            "probe_last_linear_acc": last.get("linear_probe_acc"), "probe_last_knn_acc": last.get("knn_acc"),
            "last_attention_distance_px": last["attention_distance_px"], "last_attention_nmi": last["attention_nmi"],
            "last_fourier_high_freq": last["fourier_high_freq"], "probe_seconds": analysis.get("seconds")}


def _finetune_and_evaluate(cfg: ParadigmConfig, name: str, encoder: Path | None, train: Path,
                           val: Path | None) -> dict[str, Any]:
    """Fine-tune at the label budget and evaluate on the test set (skipped when ``metrics.json`` exists)."""
    from dentalmim.evaluation.evaluate import evaluate_model
    from dentalmim.inference.predictor import Predictor
    from dentalmim.label_efficiency_report import REPORTED_METRICS
    from dentalmim.pipeline import Preset, finetune_detector

    out = cfg.out / "paradigms" / name
    settings = _settings(cfg, _CELL_SETTINGS, encoder=encoder)
    if (out / "metrics.json").exists() and (out / "cell.json").exists():
        return _check_settings(json.loads((out / "cell.json").read_text()), settings, out)
    preset = Preset("", str(cfg.finetune_config), cfg.pretrain_steps, cfg.finetune_steps,
                    extra_finetune=_finetune_args(cfg, val))  # type: ignore[arg-type]
    model, compute = _timed(lambda: finetune_detector(encoder, preset, train, out, cfg.seed, cfg.finetune_steps))
    finetune = _throughput(compute, cfg.finetune_steps, _batch_size(out / "finetune"))
    result, evaluation = _timed(lambda: evaluate_model(Predictor.from_checkpoint(model), cfg.test_coco,
                                                       out / "report", model_path=model, n_boot=cfg.n_boot,
                                                       seed=cfg.seed, progress=False))
    keys = dict.fromkeys((*REPORTED_METRICS, cfg.metric))
    record = {"paradigm": name, "encoder_path": str(encoder) if encoder else None,
              "metrics": {k: result.metrics.get(k) for k in keys},
              "ci": {k: result.metrics.get("ci", {}).get(k) for k in keys},
              "finetune": finetune, "evaluate": evaluation, "model": str(model.relative_to(cfg.out)),
              "settings": settings}
    (out / "cell.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.copyfile(result.paths.metrics_json, out / "metrics.json")  # written last: marks the stage done
    shutil.rmtree(out / "finetune" / "checkpoints", ignore_errors=True)
    return record


@dataclass(frozen=True)
class ParadigmResult:
    """The leaderboard rows and the written files (``md``, ``json``, ``png``)."""

    config: ParadigmConfig
    rows: list[dict[str, Any]]
    paths: dict[str, Path]

    def format(self) -> str:
        """One line: paradigms ranked by the headline metric, with pretraining time."""
        from dentalmim.paradigms_report import ranking_line

        return ranking_line(self.rows, self.config.metric) + f"\n   leaderboard: {self.paths['md']}"


def run_paradigm_benchmark(config: ParadigmConfig | str | Path) -> ParadigmResult:
    """Run the protocol of the module docstring for every paradigm and write the leaderboard.

    Args:
        config: the settings, or the path of a YAML config file.

    Returns:
        The rows (one per paradigm, plus ``scratch``) and the written paths.

    Raises:
        ConfigError: invalid settings (naming the field), train/test patient overlap or test images in
            ``unlabeled``.
    """
    from dentalmim.data.coco import CocoDataset
    from dentalmim.paradigms_report import write_leaderboard
    from dentalmim.pipeline import stage_images

    cfg = config if isinstance(config, ParadigmConfig) else ParadigmConfig.load(config)
    cfg.out.mkdir(parents=True, exist_ok=True)
    pool, val = _split_train(cfg)  # type: ignore[arg-type]  # same checks and split as label-efficiency
    subset = pool.fraction(cfg.label_fraction, cfg.seed)
    train = subset.save(cfg.out / "splits" / "train.json")
    staged = cfg.out / "train_images"  # exactly the training images: never a test image
    stage_images(CocoDataset.load(cfg.train_coco), staged)
    data = [p for p in (cfg.unlabeled, staged) if p is not None]
    pretrained = {par.name: _pretrain(cfg, par, data) for par in cfg.resolved}
    probed = {name: enc for name, (enc, _) in pretrained.items()}
    if cfg.include_scratch:
        probed[SCRATCH] = _random_encoder(next(iter(probed.values())), cfg.out / "paradigms" / SCRATCH, cfg.seed)
    analysis = _probes(cfg, probed)
    rows = []
    for par in cfg.resolved:
        encoder, record = pretrained[par.name]
        cell = _finetune_and_evaluate(cfg, par.name, encoder, train, val)
        rows.append({"paradigm": par.name, "objective": par.objective, "pretrain": record,
                     **_probe_summary(analysis["encoders"].get(par.name)), **cell})
    if cfg.include_scratch:
        cell = _finetune_and_evaluate(cfg, SCRATCH, None, train, val)
        rows.append({"paradigm": SCRATCH, "objective": None, "pretrain": None,
                     **_probe_summary(analysis["encoders"].get(SCRATCH)), **cell})
    counts = {"train_images": len(subset.images), "train_patients": len(subset.patients()),
              "test_images": len(CocoDataset.load(cfg.test_coco).images)}
    paths = write_leaderboard(cfg, rows, counts)
    return ParadigmResult(cfg, rows, paths)
