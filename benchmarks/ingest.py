"""Benchmark: dentalmim.data.dicom.read_dicom vs MONAI LoadImage(reader="PydicomReader") per transfer syntax.

For every transfer syntax, ``--n`` realistic radiographs of each kind are written (a ~1500 x 1000 12-bit
intraoral image and a ~2900 x 1450 12-bit panoramic, from ``dentalmim.data.synth.generate_image`` when it works,
else a smooth random image), then both readers load them in the same process, interleaved, ``--repeats`` times;
the median images/s is reported. The baseline gets the same rendering afterwards in numpy (axes swapped back,
the file's linear window applied in float32) so both produce the same (H, W) float32 [0, 1] image; the largest
difference between the two outputs is reported as a check. Peak memory is the tracemalloc peak (numpy and
Python allocations; C decoders' internal buffers are not seen) of one extra read per side.

Usage::

    python benchmarks/ingest.py [--n 2] [--repeats 3] [--syntaxes explicit_le,jpeg_ls] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dentalmim.data.dicom import read_dicom  # noqa: E402
from dentalmim.data.encode import SUPPORTED_TRANSFER_SYNTAXES, encode_dataset, image_dataset, save_dicom  # noqa: E402

KINDS = {"intraoral": ("bitewing", (1500, 1000), 0.025), "panoramic": ("panoramic", (1450, 2900), 0.1)}
WINDOW = (2048.0, 4096.0)


def _image(kind: str, seed: int) -> tuple[np.ndarray, str]:
    """(H, W) uint16 12-bit stored values and where they came from."""
    synth_kind, shape, _ = KINDS[kind]
    try:
        from dentalmim.data.synth import generate_image

        pixels = generate_image(np.random.default_rng(seed), synth_kind, 1.0).pixels
        source = "dentalmim.data.synth.generate_image"
    except Exception as exc:  # stream A's generator missing or broken: a smooth random image
        rng = np.random.default_rng(seed)
        low = rng.random((shape[0] // 50 + 2, shape[1] // 50 + 2))
        pixels = np.kron(low, np.ones((50, 50)))[: shape[0], : shape[1]] + 0.02 * rng.standard_normal(shape)
        pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
        source = f"smooth random (synth unavailable: {type(exc).__name__})"
    return np.round(np.clip(pixels, 0, 1) * 4095).astype(np.uint16), source


def _write_files(root: Path, syntax: str, kind: str, pixels: np.ndarray, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        ds = image_dataset(pixels if syntax != "jpeg_baseline" else (pixels >> 4).astype(np.uint8),
                           bits_stored=12 if syntax != "jpeg_baseline" else 8,
                           modality="IO" if kind == "intraoral" else "PX",
                           pixel_spacing_mm=(KINDS[kind][2],) * 2)
        scale = 1.0 if syntax != "jpeg_baseline" else 1 / 16
        ds.WindowCenter, ds.WindowWidth = f"{WINDOW[0] * scale:g}", f"{WINDOW[1] * scale:g}"
        encode_dataset(ds, syntax, quality=90)
        paths.append(root / f"{syntax}_{kind}_{i}.dcm")
        save_dicom(ds, paths[-1])
    return paths


def _baseline_reader() -> Callable[[Path], np.ndarray]:
    from monai.transforms import LoadImage

    load = LoadImage(reader="PydicomReader", image_only=True)

    def read(path: Path) -> np.ndarray:
        tensor = load(str(path))
        meta = tensor.meta
        values = np.asarray(tensor.numpy(), dtype=np.float32).T  # PydicomReader swaps i/j: swap back
        center, width = _window_from(path, meta)
        values = (values - np.float32(center - 0.5 - (width - 1) / 2)) * np.float32(1.0 / (width - 1))
        return np.clip(values, 0.0, 1.0, out=values)

    return read


def _window_from(path: Path, meta: dict) -> tuple[float, float]:
    """The window written by _write_files (MONAI prunes it from the meta dict, so it is recomputed)."""
    return (WINDOW[0] / 16, WINDOW[1] / 16) if path.name.startswith("jpeg_baseline") else WINDOW


def _ours(path: Path) -> np.ndarray:
    return read_dicom(path).pixels


def _rate(reader: Callable[[Path], np.ndarray], paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        reader(path)
    return len(paths) / (time.perf_counter() - start)


def _peak_mb(reader: Callable[[Path], np.ndarray], path: Path) -> float:
    tracemalloc.start()
    reader(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _measure(paths: list[Path], baseline: Callable, repeats: int) -> dict:
    ours_rates, base_rates = [], []
    for _ in range(repeats):  # interleaved so drifts in machine load hit both sides alike
        ours_rates.append(_rate(_ours, paths))
        base_rates.append(_rate(baseline, paths))
    diff = float(np.abs(_ours(paths[0]) - baseline(paths[0])).max())
    ours, base = statistics.median(ours_rates), statistics.median(base_rates)
    return {"ours_img_s": ours, "baseline_img_s": base, "speed_ratio": ours / base,
            "ours_peak_mb": _peak_mb(_ours, paths[0]), "baseline_peak_mb": _peak_mb(baseline, paths[0]),
            "max_abs_diff": diff, "file_mb": paths[0].stat().st_size / 2**20}


def _machine() -> dict:
    import monai
    import pydicom
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__, "torch": torch.__version__, "monai": monai.__version__,
            "pydicom": pydicom.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2, help="files per syntax and kind")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--syntaxes", default=",".join(SUPPORTED_TRANSFER_SYNTAXES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = parser.parse_args(argv)
    syntaxes = [s.strip() for s in args.syntaxes.split(",") if s.strip()]
    unknown = sorted(set(syntaxes) - set(SUPPORTED_TRANSFER_SYNTAXES))
    if unknown or args.n < 1 or args.repeats < 1:
        parser.error(f"unknown syntaxes {unknown}" if unknown else "--n and --repeats should be >= 1")
    warnings.filterwarnings("ignore")
    baseline = _baseline_reader()
    images = {kind: _image(kind, seed) for seed, kind in enumerate(KINDS)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for syntax in syntaxes:
            for kind, (pixels, _) in images.items():
                paths = _write_files(Path(tmp), syntax, kind, pixels, args.n)
                _ours(paths[0]), baseline(paths[0])  # warm-up: plugin imports, page cache
                rows.append({"syntax": syntax, "kind": kind, "shape": list(pixels.shape),
                             **_measure(paths, baseline, args.repeats)})
                print(_format_row(rows[-1]), flush=True)
    result = {"benchmark": "ingest/read", "baseline": 'monai LoadImage(reader="PydicomReader") + numpy window',
              "n_per_cell": args.n, "repeats": args.repeats, "machine": _machine(),
              "image_source": {k: v[1] for k, v in images.items()}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{_table(rows)}\n\nwritten to {args.out}")
    return 0


_HEADER = (f"{'syntax':<18} {'kind':<10} {'ours img/s':>10} {'monai img/s':>11} {'ratio':>6} "
           f"{'ours MB':>8} {'monai MB':>8} {'max diff':>9}")


def _format_row(r: dict) -> str:
    return (f"{r['syntax']:<18} {r['kind']:<10} {r['ours_img_s']:>10.2f} {r['baseline_img_s']:>11.2f} "
            f"{r['speed_ratio']:>6.2f} {r['ours_peak_mb']:>8.1f} {r['baseline_peak_mb']:>8.1f} "
            f"{r['max_abs_diff']:>9.1e}")


def _table(rows: list[dict]) -> str:
    return "\n".join([_HEADER, "-" * len(_HEADER), *(_format_row(r) for r in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
