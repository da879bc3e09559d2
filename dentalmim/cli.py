"""The ``dentalmim`` command.

Subcommands are thin: they parse arguments, call one library function and print its summary. Heavy imports
(torch, MONAI, Lightning) happen inside the handlers so ``dentalmim --help`` stays fast. Expected failures
(:class:`~dentalmim.errors.DentalMimError`) end with a one-line message and exit status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dentalmim import __version__
from dentalmim.errors import ConfigError, DentalMimError

log = logging.getLogger("dentalmim")

#: Subcommands that hand their remaining arguments to LightningCLI unchanged.
_LIGHTNING_COMMANDS = ("pretrain", "finetune")
#: Loggers of codecs that report every tile they encode at INFO level.
_CHATTY_LOGGERS = ("openjpeg", "pylibjpeg", "jpeg_ls")


def _cmd_synth(args: argparse.Namespace) -> int:
    from dentalmim.data.synth import generate_corpus

    summary = generate_corpus(
        args.out_dir,
        n=args.n,
        seed=args.seed,
        n_unlabeled=args.unlabeled,
        scale=args.scale,
        panoramic_fraction=args.panoramic_fraction,
        lesion_contrast=args.lesion_contrast,
        progress=not args.no_progress,
        **({"images_per_patient": tuple(args.images_per_patient)} if args.images_per_patient else {}),
    )
    print(summary.format())
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from dentalmim.data.ingest import ingest

    summary = ingest(
        args.src_dir,
        args.out_dir,
        max_pixels=args.max_pixels,
        salt_path=args.salt_file,
        progress=not args.no_progress,
    )
    print(summary.format())
    return 0


def _cmd_export_encoder(args: argparse.Namespace) -> int:
    from dentalmim.training.export import export_encoder

    out = export_encoder(args.ckpt, args.out)
    print(f"encoder written to {out} (config: {Path(out).with_suffix('.json')})")
    return 0


def _load_predictor(args: argparse.Namespace):
    from dentalmim.inference.predictor import Predictor

    return Predictor.from_checkpoint(args.model, device=args.device, precision=args.precision)


def _cmd_predict(args: argparse.Namespace) -> int:
    from dentalmim.inference.outputs import predict_files

    predictor = _load_predictor(args)
    for warning in predictor.warnings:  # also in every findings JSON
        print(f"warning: {warning}", file=sys.stderr)
    summary = predict_files(predictor, args.images, args.out, threshold=args.threshold, write_sr=not args.no_sr,
                            progress=not args.no_progress)
    for warning in summary.image_warnings:  # in the findings JSON of the images concerned
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{summary.format()}; outputs in {args.out}")
    if summary.failed and not summary.written:
        print(f"dentalmim: error: none of the {len(summary.failed)} inputs could be predicted (reasons above)",
              file=sys.stderr)
        return 2
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dentalmim.evaluation.evaluate import evaluate_model

    result = evaluate_model(
        _load_predictor(args), args.data, args.out, model_path=args.model, n_boot=args.n_boot, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    print(result.format())
    return 0


def _cmd_label_efficiency(args: argparse.Namespace) -> int:
    from dentalmim.label_efficiency import run_label_efficiency

    result = run_label_efficiency(args.config)
    print(result.format())
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dentalmim.analyze import analyze_encoders

    result = analyze_encoders(
        args.encoder, args.data, args.out, crop_size=args.crop_size, crops_per_image=args.crops_per_image,
        max_images=args.max_images, batch_size=args.batch_size, n_attention_images=args.attention_images,
        n_folds=args.folds, seed=args.seed, device=args.device,
    )  # fmt: skip
    print(result.format())
    return 0


def _cmd_benchmark_paradigms(args: argparse.Namespace) -> int:
    from dentalmim.paradigms import run_paradigm_benchmark

    result = run_paradigm_benchmark(args.config)
    print(result.format())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dentalmim.demo import run_demo

    run_demo(Path(args.out), seed=args.seed, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from dentalmim.pipeline import run_pipeline

    run_pipeline(
        args.unlabeled, args.labeled, args.test, args.out, pretrain=args.pretrain, preset=args.preset,
        seed=args.seed, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
        salt_file=args.salt_file,
    )  # fmt: skip
    print(f"report: {Path(args.out) / 'report' / 'report.html'}; metrics: {Path(args.out) / 'metrics.json'}")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic corpus of dental radiographs (DICOM + COCO caries boxes)",
        description="Write synthetic bitewing-like and panoramic-like radiographs as DICOM files: "
        "OUT_DIR/labeled/images/*.dcm with OUT_DIR/labeled/annotations.json (COCO) and OUT_DIR/unlabeled/*.dcm.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--n", type=int, default=40, help="labeled images (default: 40)")
    p.add_argument("--unlabeled", type=int, default=None, help="unlabeled images (default: same as --n)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed gives identical files (default: 0)")
    p.add_argument("--scale", type=float, default=1.0, help="image size factor, 1.0 = realistic (default: 1.0)")
    p.add_argument(
        "--panoramic-fraction", type=float, default=0.25, help="share of panoramic images (default: 0.25)"
    )
    p.add_argument(
        "--lesion-contrast", type=float, default=1.0,
        help="multiplies the attenuation each lesion removes: 1.0 = subtle, calibrated lesions; 3.0 = advanced, "
        "cavitated-looking ones, as in the demo (default: 1.0)",
    )
    p.add_argument(
        "--images-per-patient", type=int, nargs=2, default=None, metavar=("LO", "HI"),
        help="each synthetic patient gets LO to HI images over one or two visits (default: 2 5; the demo uses 1 2)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_synth)


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    from dentalmim.data.dicom import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "ingest",
        help="validate and de-identify a folder of DICOM radiographs",
        description="Walk SRC_DIR recursively, read and validate every file, de-identify the good ones "
        "(DICOM PS3.15 Annex E basic profile) into OUT_DIR/images, and write OUT_DIR/manifest.json and "
        "OUT_DIR/rejected.json. A bad file never stops the batch; re-running is idempotent.",
    )
    p.add_argument("src_dir", type=Path, metavar="SRC_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"reject images with more than this many pixels (default: {DEFAULT_MAX_PIXELS:,})",
    )
    p.add_argument(
        "--salt-file",
        type=Path,
        default=None,
        help="secret used for pseudonyms and UID remapping (default: OUT_DIR/.deid_salt, created once)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_ingest)


def _add_training(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "pretrain",
        help="masked image modeling pretraining (LightningCLI: fit, validate, --config, --print_config)",
        add_help=False,
    )
    sub.add_parser(
        "finetune",
        help="fine-tune the caries detector (LightningCLI: fit, validate, test, --config, --model.encoder)",
        add_help=False,
    )
    p = sub.add_parser("export-encoder", help="write the ViT encoder of a pretraining checkpoint as safetensors")
    p.add_argument("ckpt", type=Path, metavar="CKPT")
    p.add_argument("out", type=Path, metavar="OUT.safetensors")
    p.set_defaults(func=_cmd_export_encoder)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="fine-tuned checkpoint (.ckpt) or model bundle")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: GPU when present")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_inference(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="detect caries on DICOM files: findings JSON, overlay PNG, DICOM SR",
        description="Predict each DICOM (files, or folders searched recursively) with tiled full-resolution "
        "inference and write OUT/<name>.findings.json, OUT/<name>.overlay.png and OUT/<name>.sr.dcm.",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGES")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    p.add_argument("--threshold", type=float, default=None, help="box score threshold (default: the model's)")
    p.add_argument("--no-sr", action="store_true", help="skip the DICOM SR")
    _add_model_args(p)
    p.set_defaults(func=_cmd_predict)
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on a labeled COCO set: metrics.json + HTML/PDF report",
        description="FROC/AFROC, AP, AUROC, operating-point and calibration metrics with bootstrap 95 % CIs, "
        "written as REPORT_DIR/metrics.json, report.html and report.pdf.",
    )
    p.add_argument("--data", type=Path, required=True, help="COCO JSON of the evaluation set")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--n-boot", type=_int_in(0), default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=_int_in(0), default=0)
    _add_model_args(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from dentalmim.pipeline import PRESETS

    p = sub.add_parser(
        "run",
        help="the whole workflow on your data: ingest -> pretrain -> fine-tune -> evaluate -> report",
        description="Ingest and de-identify, pretrain on the unlabeled scans (plus the labeled training images), "
        "fine-tune the caries detector, evaluate on the test set. OUT is resumable.",
    )
    p.add_argument("--unlabeled", type=Path, default=None, help="folder of unlabeled DICOMs (recursive)")
    p.add_argument("--labeled", type=Path, required=True, help="training COCO JSON (its images are DICOMs)")
    p.add_argument("--test", type=Path, required=True, help="test COCO JSON")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--pretrain", choices=("mae", "contrastive", "hybrid", "none"), default="mae")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--salt-file", type=Path, default=None,
                   help="de-identification secret (pseudonyms, UIDs, file names), created once when missing "
                   "(default: OUT/ingested/.deid_salt); keep it secret. The same salt and seed repeat a run exactly: "
                   "the file names it gives order the training data and split off the validation patients")
    _add_step_args(p)
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser(
        "label-efficiency",
        help="fine-tune from scratch and from pretrained encoders at several label fractions; table + plot",
        description="Run every (encoder, label fraction, seed) cell of a YAML study config (see "
        "configs/label_efficiency/demo.yaml), evaluate each on the fixed test set, and write "
        "label_efficiency.json / .md / .png into the config's out folder. Finished cells are skipped.",
    )
    p.add_argument("--config", type=Path, required=True, help="study config (YAML)")
    p.set_defaults(func=_cmd_label_efficiency)
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on synthetic data",
        description="Synthesise a corpus, split it by patient, then `dentalmim run` on it (preset cpu-tiny).",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0)
    _add_step_args(p)
    p.set_defaults(func=_cmd_demo)


def _add_analysis(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="compare pretrained encoders layer by layer: attention distance / NMI, Fourier content, probes",
        description="Per layer and encoder: mean attention distance (px, mm), attention NMI, relative "
        "high-frequency amplitude of token features, caries linear-probe and k-NN accuracy (COCO input), and "
        "attention maps, on native-resolution crops. Writes OUT/analysis.json and OUT/report.html.",
    )
    p.add_argument("--encoder", action="append", required=True, type=Path, metavar="ENCODER.safetensors",
                   help="exported encoder; repeat for each encoder to compare")
    p.add_argument("--data", type=Path, required=True, help="folder of DICOMs, or COCO JSON (labels the probes)")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--crop-size", type=int, default=224, help="native-resolution crop side (default: 224)")
    p.add_argument("--crops-per-image", type=int, default=2, help="crops per radiograph (default: 2)")
    p.add_argument("--max-images", type=int, default=64, help="radiographs read at most (default: 64)")
    p.add_argument("--batch-size", type=int, default=16, help="crops per forward pass (default: 16)")
    p.add_argument("--attention-images", type=int, default=4, help="crops shown as attention maps (default: 4)")
    p.add_argument("--folds", type=int, default=5, help="patient-grouped probe folds (default: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: GPU when present")
    p.set_defaults(func=_cmd_analyze)
    p = sub.add_parser(
        "benchmark-paradigms",
        help="pretrain with each objective, probe, fine-tune at a fixed label budget; leaderboard + compute cost",
        description="Run the same protocol for every pretraining objective of a YAML config (see "
        "configs/paradigms/demo.yaml): pretrain -> layer probes -> fine-tune -> detection metrics. Writes "
        "leaderboard.md / .json / .png into the config's out folder. Finished stages are skipped.",
    )
    p.add_argument("--config", type=Path, required=True, help="benchmark config (YAML)")
    p.set_defaults(func=_cmd_benchmark_paradigms)


def _add_step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default: the preset's)")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps (default: the preset's)")


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"should be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"should be {bounds}, got {value}")
        return value

    return parse


def _service_settings():
    """The service's settings from the environment, or a ConfigError naming the bad variable (never its value,
    which may be a secret such as a database password)."""
    from pydantic import ValidationError

    from service.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "?"
        raise ConfigError(f"service setting DENTALMIM_{field.upper()}: {first.get('msg', 'invalid')} "
                          f"({exc.error_count()} problem(s) in the DENTALMIM_* environment).") from None
    except ValueError as exc:  # e.g. a list setting that is not JSON
        raise ConfigError(f"service settings (DENTALMIM_* environment): {str(exc).splitlines()[0][:200]}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    # the service reads its settings from the environment (see configs/service.env.example); options override
    for name, value in (("DENTALMIM_MODEL_PATH", args.model), ("DENTALMIM_DATA_DIR", args.data_dir),
                        ("DENTALMIM_HOST", args.host), ("DENTALMIM_PORT", args.port)):
        if value is not None:
            os.environ[name] = str(value)
    settings = _service_settings()  # every setting checked before the server starts
    uvicorn.run("service.main:create_app", factory=True, host=settings.host, port=settings.port, workers=1,
                log_level=settings.log_level)
    return 0


def _keys_engine(args: argparse.Namespace):
    if not args.verbose:  # before importing alembic, which logs its plugins at import
        logging.getLogger("alembic").setLevel(logging.WARNING)
    from dentalmim.db import database_url_from_env, make_engine, upgrade

    try:
        engine = make_engine(args.database_url or database_url_from_env())
        upgrade(engine)
    except DentalMimError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver, URL and file errors alike; messages may hold a password
        raise ConfigError(f"the service database cannot be opened ({type(exc).__name__}); check --database-url / "
                          f"DATABASE_URL and DENTALMIM_DATA_DIR.") from None
    return engine


def _cmd_keys(args: argparse.Namespace) -> int:
    engine = _keys_engine(args)
    from dentalmim import auth
    from dentalmim.db import session_factory

    try:
        with session_factory(engine)() as session:
            if args.keys_command == "create":
                info, plain = auth.create_key(session, args.role, args.name)
                session.commit()
                print(f"created {info.role} key {info.key_id}; it is shown once (only its hash is stored):")
                print(plain)
            elif args.keys_command == "list":
                for k in auth.list_keys(session):
                    state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
                    print(f"{k.key_id}  {k.role:<9}  {k.created_at}  {state}  {k.name}")
            else:
                info = auth.revoke_key(session, args.key_id)
                session.commit()
                print(f"revoked key {info.key_id} ({info.role}) at {info.revoked_at}")
    finally:
        engine.dispose()
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from service.worker import Worker

    if args.data_dir is not None:
        os.environ["DENTALMIM_DATA_DIR"] = str(args.data_dir)
    settings = _service_settings()
    try:
        worker = Worker(settings)
    except DentalMimError:
        raise
    except Exception as exc:  # noqa: BLE001 - database or data-folder errors; messages may hold a password
        raise ConfigError(f"the worker cannot open its database or data folder ({type(exc).__name__}); check "
                          f"DATABASE_URL and DENTALMIM_DATA_DIR.") from None
    done = worker.run(max_jobs=args.max_jobs, idle_exit=args.once)
    print(f"worker {worker.worker_id}: {done} job(s) run")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    engine = _keys_engine(args)
    from dentalmim.db import session_factory
    from dentalmim.registry import ModelRegistry

    data_dir = Path(os.environ.get("DENTALMIM_DATA_DIR") or "dentalmim_data")
    registry = ModelRegistry(session_factory(engine), data_dir)
    try:
        if args.models_command == "list":
            current = registry.current_version()
            for v in registry.list():
                mark = "*" if v.version == current else " "
                metric = (v.metrics or {}).get("froc_fom")
                shown = f"froc_fom={metric:.4f}" if isinstance(metric, (int, float)) else "froc_fom=-"
                print(f"{mark} {v.version:<20} {v.status:<9} {v.created_at}  parent={v.parent or '-'}  {shown}  "
                      f"sha256={v.sha256[:12]}")
        elif args.models_command == "promote":
            info = registry.get(args.version)
            if not registry.verify(info):
                print(f"dentalmim: error: the file of {info.version} is missing or altered", file=sys.stderr)
                return 2
            print(f"current: {registry.promote(args.version, actor='cli', reason=args.reason or 'manual').version}")
        else:
            print(f"current: {registry.rollback(actor='cli', reason=args.reason or '').version}")
    finally:
        engine.dispose()
    return 0


def _add_retraining(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run retraining / evaluation jobs from the service's queue",
                       description="Run the jobs queued through /v1/jobs, one at a time (one worker per GPU; "
                       "settings from the same DENTALMIM_* environment as the service).")
    p.add_argument("--data-dir", type=Path, default=None, help="data folder (DENTALMIM_DATA_DIR)")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.add_argument("--max-jobs", type=_int_in(1), default=None, help="exit after this many jobs")
    p.set_defaults(func=_cmd_worker)
    p = sub.add_parser("models", help="list, promote or roll back model versions of the registry",
                       description="The model registry of the service (database as `dentalmim keys`; model files "
                       "under DENTALMIM_DATA_DIR/models). The service picks up a change within "
                       "DENTALMIM_MODEL_POLL_SECONDS.")
    p.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: as the service)")
    models = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    models.add_parser("list", help="every version, newest first (* = current)")
    promote = models.add_parser("promote", help="make a version current (bypasses the gate)")
    promote.add_argument("version", metavar="VERSION")
    promote.add_argument("--reason", default="")
    rollback = models.add_parser("rollback", help="make the previously current version current again")
    rollback.add_argument("--reason", default="")
    p.set_defaults(func=_cmd_models)


def _add_service(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start the clinical web service (uvicorn; settings from DENTALMIM_* environment variables)",
        description="Start the FastAPI service (service.main:create_app) with uvicorn, one process. Every setting "
        "comes from the environment (see configs/service.env.example); the options below override them.",
    )
    p.add_argument("--model", type=Path, default=None, help="model bundle or checkpoint (DENTALMIM_MODEL_PATH)")
    p.add_argument("--data-dir", type=Path, default=None, help="data folder (DENTALMIM_DATA_DIR)")
    p.add_argument("--host", default=None, help="bind address (DENTALMIM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=_int_in(1, 65535), default=None, help="port (DENTALMIM_PORT, default 8000)")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("keys", help="create, list or revoke API keys of the service",
                       description="Manage the service's API keys (stored argon2-hashed in its database: "
                       "DATABASE_URL, else DENTALMIM_DATA_DIR/dentalmim.db).")
    p.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: as the service)")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys.add_parser("create", help="create a key; prints it alone on the last line (shown once)")
    create.add_argument("--role", required=True, choices=("clinician", "trainer", "admin"))
    create.add_argument("--name", default="", help="who or what the key is for")
    keys.add_parser("list", help="list keys (ids, roles, state; never the secrets)")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="KEY_ID")
    p.set_defaults(func=_cmd_keys)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dentalmim`` command (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="dentalmim",
        description="Masked image modeling for dental radiographs: ingest DICOM, pretrain, detect caries.",
    )
    parser.add_argument("--version", action="version", version=f"dentalmim {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_synth, _add_ingest, _add_training, _add_inference, _add_demo, _add_analysis,
                _add_service, _add_retraining):
        add(sub)
    return parser


def _run_lightning(command: str, rest: Sequence[str]) -> int:
    if command == "pretrain":
        from dentalmim.training.pretrain import cli_main
    elif command == "finetune":
        from dentalmim.training.finetune import cli_main
    else:  # pragma: no cover - guarded by _LIGHTNING_COMMANDS
        raise AssertionError(command)
    cli_main(list(rest))
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in _LIGHTNING_COMMANDS:
        return _run_lightning(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for chatty in _CHATTY_LOGGERS:  # third-party INFO lines that say nothing to a user
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from dentalmim.data.deid import quiet_identifying_loggers

    quiet_identifying_loggers()  # also with --verbose: their messages quote header values
    handler: Callable[[argparse.Namespace], int] = args.func
    return handler(args)


def _domain_error(exc: BaseException) -> DentalMimError | None:
    """``exc`` or the exception it was raised from, when that is an expected failure: LightningCLI's parser wraps
    errors raised while it instantiates a class (e.g. a data module's ``ConfigError``) in its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DentalMimError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dentalmim`` console script; returns the exit status."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except Exception as exc:
        domain = _domain_error(exc)
        if domain is None:
            raise
        print(f"dentalmim: error: {domain}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dentalmim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
