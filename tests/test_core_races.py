"""Core correctness under races, GC in foreign threads, signals, fork and interpreter exit.

Each test forces the interleaving that broke the old code (by wrapping an ``acl`` function
so that the competing event happens at exactly that point) instead of hoping a race occurs;
the randomised variants are under ``-m slow``.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from acl_bundle import AclError, BundleModel, ModelClosedError, sim
from acl_bundle.sim import acl as ACL
from helpers import reference


def _x(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + b).standard_normal((b, 8)).astype(np.float32)


def test_first_calls_of_two_batch_sizes_racing_get_their_own_output_shapes(make_bundle, monkeypatch):
    """Another batch's execute lands between this batch's set_dynamic_batch_size and its slot build."""
    om, w0 = make_bundle(batch_sizes=[1, 4, 8])
    with BundleModel(om, acl=ACL) as m:
        m.infer(_x(8))  # batch 8 has its slot: its infer needs no build
        real_set = ACL.mdl.set_dynamic_batch_size
        fired = []

        def set_then_other_batch_runs(model_id, ds, index, batch):
            ret = real_set(model_id, ds, index, batch)
            if batch == 1 and not fired:
                fired.append(1)
                t = threading.Thread(target=lambda: fired.append(m.infer(_x(8))))
                t.start()
                t.join(30)  # batch 8 executes: the model's "current" dims are now batch 8's
            return ret

        monkeypatch.setattr(ACL.mdl, "set_dynamic_batch_size", set_then_other_batch_runs)
        y1 = m.infer(_x(1))
        monkeypatch.setattr(ACL.mdl, "set_dynamic_batch_size", real_set)
        assert len(fired) == 2, "the competing infer did not run inside the first batch-1 call"
        for _ in range(3):  # and for the life of the model
            assert m.infer(_x(1)).shape == (1, 4)
        assert y1.shape == (1, 4)
        np.testing.assert_allclose(y1, reference(_x(1), w0), rtol=1e-5, atol=1e-5)
        assert fired[1].shape == (8, 4)


def test_a_finalizer_run_by_gc_inside_another_models_call_leaves_that_call_its_context(make_bundle, monkeypatch):
    om_a, _ = make_bundle(seed=1)
    om_b, wb = make_bundle(seed=2)
    b = BundleModel(om_b, acl=ACL)
    a = BundleModel(om_a, acl=ACL)
    a.cycle = a  # only the cyclic collector can free it
    del a
    real = ACL.rt.memcpy
    collected = []

    def memcpy_with_gc(*args):
        if not collected:
            collected.append(gc.collect())  # finalizes model a right here, inside b's infer
        return real(*args)

    monkeypatch.setattr(ACL.rt, "memcpy", memcpy_with_gc)
    x = _x(1)
    y = b.infer(x)
    monkeypatch.setattr(ACL.rt, "memcpy", real)
    assert collected and collected[0] > 0
    np.testing.assert_allclose(y, reference(x, wb), rtol=1e-5, atol=1e-5)
    assert ACL.rt.get_context() == (b._ctx.handle, 0)
    b.close()


def test_caller_context_is_left_as_found_by_every_entry(make_bundle):
    """An application with its own context and stream mixes its pyACL code with a BundleModel.

    After every entry the application uses its own stream: on real ACL (and the simulator) a
    stream of another context than the current one answers 107003, so a wrapper that leaves its
    own context current breaks the application at its next call.
    """
    om, w0 = make_bundle()
    assert ACL.init() == 0
    assert ACL.rt.set_device(0) == 0
    app_ctx, ret = ACL.rt.create_context(0)
    assert ret == 0
    stream, ret = ACL.rt.create_stream()
    assert ret == 0
    src = np.arange(16, dtype=np.float32)
    dev, ret = ACL.rt.malloc(src.nbytes, 0)
    assert ret == 0

    def app_uses_its_stream(after: str) -> None:
        ret = ACL.rt.memcpy_async(dev, src.nbytes, ACL.util.numpy_to_ptr(src), src.nbytes, 1, stream)
        assert ret == 0, f"after {after}: the application's own stream answered {ret}"
        assert ACL.rt.synchronize_stream(stream) == 0
        assert ACL.rt.get_context() == (app_ctx, 0), f"{after} changed the caller's context"

    try:
        m = BundleModel(om, acl=ACL)
        app_uses_its_stream("BundleModel()")
        x = _x(1)
        new = {k: v + 1 for k, v in w0.items()}
        m.update(new)
        app_uses_its_stream("update()")
        np.testing.assert_allclose(m.infer(x), reference(x, new), rtol=1e-5, atol=1e-5)
        app_uses_its_stream("infer()")
        m.stage(w0).commit()
        app_uses_its_stream("stage().commit()")
        m.close()
        app_uses_its_stream("close()")
        m2 = BundleModel.from_bytes(om.read_bytes(), acl=ACL)
        app_uses_its_stream("from_bytes()")
        m2.close()
    finally:
        ACL.rt.free(dev)
        ACL.rt.destroy_stream(stream)
        ACL.rt.destroy_context(app_ctx)
        ACL.rt.reset_device(0)
        ACL.finalize()


def test_interrupt_right_after_the_update_graph_returns_keeps_version_and_weights_together(make_bundle, monkeypatch):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        real = ACL.mdl.execute
        update_id = m.model_ids["update"]

        def execute_then_ctrl_c(model_id, *args):
            ret = real(model_id, *args)
            if model_id == update_id:
                raise KeyboardInterrupt  # the signal handler ran as the C call returned
            return ret

        new = {k: v * 2 for k, v in w0.items()}
        monkeypatch.setattr(ACL.mdl, "execute", execute_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            m.update(new)
        monkeypatch.setattr(ACL.mdl, "execute", real)
        x = _x(1)
        y, v = m.infer(x, return_version=True)
        np.testing.assert_allclose(y, reference(x, new), rtol=1e-5, atol=1e-5)
        assert v == 1 == m.version, "applied weights are labelled with the old version"


def test_a_signal_during_the_simulated_update_graph_cannot_tear_it(make_bundle, monkeypatch):
    """SIGINT lands after the update graph has written its first variable: all or nothing."""
    import ctypes
    import signal

    from helpers import device_weights

    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        new = {k: (v * 3).astype(v.dtype) for k, v in w0.items()}
        real = ctypes.memmove
        sent = []

        def memmove_then_sigint(*args):
            ret = real(*args)
            if m._gate._writer and not sent:  # inside the commit: the update graph is copying
                sent.append(1)
                os.kill(os.getpid(), signal.SIGINT)
            return ret

        # Python's own SIGINT handler, whatever this process inherited: a shell starts background
        # jobs with SIGINT ignored, and Python then installs no handler at all.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        monkeypatch.setattr(ctypes, "memmove", memmove_then_sigint)
        try:
            with pytest.raises(KeyboardInterrupt):
                m.update(new)
        finally:
            monkeypatch.setattr(ctypes, "memmove", real)
            signal.signal(signal.SIGINT, previous)
        assert sent
        dev = device_weights(m)
        assert all(np.array_equal(dev[k], new[k]) for k in new), "the update graph was torn by the signal"
        x = _x(1)
        y, v = m.infer(x, return_version=True)
        assert v == 1
        np.testing.assert_allclose(y, reference(x, new), rtol=1e-5, atol=1e-5)


def test_a_failing_update_graph_takes_the_version_back(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        with sim.fault("acl.mdl.execute", 507011, on_call=1), pytest.raises(AclError):
            m.update({k: v * 2 for k, v in w0.items()})
        x = _x(1)
        y, v = m.infer(x, return_version=True)
        assert v == 0
        np.testing.assert_allclose(y, reference(x, w0), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_threads_infer_disowns_the_model_in_the_child(make_bundle):
    om, _ = make_bundle()
    m = BundleModel(om, acl=ACL, max_concurrency=2)
    stop = threading.Event()
    inside = threading.Event()
    real = ACL.rt.memcpy

    def infer_loop():
        while not stop.is_set():
            m.infer(_x(1))

    def slow_memcpy(*args):
        inside.set()
        time.sleep(0.001)
        return real(*args)

    ACL.rt.memcpy = slow_memcpy
    threads = [threading.Thread(target=infer_loop, daemon=True) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        assert inside.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: no ACL call may happen here, and nothing may hang
            code = 1
            try:
                try:
                    m.infer(_x(1))
                except ModelClosedError as e:
                    code = 0 if "fork" in str(e) else 3
                m.close()
                with m:
                    pass
            except BaseException:
                code = 4
            os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung")
            time.sleep(0.01)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        ACL.rt.memcpy = real
        m.close()


_EXIT_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    os.environ["ACL_BUNDLE_BACKEND"] = "sim"
    from acl_bundle import BundleModel, InterpreterShutdownError, ModelClosedError
    from acl_bundle.sim import acl
    assert issubclass(InterpreterShutdownError, ModelClosedError)
    om, log = sys.argv[1], sys.argv[2]
    real = acl.mdl.bundle_load_from_file
    loading = threading.Event()
    def slow_load(path):
        loading.set()
        time.sleep(0.3)  # the main thread exits meanwhile
        return real(path)
    acl.mdl.bundle_load_from_file = slow_load
    def loader():
        while True:
            try:
                BundleModel(om)  # dropped at once: loads and releases race with interpreter exit
            except InterpreterShutdownError as e:  # refused once exit has begun
                assert "interpreter is shutting down" in str(e)
                return
    def load_after_the_exit_pass():  # atexit runs after threading's exit hook
        try:
            BundleModel(om)
        except InterpreterShutdownError as e:
            with open(log, "w") as f:
                f.write(str(e))
    import atexit
    atexit.register(load_after_the_exit_pass)
    threading.Thread(target=loader, daemon=True).start()
    loading.wait(30)
""")


