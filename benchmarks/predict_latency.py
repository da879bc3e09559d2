"""Whole-radiograph prediction latency: batched tiled inference vs naive tile-by-tile inference (the baseline).

A :class:`~dentalmim.inference.predictor.Predictor` wraps a caries detector built from the model settings of
``configs/finetune/caries_vit_tiny.yaml`` (tile = the training crop, 128 px there; 25 % overlap) with the
``--preset`` encoder size, untrained; or, with ``--model``, a trained model (a fine-tuning ``.ckpt`` or a model
bundle). Weights change the latency only through the boxes that pass the per-tile score threshold and enter NMS and
the tile merge: an untrained detector finds none at the default 0.3 threshold, a trained one hundreds per tile at
the evaluation floor (``--threshold``), so time a trained model for post-processing costs. ``num_boxes`` is the
number of boxes the prediction returns. Inputs are realistic synthetic radiographs at full size from
``dentalmim.data.synth.generate_image(scale=1.0)``: a bitewing (~1-2.6 MP) and a panoramic (~3000 x 1500).

Baseline: **naive tiling** = the same predictor with ``tile_batch_size=1`` (one forward pass per tile), in the
same process as the batched cases, runs interleaved in rotating order; speed-up = baseline p50 / batched p50.
Reported per (device, image, tile batch): latency p50 / p95 over ``--runs`` calls (after ``--warmup`` calls per
predictor on the first image), images/s and tiles/s (from p50), tiles per image, and peak memory: on CPU the peak
RSS growth of a fresh subprocess during one full-image prediction, over its resident size with model and image
loaded and kernels warmed up on a one-tile image; on CUDA the ``torch.cuda.max_memory_allocated`` growth. CUDA
runs use bf16 autocast (the Predictor's default there), CPU runs fp32.

    python benchmarks/predict_latency.py                          # CPU (and CUDA when present), tiny model
    python benchmarks/predict_latency.py --preset small --tile-batch 1,8,16,32 --runs 10 --device cuda
    python benchmarks/predict_latency.py --model demo_out/run/model.ckpt --threshold 0.05 --tile-batch 8

Writes ``benchmarks/results/predict_latency_<cpu|cuda>[_trained].json`` (``_trained`` with ``--model``) and prints
a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import (  # noqa: E402
    RESULTS_DIR, current_rss_mib, machine_info, markdown_table, peak_rss_mib, reset_peak_rss, write_json,
)  # fmt: skip

from dentalmim.inference.predictor import Predictor  # noqa: E402
from dentalmim.models.detector import CariesDetector  # noqa: E402
from dentalmim.models.vit import VIT_PRESETS, ViTEncoder  # noqa: E402

CONFIG = ROOT / "configs" / "finetune" / "caries_vit_tiny.yaml"
KINDS = ("bitewing", "panoramic")
PRECISION = {"cpu": "fp32", "cuda": "bf16"}


def build_predictor(preset: str, device: str, tile_batch: int, model_path: Path | None = None) -> Predictor:
    """The trained model at ``model_path``, or an untrained detector with the tiny fine-tuning config's model
    settings and the ``preset`` encoder."""
    if model_path is not None:
        return Predictor.from_checkpoint(model_path, device=device, precision=PRECISION[device],
                                         tile_batch_size=tile_batch)
    cfg = yaml.safe_load(CONFIG.read_text())
    model, data = cfg["model"], cfg["data"]
    torch.manual_seed(0)
    encoder = ViTEncoder(model["img_size"], model["patch_size"], 1, **VIT_PRESETS[preset],
                         stem=model.get("stem", "linear"))
    detector = CariesDetector(encoder, 1, model["pyramid_strides"], model["fpn_channels"], model["head_convs"],
                              detail_channels=model.get("detail_channels", 0))
    metadata = {"tile_size": data["crop_size"], "tile_overlap": model["tile_overlap"], "nms_iou": model["nms_iou"],
                "max_detections": model["max_detections"], "version": f"untrained-{preset}"}
    return Predictor(detector, metadata, device=device, precision=PRECISION[device], tile_batch_size=tile_batch)


def make_images(seed: int, folder: Path) -> dict[str, Path]:
    """Full-size synthetic radiographs (one per kind), saved as ``.npy`` for the memory subprocesses."""
    from dentalmim.data.synth import generate_image

    paths = {}
    for i, kind in enumerate(KINDS):
        pixels = generate_image(np.random.default_rng(seed + i), kind, 1.0).pixels.astype(np.float32)
        paths[kind] = folder / f"{kind}.npy"
        np.save(paths[kind], pixels)
    return paths


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_cases(predictors: dict[int, Predictor], image: np.ndarray, runs: int, device: str,
               threshold: float | None = None) -> dict[int, dict[str, Any]]:
    """Time ``runs`` calls per tile batch, the batch sizes interleaved in rotating order."""
    out: dict[int, dict[str, Any]] = {b: {"latency_ms": []} for b in predictors}
    order = list(predictors)
    for run in range(runs):
        for b in order[run % len(order):] + order[:run % len(order)]:
            _sync(device)
            start = time.perf_counter()
            pred = predictors[b].predict(image, threshold=threshold)
            _sync(device)
            out[b]["latency_ms"].append((time.perf_counter() - start) * 1e3)
            out[b].update(num_tiles=pred.num_tiles, num_boxes=len(pred.boxes))
    return out


def cuda_memory(predictor: Predictor, image: np.ndarray, threshold: float | None) -> dict[str, float]:
    """Allocator peak growth of one prediction on CUDA, MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    predictor.predict(image, threshold=threshold)
    torch.cuda.synchronize()
    return {"peak_memory_mib": (torch.cuda.max_memory_allocated() - before) / 2**20,
            "resident_mib": before / 2**20}


