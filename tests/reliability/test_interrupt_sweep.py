"""Interrupt sweep: raise KeyboardInterrupt at every Python event of one model call, with a reader running.

The sibling of the ACL fault sweep.  A signal handler's exception (Ctrl-C, a SIGTERM
handler's ``SystemExit``) can surface in the main thread between any two bytecodes of any
Python frame.  A ``sys.settrace`` tracer counts the ``call`` and ``line`` events of the
wrapper's frames (``acl_bundle/`` minus the simulator, which stands for pyACL's C calls)
and of the ``threading``/``queue``/``weakref`` frames they enter, and raises
``KeyboardInterrupt`` at the k-th, for every k until the call runs to its end.  After
each interrupted call:

* the caller got its ``KeyboardInterrupt``;
* another thread's ``infer`` goes on serving (it makes progress);
* the next calls (update, stage with a timeout, infer, close) return: no lock, counter,
  slot or staged update was leaked;
* the served outputs are those of the weights of ``m.version``: the call took full effect
  or none;
* ``close()`` (a second one, for an interrupted close) releases everything: the
  simulator reports nothing alive.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from acl_bundle import BundleModel, ModelClosedError, sim
from helpers import reference

ALWAYS_COUNTED = ("/threading.py", "/queue.py", "/weakref.py")


def _is_wrapper(filename: str) -> bool:
    f = filename.replace("\\", "/")
    return "/acl_bundle/" in f and "/acl_bundle/sim/" not in f


def _counted(frame) -> bool:
    """A wrapper frame, or a threading/queue/weakref frame whose nearest acl_bundle caller is the wrapper."""
    f = frame.f_code.co_filename
    if _is_wrapper(f):
        return True
    if not f.endswith(ALWAYS_COUNTED):
        return False
    caller = frame.f_back
    while caller is not None:
        name = caller.f_code.co_filename.replace("\\", "/")
        if "/acl_bundle/sim/" in name:
            return False
        if _is_wrapper(name):
            return True
        caller = caller.f_back
    return False


class Interrupter:
    """Raise KeyboardInterrupt at the k-th counted event of this thread (1-based); count them all."""

    def __init__(self, k: int) -> None:
        self.k, self.seen, self.fired = k, 0, False

    def _event(self, frame, event, arg):
        if event in ("call", "line") and not self.fired:
            self.seen += 1
            if self.seen == self.k:
                self.fired = True
                raise KeyboardInterrupt(f"interrupt sweep: event {self.k}")
        return self._event

    def __call__(self, frame, event, arg):
        if self.fired or not _counted(frame):
            return None
        return self._event(frame, event, arg)

    def __enter__(self) -> Interrupter:
        sys.settrace(self)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


class Reader(threading.Thread):
    """Another thread's inference loop, batch 1 (the fast path)."""

    def __init__(self, m: BundleModel, x: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.m, self.x, self.count, self.stop, self.error = m, x, 0, False, None
        self.start()

    def run(self) -> None:
        while not self.stop:
            try:
                self.m.infer(self.x)
            except ModelClosedError:
                return
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.error = e
                return
            self.count += 1

    def progresses(self, timeout: float = 10.0) -> bool:
        start, end = self.count, time.monotonic() + timeout
        while time.monotonic() < end:
            if self.count > start:
                return True
            time.sleep(0.001)
        return False


def _within(fn: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    """Run ``fn`` in a thread: a call that never returns fails the test instead of hanging it."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{what} did not return within {timeout} s: a lock or counter was leaked"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# ruff: noqa: B023 - the lambdas run at once, inside the loop iteration that made them


def _op_update(m, w1, x):
    m.update(w1, step=7)


def _op_stage_commit(m, w1, x):
    staged = m.stage(w1, step=7)
    staged.commit()


def _op_stage_abort(m, w1, x):
    with m.stage(w1, step=7):
        pass


def _op_rollback(m, w1, x):
    m.rollback()


def _op_infer_fast(m, w1, x):
    m.infer(x)


def _op_infer_general(m, w1, x):
    m.infer(np.concatenate([x, x, x]))  # 3 rows: padded to batch 4, the general path


def _op_close(m, w1, x):
    m.close()


OPS = {
    "update": _op_update, "stage+commit": _op_stage_commit, "stage+abort": _op_stage_abort,
    "rollback": _op_rollback, "infer (fast path)": _op_infer_fast, "infer (general path)": _op_infer_general,
    "close": _op_close,
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from acl_bundle.sim import builder, models

    model, w0 = models.mlp((8, 16, 4), seed=0)
    om, _ = builder.save(builder.build_bundle(model, init=True, batch_sizes=[1, 4]),
                         tmp_path_factory.mktemp("sweep") / "b.om")
    return om, w0


@pytest.mark.parametrize("op", list(OPS))
def test_interrupt_at_every_event_leaves_the_model_consistent(bundle, op):
    om, w0 = bundle
    w1 = {k: (v * -1.5 + 0.25).astype(v.dtype) for k, v in w0.items()}
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    action = OPS[op]
    k, interrupted = 0, 0
    while True:
        k += 1
        assert k < 5000, "the call never ran to its end"
        m = BundleModel(om, history=4)
        if op == "rollback":  # history knows w0 (version 1), w1 is served (version 2): rollback restores w0
            m.update(w0, step=2)
            m.update(w1, step=3)
        m.infer(x)
        m.infer(np.concatenate([x, x, x]))  # both slots built before the sweep starts
        before = m.version
        weights = {before: w1 if op == "rollback" else w0}
        reader = Reader(m, x)
        try:
            assert reader.progresses(), "the reader never started"
            swallowed: list = []  # raised inside a finalizer that garbage collection ran: Python ignores it
            hook, sys.unraisablehook = sys.unraisablehook, swallowed.append
            try:
                with Interrupter(k) as tracer:
                    try:
                        action(m, w1, x)
                        ran_through = True
                    except KeyboardInterrupt:
                        ran_through = False
            finally:
                sys.unraisablehook = hook
            if swallowed:
                assert isinstance(swallowed[0].exc_value, KeyboardInterrupt), swallowed[0].exc_value
                ran_through = False  # the call itself was not interrupted: sweep on
            else:
                assert tracer.fired != ran_through, "an interrupt was raised but not reported (or the reverse)"
            interrupted += not ran_through
            # One step later, nothing must be stuck, whatever was interrupted.
            if op != "close":
                after = m.version
                assert after in (before, before + 1), f"event {k}: version jumped {before} -> {after}"
                weights[before + 1] = w0 if op == "rollback" else w1
                assert reader.progresses(), f"event {k}: the other thread's infer stopped serving"
                # (an interrupted caller may return while its job still ends on the model's worker)
                y, v = _within(lambda: m.infer(x, return_version=True), f"event {k}: infer after the interrupt")
                assert v in weights, f"event {k}: served version {v}, expected {sorted(weights)}"
                np.testing.assert_allclose(y, reference(x, weights[v]), rtol=1e-5, atol=1e-5,
                                           err_msg=f"event {k}: outputs are not those of version {v}")
                yb, vb = _within(lambda: m.infer(np.concatenate([x, x, x]), return_version=True),
                                 f"event {k}: general-path infer")
                assert vb in weights and vb >= v, f"event {k}: version went {v} -> {vb}"
                np.testing.assert_allclose(yb[:1], reference(x, weights[vb]), rtol=1e-5, atol=1e-5,
                                           err_msg=f"event {k}: general-path outputs are not those of version {vb}")
                _within(lambda: m.stage(w0, timeout=5).abort(), f"event {k}: a stage after the interrupt")
                _within(lambda: m.update(w0), f"event {k}: an update after the interrupt")
                np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
        finally:
            reader.stop = True
            _within(m.close, f"event {k}: close after the interrupt")  # a second close finishes an interrupted one
            reader.join(20)
        assert not reader.is_alive() and reader.error is None, reader.error
        assert m.closed
        assert not sim.leaks(), f"event {k} ({op}): ACL resources left alive: {sim.leaks()}"
        if ran_through:
            break
    assert interrupted >= 3, f"only {interrupted} events were swept: the tracer saw nothing of {op}"
