"""``dentalmim run``: bring your own radiographs, get a caries detector and its evaluation report.

Steps, each skipped when its output already exists (the output folder is resumable):

1. ingest + de-identify the unlabeled folder and the images of the labeled and test COCO files (one salt, so one
   patient keeps one pseudonym everywhere), and rewrite both COCO files to the de-identified copies;
   the salt (``OUT/ingested/.deid_salt``, or ``salt_file``) names the de-identified files and pseudonyms, and
   through them orders the training data and splits off the validation patients: a rerun repeats exactly only
   with the same salt and seed (a fresh salt is a different shuffle, as a different seed is);
2. masked image modeling pretraining (``mae``, ``contrastive`` or ``hybrid``; ``none`` skips it) on the unlabeled
   scans plus the labeled training images (without their labels) — never on the test images;
3. export the encoder;
4. fine-tune the detector on the labeled set (a patient-level validation split is taken from it internally);
5. evaluate the best checkpoint on the test set: ``OUT/report/`` and ``OUT/metrics.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dentalmim.errors import ConfigError

def _find_configs() -> Path:
    """The ``configs/`` folder: ``$DENTALMIM_CONFIGS``, else the repository's (editable install), else ``./configs``."""
    candidates = [os.environ.get("DENTALMIM_CONFIGS"), Path(__file__).resolve().parents[1] / "configs",
                  Path.cwd() / "configs"]  # fmt: skip
    found = [Path(c) for c in candidates if c and Path(c).is_dir()]
    return found[0] if found else Path(__file__).resolve().parents[1] / "configs"


CONFIGS = _find_configs()

Objective = Literal["mae", "contrastive", "hybrid", "none"]


@dataclass(frozen=True)
class Preset:
    """Model size and step budget of one ``--preset``.

    ``validations`` validation passes (tiled inference over the whole validation images) are spread evenly over
    the fine-tuning steps, the last one at the final step (just before it when the steps do not divide evenly).
    The best checkpoint and its operating thresholds thus come from a validated late state, and the validation
    cost does not grow with the number of epochs a data set's size implies.
    """

    pretrain_config: str
    finetune_config: str
    pretrain_steps: int
    finetune_steps: int
    extra_pretrain: tuple[str, ...] = ()
    extra_finetune: tuple[str, ...] = ()
    validations: int = 5


PRESETS: dict[str, Preset] = {
    # 2-core CPU, minutes: tiny ViT, short schedules, one validation at the end (the demo); no validation sanity
    # check before fine-tuning (tiled inference over 2 full images, about 25 s of a 10-minute budget)
    "cpu-tiny": Preset("{objective}_vit_tiny.yaml", "caries_vit_tiny.yaml", 200, 300,
                       ("--data.batch_size", "8"), ("--trainer.num_sanity_val_steps", "0"), validations=1),
    # 2-core CPU, longer schedules: 37 min for 100 panoramic-sized images on the development machine (README)
    "cpu-small": Preset("{objective}_vit_tiny.yaml", "caries_vit_tiny.yaml", 1500, 1500),
    # one GPU: ViT-Small at bf16 (base-sized runs: pass the base configs to pretrain/finetune directly)
    "gpu-base": Preset("{objective}_vit_small.yaml", "caries_vit_small.yaml", 20000, 5000),
}  # fmt: skip


