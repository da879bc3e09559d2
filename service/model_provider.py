"""Where the service gets its model: a small interface so a model registry can plug in (and hot-swap) later.

:class:`ModelProvider` is what the service needs: ``load()`` (blocking, run off the event loop at start-up),
``current()`` -> ``(predictor, version)`` for every micro-batch (so a provider that swaps models between batches
is safe: a batch runs entirely on one model), and ``ready`` / ``status()`` for ``/readyz``.
:class:`FileModelProvider` loads ``DENTALMIM_MODEL_PATH`` (a model bundle ``.safetensors`` or a fine-tuning
``.ckpt``) once, on the GPU with bf16/fp16 when there is one, else on the CPU in fp32, and warms it up.
:class:`RegistryModelProvider` (the service's default) serves the model registry's current version and hot-swaps
to a newly promoted one.
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


class _ServedModel:
    """The state both providers share: the served predictor, a load state and the last error, under a lock."""

    _predictor: Predictor | None
    _state: str
    _error: str | None
    _lock: threading.Lock

    def current(self) -> tuple[Predictor, str]:
        """The served predictor and its version; :class:`ModelNotReadyError` when there is none."""
        with self._lock:
            predictor = self._predictor
        if predictor is None:
            raise ModelNotReadyError(self._error or "the model is still loading.")
        return predictor, predictor.version

    def status(self) -> dict[str, Any]:
        """``{"state", "version", "device", "precision", "error"}`` for ``/readyz`` and ``/v1/models/current``
        (``version`` is the version served)."""
        with self._lock:
            predictor = self._predictor
        return {"state": self._state, "version": predictor.version if predictor else None,
                "device": str(predictor.device) if predictor else None,
                "precision": predictor.precision if predictor else None, "error": self._error}


class FileModelProvider(_ServedModel):
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



class RegistryModelProvider(_ServedModel):
    """The registry's current model, hot-swapped when another version becomes current.

    At :meth:`load`, the registry's current version is loaded; when the registry has none and ``fallback_path``
    (``DENTALMIM_MODEL_PATH``) is set, that file is registered (keeping its own version name) and promoted first.
    :meth:`refresh` (called after a promotion through the API, and every ``poll_seconds`` by a background thread,
    so promotions made by a worker process are picked up) loads a new current version *completely* (file checked
    against its sha256, weights loaded, warmed up) and only then swaps the reference under a lock: a micro-batch
    that already took the old predictor finishes on it, and no request fails during the swap. A version whose file
    is missing or altered is never served: the old model stays and :meth:`status` reports the error.

    Args:
        fallback_path: the initial model when the registry is empty; None = none.
        device, precision, tile_batch_size, warmup: as :class:`FileModelProvider`.
        poll_seconds: registry check interval (0 = only on :meth:`refresh`).
    """

    def __init__(self, fallback_path: Path | None, *, device: str = "auto", precision: str = "auto",
                 tile_batch_size: int = 16, warmup: bool = True, poll_seconds: float = 5.0) -> None:
        self.path = fallback_path
        self._options = {"device": device, "precision": precision, "tile_batch_size": tile_batch_size}
        self._warmup = warmup
        self._poll = float(poll_seconds)
        self._registry: Any = None
        self._predictor: Predictor | None = None
        self._version: str | None = None
        self._error: str | None = None
        self._state = "loading"
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.load_seconds: float | None = None
        self.swaps = 0

    def attach(self, registry: Any) -> None:
        """Connects the :class:`dentalmim.registry.ModelRegistry` (done by the app at start-up)."""
        self._registry = registry

    @property
    def ready(self) -> bool:
        return self._predictor is not None

    def _initial(self) -> Any:
        """The current version, importing ``fallback_path`` when the registry is empty."""
        from dentalmim.inference.predictor import load_model
        from dentalmim.registry import RegistryError, VersionNotFoundError

        info = self._registry.current()
        if info is not None or self.path is None:
            return info
        name = str(load_model(self.path)[1].get("version") or "")
        try:
            self._registry.get(name)
            name = None  # taken: let the registry number it
        except VersionNotFoundError:
            pass
        try:
            info = self._registry.register(self.path, version=name or None,
                                           config={"source": "DENTALMIM_MODEL_PATH"}, created_by="service:startup")
        except RegistryError:  # another process imported it at the same moment
            current = self._registry.current()
            return current if current is not None or not name else self._registry.get(name)
        try:
            self._registry.promote(info.version, expected_current=None, actor="service:startup",
                                   reason="initial model from DENTALMIM_MODEL_PATH")
        except RegistryError:  # another process promoted one meanwhile
            pass
        return self._registry.current()

    def load(self) -> None:
        """Loads the current (or initial) model and starts polling; errors are kept for :meth:`status`."""
        if self._registry is None:
            self._state, self._error = "failed", "no model registry attached"
            return
        try:
            info = self._initial()
        except (DentalMimError, OSError, ValueError, RuntimeError) as exc:
            self._state, self._error = "failed", f"model could not be registered ({type(exc).__name__}: {exc})"
            log.error("initial model import failed: %s", self._error)
            info = None
        if info is None and self._error is None:
            self._state, self._error = "unconfigured", "no model configured (DENTALMIM_MODEL_PATH) or promoted"
        if info is not None:
            self._swap_to(info)
        if self._poll > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._poll_loop, name="dentalmim-model-poll", daemon=True)
            self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep polling; the next check may succeed
                log.error("model registry check failed (%s)", type(exc).__name__)

    def refresh(self) -> bool:
        """Swaps to the registry's current version when it changed; returns whether it swapped."""
        if self._registry is None:
            return False
        name = self._registry.current_version()
        if name is None or name == self._version:
            return False
        return self._swap_to(self._registry.get(name))

    def _swap_to(self, info: Any) -> bool:
        with self._load_lock:
            if info.version == self._version:
                return False
            start = time.perf_counter()
            try:
                if not self._registry.verify(info):
                    raise DentalMimError(f"the file of {info.version} is missing or does not match its sha256")
                predictor = Predictor.from_checkpoint(self._registry.file_path(info), **self._options)
                if self._warmup:
                    side = int(predictor.metadata["tile_size"])
                    predictor.predict(np.zeros((side, side), dtype=np.float32))
            except (DentalMimError, OSError, ValueError, RuntimeError) as exc:
                self._error = f"model {info.version} could not be loaded ({type(exc).__name__}: {exc})"
                if self._predictor is None:
                    self._state = "failed"
                log.error("model load failed: %s", self._error)
                return False
            with self._lock:
                self._predictor, self._version = predictor, info.version
                self._state, self._error = "ready", None
            self.swaps += 1
            self.load_seconds = time.perf_counter() - start
            log.info("serving model %s on %s (%s), loaded in %.1f s", info.version, predictor.device,
                     predictor.precision, self.load_seconds)
            return True

    def stop(self) -> None:
        """Stops the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