def cpu_memory(image_path: Path, tile_batch: int, args: argparse.Namespace) -> dict[str, float]:
    """Peak RSS growth of one prediction in a fresh subprocess (see :func:`memory_child`)."""
    cmd = [sys.executable, __file__, "--memory-child", str(image_path), "--tile-batch", str(tile_batch),
           "--preset", args.preset, "--threads", str(args.threads)]
    cmd += ["--model", str(args.model)] if args.model else []
    cmd += ["--threshold", str(args.threshold)] if args.threshold is not None else []
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_child(args: argparse.Namespace) -> None:
    """Subprocess body: load model and image, warm up on one tile, print the RSS growth of one prediction."""
    predictor = build_predictor(args.preset, "cpu", args.tile_batch[0], args.model)
    image = np.load(args.memory_child)
    tile = int(predictor.metadata["tile_size"])
    predictor.predict(np.ascontiguousarray(image[:tile, :tile]))  # page in code, kernels and allocator pools
    reset_peak_rss()
    before = current_rss_mib()
    predictor.predict(image, threshold=args.threshold)
    peak = peak_rss_mib()
    print(json.dumps({"peak_memory_mib": peak - before, "resident_mib": before, "peak_rss_mib": peak}))


def summarise(kind: str, shape: tuple[int, ...], b: int, timing: dict[str, Any], memory: dict[str, float],
              baseline_p50: float | None) -> dict[str, Any]:
    """One result row: latency percentiles, throughput, tiles, memory and the speed-up over the baseline."""
    lat = np.array(timing["latency_ms"])
    p50 = float(np.percentile(lat, 50))
    row = {"image": kind, "size": f"{shape[1]}x{shape[0]}", "tile_batch": b, "num_tiles": timing["num_tiles"],
           "p50_ms": p50, "p95_ms": float(np.percentile(lat, 95)), "img_per_s": 1e3 / p50,
           "tiles_per_s": timing["num_tiles"] * 1e3 / p50, "num_boxes": timing.get("num_boxes"),
           "latency_ms": lat.tolist(), **memory}
    row["speedup_vs_naive"] = baseline_p50 / p50 if baseline_p50 else None
    return row


