"""Service load test: N concurrent clients upload DICOMs over loopback to a real uvicorn server.

For each mode, a fresh server process (``uvicorn service.main:create_app --factory``) is started on a free port
with its own data folder and a clinician key (``dentalmim keys create``); then, for each client count (default 1,
8, 32, 64), every client uploads one DICOM per request, back to back, until ``--requests`` uploads per level are
done (at least 2 per client). Modes, side by side in one run:

* ``batched``: the micro-batcher (``DENTALMIM_BATCH_MAX_SIZE=--batch``, ``DENTALMIM_BATCH_MAX_WAIT_MS=--wait-ms``);
  the tiles of all images in a batch share forward passes;
* ``unbatched`` (the baseline): ``DENTALMIM_BATCH_MAX_SIZE=1``: the same single inference thread, one image at
  a time.

Both servers run side by side and the modes alternate level by level (batched, unbatched, batched, ...), so a
load that another job puts on the machine for a while hits both modes alike instead of one mode's whole run; the
1-minute load average before each level is recorded with it. ``--torch-threads`` sets ``DENTALMIM_TORCH_THREADS``
(CPU threads per forward pass; default 0: the service's default, every core but one).

Reported per (mode, clients): throughput (images/s), latency p50 / p95 / p99 (ms, client side, upload to
response), error count (any status but 201, or a transport error), and the server's resident memory (VmRSS)
before the level and after it. The model is a random-weight detector (``--model tiny``: 2 blocks, 64 px tiles, as
in the tests; ``--model vit-tiny``: ViT-Tiny with 256 px tiles as ``configs/finetune/caries_vit_tiny.yaml``); the
DICOMs are synthetic periapical-like radiographs (``dentalmim.data.synth``) at ``--scale``.

    python benchmarks/service_load.py                                  # tiny model, small images
    python benchmarks/service_load.py --model vit-tiny --scale 0.5 --clients 1,8,32,64 --requests 128

Writes ``benchmarks/results/service_load.json`` (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import RESULTS_DIR, machine_info, markdown_table, write_json


def build_model(kind: str, out: Path) -> Path:
    """A random-weight model bundle (untrained weights cost the same as trained ones)."""
    import torch

    from dentalmim.inference.predictor import save_model_bundle
    from dentalmim.models.detector import CariesDetector
    from dentalmim.models.vit import ViTEncoder

    torch.manual_seed(0)
    if kind == "tiny":
        encoder, tile = ViTEncoder(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2), 64
        detector = CariesDetector(encoder, num_classes=1, fpn_channels=32)
    else:
        encoder, tile = ViTEncoder(img_size=256, patch_size=16, embed_dim=192, depth=12, num_heads=3), 256
        detector = CariesDetector(encoder, num_classes=1)
    return save_model_bundle(detector, out / f"{kind}.safetensors",
                             {"tile_size": tile, "version": f"bench-{kind}", "class_names": ["caries"]})


def make_dicoms(n: int, scale: float) -> list[bytes]:
    """``n`` synthetic periapical radiographs as DICOM bytes (distinct files)."""
    import pydicom

    from dentalmim.data.encode import image_dataset
    from dentalmim.data.synth import generate_image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        image = generate_image(rng, "periapical", scale=scale)
        ds = image_dataset(np.round(image.pixels * 4095).astype(np.uint16), bits_stored=12,
                           pixel_spacing_mm=(image.spacing_mm, image.spacing_mm))
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """A uvicorn server process with its own data folder and a clinician key."""

    def __init__(self, model: Path, env_overrides: dict[str, str], workdir: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "DENTALMIM_DATA_DIR": str(workdir), "DENTALMIM_MODEL_PATH": str(model),
                    "DENTALMIM_LOG_LEVEL": "warning", "NO_ALBUMENTATIONS_UPDATE": "1", **env_overrides}
        self.env.pop("DATABASE_URL", None)
        created = subprocess.run([sys.executable, "-m", "dentalmim.cli", "keys", "create", "--role", "clinician"],
                                 env=self.env, check=True, capture_output=True, text=True, cwd=ROOT)
        self.key = created.stdout.strip().splitlines()[-1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            env=self.env, cwd=ROOT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def run_level(server: Server, dicoms: list[bytes], clients: int, total: int) -> dict[str, Any]:
    """``clients`` concurrent clients doing ``total`` uploads in all; latencies, errors, throughput."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            data = dicoms[i % len(dicoms)]
            start = time.perf_counter()
            try:
                r = await http.post("/v1/predictions", files=[("files", ("scan.dcm", data, "application/dicom"))],
                                    headers={"X-API-Key": server.key})
                if r.status_code != 201:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append((time.perf_counter() - start) * 1e3)

    async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=600) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"clients": clients, "requests": total, "ok": len(latencies), "errors": sum(errors.values()),
            "error_kinds": errors, "wall_s": round(wall, 2), "images_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99))}


