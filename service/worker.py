"""``dentalmim worker``: runs the jobs of the database queue, one at a time, in its own process.

Run one worker per GPU (``CUDA_VISIBLE_DEVICES=N dentalmim worker``); workers on other machines that share the
database (``DATABASE_URL``) and the data folder take jobs from the same queue (claims are atomic, see
:mod:`dentalmim.jobs`). Training runs as a ``dentalmim finetune`` / ``dentalmim pretrain`` subprocess (LightningCLI:
``DENTALMIM_RETRAIN_OVERRIDES='["--trainer.devices", "4", "--trainer.strategy", "ddp"]'`` trains across GPUs), so
a cancellation stops it at once and its memory is freed. While a job runs, a heartbeat thread renews its lease
and watches for cancellation; a worker that dies leaves a job whose lease expires, and the next worker start (and
every queue check) marks it failed with the reason.

``retrain``: export the dataset (minus any scan of the held-out set) -> optional MAE pretraining on its scans
(continued from the encoder of the current model or of the given encoder, with that encoder's architecture; fresh
from the pretraining config with ``init: scratch``) -> fine-tune (from the current model with the continued encoder
swapped in, from an encoder or from scratch) -> register a candidate with config, data snapshot and
parent -> evaluate candidate and current on the held-out set (the current's metrics are cached per held-out hash)
-> the gate (:func:`dentalmim.registry.gate_decision`) -> promote, or keep it a candidate with the reason.
``evaluate``: a version on a dataset -> a report (``/v1/reports/{id}``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from dentalmim import jobs
from dentalmim.db import make_engine, session_factory, upgrade
from dentalmim.db.models import Job, Report, utcnow
from dentalmim.errors import DentalMimError
from dentalmim.registry import (
    ModelRegistry,
    RegistryError,
    VersionInfo,
    gate_decision,
    metric_value,
)
from service.services import datasets as data_logic
from service.settings import Settings
from service.storage import ScanStore

log = logging.getLogger(__name__)


class JobCancelledError(DentalMimError):
    """The job was cancelled (DELETE /v1/jobs/{id})."""


class JobFailedError(DentalMimError):
    """The job cannot complete; the message is its reason."""


class JobContext:
    """One running job: heartbeat thread, cancellation, subprocesses with their log, progress reports."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker, self.job = worker, job
        self.dir = worker.settings.data_dir / "jobs" / job.id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cancelled = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._done = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"heartbeat-{job.id}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        period = self.worker.settings.worker_heartbeat_seconds
        while not self._done.wait(period):
            try:
                if jobs.heartbeat(self.worker.sessions, self.job.id, self.worker.worker_id):
                    self.cancelled.set()
                    proc = self._proc
                    if proc is not None and proc.poll() is None:
                        proc.terminate()
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not kill the job
                log.warning("heartbeat of %s failed (%s)", self.job.id, type(exc).__name__)

    def close(self) -> None:
        self._done.set()
        self._beat.join(timeout=5)

    def check(self) -> None:
        """Raises :class:`JobCancelledError` when cancellation was requested."""
        if self.cancelled.is_set():
            raise JobCancelledError("cancelled on request")

    def say(self, message: str, *, stage: str | None = None, progress: float | None = None,
            metrics: dict[str, Any] | None = None) -> None:
        """Logs a line to the job's log tail (and updates stage / progress / metrics)."""
        jobs.report(self.worker.sessions, self.job.id, stage=stage, progress=progress, metrics=metrics,
                    log=f"[{utcnow().strftime('%H:%M:%S')}] {message}\n")

    def run(self, args: list[str], name: str, progress: tuple[float, float], run_dir: Path | None = None,
            total_steps: int | None = None) -> None:
        """Runs ``dentalmim ARGS`` as a subprocess, streaming its output into the log tail and its step / loss
        (Lightning's CSV log under ``run_dir``) into progress and metrics; cancellation terminates it."""
        self.check()
        log_path = self.dir / f"{name}.log"
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
        preexec = _die_with_parent if sys.platform == "linux" else None  # runs prctl only: safe with threads
        with open(log_path, "ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "dentalmim.cli", *args], stdout=out,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                          preexec_fn=preexec)  # noqa: PLW1509
            offset = 0
            while True:
                try:
                    code = self._proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    code = None
                offset = self._pump(log_path, offset)
                if run_dir is not None and total_steps:
                    self._progress(run_dir, total_steps, progress)
                if code is not None:
                    break
        self._proc = None
        self.check()
        if code != 0:
            raise JobFailedError(f"{name} failed ({_exit_reason(code)}): {_log_reason(log_path)}")

    def _pump(self, path: Path, offset: int) -> int:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        if chunk:
            text = chunk.decode("utf-8", "replace").replace("\r", "\n")
            lines = [ln for ln in text.splitlines() if ln.strip()][-20:]
            jobs.report(self.worker.sessions, self.job.id, log="\n".join(lines) + "\n")
        return offset + len(chunk)

    def _progress(self, run_dir: Path, total: int, span: tuple[float, float]) -> None:
        latest = read_csv_metrics(run_dir)
        if latest:
            step = int(latest.get("step", 0))
            jobs.report(self.worker.sessions, self.job.id, progress=span[0] + (span[1] - span[0]) * step / total,
                        metrics={k: v for k, v in latest.items() if k != "step"})


def _exit_reason(code: int) -> str:
    """``exit N``, or the signal that killed the process (SIGKILL is what the kernel's OOM killer sends)."""
    if code >= 0:
        return f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (", possibly out of memory" if -code == signal.SIGKILL else "")


def _log_reason(log_path: Path, lines: int = 3) -> str:
    """The last lines of a subprocess log that say something: progress-bar redraws and blank lines dropped."""
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    kept = [line.strip() for line in re.split(r"[\r\n]+", text)
            if line.strip() and not _PROGRESS_BAR.search(line)]
    return " | ".join(kept[-lines:])[-600:] or "no output"


#: A tqdm progress-bar redraw (``Epoch 3:  71%|███▌ | 5/7 [00:03<00:01, 1.5it/s, ...]``).
_PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d*|\d+(\.\d+)?(it/s|s/it)")


def _die_with_parent() -> None:
    """In the training subprocess (Linux): get SIGKILL when the worker dies, so no orphan keeps the GPU."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def read_csv_metrics(run_dir: Path) -> dict[str, float]:
    """The last value of each metric in Lightning's CSV logs under ``run_dir`` (``step`` included)."""
    latest: dict[str, float] = {}
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        try:
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    for key, value in row.items():
                        if value not in (None, "") and (key == "step" or key.startswith(("train/loss", "val/"))):
                            latest[key] = float(value)
        except (OSError, ValueError):
            continue
    return latest


class Worker:
    """The queue consumer (see the module docstring).

    Args:
        settings: the service settings (same environment as ``dentalmim serve``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        upgrade(self.engine)
        self.sessions = session_factory(self.engine)
        self.store = ScanStore(settings.data_dir)
        self.registry = ModelRegistry(self.sessions, settings.data_dir)
        self.worker_id = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stop = threading.Event()

    def recover(self) -> list[str]:
        """Fails jobs of dead workers (lease expired); returns their ids."""
        failed = jobs.fail_stale(self.sessions, self.settings.worker_lease_seconds)
        for job_id in failed:
            log.warning("job %s failed: its worker stopped (lease expired)", job_id)
        return failed

    def run(self, *, max_jobs: int | None = None, idle_exit: bool = False) -> int:
        """Runs jobs until stopped (or ``max_jobs`` done, or the queue is empty with ``idle_exit``)."""
        done = 0
        log.info("worker %s started", self.worker_id)
        while not self.stop.is_set():
            self.recover()
            job = jobs.claim(self.sessions, self.worker_id)
            if job is None:
                if idle_exit:
                    break
                self.stop.wait(self.settings.worker_poll_seconds)
                continue
            self.run_job(job)
            done += 1
            if max_jobs is not None and done >= max_jobs:
                break
        return done

    def run_job(self, job: Job) -> None:
        """Runs one claimed job to a final state."""
        ctx = JobContext(self, job)
        log.info("job %s (%s) started", job.id, job.kind)
        try:
            runner = {"retrain": run_retrain, "evaluate": run_evaluate}[job.kind]
            result = runner(ctx, dict(job.params))
            ctx.say("done", stage="succeeded", progress=1.0)
            jobs.finish(self.sessions, job.id, "succeeded", result=result)
        except JobCancelledError as exc:
            jobs.finish(self.sessions, job.id, "cancelled", error=str(exc))
        except DentalMimError as exc:
            ctx.say(f"failed: {exc}")
            jobs.finish(self.sessions, job.id, "failed", error=str(exc))
        except Exception as exc:
            log.exception("job %s crashed", job.id)
            jobs.finish(self.sessions, job.id, "failed", error=f"internal error ({type(exc).__name__}: {exc})")
        finally:
            ctx.close()
        log.info("job %s finished", job.id)


# -- evaluation -------------------------------------------------------------------------------------------------

def evaluate_version(ctx: JobContext, info: VersionInfo, coco: Path, dataset: str, dataset_sha: str
                     ) -> tuple[str, dict[str, Any]]:
    """Evaluates a registered version on a COCO set; writes the report atomically and records it."""
    from dentalmim.evaluation.evaluate import evaluate_model
    from dentalmim.inference.predictor import Predictor

    worker = ctx.worker
    model_path = worker.registry.file_path(info)
    if not worker.registry.verify(info):
        raise JobFailedError(f"the file of {info.version} is missing or does not match its sha256")
    report_id = f"rpt_{secrets.token_hex(12)}"
    reports = worker.settings.data_dir / "reports"
    tmp = reports / f".tmp-{report_id}"
    predictor = Predictor.from_checkpoint(model_path, device=worker.settings.device,
                                          precision=worker.settings.precision)
    try:
        result = evaluate_model(predictor, coco, tmp, model_path=model_path, n_boot=worker.settings.eval_bootstrap,
                                progress=False)
        ctx.check()  # a job cancelled while it evaluated ends cancelled, without a report
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written report folder is left behind
        raise
    os.replace(tmp, reports / report_id)
    metrics = _finite(json.loads(json.dumps(result.metrics, default=float)))
    with worker.sessions.begin() as session:
        session.add(Report(id=report_id, job_id=ctx.job.id, model_version=info.version, dataset=dataset,
                           dataset_sha256=dataset_sha, path=f"reports/{report_id}", metrics=metrics,
                           created_at=utcnow()))
    return report_id, metrics


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become null (the API refuses non-finite numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metric_value(metrics, k) for k in ("froc_fom", "sensitivity_at_1fp", "ap50", "auroc")}


def run_evaluate(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate`` job: a report of a model version (default: current) on a labeled dataset."""
    worker = ctx.worker
    name = params.get("version") or worker.registry.current_version()
    if name is None:
        raise JobFailedError("no model version given and none is current")
    info = worker.registry.get(name)
    ctx.say(f"exporting dataset {params['dataset']}", stage="data", progress=0.05)
    with worker.sessions() as session:
        data = data_logic.materialize(session, worker.store, params["dataset"], ctx.dir / "data")
    if data.coco_path is None:
        raise JobFailedError(f"dataset {params['dataset']!r} has no labeled scans to evaluate on")
    ctx.check()
    ctx.say(f"evaluating {name} on {len(data.labeled_scans)} scans", stage="evaluate", progress=0.2)
    report_id, metrics = evaluate_version(ctx, info, data.coco_path, params["dataset"], data.snapshot["sha256"])
    ctx.say(f"report {report_id}", metrics=_headline(metrics))
    return {"report_id": report_id, "version": name, "dataset": params["dataset"], "metrics": _headline(metrics),
            "links": {"html": f"/v1/reports/{report_id}", "pdf": f"/v1/reports/{report_id}/report.pdf"}}


# -- retraining -------------------------------------------------------------------------------------------------

def _configs() -> Path:
    from dentalmim.pipeline import CONFIGS

    return CONFIGS


def _continue_args(source: Path) -> list[str]:
    """``dentalmim pretrain`` arguments that continue from ``source``'s encoder with its exact architecture."""
    from dentalmim.training.export import ARCH_DEFAULTS, read_encoder_weights

    cfg = {**ARCH_DEFAULTS, **read_encoder_weights(source)[0]}
    return ["--model.init_encoder", str(source), *(arg for key in ("img_size", "patch_size", "embed_dim", "depth",
            "num_heads", "pos_embed", "stem") for arg in (f"--model.{key}", str(cfg[key])))]  # fmt: skip


def _pretrain(ctx: JobContext, data: data_logic.Materialized, params: dict[str, Any], source: Path | None,
              label: str) -> tuple[Path, dict[str, Any]]:
    """MAE pretraining on the dataset's scans (unlabeled and labeled, without labels) -> exported encoder.

    Args:
        source: weight file whose encoder pretraining continues from (``--model.init_encoder``; its architecture
            overrides the config's, placed after the operator's overrides); None = a fresh encoder of the config.
        label: ``source`` as the log and result name it.

    Returns:
        The exported encoder and what was done (``{"mode": "continued" | "fresh", "init_encoder", "steps"}``).
    """
    from dentalmim.training.export import export_encoder

    s = ctx.worker.settings
    folder = ctx.dir / "pretrain_data"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with ctx.worker.sessions() as session:  # the held-out scans are never trained on, by pretraining either
        held_out = {d.scan_id for d, _ in data_logic.dataset_rows(session, s.holdout_dataset)}
        rows = [(d, scan) for d, scan in data_logic.dataset_rows(session, params["dataset"])
                if d.scan_id not in held_out]
    for i, (_, scan) in enumerate(rows):
        (folder / f"{i:06d}.dcm").symlink_to(ctx.worker.store.path(scan.path))
    run_dir = ctx.dir / "pretrain"
    config = s.pretrain_config or _configs() / "pretrain" / "mae_vit_tiny.yaml"
    steps = int(params["pretrain_steps"])
    arch = _continue_args(source) if source is not None else []
    how = f"continuing from the encoder of {label}" if source is not None else "from a fresh encoder"
    ctx.say(f"MAE pretraining on {len(rows)} scans, {steps} steps, {how}", stage="pretrain", progress=0.05)
    ctx.run(["pretrain", "fit", "--config", str(config), "--data.data_dir", str(folder), "--trainer.default_root_dir",
             str(run_dir), "--trainer.max_steps", str(steps), "--seed_everything", str(params.get("seed", 0)),
             *s.pretrain_overrides, *arch], "pretrain", (0.05, 0.3), run_dir, steps)
    encoder = export_encoder(run_dir / "checkpoints" / "last.ckpt", ctx.dir / "encoder.safetensors")
    return encoder, {"mode": "continued" if source is not None else "fresh",
                     "init_encoder": label if source is not None else None, "steps": steps}


def _swap_encoder(ctx: JobContext, model: Path, encoder: Path) -> Path:
    """A bundle of ``model`` (weights, classes, thresholds) with the encoder weights of ``encoder``."""
    from dentalmim.inference.predictor import load_model, save_model_bundle
    from dentalmim.training.export import init_encoder_from

    detector, meta = load_model(model)
    init_encoder_from(detector.encoder, encoder, field="the continued encoder")
    return save_model_bundle(detector, ctx.dir / "init_model.safetensors", metadata=meta)


def _finetune(ctx: JobContext, coco: Path, init_args: list[str], params: dict[str, Any]) -> Path:
    s = ctx.worker.settings
    run_dir = ctx.dir / "finetune"
    config = s.retrain_config or _configs() / "finetune" / "caries_vit_tiny.yaml"
    steps = int(params["steps"])
    ctx.say(f"fine-tuning, {steps} steps", stage="finetune", progress=0.3)
    ctx.run(["finetune", "fit", "--config", str(config), "--data.coco_path", str(coco), "--trainer.default_root_dir",
             str(run_dir), "--trainer.max_steps", str(steps), "--seed_everything", str(params.get("seed", 0)),
             *init_args, *s.retrain_overrides], "finetune", (0.3, 0.7), run_dir, steps)
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    model = best[-1] if best else run_dir / "checkpoints" / "last.ckpt"
    if not model.is_file():
        raise JobFailedError("fine-tuning wrote no checkpoint")
    return model


def _holdout_metrics(ctx: JobContext, info: VersionInfo, holdout: data_logic.Materialized) -> dict[str, Any]:
    """A version's held-out metrics, cached in the registry per held-out hash."""
    sha = holdout.snapshot["sha256"]
    if info.holdout_sha256 == sha and info.metrics is not None:
        return info.metrics
    ctx.say(f"evaluating {info.version} on the held-out set", stage="gate")
    _, metrics = evaluate_version(ctx, info, holdout.coco_path, ctx.worker.settings.holdout_dataset, sha)
    ctx.worker.registry.set_metrics(info.version, metrics, sha)
    return metrics


def _gate(ctx: JobContext, candidate: VersionInfo, current: VersionInfo | None, promote: bool) -> dict[str, Any]:
    """Held-out evaluation of both models, the gate decision, and the promotion (compare-and-set)."""
    s, registry = ctx.worker.settings, ctx.worker.registry
    with ctx.worker.sessions() as session:
        holdout = data_logic.materialize(session, ctx.worker.store, s.holdout_dataset, ctx.dir / "holdout")
    if holdout.coco_path is None and current is not None:
        reason = f"no held-out evaluation set (dataset {s.holdout_dataset!r} has no labeled scans)"
        registry.set_gate(candidate.version, {"accepted": False, "reason": reason}, rejected=False)
        return {"promoted": False, "reason": reason, "gate": None}
    cand_metrics = _holdout_metrics(ctx, candidate, holdout) if holdout.coco_path is not None else None
    cur_metrics = _holdout_metrics(ctx, current, holdout) if current is not None else None
    ctx.check()
    decision = gate_decision(cand_metrics, cur_metrics, metric=s.gate_metric, tolerance=s.gate_tolerance,
                             has_current=current is not None)
    registry.set_gate(candidate.version, decision.to_dict(), rejected=not decision.accepted)
    ctx.say(f"gate: {'accepted' if decision.accepted else 'refused'} ({decision.reason})", stage="gate",
            metrics={"holdout_" + s.gate_metric: decision.candidate})
    out = {"promoted": False, "reason": decision.reason, "gate": decision.to_dict(),
           "holdout_metrics": _headline(cand_metrics) if cand_metrics else None}
    if not decision.accepted:
        out["reason"] = f"kept as a candidate: {decision.reason}"
        return out
    if not promote:
        out["reason"] = f"gate accepted ({decision.reason}) but promote='never'"
        return out
    try:
        registry.promote(candidate.version, actor=f"worker:{ctx.worker.worker_id}", reason=f"gate: {decision.reason}",
                         expected_current=current.version if current else None)
    except RegistryError as exc:
        out["reason"] = f"kept as a candidate: {exc}"
        return out
    out["promoted"] = True
    return out


def run_retrain(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """The ``retrain`` job (see the module docstring)."""
    worker, s = ctx.worker, ctx.worker.settings
    current = worker.registry.current()
    init = params.get("init") or ("current" if current is not None else "scratch")
    ctx.say(f"exporting dataset {params['dataset']}", stage="data", progress=0.02)
    with worker.sessions() as session:
        holdout_ids = [d.scan_id for d, _ in data_logic.dataset_rows(session, s.holdout_dataset)]
        data = data_logic.materialize(session, worker.store, params["dataset"], ctx.dir / "data", exclude=holdout_ids)
    if data.coco_path is None:
        raise JobFailedError(f"dataset {params['dataset']!r} has no scans with boxes or an image-level 'no caries' "
                             "label outside the held-out set")
    ctx.say(f"{len(data.labeled_scans)} labeled scans, {len(data.unlabeled_paths)} unlabeled, "
            f"{data.skipped_positive_without_boxes} image-level positives without boxes skipped, "
            f"{len(holdout_ids)} held-out scans excluded")
    parent, source, label, pretrain = None, None, "", None
    if init == "current":
        if current is None:
            raise JobFailedError("init 'current' but no model is current")
        source, label, parent = worker.registry.file_path(current), f"model {current.version}", current.version
    elif init == "encoder":
        source, label = s.data_dir / "encoders" / params["encoder"], f"encoder {params['encoder']}"
    if params.get("pretrain_steps"):
        encoder, pretrain = _pretrain(ctx, data, params, source, label)
        if init == "current":
            ctx.say(f"fine-tuning model {current.version} with its encoder replaced by the continued encoder")
            init_args = ["--model.init_detector", str(_swap_encoder(ctx, source, encoder))]
        else:
            ctx.say(f"fine-tuning fresh heads on the {pretrain['mode']} encoder")
            init_args, init = ["--model.encoder", str(encoder)], "pretrained" if init == "scratch" else init
    elif init == "current":
        init_args = ["--model.init_detector", str(source)]
    else:
        init_args = ["--model.encoder", str(source)] if init == "encoder" else []
    model = _finetune(ctx, data.coco_path, init_args, params)
    ctx.say("registering the candidate", stage="register", progress=0.75)
    config = {**params, "init": init, "pretrain": pretrain,
              "retrain_config": str(s.retrain_config or "caries_vit_tiny.yaml"),
              "retrain_overrides": list(s.retrain_overrides), "job_id": ctx.job.id,
              "train_metrics": _finite(read_csv_metrics(ctx.dir / "finetune"))}
    candidate = worker.registry.register(model, config=config, data_snapshot=data.snapshot, parent=parent,
                                         created_by=f"job:{ctx.job.id}")
    ctx.say(f"candidate {candidate.version} registered", progress=0.8)
    outcome = _gate(ctx, candidate, current, params.get("promote", "auto") == "auto")
    return {"version": candidate.version, "parent": parent, "init": init, "pretrain": pretrain,
            "sha256": candidate.sha256,
            "data_snapshot": {k: data.snapshot[k] for k in ("dataset", "n", "sha256")}, **outcome}
