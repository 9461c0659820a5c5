"""The public two-phase update: stage (validate + copy while serving), then commit or abort."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from acl_bundle import BundleModel, ModelClosedError, WeightVersion
from acl_bundle.sim import acl as ACL
from helpers import device_weights, reference


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)


def _new(w0: dict, k: float = 2.0) -> dict:
    return {name: (v * k).astype(v.dtype) for name, v in w0.items()}


def test_stage_serves_old_weights_until_commit_then_new_ones_with_their_step(make_bundle):
    om, w0 = make_bundle()
    x = _x()
    with BundleModel(om, acl=ACL) as m:
        new = _new(w0)
        staged = m.stage(new, step=1200)
        assert staged.open and staged.nbytes == sum(v.nbytes for v in new.values())
        y, v = m.infer(x, return_version=True)  # staged, not live
        np.testing.assert_allclose(y, reference(x, w0), rtol=1e-5, atol=1e-5)
        assert v == 0 and v.step is None
        version = staged.commit()
        assert isinstance(version, WeightVersion) and version == 1 and version.step == 1200
        y, v = m.infer(x, return_version=True)
        np.testing.assert_allclose(y, reference(x, new), rtol=1e-5, atol=1e-5)
        assert (v, v.step) == (1, 1200) and m.step == 1200
        assert m.stats["step"] == 1200 and m.stats["last_update"]["step"] == 1200
        with pytest.raises(RuntimeError, match="already committed"):
            staged.commit()
        assert m.update({"fc0.bias": w0["fc0.bias"]}) == 2 and m.step is None


def test_abort_and_with_leave_the_device_weights_bit_identical(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        before = {k: v.copy() for k, v in device_weights(m).items()}
        m.stage(_new(w0)).abort()
        with m.stage(_new(w0, 3.0)) as s:
            assert s.open
        assert not s.open and s.version is None
        after = device_weights(m)
        assert all(np.array_equal(before[k], after[k]) for k in before)
        assert m.version == 0 and m.stats["updates"] == 0
        assert m.update(_new(w0)) == 1  # the lock was given back


def test_one_stage_at_a_time_second_one_times_out_clearly(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        first = m.stage(_new(w0))
        with pytest.raises(TimeoutError, match="another update is staged"):
            m.stage(_new(w0, 3.0), timeout=0.05)
        first.abort()
        m.stage(_new(w0, 3.0), timeout=0.05).commit()
        x = _x()
        np.testing.assert_allclose(m.infer(x), reference(x, _new(w0, 3.0)), rtol=1e-5, atol=1e-5)


def test_a_dropped_stage_is_aborted_by_garbage_collection(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        s = m.stage(_new(w0))
        s.cycle = s
        del s
        gc.collect()
        m.stage(_new(w0), timeout=1).commit()  # would time out if the stage still held the lock
        assert m.version == 1


def test_commit_after_close_is_refused_and_bad_step_before_any_copy(make_bundle):
    om, w0 = make_bundle()
    m = BundleModel(om, acl=ACL)
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        m.stage(_new(w0), step=-1)
    with pytest.raises(ValueError, match="step must be"):
        m.update(_new(w0), step="12")
    s = m.stage(_new(w0))
    m.close()
    with pytest.raises(ModelClosedError):
        s.commit()
    assert not s.open


def test_a_call_held_back_by_a_commit_has_started_when_update_returns(make_bundle):
    """The commit hands off: update() returns only after the reader it held back was admitted (Gate.hand_off)."""
    import threading
    import time

    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        x = _x()
        m.infer(x)
        gate = m._gate
        real_begin_write = gate.begin_write
        held = threading.Event()
        out = {}

        def begin_write_then_hold_a_reader():
            real_begin_write()
            t = threading.Thread(target=lambda: out.setdefault("y", m.infer(x, return_version=True)))
            t.start()
            out["t"] = t
            while gate._readers_waiting < 1:  # the reader is held back by this commit
                time.sleep(0.0005)
            held.set()

        gate.begin_write = begin_write_then_hold_a_reader
        real_hand_off = gate.hand_off
        seen = []
        gate.hand_off = lambda timeout=None: (seen.append(gate._admit), real_hand_off(timeout=20.0))[1]
        new = _new(w0)
        assert m.update(new) == 1
        assert held.is_set() and seen == [1]  # one reader was admitted when the hand-off began ...
        assert gate._admit == 0  # ... and had taken its admission when update() returned
        out["t"].join(20)
        y, v = out["y"]
        assert v == 1
        np.testing.assert_allclose(y, reference(x, new), rtol=1e-5, atol=1e-5)


def test_an_interrupt_in_the_hand_off_still_counts_the_applied_update(make_bundle):
    """The weights are live once the commit ends: a KeyboardInterrupt during the hand-off reaches the caller,
    but stats count an update (not a failure) and infer serves the new weights under the new version."""
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        x = _x()
        m.infer(x)

        def interrupted(timeout=None):
            raise KeyboardInterrupt

        m._gate.hand_off = interrupted
        new = _new(w0)
        with pytest.raises(KeyboardInterrupt):
            m.update(new)
        del m._gate.hand_off
        s = m.stats
        assert s["updates"] == 1 and s["failed_updates"] == 0 and s["last_update"]["version"] == 1
        y, v = m.infer(x, return_version=True)
        assert v == 1
        np.testing.assert_allclose(y, reference(x, new), rtol=1e-5, atol=1e-5)
        assert m.update(_new(w0, 3.0)) == 2  # the update lock was released
