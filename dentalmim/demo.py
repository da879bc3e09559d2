"""``dentalmim demo``: the main job end to end on the embedded synthetic data.

Steps (each resumable: a finished step is skipped when its output is already there):

1. synthesise a corpus of bitewing-like and panoramic-like radiographs (DICOM + COCO caries boxes);
2. ingest it: validate, de-identify, write a manifest;
3. rewrite the COCO labels to the de-identified files and check that a detection batch can be drawn;
4. pretrain a tiny ViT with masked image modeling (MAE) on the unlabeled scans at native resolution (random crops);
5. export the encoder for fine-tuning.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Repository folder holding ``configs/`` (the project is installed in editable mode by ``make``).
REPO_ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIG = REPO_ROOT / "configs" / "pretrain" / "mae_vit_tiny.yaml"

#: Corpus size of the demo: realistic image sizes, small counts, so the whole job fits in minutes on 2 cores.
DEMO_LABELED = 24
DEMO_UNLABELED = 48


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float, what: str) -> None:
    print(f"   {what} ({time.perf_counter() - start:.1f} s)", flush=True)


def _synthesise(out: Path, seed: int) -> Path:
    from dentalmim.data.synth import generate_corpus

    corpus = out / "corpus"
    start = _step("1/5 synthesise radiographs")
    if (corpus / "labeled" / "annotations.json").exists():
        _done(start, f"already there: {corpus}")
        return corpus
    summary = generate_corpus(corpus, n=DEMO_LABELED, seed=seed, n_unlabeled=DEMO_UNLABELED, progress=True)
    _done(start, summary.format())
    return corpus


def _ingest(corpus: Path, out: Path) -> Path:
    from dentalmim.data.ingest import ingest

    ingested = out / "ingested"
    start = _step("2/5 ingest + de-identify")
    summary = ingest(corpus, ingested, progress=True)
    _done(start, summary.format())
    return ingested


def _relabel(corpus: Path, ingested: Path) -> Path:
    """Point the COCO labels at the de-identified copies and draw one training batch from them."""
    from dentalmim.data.coco import CocoDataset
    from dentalmim.data.datamodules import DetectionDataModule

    start = _step("3/5 labels -> de-identified images")
    labels = CocoDataset.load(corpus / "labeled" / "annotations.json")
    manifest = json.loads((ingested / "manifest.json").read_text())
    mapping = {os.path.relpath(corpus / rec["source"], labels.root): rec["file"] for rec in manifest}
    deid_labels = labels.remap_files(mapping, new_root=ingested)
    coco_path = deid_labels.save(ingested / "annotations.json")
    dm = DetectionDataModule(str(coco_path), crop_size=256, batch_size=4, num_workers=0, cache="none")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    stats = deid_labels.summary()
    _done(
        start,
        f"{coco_path}: {stats.images} images, {stats.positive_images} with caries, {stats.lesions} lesions; "
        f"first training batch {tuple(batch['image'].shape)} with {sum(len(b) for b in batch['boxes'])} boxes",
    )
    return coco_path


def _pretrain(out: Path, ingested: Path, seed: int, steps: int) -> Path:
    from dentalmim.training.pretrain import cli_main

    run_dir = out / "pretrain"
    start = _step(f"4/5 MAE pretraining, {steps} steps (tiny ViT, native-resolution crops)")
    last = run_dir / "checkpoints" / "last.ckpt"
    args = [
        "fit",
        "--config", str(PRETRAIN_CONFIG),
        "--data.data_dir", str(ingested / "images"),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_steps", str(steps),
        "--seed_everything", str(seed),
    ]  # fmt: skip
    if last.exists():
        args += ["--ckpt_path", str(last)]
    cli_main(args)
    _done(start, f"checkpoints in {run_dir}")
    return last


def _export(ckpt: Path, out: Path) -> Path:
    from dentalmim.training.export import export_encoder

    start = _step("5/5 export encoder")
    path = export_encoder(ckpt, out / "encoder.safetensors")
    _done(start, str(path))
    return path


def run_demo(out: Path, seed: int = 0, pretrain_steps: int = 300) -> None:
    """Run the demo into ``out`` (created if missing)."""
    if pretrain_steps < 1:
        raise ValueError(f"pretrain_steps should be >= 1, got {pretrain_steps}.")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = _synthesise(out, seed)
    ingested = _ingest(corpus, out)
    coco_path = _relabel(corpus, ingested)
    ckpt = _pretrain(out, ingested, seed, pretrain_steps)
    encoder = _export(ckpt, out)
    print(f"\nDone in {time.perf_counter() - t0:.0f} s.")
    print(f"  de-identified scans : {ingested / 'images'}")
    print(f"  caries labels (COCO): {coco_path}")
    print(f"  pretrained encoder  : {encoder}")
    print(f"  training logs       : {out / 'pretrain'}")
