"""Dynamic batching: concurrent requests share one forward pass.

Each request's texts arrive tokenized (:meth:`DynamicBatcher.submit`). One
task gathers queued requests into a batch until the batch would exceed its
token budget (rows x longest text, what a padded forward pass costs) or its
row budget, or until ``max_wait_s`` has passed since the batch opened; then it
runs the forward pass in a worker thread, so the event loop keeps accepting
requests meanwhile, and hands each request its own rows of the logits. While a
batch runs the next one fills, so under load batches grow by themselves.

The queue is bounded in rows: a request that would overflow it is refused at
once (:class:`Overloaded`), so memory stays flat under any load and the
client is told to come back (HTTP 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class Overloaded(Exception):
    """The queue is full: the request was not accepted."""


@dataclass
class _Request:
    ids: list[list[int]]
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def width(self) -> int:
        return max(len(row) for row in self.ids)


@dataclass
class BatchStats:
    """What happened to one batch, for the metrics."""

    rows: int
    padded_tokens: int
    requests: int
    seconds: float


class DynamicBatcher:
    """Gather concurrent requests into forward passes of ``run_batch``.

    Parameters
    ----------
    run_batch : callable
        Token ids of a batch (list of rows) -> logits (rows x labels).
    max_batch_tokens : int
        Budget of a batch in padded tokens (rows x longest row).
    max_batch_rows : int
        Budget of a batch in rows.
    max_wait_s : float
        How long an open batch waits for more requests.
    max_queue_rows : int
        Rows waiting at most; past it, :meth:`submit` raises :class:`Overloaded`.
    on_batch : callable, optional
        Called with each batch's :class:`BatchStats`.
    """

    def __init__(self, run_batch: Callable[[list[list[int]]], np.ndarray], max_batch_tokens: int = 8192,
                 max_batch_rows: int = 64, max_wait_s: float = 0.005, max_queue_rows: int = 1024,
                 on_batch: Callable[[BatchStats], None] | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self.max_queue_rows = max_queue_rows
        self.on_batch = on_batch
        self.queued_rows = 0
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # One thread: forward passes run one at a time, each using every core.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtext-forward")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        while self.queued_rows and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, ids: list[list[int]]) -> np.ndarray:
        """Logits of these tokenized texts, from whichever batch they join."""
        if self.queued_rows + len(ids) > self.max_queue_rows:
            raise Overloaded(f"{self.queued_rows} texts queued, at most {self.max_queue_rows}")
        request = _Request(ids, asyncio.get_running_loop().create_future())
        self.queued_rows += len(ids)
        await self._queue.put(request)
        return await request.future

    def _fits(self, batch: list[_Request], nxt: _Request) -> bool:
        rows = sum(len(r.ids) for r in batch) + len(nxt.ids)
        width = max(max(r.width for r in batch), nxt.width)
        return rows <= self.max_batch_rows and rows * width <= self.max_batch_tokens

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        pending: _Request | None = None
        while True:
            first = pending or await self._queue.get()
            pending = None
            batch = [first]  # a request alone may exceed the budgets: it is never split
            deadline = loop.time() + self.max_wait_s
            while True:
                timeout = deadline - loop.time()
                try:
                    nxt = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(
                        self._queue.get(), timeout)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if not self._fits(batch, nxt):
                    pending = nxt  # opens the next batch
                    break
                batch.append(nxt)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        rows = [row for request in batch for row in request.ids]
        started = time.perf_counter()
        try:
            logits = await loop.run_in_executor(self._executor, self.run_batch, rows)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
        else:
            start = 0
            for request in batch:
                if not request.future.done():
                    request.future.set_result(logits[start : start + len(request.ids)])
                start += len(request.ids)
        finally:
            self.queued_rows -= len(rows)
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(rows), len(rows) * max(len(r) for r in rows), len(batch),
                                     time.perf_counter() - started))
