"""Where the service gets its model: a small interface so a model registry can plug in (and hot-swap) later.

:class:`ModelProvider` is what the service needs: ``load()`` (blocking, run off the event loop at start-up),
``current()`` -> ``(predictor, version)`` for every micro-batch (so a provider that swaps models between batches
is safe: a batch runs entirely on one model), and ``ready`` / ``status()`` for ``/readyz``.
:class:`FileModelProvider` loads ``DENTALMIM_MODEL_PATH`` (a model bundle ``.safetensors`` or a fine-tuning
``.ckpt``) once, on the GPU with bf16/fp16 when there is one, else on the CPU in fp32, and warms it up.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dentalmim.errors import DentalMimError
from dentalmim.inference.predictor import Predictor

log = logging.getLogger(__name__)


class ModelNotReadyError(DentalMimError):
    """No model is loaded (yet): not configured, still loading, or failed to load."""


class ModelProvider(Protocol):
    """What the service asks of a model source."""

    @property
    def ready(self) -> bool: ...

    def load(self) -> None: ...

    def current(self) -> tuple[Predictor, str]: ...

    def status(self) -> dict[str, Any]: ...


class FileModelProvider:
    """One model file, loaded once (see the module docstring).

    Args:
        path: model bundle or checkpoint; None = not configured (never ready).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        tile_batch_size: tiles per forward pass.
        warmup: run one prediction on a blank image before reporting ready.
    """

    def __init__(self, path: Path | None, *, device: str = "auto", precision: str = "auto",
                 tile_batch_size: int = 16, warmup: bool = True) -> None:
        self.path = path
        self._options = {"device": device, "precision": precision, "tile_batch_size": tile_batch_size}
        self._warmup = warmup
        self._predictor: Predictor | None = None
        self._error: str | None = None if path is not None else "no model configured (DENTALMIM_MODEL_PATH)"
        self._state = "loading" if path is not None else "unconfigured"
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self._predictor is not None

    def load(self) -> None:
        """Loads and warms the model (blocking); errors are kept for :meth:`status` and logged, not raised."""
        if self.path is None:
            return
        start = time.perf_counter()
        try:
            predictor = Predictor.from_checkpoint(self.path, **self._options)
            if self._warmup:
                side = int(predictor.metadata["tile_size"])
                predictor.predict(np.zeros((side, side), dtype=np.float32))
        except (DentalMimError, OSError, ValueError, RuntimeError) as exc:
            self._error, self._state = f"model could not be loaded ({type(exc).__name__}: {exc})", "failed"
            log.error("model load failed: %s", self._error)
            return
        with self._lock:
            self._predictor, self._state, self._error = predictor, "ready", None
        self.load_seconds = time.perf_counter() - start
        log.info("model %s loaded on %s (%s) in %.1f s", predictor.version, predictor.device, predictor.precision,
                 self.load_seconds)

    def current(self) -> tuple[Predictor, str]:
        """The loaded predictor and its version; :class:`ModelNotReadyError` when there is none."""
        with self._lock:
            predictor = self._predictor
        if predictor is None:
            raise ModelNotReadyError(self._error or "the model is still loading.")
        return predictor, predictor.version

    def status(self) -> dict[str, Any]:
        """``{"state", "version", "device", "precision", "error"}`` for ``/readyz`` and ``/v1/models/current``."""
        predictor = self._predictor
        return {"state": self._state, "version": predictor.version if predictor else None,
                "device": str(predictor.device) if predictor else None,
                "precision": predictor.precision if predictor else None, "error": self._error}