def _banner(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _took(start: float, what: str) -> None:
    print(f"   {what} ({time.perf_counter() - start:.1f} s)", flush=True)


def stage_images(labels, staging: Path) -> dict[str, str]:
    """Link exactly the images a COCO file references into ``staging``.

    Returns:
        staged relative path -> the image's ``file_name`` in the COCO file. Paths that leave the COCO folder
        (``../``) or are absolute are staged under a flat, id-prefixed name.
    """
    shutil.rmtree(staging, ignore_errors=True)
    staged = {}
    for im in labels.images:
        rel = Path(im.file_name)
        if rel.is_absolute() or ".." in rel.parts:
            rel = Path(f"{im.id}_{rel.name}")
        link = staging / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(labels.image_path(im))
        staged[rel.as_posix()] = im.file_name
    return staged


def ingest_labeled(coco_path: Path, out: Path, salt: Path) -> Path:
    """Ingest the images a COCO file references (only those) and write the COCO re-pointed at the copies.

    Only referenced images are ingested, so a folder that also holds test images (or anything else) never leaks
    them into this set, and pretraining on the ingested training images stays clear of the test set.
    """
    from dentalmim.data.coco import CocoDataset
    from dentalmim.data.ingest import ingest

    labels = CocoDataset.load(coco_path)
    staging = out.parent / f".staging-{out.name}"
    staged = stage_images(labels, staging)
    try:
        summary = ingest(staging, out, salt_path=salt, progress=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"   {coco_path.name}: {summary.format()}", flush=True)
    manifest = json.loads((out / "manifest.json").read_text())
    mapping = {staged[rec["source"]]: rec["file"] for rec in manifest if rec["source"] in staged}
    return labels.remap_files(mapping, new_root=out, missing="drop").save(out / "annotations.json")


def _ingest_all(unlabeled: Path | None, labeled: Path, test: Path, out: Path,
                salt_file: Path | None = None) -> dict[str, Path]:
    from dentalmim.data.ingest import ingest

    start = _banner("ingest + de-identify")
    root = out / "ingested"
    salt = salt_file if salt_file is not None else root / ".deid_salt"
    paths = {"labeled": ingest_labeled(labeled, root / "labeled", salt), "test": ingest_labeled(test, root / "test", salt)}
    if unlabeled is not None:
        summary = ingest(unlabeled, root / "unlabeled", salt_path=salt, progress=True)
        print(f"   unlabeled: {summary.format()}", flush=True)
        paths["unlabeled"] = root / "unlabeled" / "images"
    _took(start, f"de-identified scans in {root}")
    return paths


def pretrain_encoder(objective: Objective, preset: Preset, data: list[Path], out: Path, seed: int, steps: int) -> Path:
    from dentalmim.training.export import export_encoder
    from dentalmim.training.pretrain import cli_main

    encoder = out / "encoder.safetensors"
    start = _banner(f"{objective} pretraining, {steps} steps")
    if encoder.exists():
        _took(start, f"already there: {encoder}")
        return encoder
    run_dir = out / "pretrain"
    args = ["fit", "--config", str(CONFIGS / "pretrain" / preset.pretrain_config.format(objective=objective)),
            "--data.data_dir", json.dumps([str(d) for d in data]), "--trainer.default_root_dir", str(run_dir),
            "--trainer.max_steps", str(steps), "--seed_everything", str(seed), *preset.extra_pretrain]  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    cli_main(args + (["--ckpt_path", str(last)] if last.exists() else []))
    export_encoder(last, encoder)
    _took(start, f"encoder: {encoder}")
    return encoder


def finetune_detector(encoder: Path | None, preset: Preset, coco: Path, out: Path, seed: int, steps: int) -> Path:
    from dentalmim.training.finetune import cli_main

    model = out / "model.ckpt"
    start = _banner(f"fine-tune the caries detector, {steps} steps ({'from ' + encoder.name if encoder else 'from scratch'})")
    if model.exists():
        _took(start, f"already there: {model}")
        return model
    run_dir = out / "finetune"
    args = ["fit", "--config", str(CONFIGS / "finetune" / preset.finetune_config), "--data.coco_path", str(coco),
            "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", str(steps),
            "--seed_everything", str(seed), "--model.encoder", str(encoder) if encoder else "null",
            "--trainer.check_val_every_n_epoch", "null",
            "--trainer.val_check_interval", str(max(1, steps // max(1, preset.validations))),
            *preset.extra_finetune]  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    cli = cli_main(args + (["--ckpt_path", str(last)] if last.exists() else []))
    best = cli.trainer.checkpoint_callback.best_model_path or str(last)
    shutil.copyfile(best, model)
    _took(start, f"model: {model} (best checkpoint {Path(best).name})")
    return model


def _evaluate(model: Path, test: Path, out: Path, seed: int) -> dict:
    from dentalmim.evaluation.evaluate import evaluate_model
    from dentalmim.inference.predictor import Predictor

    start = _banner("evaluate on the test set")
    result = evaluate_model(Predictor.from_checkpoint(model), test, out / "report", model_path=model, seed=seed)
    shutil.copyfile(result.paths.metrics_json, out / "metrics.json")
    _took(start, result.format())
    return result.metrics


def run_pipeline(
    unlabeled: str | Path | None,
    labeled: str | Path,
    test: str | Path,
    out: str | Path,
    *,
    pretrain: Objective = "mae",
    preset: str = "cpu-tiny",
    seed: int = 0,
    pretrain_steps: int | None = None,
    finetune_steps: int | None = None,
    salt_file: str | Path | None = None,
) -> dict:
    """Run ingest -> pretrain -> fine-tune -> evaluate into ``out`` (see the module docstring).

    ``salt_file`` is the de-identification secret (created once when missing); default ``out/ingested/.deid_salt``.
    Reusing one keeps a patient's pseudonym across runs and makes a rerun with the same seed repeat exactly.

    Returns:
        The test-set metrics (also in ``out/metrics.json``).
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset should be one of {sorted(PRESETS)}, got {preset!r}.")
    if pretrain not in ("mae", "contrastive", "hybrid", "none"):
        raise ConfigError(f"pretrain should be mae, contrastive, hybrid or none, got {pretrain!r}.")
    for name, steps in (("pretrain_steps", pretrain_steps), ("finetune_steps", finetune_steps)):
        if steps is not None and steps < 1:
            raise ConfigError(f"{name} should be >= 1 (or left out for the preset's), got {steps}.")
    if Path(test).resolve() == Path(labeled).resolve():
        raise ConfigError(f"test should be a held-out COCO file, not the training labels, got {test} for both.")
    spec, out = PRESETS[preset], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _ingest_all(Path(unlabeled) if unlabeled else None, Path(labeled), Path(test), out,
                        Path(salt_file) if salt_file is not None else None)
    encoder = None
    if pretrain != "none":
        data = [p for p in (paths.get("unlabeled"), paths["labeled"].parent / "images") if p is not None]
        steps = spec.pretrain_steps if pretrain_steps is None else pretrain_steps
        encoder = pretrain_encoder(pretrain, spec, data, out, seed, steps)
    steps = spec.finetune_steps if finetune_steps is None else finetune_steps
    model = finetune_detector(encoder, spec, paths["labeled"], out, seed, steps)
    return _evaluate(model, paths["test"], out, seed)
