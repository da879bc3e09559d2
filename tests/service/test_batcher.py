"""MicroBatcher: concurrent submissions share batches on one thread, the event loop stays free, errors stay
with their item, a full queue refuses."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import BatcherStoppedError, MicroBatcher, QueueFullError


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, items):
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        time.sleep(self.delay)
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        return [i * 10 for i in items]


def _run(batcher: MicroBatcher, coro):
    batcher.start()
    try:
        return asyncio.run(coro)
    finally:
        batcher.stop()


def test_concurrent_submissions_are_batched_on_one_worker_thread() -> None:
    recorder = Recorder(delay=0.02)
    batcher = MicroBatcher(recorder, max_batch_size=4, max_wait_ms=50)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert _run(batcher, main()) == [i * 10 for i in range(10)]
    assert recorder.threads == {"dentalmim-inference"}
    assert max(len(b) for b in recorder.batches) == 4 and sum(len(b) for b in recorder.batches) == 10
    assert len(recorder.batches) <= 4  # 10 items at most 4 per batch: 3 batches, 4 with unlucky timing


def test_batch_size_one_disables_batching() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch_size=1, max_wait_ms=50)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    assert _run(batcher, main()) == [0, 10, 20, 30, 40]
    assert all(len(b) == 1 for b in recorder.batches)


def test_the_event_loop_keeps_running_during_inference() -> None:
    batcher = MicroBatcher(Recorder(delay=0.3), max_batch_size=2, max_wait_ms=0)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit(1)
        task.cancel()
        return ticks

    assert _run(batcher, main()) >= 10  # ~30 ticks fit into the 0.3 s of "inference"


def test_a_failing_item_does_not_fail_its_batch_neighbours() -> None:
    recorder = Recorder(delay=0.01)
    batcher = MicroBatcher(recorder, max_batch_size=8, max_wait_ms=50)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True)

    ok1, bad, ok2 = _run(batcher, main())
    assert (ok1, ok2) == (10, 20) and isinstance(bad, ValueError)


def test_full_queue_and_stopped_batcher_refuse() -> None:
    release = threading.Event()
    batcher = MicroBatcher(lambda items: (release.wait(5), list(items))[1], max_batch_size=1, max_wait_ms=0,
                           max_queue=2)

    async def main():
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)  # the worker holds item 0
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(3)
        release.set()
        return await asyncio.gather(first, *queued)

    assert _run(batcher, main()) == [0, 1, 2]
    with pytest.raises(BatcherStoppedError):
        asyncio.run(batcher.submit(1))
