"""MAE pretraining throughput: dentalmim's MaskedAutoencoder vs MONAI's MaskedAutoEncoderViT, configured identically.

Both models get the same encoder (patch, width, depth, heads, MLP 4x, qkv bias), decoder (width, depth, heads,
MLP 4x), mask ratio, image size, batch, precision, the same loss (MSE on removed patches, per-patch normalised
targets) and the same AdamW; one training step = forward + backward + optimiser step on a fixed batch (data
loading is not measured). Windows of the two models are interleaved (order alternating) after warmup steps,
and the median window is reported. Peak memory: on CPU the peak RSS growth of a fresh subprocess per model
over its resident size between steps (weights, optimiser state, code) — i.e. the activation peak, measured after a
warmup step; on CUDA ``torch.cuda.max_memory_allocated``. Model FLOPs are counted analytically
(3 x forward matmul FLOPs, attention included) for the standard MAE step, the same for both models: dentalmim skips
work nothing reads (the removed patches' embedding, the visible tokens' last decoder block and head; 4.4 % of the
FLOPs for ViT-Tiny at 224 px, 0.7 % for ViT-B with its 128-wide decoder; ``dentalmim_executed_gflops_per_image``),
which its TFLOP/s and MFU do not subtract. On a GPU the MFU against the datasheet dense peak is reported.

    python benchmarks/pretrain_throughput.py --device cpu --img-size 224 128 --batch 16 --preset tiny
    python benchmarks/pretrain_throughput.py --device cuda --precision bf16 --preset base --batch 256
    python benchmarks/pretrain_throughput.py --img-size 224 --threads 1 --compile     # both models compiled
    python benchmarks/pretrain_throughput.py --img-size 224 --threads 1 --profile 5   # where a step's time goes

Precision: ``fp32``; ``bf16`` (weights, activations and optimiser state in bf16, both models); ``bf16-mixed``
(fp32 weights under bf16 autocast, as dentalmim trains on GPU — MONAI's MAE fails under autocast: its mask-token
``index_put`` mixes fp32 and bf16, which the results record). MONAI's ViT blocks need ``einops``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, current_rss_mib, gpu_peak_tflops, machine_info, markdown_table, median, peak_rss_mib,
    reset_peak_rss, time_window, write_json,
)  # fmt: skip

from dentalmim.models.mim import MaskedAutoencoder, random_masking  # noqa: E402
from dentalmim.models.mim_losses import MAELoss  # noqa: E402
from dentalmim.models.vit import VIT_PRESETS, ViTEncoder  # noqa: E402

MODELS = ("dentalmim", "monai")
#: With ``--full-step``: dentalmim's MAE running the standard step (every patch embedded, every token decoded),
#: to measure what skipping the unread work buys, in the same process.
FULL_STEP = "dentalmim_full"


def standard_mae_loss(model: MaskedAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The standard MAE step of ``model`` on ``x``: all patches embedded, then masked; all tokens decoded."""
    tokens, mask, ids_restore = random_masking(model.encoder.embed_patches(x), model.mask_ratio)
    pred = model.forward_decoder(model.encoder.forward_tokens(tokens), ids_restore, model.encoder.grid_of(x))
    return model.forward_loss(x, pred, mask)