def run_device(device: str, images: dict[str, Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (image, tile batch) case on one device; ``tile_batch`` 1 (naive tiling) is the baseline."""
    predictors = {b: build_predictor(args.preset, device, b, args.model) for b in args.tile_batch}
    for predictor in predictors.values():  # once per predictor: the tile shapes are the same for every image
        for _ in range(args.warmup):
            predictor.predict(np.load(images[args.kinds[0]]), threshold=args.threshold)
    rows = []
    for kind in args.kinds:
        image = np.load(images[kind])
        timing = time_cases(predictors, image, args.runs, device, args.threshold)
        base = float(np.percentile(timing[1]["latency_ms"], 50)) if 1 in timing else None
        for b in args.tile_batch:
            if device == "cuda":
                memory = cuda_memory(predictors[b], image, args.threshold)
            else:
                memory = {"peak_memory_mib": None} if args.no_memory else cpu_memory(images[kind], b, args)
            rows.append(summarise(kind, image.shape, b, timing[b], memory, base))
            print(f"  {device} {kind} tile batch {b}: p50 {rows[-1]['p50_ms']:.0f} ms", flush=True)
    return rows


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"should be comma-separated integers >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("nano", "tiny", "small"), default="tiny",
                   help="encoder size of the untrained detector (default tiny; ignored with --model)")
    p.add_argument("--model", type=Path, default=None,
                   help="a trained model (.ckpt or model bundle) instead of the untrained detector")
    p.add_argument("--threshold", type=float, default=None,
                   help="per-tile box score threshold (default: the model's; 0.05 is what evaluation uses)")
    p.add_argument("--tile-batch", type=_int_list, default=[1, 8, 16],
                   help="tiles per forward pass, comma-separated; 1 = naive tiling, the baseline (default 1,8,16)")
    p.add_argument("--kinds", type=lambda t: [k for k in t.split(",") if k], default=list(KINDS),
                   help="images: bitewing,panoramic")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CPU, and CUDA if present")
    p.add_argument("--runs", type=int, default=3, help="timed calls per case (p50 / p95 over them)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per tile batch first (on the first image)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--memory-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = sorted(set(args.kinds) - set(KINDS))
    if args.model is not None and not args.model.is_file():
        p.error(f"--model: no such file {args.model}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error(f"--threshold should be in [0, 1], got {args.threshold}")
    if unknown or args.runs < 1 or args.warmup < 0:
        p.error(f"kinds should be in {KINDS}, runs >= 1 and warmup >= 0; got {args.kinds}, {args.runs}, {args.warmup}")
    return args


COLUMNS = [("image", "image"), ("size", "W x H"), ("num_tiles", "tiles"), ("tile_batch", "tile batch"),
           ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("img_per_s", "img/s"), ("tiles_per_s", "tiles/s"),
           ("num_boxes", "boxes"), ("speedup_vs_naive", "speed-up vs naive"), ("peak_memory_mib", "peak MiB")]


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return {}
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else \
        ["cpu" if args.device == "auto" else args.device]
    payloads = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(args.seed, Path(tmp))
        for device in devices:
            start = time.perf_counter()
            rows = run_device(device, images, args)
            config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "memory_child"}
            payload = {"benchmark": "predict_latency", "baseline": "naive tiling (tile_batch=1)", "device": device,
                       "precision": PRECISION[device], "machine": machine_info(device), "config": config,
                       "seconds": time.perf_counter() - start, "results": rows}  # fmt: skip
            name = f"predict_latency_{device}{'_trained' if args.model else ''}.json"
            out = write_json(payload, args.out_dir / name)
            machine = payload["machine"]
            model = f"model {args.model}" if args.model else f"untrained preset {args.preset}"
            threshold = "the model's" if args.threshold is None else args.threshold
            print(f"\n{machine.get('gpu_name') or machine['cpu_model']} ({device}, {PRECISION[device]}), {model}, "
                  f"score threshold {threshold}, torch threads {torch.get_num_threads()}, {args.runs} runs "
                  f"after {args.warmup} warmup")
            print(markdown_table(rows, COLUMNS))
            print(f"written to {out}")
            payloads[device] = payload
    return payloads


if __name__ == "__main__":
    main()
