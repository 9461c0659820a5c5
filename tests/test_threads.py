"""Concurrent infer + update on one model: every result comes from one whole weight set."""
from __future__ import annotations

import threading

import numpy as np

from acl_bundle import BundleModel, ModelClosedError, sim
from helpers import reference


def test_no_torn_results_under_concurrent_updates(make_bundle):
    om, w0 = make_bundle(sizes=(8, 64, 64, 4))
    rng = np.random.default_rng(0)
    sets = [w0] + [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in w0.items()} for _ in range(2)]
    x = rng.standard_normal((1, 8)).astype(np.float32)
    refs = [reference(x, s) for s in sets]
    applied = [0]  # version -> index of the weight set it committed
    errors: list[BaseException] = []
    results: list[tuple[int, np.ndarray]] = []
    stop = threading.Event()

    with BundleModel(om, acl=sim.acl, max_concurrency=4) as m:
        def reader():
            try:
                while not stop.is_set():
                    y, v = m.infer(x, return_version=True)
                    results.append((v, y))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        i = 0
        # At least 60 updates, and keep going (bounded) until the readers have produced
        # enough results to interleave with them, however loaded the machine is.
        while i < 60 or (len(results) < 300 and i < 20000):
            k = 1 + i % 2
            v = m.update(sets[k])
            applied.append(k)
            assert v == len(applied) - 1
            i += 1
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert len(results) >= 300
    assert len({v for v, _ in results}) > 10  # results came from many different versions
    for v, y in results:
        np.testing.assert_allclose(y, refs[applied[v]], rtol=1e-5, atol=1e-5)


def test_close_while_callers_wait_for_a_slot_does_not_hang(make_bundle):
    """close() and slot waiters share one condition: a returned slot must wake the waiters, not only close()."""
    om, w0 = make_bundle(sizes=(8, 256, 256, 4))
    x = np.ones((1, 8), np.float32)
    m = BundleModel(om, acl=sim.acl, max_concurrency=1)
    results, errors = [], []

    def worker():
        try:
            for _ in range(20):
                results.append(m.infer(x))
        except Exception as e:  # ModelClosedError once close() has begun
            errors.append(type(e).__name__)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    closer = threading.Thread(target=m.close, daemon=True)
    closer.start()
    for t in threads + [closer]:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads + [closer]), "close() or a caller hung waiting for a slot"
    assert set(errors) <= {"ModelClosedError"}
    for y in results:
        np.testing.assert_allclose(y, reference(x, w0), rtol=1e-4, atol=1e-5)


def test_return_version_names_the_weights_that_produced_the_result(make_bundle):
    """An update that commits after infer's reader section ends, but before infer returns, must not change the
    version infer reports: the version is taken while the weights are held, with the result."""
    import sys

    om, w0 = make_bundle()
    rng = np.random.default_rng(3)
    new = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in w0.items()}
    x = rng.standard_normal((1, 8)).astype(np.float32)
    fired = []

    with BundleModel(om, acl=sim.acl) as m:
        code = BundleModel.infer.__code__

        def local(frame, event, arg):
            # The first line of infer that runs after it has returned its slot and left the
            # reader section (no reader left, lock free): commit an update right there.
            if (event == "line" and not fired and "outs" in frame.f_locals and m._gate._readers == 0
                    and m._gate._cond.acquire(blocking=False)):
                m._gate._cond.release()
                fired.append(m.update(new))
            return local

        def tracer(frame, event, arg):
            return local if frame.f_code is code else None

        sys.settrace(tracer)
        try:
            y, v = m.infer(x, return_version=True)
        finally:
            sys.settrace(None)
        assert fired == [1], "the update did not run between the reader section and the return"
        np.testing.assert_allclose(y, reference(x, w0), rtol=1e-5, atol=1e-5)
        assert v == 0
        y2, v2 = m.infer(x, return_version=True)
        assert v2 == 1
        np.testing.assert_allclose(y2, reference(x, new), rtol=1e-5, atol=1e-5)


def test_close_waiting_for_a_failing_update_is_woken(make_bundle, monkeypatch):
    """An update that fails before its commit must still wake a close() waiting for it."""
    import pytest

    from acl_bundle import AclError

    om, w0 = make_bundle()
    m = BundleModel(om, acl=sim.acl)
    entered, release = threading.Event(), threading.Event()
    real_memcpy = sim.acl.rt.memcpy

    def blocking_failing_memcpy(*args):
        entered.set()
        release.wait(30)
        return 507000  # the stage copy fails: no commit, no writer wake-up

    monkeypatch.setattr(sim.acl.rt, "memcpy", blocking_failing_memcpy)
    errors = []

    def updater():
        try:
            m.update({0: w0["fc0.weight"]})
        except AclError as e:
            errors.append(e)

    a = threading.Thread(target=updater, daemon=True)
    a.start()
    assert entered.wait(30)
    b = threading.Thread(target=m.close, daemon=True)
    b.start()
    gate = m._gate
    for _ in range(3000):  # close() sets `closed` under the lock and then waits on it
        with gate._cond:
            if gate.closed:
                break
        b.join(0.01)
    assert gate.closed
    monkeypatch.setattr(sim.acl.rt, "memcpy", real_memcpy)
    release.set()
    a.join(30)
    b.join(30)
    assert not b.is_alive(), "close() was never woken after the in-flight update failed"
    assert len(errors) == 1 and errors[0].func == "acl.rt.memcpy"
    with pytest.raises(ModelClosedError):
        m.infer(np.ones((1, 8), np.float32))