def build(name: str, args: argparse.Namespace, img_size: int) -> tuple[torch.nn.Module, Any]:
    """The model and a ``loss(x) -> scalar`` closure for ``name`` in :data:`MODELS` or :data:`FULL_STEP`."""
    torch.manual_seed(0)
    enc = VIT_PRESETS[args.preset]
    d, depth, heads = enc["embed_dim"], enc["depth"], enc["num_heads"]
    if name in ("dentalmim", FULL_STEP):
        encoder = ViTEncoder(img_size, args.patch, 1, d, depth, heads, 4.0, True)
        model = MaskedAutoencoder(encoder, args.mask_ratio, args.decoder_dim, args.decoder_depth, args.decoder_heads)
        return model, (lambda x: model(x).loss) if name == "dentalmim" else (lambda x: standard_mae_loss(model, x))
    try:
        from monai.networks.nets import MaskedAutoEncoderViT
    except ImportError as exc:  # pragma: no cover - environment dependent
        raise SystemExit(f"MONAI's MaskedAutoEncoderViT cannot be imported ({exc}).") from None
    model = MaskedAutoEncoderViT(
        in_channels=1, img_size=img_size, patch_size=args.patch, hidden_size=d, mlp_dim=4 * d, num_layers=depth,
        num_heads=heads, masking_ratio=args.mask_ratio, decoder_hidden_size=args.decoder_dim,
        decoder_mlp_dim=4 * args.decoder_dim, decoder_num_layers=args.decoder_depth,
        decoder_num_heads=args.decoder_heads, spatial_dims=2, qkv_bias=True,
    )  # fmt: skip
    loss_fn = MAELoss(args.patch, norm_pix_loss=True)

    def loss(x: torch.Tensor) -> torch.Tensor:
        pred, mask = model(x)
        return loss_fn(x, pred, mask)

    return model, loss


def make_step(model: torch.nn.Module, loss, args: argparse.Namespace, img_size: int):
    """A closure running one training step on a fixed random batch."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model.to(device=device, dtype=dtype).train()
    x = torch.rand(args.batch, 1, img_size, img_size, device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    mixed = args.precision == "bf16-mixed"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if mixed else contextlib.nullcontext
    loss = torch.compile(loss) if args.compile else loss  # compiled on the first (warm-up) step

    def step() -> None:
        with autocast():
            value = loss(x)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_flops_per_image(args: argparse.Namespace, img_size: int) -> float:
    """Analytic training FLOPs per image: 3 x forward matmul FLOPs (encoder on visible tokens, full decoder).

    Counts every matmul (attention scores and values included) as 2 FLOPs per multiply-add; elementwise ops,
    norms and softmax are not counted, as usual for MFU.
    """
    enc = VIT_PRESETS[args.preset]
    d, depth, dd, p2 = enc["embed_dim"], enc["depth"], args.decoder_dim, args.patch**2
    n_patches = (img_size // args.patch) ** 2
    ne = 1 + max(1, int(n_patches * (1 - args.mask_ratio)))
    nd = 1 + n_patches

    def block(n: int, w: int) -> float:
        return 24.0 * n * w * w + 4.0 * n * n * w

    embed = 2.0 * n_patches * p2 * d
    forward = embed + depth * block(ne, d) + 2.0 * ne * d * dd
    forward += args.decoder_depth * block(nd, dd) + 2.0 * n_patches * dd * p2
    return 3.0 * forward - embed  # backward is 2x forward, less the image gradient nobody needs


def skipped_flops_per_image(args: argparse.Namespace, img_size: int) -> float:
    """Training FLOPs per image of the standard step that dentalmim's MAE does not execute (nothing reads them).

    The removed patches' embedding (forward and weight gradient), and in the last decoder block the cls and visible
    tokens' queries, attention rows, output projection and MLP, and their pixel head rows (each x 3 for training).
    """
    enc = VIT_PRESETS[args.preset]
    d, dd, p2 = enc["embed_dim"], args.decoder_dim, args.patch**2
    n_patches = (img_size // args.patch) ** 2
    kept = max(1, int(n_patches * (1 - args.mask_ratio)))
    tokens, unread = 1 + n_patches, 1 + kept  # decoder tokens; those whose last-block outputs nothing reads
    embed = 2.0 * (n_patches - kept) * p2 * d
    last_block = 20.0 * unread * dd * dd + 4.0 * unread * tokens * dd
    head = 2.0 * kept * dd * p2
    return 2.0 * embed + 3.0 * (last_block + head)


def sync_fn(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def measure_memory(name: str, args: argparse.Namespace, img_size: int) -> dict[str, float]:
    """Peak memory of a few training steps: CUDA allocator peak, or RSS growth of a fresh subprocess on CPU."""
    if args.device.startswith("cuda"):
        model, loss = build(name, args, img_size)
        step = make_step(model, loss, args, img_size)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        del model, step
        torch.cuda.empty_cache()
        return {"peak_memory_mib": peak}
    cmd = [sys.executable, __file__, "--memory-child", name, "--img-size", str(img_size), *_forwarded(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _forwarded(args: argparse.Namespace) -> list[str]:
    return ["--device", args.device, "--precision", args.precision, "--batch", str(args.batch), "--preset",
            args.preset, "--patch", str(args.patch), "--mask-ratio", str(args.mask_ratio), "--decoder-dim",
            str(args.decoder_dim), "--decoder-depth", str(args.decoder_depth), "--decoder-heads",
            str(args.decoder_heads), "--threads", str(torch.get_num_threads()),
            *(["--compile"] if args.compile else [])]  # fmt: skip


def memory_child(args: argparse.Namespace) -> None:
    """Subprocess body: build one model, run steps, print its RSS growth as JSON."""
    img_size = args.img_size[0]
    model, loss = build(args.memory_child, args, img_size)
    step = make_step(model, loss, args, img_size)
    step()  # page in the kernels' code and allocator pools
    reset_peak_rss()
    before = current_rss_mib()
    for _ in range(3):
        step()
    peak = peak_rss_mib()
    print(json.dumps({"peak_memory_mib": peak - before, "peak_rss_mib": peak, "rss_between_steps_mib": before}))


#: Profiler operator names counted as matrix multiplies and as attention (fused kernel, or bmm + softmax).
GEMM_OPS = ("aten::mm", "aten::addmm")
ATTENTION_OPS = ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data")


def profile_steps(step, n: int) -> dict[str, float]:
    """Self CPU seconds of ``n`` steps under ``torch.profiler``: in all, in GEMMs, in attention, and the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
    attention = sum(e.self_cpu_time_total for e in events
                    if e.key in ATTENTION_OPS or "scaled_dot_product" in e.key) / 1e6
    return {"steps": n, "total_s": total, "gemm_s": gemm, "attention_s": attention,
            "other_s": total - gemm - attention}


