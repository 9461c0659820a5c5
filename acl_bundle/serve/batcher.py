"""Dynamic batching: coalesce concurrent requests into one ``infer`` of a batch size the model has.

Like Triton's dynamic batcher: when an executor slot is free, the batcher takes the
oldest queued request, waits up to ``max_queue_delay`` (from that request's arrival)
for more rows, then stacks as many queued requests as fit the largest batch size
(in arrival order), pads with zero rows to the next batch size the model has, runs
one ``infer`` in a worker thread and hands each request its own rows, all with the
one weight version that produced them.  While a batch runs, requests queue up, so a
busy server forms large batches without waiting for the delay at all.

With batching off (or a model whose tensors cannot be stacked) each request is one
``infer``, still padded to the next batch size; so is a request that finds, with no
queue delay configured, an empty queue and a free slot (nothing to batch it with).  Model calls never run on the event
loop: they go to ``executor``.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("acl_bundle.serve")

__all__ = ["Batcher", "BatchResult"]


@dataclass
class BatchResult:
    """One request's outputs (model output order), the weight version, and where its time went."""

    outputs: list[np.ndarray]
    version: int
    queue_seconds: float
    compute_seconds: float
    batch_size: int
    input_seconds: float = 0.0   # stacking the batch's inputs (its share of compute_input)
    output_seconds: float = 0.0  # splitting the batch's outputs


@dataclass
class _Item:
    arrays: list[np.ndarray]
    rows: int
    future: asyncio.Future[BatchResult]
    arrived: float = field(default_factory=time.perf_counter)


def pad_to(batch_sizes: tuple[int, ...], rows: int) -> int:
    """The smallest batch size >= rows (rows <= max is checked by the caller)."""
    return batch_sizes[bisect.bisect_left(batch_sizes, rows)]


def _stack(parts: list[list[np.ndarray]], rows: int, size: int) -> list[np.ndarray]:
    """Concatenate each input over the requests and add ``size - rows`` zero rows."""
    out = []
    for i in range(len(parts[0])):
        first = parts[0][i]
        if len(parts) == 1 and rows == size:
            out.append(np.ascontiguousarray(first))
            continue
        a = np.empty((size,) + first.shape[1:], first.dtype)
        n = 0
        for p in parts:
            a[n:n + p[i].shape[0]] = p[i]
            n += p[i].shape[0]
        a[n:] = 0
        out.append(a)
    return out


class Batcher:
    """Queue requests and run them on ``infer`` (``infer(*arrays) -> (outputs, version)``).

    ``batch_sizes``: the model's dynamic batch sizes, ascending (empty for a static model).
    ``enabled``: coalesce requests (needs batch sizes); ``max_queue_delay``: seconds.
    ``slots``: batches (or single requests) executing at once.
    ``on_batch(rows, size, infer_s, stack_s, split_s)``: called on the loop after each batch runs (metrics).
    """

    def __init__(
        self,
        infer: Callable[..., tuple[list[np.ndarray], int]],
        executor: Executor,
        *,
        batch_sizes: tuple[int, ...],
        enabled: bool,
        max_queue_delay: float,
        slots: int,
        on_batch: Callable[[int, int, float, float, float], None] | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if max_queue_delay < 0:
            raise ValueError(f"max_queue_delay must be >= 0 seconds, got {max_queue_delay}")
        self._infer = infer
        self._executor = executor
        self._sizes = tuple(sorted(batch_sizes))
        self.enabled = bool(enabled and self._sizes)
        self._delay = float(max_queue_delay)
        self._slots = slots
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._rows_queued = 0
        self._free: asyncio.Semaphore | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle (on the loop)
    def start(self) -> None:
        self._free = asyncio.Semaphore(self._slots)
        self._wake = asyncio.Event()
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="acl_bundle-batcher")

    async def drain(self) -> None:
        """Run what is queued and wait for every running batch; then stop collecting."""
        self._closing = True
        while self._queue or self._running:
            if self._wake is not None:
                self._wake.set()
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ requests
    async def submit(self, arrays: list[np.ndarray], rows: int) -> BatchResult:
        """Run one request (``rows`` = its batch, 0 for a static model) and return its result."""
        loop = asyncio.get_running_loop()
        assert self._free is not None
        # Batching off, or nothing to wait for (no delay, nothing queued, a slot free): run it alone at once.
        if not self.enabled or (self._delay == 0 and not self._queue and not self._free.locked()):
            t0 = time.perf_counter()
            async with self._free:
                t1 = time.perf_counter()
                size = pad_to(self._sizes, rows) if self._sizes else 0
                outs, version, seconds, t_in, t_out = await loop.run_in_executor(
                    self._executor, self._run, [arrays], rows, size)
            if self._on_batch is not None:
                self._on_batch(rows, size, seconds, t_in, t_out)
            return BatchResult(outs[0], version, t1 - t0, seconds, size, t_in, t_out)
        item = _Item(arrays, rows, loop.create_future())
        self._queue.append(item)
        self._rows_queued += rows
        assert self._wake is not None
        self._wake.set()
        return await item.future

    def _run(self, parts: list[list[np.ndarray]], rows: int,
             size: int) -> tuple[list[list[np.ndarray]], int, float, float, float]:
        """Worker thread: stack, infer, split; returns (outputs per request, version, infer/stack/split seconds)."""
        t_in = time.perf_counter()
        inputs = _stack(parts, rows, size) if size else parts[0]
        t0 = time.perf_counter()
        outs, version = self._infer(*inputs)
        t1 = time.perf_counter()
        if not size:
            return [list(outs)], version, t1 - t0, t0 - t_in, 0.0
        split = []
        n = 0
        for p in parts:
            r = p[0].shape[0]
            split.append([o[n:n + r] for o in outs])  # padding rows dropped
            n += r
        return split, version, t1 - t0, t0 - t_in, time.perf_counter() - t1

    async def _collect(self) -> None:
        assert self._free is not None and self._wake is not None
        max_rows = self._sizes[-1]
        while True:
            await self._free.acquire()
            try:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                deadline = self._queue[0].arrived + self._delay
                while self._rows_queued < max_rows and not self._closing:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except asyncio.TimeoutError:
                        break
                batch: list[_Item] = []
                rows = 0
                while self._queue and rows + self._queue[0].rows <= max_rows:
                    item = self._queue.popleft()
                    self._rows_queued -= item.rows
                    if item.future.done():  # the client went away
                        continue
                    batch.append(item)
                    rows += item.rows
            except BaseException:
                self._free.release()
                raise
            if not batch:
                self._free.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch, rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Item], rows: int) -> None:
        assert self._free is not None
        loop = asyncio.get_running_loop()
        size = pad_to(self._sizes, rows)
        started = time.perf_counter()
        try:
            try:
                split, version, seconds, t_in, t_out = await loop.run_in_executor(
                    self._executor, self._run, [it.arrays for it in batch], rows, size)
            except Exception as e:  # every request of the batch gets the error
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                return
        finally:
            self._free.release()
        if self._on_batch is not None:
            self._on_batch(rows, size, seconds, t_in, t_out)
        for it, outs in zip(batch, split):
            if not it.future.done():
                it.future.set_result(BatchResult(outs, version, started - it.arrived, seconds, size, t_in, t_out))