def test_interpreter_exit_while_a_daemon_thread_loads(make_bundle, tmp_path):
    om, _ = make_bundle()
    script = tmp_path / "exit_while_loading.py"
    script.write_text(_EXIT_SCRIPT)
    for i in range(3):
        log = tmp_path / f"refused{i}.txt"
        p = subprocess.run([sys.executable, str(script), str(om), str(log)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
        assert "Fatal" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
        # a load started after the exit pass is refused, not left half-made
        assert "interpreter is shutting down" in log.read_text()


def test_device_bytes_counts_every_slot_built_concurrently(make_bundle):
    om, _ = make_bundle(batch_sizes=[1, 2, 3, 4, 5, 6, 7, 8])
    with BundleModel(om, acl=ACL, max_concurrency=1) as m:
        for b in range(1, 9):
            m.infer(_x(b))
        expected = m.device_bytes  # the same slots built one after the other
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(3):
            with BundleModel(om, acl=ACL, max_concurrency=1) as m:
                barrier = threading.Barrier(8)

                def first_call(b):
                    barrier.wait(30)  # noqa: B023 (the threads are joined in this iteration)
                    m.infer(_x(b))

                threads = [threading.Thread(target=first_call, args=(b,)) for b in range(1, 9)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                assert m.device_bytes == expected
    finally:
        sys.setswitchinterval(old)


@pytest.mark.slow
def test_random_first_call_races_on_fresh_loads_never_give_wrong_shapes(make_bundle):
    om, w0 = make_bundle(batch_sizes=[1, 2, 4, 8])
    rng = np.random.default_rng(0)
    bad = 0
    for _ in range(60):
        with BundleModel(om, acl=ACL, max_concurrency=2) as m:
            results = []

            def worker(seed):
                r = np.random.default_rng(seed)
                for _ in range(20):
                    b = int(r.choice([1, 2, 4, 8]))
                    results.append((b, m.infer(_x(b))))  # noqa: B023 (joined in this iteration)

            ts = [threading.Thread(target=worker, args=(int(rng.integers(1 << 30)),)) for _ in range(6)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
            for b, y in results:
                if y.shape != (b, 4) or not np.allclose(y, reference(_x(b), w0), rtol=1e-4, atol=1e-5):
                    bad += 1
    assert bad == 0