def run_size(args: argparse.Namespace, img_size: int) -> dict[str, Any]:
    """Interleaved timing, memory and FLOPs of both models at one image size."""
    steps, errors = warm_up(args, img_size)
    sync = sync_fn(args.device)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for window in range(args.windows):
        for name in args.models if window % 2 == 0 else args.models[::-1]:
            if name in steps:
                seconds[name].append(time_window(steps[name], args.steps, sync))
    profiles = {name: profile_steps(step, args.profile) for name, step in steps.items()} if args.profile else {}
    del steps
    flops = train_flops_per_image(args, img_size)
    executed = flops - skipped_flops_per_image(args, img_size)
    row: dict[str, Any] = {"img_size": img_size, "batch": args.batch, "train_gflops_per_image": flops / 1e9,
                           "dentalmim_executed_gflops_per_image": executed / 1e9}
    for name, error in errors.items():
        row[f"{name}_error"] = error
    for name in seconds:
        ips = args.batch / median(seconds[name])
        row[f"{name}_img_per_s"] = ips
        row[f"{name}_tflops_per_s"] = ips * flops / 1e12
        row[f"{name}_peak_memory_mib"] = measure_memory(name, args, img_size)["peak_memory_mib"]
        row[f"{name}_window_s"] = seconds[name]
        if name in profiles:
            row[f"{name}_profile"] = profiles[name]
        if args.peak_tflops:
            row[f"{name}_mfu"] = ips * flops / (args.peak_tflops * 1e12)
    if not errors:
        row["speedup"] = row["dentalmim_img_per_s"] / row["monai_img_per_s"]
        row["memory_ratio"] = row["monai_peak_memory_mib"] / max(row["dentalmim_peak_memory_mib"], 1e-9)
        if FULL_STEP in seconds:
            row["speedup_vs_full_step"] = row["dentalmim_img_per_s"] / row[f"{FULL_STEP}_img_per_s"]
    return row


