"""The dynamic batcher on its own: coalescing, padding to a batch size the model has, splitting, versions, errors."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from acl_bundle.serve.batcher import Batcher, pad_to


class FakeModel:
    """infer(x) -> (x * 2 + version, version), accepting only its batch sizes; records each call's batch."""

    def __init__(self, sizes=(1, 2, 4, 8), delay=0.0):
        self.sizes = sizes
        self.calls: list[int] = []
        self.version = 0
        self.delay = delay
        self.lock = threading.Lock()

    def infer(self, x):
        assert x.shape[0] in self.sizes, f"batch {x.shape[0]} not in {self.sizes}"
        with self.lock:
            self.calls.append(x.shape[0])
            v = self.version
        time.sleep(self.delay)
        return [x * 2 + v], v


def _run(coro):
    return asyncio.run(coro)


def test_pad_to_picks_the_next_size():
    assert [pad_to((1, 2, 4, 8), r) for r in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]


def test_concurrent_requests_form_one_padded_batch_and_get_their_own_rows():
    model = FakeModel()
    pool = ThreadPoolExecutor(2)
    rows = [1, 2, 1, 1]  # 5 rows -> one infer of batch 8 (3 padding rows)

    async def main():
        b = Batcher(model.infer, pool, batch_sizes=model.sizes, enabled=True, max_queue_delay=0.2, slots=1)
        b.start()
        xs = [np.full((r, 3), i + 1, np.float32) for i, r in enumerate(rows)]
        res = await asyncio.gather(*(b.submit([x], x.shape[0]) for x in xs))
        await b.drain()
        return xs, res

    xs, res = _run(main())
    pool.shutdown()
    assert model.calls == [8]
    for x, r in zip(xs, res):
        assert r.outputs[0].shape == x.shape
        np.testing.assert_array_equal(r.outputs[0], x * 2)
        assert r.version == 0 and r.batch_size == 8


def test_a_full_batch_does_not_wait_for_the_delay():
    model = FakeModel()
    pool = ThreadPoolExecutor(2)

    async def main():
        b = Batcher(model.infer, pool, batch_sizes=model.sizes, enabled=True, max_queue_delay=30.0, slots=1)
        b.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit([np.ones((2, 1), np.float32)], 2) for _ in range(4)))
        dt = time.perf_counter() - t0
        await b.drain()
        return dt

    dt = _run(main())
    pool.shutdown()
    assert model.calls == [8] and dt < 10  # 8 rows filled the largest batch: no 30 s wait


def test_requests_queue_while_a_batch_runs_and_batches_never_exceed_the_largest_size():
    model = FakeModel(delay=0.05)
    pool = ThreadPoolExecutor(1)

    async def main():
        b = Batcher(model.infer, pool, batch_sizes=model.sizes, enabled=True, max_queue_delay=0.0, slots=1)
        b.start()
        xs = [np.full((1, 2), i, np.float32) for i in range(20)]
        res = await asyncio.gather(*(b.submit([x], 1) for x in xs))
        await b.drain()
        return xs, res

    xs, res = _run(main())
    pool.shutdown()
    assert sum(model.calls) >= 20 and max(model.calls) == 8 and len(model.calls) < 20
    for x, r in zip(xs, res):
        np.testing.assert_array_equal(r.outputs[0], x * 2)


def test_each_result_carries_the_version_of_its_batch():
    model = FakeModel(delay=0.01)
    pool = ThreadPoolExecutor(2)

    async def main():
        b = Batcher(model.infer, pool, batch_sizes=model.sizes, enabled=True, max_queue_delay=0.001, slots=2)
        b.start()
        out = []
        for step in range(5):
            model.version = step
            xs = [np.full((1, 1), k, np.float32) for k in range(6)]
            out += list(zip(xs, await asyncio.gather(*(b.submit([x], 1) for x in xs))))
        await b.drain()
        return out

    out = _run(main())
    pool.shutdown()
    for x, r in out:
        np.testing.assert_array_equal(r.outputs[0], x * 2 + r.version)  # output and version agree


def test_disabled_runs_each_request_alone_padded():
    model = FakeModel()
    pool = ThreadPoolExecutor(2)

    async def main():
        b = Batcher(model.infer, pool, batch_sizes=model.sizes, enabled=False, max_queue_delay=0.0, slots=2)
        b.start()
        xs = [np.ones((r, 1), np.float32) for r in (3, 1, 5)]
        res = await asyncio.gather(*(b.submit([x], x.shape[0]) for x in xs))
        await b.drain()
        return xs, res

    xs, res = _run(main())
    pool.shutdown()
    assert sorted(model.calls) == [1, 4, 8]
    assert [r.outputs[0].shape[0] for r in res] == [3, 1, 5]


def test_an_error_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    calls = []

    def infer(x):
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("device fault")
        return [x], 7

    pool = ThreadPoolExecutor(1)

    async def main():
        b = Batcher(infer, pool, batch_sizes=(1, 2, 4), enabled=True, max_queue_delay=0.2, slots=1)
        b.start()
        first = await asyncio.gather(*(b.submit([np.ones((1, 1))], 1) for _ in range(3)), return_exceptions=True)
        second = await b.submit([np.ones((1, 1))], 1)
        await b.drain()
        return first, second

    first, second = _run(main())
    pool.shutdown()
    assert all(isinstance(e, RuntimeError) for e in first)
    assert second.version == 7


def test_bad_arguments():
    with pytest.raises(ValueError, match="slots"):
        Batcher(lambda x: x, None, batch_sizes=(1,), enabled=True, max_queue_delay=0, slots=0)
    with pytest.raises(ValueError, match="max_queue_delay"):
        Batcher(lambda x: x, None, batch_sizes=(1,), enabled=True, max_queue_delay=-1, slots=1)
