"""Helpers shared by the LightningCLI entry points (``dentalmim pretrain``, ``dentalmim finetune``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from dentalmim.errors import ConfigError


@contextmanager
def _argv(argv: list[str] | None) -> Iterator[None]:
    """``sys.argv = argv`` for the duration (unchanged for None)."""
    if argv is None:
        yield
        return
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def isolated_argv(args: Sequence[str] | None):
    """Hide the outer command line from LightningCLI while it parses explicit ``args``.

    LightningCLI warns when it gets explicit ``args`` while ``sys.argv`` holds other arguments; with explicit args,
    ``sys.argv`` is reduced to the program name for the duration. Only for parsing (see :func:`relaunchable_argv`).
    """
    return _argv(None if args is None else sys.argv[:1])


def relaunchable_argv(command: str, args: Sequence[str] | None):
    """``sys.argv`` = the standalone command line of this run, ``<program> <command> <args>``, while it runs.

    Lightning's DDP launcher starts ranks 1..N-1 by re-running ``sys.argv``. Whether this fit came from
    ``dentalmim pretrain fit ...`` itself or from inside ``dentalmim run``, ``label-efficiency`` or the worker, the
    other ranks must run this fit and nothing else: ``dentalmim pretrain fit ...`` (or ``python -m dentalmim.cli
    pretrain fit ...``), the program being ``sys.argv[0]`` as started.
    """
    return _argv(None if args is None else [sys.argv[0], command, *args])


def run_lightning_cli(cli_class: type, model_class: type, datamodule_class: type | None, args: Sequence[str] | None,
                      command: str):
    """Build (and thereby run) a dentalmim LightningCLI the same way for every entry point.

    The resolved config is saved with every run (overwriting a previous one in the same folder), the seed defaults
    to 0, and the LightningModule configures its own optimiser groups. On CUDA, fp32 matmuls left outside autocast
    may use TF32 tensor cores. ``command`` (``pretrain`` / ``finetune``) names the run for the DDP relaunch
    (:func:`relaunchable_argv`); the CLI class hides that command line while parsing (:func:`isolated_argv`).
    """
    import torch

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    with relaunchable_argv(command, args):
        return cli_class(
            model_class,
            datamodule_class,
            args=None if args is None else list(args),
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": f"dentalmim {command}"},
            seed_everything_default=0,
            auto_configure_optimizers=False,
        )


def check_model_field(ok: bool, field: str, expectation: str, value: object) -> None:
    """Fail before training with a message naming the config field: ``model.<field> should be ..., got ...``."""
    if not ok:
        raise ConfigError(f"model.{field} should be {expectation}, got {value!r}.")
