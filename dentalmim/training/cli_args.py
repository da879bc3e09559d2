"""Helpers shared by the LightningCLI entry points (``dentalmim pretrain``, ``dentalmim finetune``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from dentalmim.errors import ConfigError


@contextmanager
def isolated_argv(args: Sequence[str] | None) -> Iterator[None]:
    """Hide the outer command line from LightningCLI while it parses ``args``.

    LightningCLI warns when it gets explicit ``args`` while ``sys.argv`` holds other arguments (here: those of
    ``dentalmim ...``). With explicit args, ``sys.argv`` is reduced to the program name for the duration.
    """
    if args is None:
        yield
        return
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def run_lightning_cli(cli_class: type, model_class: type, datamodule_class: type | None, args: Sequence[str] | None):
    """Build (and thereby run) a dentalmim LightningCLI the same way for every entry point.

    The resolved config is saved with every run (overwriting a previous one in the same folder), the seed defaults
    to 0, and the LightningModule configures its own optimiser groups. On CUDA, fp32 matmuls left outside autocast
    may use TF32 tensor cores.
    """
    import torch

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    with isolated_argv(args):
        return cli_class(
            model_class,
            datamodule_class,
            args=None if args is None else list(args),
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            auto_configure_optimizers=False,
        )


def check_model_field(ok: bool, field: str, expectation: str, value: object) -> None:
    """Fail before training with a message naming the config field: ``model.<field> should be ..., got ...``."""
    if not ok:
        raise ConfigError(f"model.{field} should be {expectation}, got {value!r}.")
