"""Helpers shared by the benchmark scripts: machine description, robust timing, JSON results.

Benchmarks run dentalmim side by side with a named baseline in the same process, report the ratio and the machine
(see DESIGN.md), and write ``benchmarks/results/<name>_<device>.json``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Dense peak tensor throughput (TFLOP/s) by GPU name fragment: (bf16/fp16, tf32). Vendor datasheet numbers.
GPU_PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 494.7),
    "H100 SXM": (989.0, 494.7),
    "H100 80GB HBM3": (989.0, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100 NVL": (835.0, 417.5),
    "H100": (989.0, 494.7),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "A10G": (70.0, 35.0),
}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Describe the machine and library versions for a results file."""
    import torch

    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }
    for name in ("monai", "pytorch_lightning", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())  # fmt: skip
    return info


def gpu_peak_tflops(gpu_name: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of a GPU for ``bf16`` or ``fp32`` (TF32 tensor cores); None if unknown."""
    for fragment, (half, tf32) in GPU_PEAK_TFLOPS.items():
        if fragment in gpu_name:
            return half if precision.startswith("bf16") else tf32
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB: Linux ``VmHWM`` (reset by :func:`reset_peak_rss`).

    ``getrusage``'s ``ru_maxrss`` is only the fallback: on Linux a child process inherits its parent's value
    across fork and exec, so it cannot measure a subprocess on its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mib()


def time_window(step: Callable[[], None], n_steps: int, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per step over one window of ``n_steps`` consecutive calls of ``step``."""
    sync()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync()
    return (time.perf_counter() - start) / n_steps


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(values)


def write_json(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` as indented JSON (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` given as (key, header) pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
