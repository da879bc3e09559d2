"""Helpers shared by the LightningCLI entry points (``dentalmim pretrain``, ``dentalmim finetune``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


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
