"""Dynamic batching: requests that arrive within a few milliseconds share one model call.

:class:`DynamicBatcher` owns a bounded queue and one worker task. The worker waits for a first
request, then keeps collecting until it holds ``max_batch`` requests or ``max_wait_ms`` have passed
since the first one arrived, and runs ``fn(batch)`` once on a single worker thread (so the event
loop keeps accepting requests while the model runs). Each request gets its own result back, or the
exception that ``fn`` raised. The queue is bounded: when it is full, :meth:`submit` raises
:class:`QueueFull` at once instead of letting latency grow without limit, and the server answers
429. A request that waits longer than ``timeout_s`` raises :class:`asyncio.TimeoutError`; one whose
client went away is dropped before it reaches the model.

``max_batch=1`` is the one-request-at-a-time server the serving chapter compares against.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` requests already: shed load (HTTP 429)."""


class ShuttingDown(Exception):
    """The batcher is stopping and takes no new requests (HTTP 503)."""


@dataclass(frozen=True)
class BatchConfig:
    """How requests are grouped: at most ``max_batch`` per call, waiting at most ``max_wait_ms``."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 10.0

    def __post_init__(self):
        for name in ("max_batch", "max_queue"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("max_wait_ms", "timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.timeout_s == 0:
            raise ValueError("timeout_s must be > 0, got 0")
        if self.max_queue < self.max_batch:
            raise ValueError(f"max_queue must be >= max_batch ({self.max_batch}), got {self.max_queue}")


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """Group concurrent :meth:`submit` calls into calls of ``fn(list_of_items) -> list_of_results``."""

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], cfg: BatchConfig = BatchConfig()):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(cfg, BatchConfig):
            raise TypeError(f"cfg must be a BatchConfig, got {type(cfg).__name__}")
        self.fn, self.cfg = fn, cfg
        self.batch_sizes: list[int] = []  # one entry per model call, for the chapter's histogram
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._closing = False
        self._busy = False

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the batcher is already running")
        self._queue = asyncio.Queue(maxsize=self.cfg.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def submit(self, item) -> Any:
        """Queue one request and wait for its result (raises QueueFull, ShuttingDown, TimeoutError)."""
        if self._closing or self._queue is None:
            raise ShuttingDown("the server is shutting down")
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFull(f"queue full ({self.cfg.max_queue} requests waiting)") from None
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.cfg.timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            fut.cancel()  # not yet run: the worker drops it; already running: its result is discarded
            raise

    async def _collect(self) -> list[_Pending]:
        first = await self._queue.get()
        self._busy = True  # from here until the batch is answered, stop() waits for it
        batch = [first]
        deadline = first.arrived + self.cfg.max_wait_ms / 1e3
        while len(batch) < self.cfg.max_batch:
            left = deadline - time.perf_counter()
            try:
                batch.append(self._queue.get_nowait() if left <= 0 else
                             await asyncio.wait_for(self._queue.get(), left))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return [p for p in batch if not p.future.done()]  # drop timed-out / disconnected requests

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        self.batch_sizes.append(len(batch))
        try:
            results = await loop.run_in_executor(self._pool, self.fn, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"fn returned {len(results)} results for a batch of {len(batch)}")
        except Exception as e:  # the model's error goes to each request of this batch, not further
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        for p, r in zip(batch, results):
            if not p.future.done():
                p.future.set_result(r)

    async def _worker(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._run(batch)
            self._busy = False

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new requests, finish the queued ones (up to ``drain_timeout_s``), then stop."""
        self._closing = True
        if self._task is None:
            return
        t0 = time.perf_counter()
        while (self._busy or not self._queue.empty()) and time.perf_counter() - t0 < drain_timeout_s:
            await asyncio.sleep(0.005)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        while not self._queue.empty():  # what could not be drained in time is refused, not lost silently
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(ShuttingDown("the server shut down before this request ran"))
        self._pool.shutdown(wait=True)
        self._task = None