def metric_value(server: Server, name: str) -> str:
    text = httpx.get(server.base + "/metrics", headers={"X-API-Key": server.key}, timeout=10).text
    return "; ".join(line for line in text.splitlines() if line.startswith(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "vit-tiny"), default="tiny")
    parser.add_argument("--scale", type=float, default=0.25, help="synthetic image size factor (1.0 = realistic)")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--requests", type=int, default=128, help="uploads per level (at least 2 per client)")
    parser.add_argument("--batch", type=int, default=16, help="micro-batch size of the batched mode")
    parser.add_argument("--wait-ms", type=float, default=10.0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--torch-threads", type=int, default=0, help="DENTALMIM_TORCH_THREADS of both servers")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "service_load.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dentalmim-load-") as tmp:
        model = build_model(args.model, Path(tmp))
        dicoms = make_dicoms(8, args.scale)
        sizes = sorted({len(d) for d in dicoms})
        modes = {"batched": {"DENTALMIM_BATCH_MAX_SIZE": str(args.batch),
                             "DENTALMIM_BATCH_MAX_WAIT_MS": str(args.wait_ms)},
                 "unbatched": {"DENTALMIM_BATCH_MAX_SIZE": "1", "DENTALMIM_BATCH_MAX_WAIT_MS": "0"}}
        common = {"DENTALMIM_DEVICE": args.device, "DENTALMIM_QUEUE_MAX": "1024",
                  "DENTALMIM_TORCH_THREADS": str(args.torch_threads)}
        servers: dict[str, Server] = {}
        try:
            for mode, env in modes.items():
                servers[mode] = Server(model, {**env, **common}, Path(tmp) / mode)
            for mode, server in servers.items():
                server.wait_ready()
                asyncio.run(run_level(server, dicoms, 2, 4))  # warm-up
            for clients in levels:
                for mode, server in servers.items():
                    load, before = os.getloadavg()[0], rss_mib(server.proc.pid)
                    row = asyncio.run(run_level(server, dicoms, clients, max(args.requests, 2 * clients)))
                    rows.append({"mode": mode, **row, "rss_before_mib": before,
                                 "rss_after_mib": rss_mib(server.proc.pid), "load_1min_before": round(load, 2)})
                    print(f"{mode:9s} clients={clients:3d} {row['images_per_s']:.2f} img/s p50={row['p50_ms']:.0f}"
                          f" ms errors={row['errors']} load={load:.2f}", flush=True)
            for mode, server in servers.items():
                last = next(r for r in reversed(rows) if r["mode"] == mode)
                last["batch_size_metrics"] = metric_value(server, "dentalmim_batch_size_sum") + "; " + metric_value(
                    server, "dentalmim_batch_size_count")
        finally:
            for server in servers.values():
                server.stop()
    for i, row in enumerate(rows):
        # the unbatched run of the same level (the next row; rounds of one client count stay paired)
        base = next(r for r in rows[i:] if r["mode"] == "unbatched" and r["clients"] == row["clients"])
        row["speedup_vs_unbatched"] = row["images_per_s"] / base["images_per_s"] if base["images_per_s"] else None
    columns = [("mode", "Mode"), ("clients", "Clients"), ("images_per_s", "Images/s"), ("p50_ms", "p50 ms"),
               ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("errors", "Errors"), ("rss_before_mib", "RSS before MiB"),
               ("rss_after_mib", "RSS after MiB"), ("speedup_vs_unbatched", "× unbatched")]
    print(markdown_table(rows, columns))
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and _cuda()) else "cpu"
    write_json({"benchmark": "service_load", "machine": machine_info(device), "model": args.model,
                "scale": args.scale, "dicom_bytes": sizes, "batch": args.batch, "wait_ms": args.wait_ms,
                "torch_threads": args.torch_threads,
                "rows": rows}, args.out)
    print(f"written {args.out}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