def warm_up(args: argparse.Namespace, img_size: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Build both models and run their untimed steps; a model that fails (e.g. MONAI's MAE under bf16
    autocast) is reported with its error instead of timed."""
    steps, errors = {}, {}
    for name in args.models:
        step = make_step(*build(name, args, img_size), args, img_size)
        try:
            for _ in range(args.warmup):
                step()
        except RuntimeError as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            continue
        steps[name] = step
    return steps, errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "bf16-mixed"), default="fp32",
                   help="fp32; bf16 = weights, activations and optimiser in bf16 (both models); "
                   "bf16-mixed = fp32 weights under bf16 autocast (how dentalmim trains on GPU)")
    p.add_argument("--img-size", type=int, nargs="+", default=[224, 128])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--preset", choices=tuple(VIT_PRESETS), default="tiny")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--decoder-dim", type=int, default=128)
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows per model (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--full-step", action="store_true",
                   help=f"also time dentalmim's MAE on the standard step ({FULL_STEP}: nothing skipped)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model's loss (inductor)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N steps per model on the CPU: seconds in GEMMs, attention and the rest")
    p.add_argument("--memory-child", choices=(*MODELS, FULL_STEP), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = (*MODELS, FULL_STEP) if args.full_step else MODELS
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return {}
    if args.device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # fp32 runs use TF32 tensor cores, for both models
    machine = machine_info(args.device)
    args.peak_tflops = gpu_peak_tflops(machine.get("gpu_name", ""), args.precision) if "gpu_name" in machine else None
    rows = [run_size(args, size) for size in args.img_size]
    config = {k: v for k, v in vars(args).items() if k not in ("out", "memory_child", "models")}
    payload = {"benchmark": "pretrain_throughput", "machine": machine, "config": config, "results": rows}
    device_tag = "cuda" if args.device.startswith("cuda") else "cpu"
    out = write_json(payload, args.out or RESULTS_DIR / f"pretrain_throughput_{device_tag}.json")
    columns = [("img_size", "img"), ("batch", "batch"), ("dentalmim_img_per_s", "dentalmim img/s"),
               ("monai_img_per_s", "MONAI img/s"), ("speedup", "speedup"),
               ("dentalmim_peak_memory_mib", "dentalmim peak MiB"), ("monai_peak_memory_mib", "MONAI peak MiB"),
               ("train_gflops_per_image", "GFLOP/img"), ("dentalmim_tflops_per_s", "dentalmim TFLOP/s")]  # fmt: skip
    if args.peak_tflops:
        columns += [("dentalmim_mfu", "dentalmim MFU"), ("monai_mfu", "MONAI MFU")]
    if args.full_step:
        columns += [(f"{FULL_STEP}_img_per_s", "full-step img/s"), ("speedup_vs_full_step", "vs full step"),
                    (f"{FULL_STEP}_peak_memory_mib", "full-step peak MiB")]
    print(f"{machine.get('gpu_name') or machine['cpu_model']}, {args.precision}, preset {args.preset}, "
          f"patch {args.patch}, mask {args.mask_ratio}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(markdown_table(rows, columns))
    for row in rows:
        for name in args.models:
            if f"{name}_profile" in row:
                prof = row[f"{name}_profile"]
                print(f"{row['img_size']} px, {name}, {prof['steps']} steps: {prof['total_s']:.2f} s, GEMMs "
                      f"{prof['gemm_s']:.2f} s, attention {prof['attention_s']:.2f} s, other {prof['other_s']:.2f} s")
    print(f"written to {out}")
    return payload


if __name__ == "__main__":
    main()
