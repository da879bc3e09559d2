"""Micro-batching: concurrent requests share forward passes on one inference thread.

Requests ``await`` :meth:`MicroBatcher.submit`; items go through a thread-safe queue to a single worker thread,
which takes the first waiting item, then keeps collecting until ``max_batch_size`` items or ``max_wait_ms`` have
passed, and runs them together with ``run_batch``. Results go back to each caller's event loop with
``call_soon_threadsafe``, so the event loop never runs inference. ``max_batch_size=1`` turns batching off (one
item per call, still off the event loop). When a whole batch fails, its items are retried one by one, so one bad
item cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dentalmim.errors import DentalMimError

log = logging.getLogger(__name__)

#: run_batch(items) -> one result per item, in order.
RunBatch = Callable[[Sequence[Any]], Sequence[Any]]


class QueueFullError(DentalMimError):
    """The inference queue is full; the client should retry later."""


class BatcherStoppedError(DentalMimError):
    """The batcher is not running (not started, or shutting down)."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


_STOP = object()


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class MicroBatcher:
    """Collects items from many coroutines into batches for one worker thread.

    Args:
        run_batch: runs a batch; called on the worker thread only.
        max_batch_size: most items per batch (>= 1).
        max_wait_ms: how long to wait for more items once one is waiting (>= 0).
        max_queue: most waiting items; beyond, :meth:`submit` raises :class:`QueueFullError`.
        on_batch: called after each batch with ``(batch size, seconds)`` (metrics).
    """

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int = 8, max_wait_ms: float = 10.0,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size should be >= 1, got {max_batch_size}.")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms should be >= 0, got {max_wait_ms}.")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1e3
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._thread: threading.Thread | None = None
        self._running = False

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Starts the worker thread (idempotent)."""
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._work, name="dentalmim-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes the queued items, then stops the worker thread."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    async def submit(self, item: Any) -> Any:
        """Queues ``item`` and waits for its result (exceptions of ``run_batch`` are re-raised here)."""
        if not self._running:
            raise BatcherStoppedError("the inference worker is not running.")
        loop = asyncio.get_running_loop()
        job = _Job(item, loop.create_future(), loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"the inference queue is full ({self._queue.maxsize} waiting).") from None
        return await job.future

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The batch starting with ``first``; also whether the stop marker was seen."""
        batch, deadline = [first], time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            batch = [job for job in batch if not job.future.cancelled()]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = list(self._run_batch([job.item for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items.")
            outcomes: list[tuple[Any, BaseException | None]] = [(r, None) for r in results]
        except Exception as exc:  # noqa: BLE001 - retried one by one, errors go to their callers
            outcomes = [(None, exc)] if len(batch) == 1 else [self._run_one(job) for job in batch]
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - start)
        for job, (result, error) in zip(batch, outcomes):
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:  # the caller's loop is closed
                log.debug("dropped a result: event loop closed")

    def _run_one(self, job: _Job) -> tuple[Any, BaseException | None]:
        try:
            return self._run_batch([job.item])[0], None
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            return None, exc
