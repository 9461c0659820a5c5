"""The specialised infer path (_fastinfer): same answers and guarantees as the general path, and
everything unusual goes to the general path."""
from __future__ import annotations

import threading
import traceback

import numpy as np
import pytest

from acl_bundle import AclError, BundleModel, sim
from helpers import reference

ACL = sim.acl


def _x(batch=1, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)


def test_steady_call_is_the_raw_sequence_plus_one_get_context(make_bundle):
    """With the model's context current: get_context and the raw calls, no set_context; the numbers are numpy's."""
    om, w0 = make_bundle(batch_sizes=[1, 4])
    with BundleModel(om, acl=ACL) as m:
        m.infer(_x())  # first call of batch 1: builds the slot (general path)
        assert ACL.rt.set_context(m._ctx.handle) == 0
        x = _x(seed=1)
        with sim.record() as calls:
            y, v = m.infer(x, return_version=True)
        np.testing.assert_allclose(y, reference(x, w0), rtol=1e-5, atol=1e-5)
        assert v == 0
        assert calls == ["acl.rt.get_context", "acl.util.numpy_to_ptr", "acl.rt.memcpy", "acl.mdl.execute",
                         "acl.util.numpy_to_ptr", "acl.rt.memcpy"]


def test_callers_context_restored_and_read_every_call(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        m.infer(_x())
        mine, ret = ACL.rt.create_context(0)
        assert ret == 0
        try:
            for _ in range(2):  # the thread's context changes behind the model's back: read again each call
                assert ACL.rt.set_context(mine) == 0
                with sim.record() as calls:
                    m.infer(_x())
                assert calls.count("acl.rt.set_context") == 2  # ours, then the caller's back
                assert ACL.rt.get_context() == (mine, 0)
        finally:
            ACL.rt.set_context(m._ctx.handle)
            assert ACL.rt.destroy_context(mine) == 0


def test_patched_and_faulted_acl_functions_reach_the_fast_path(make_bundle, monkeypatch):
    """ACL functions are looked up per call: a patch after load sees the fast path's copies, a fault
    surfaces from _fastinfer with its code, and the model serves afterwards."""
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        m.infer(_x())
        real = ACL.rt.memcpy
        seen = []
        monkeypatch.setattr(ACL.rt, "memcpy", lambda *a: seen.append(a[4]) or real(*a))
        m.infer(_x())
        assert len(seen) == 2  # in and out
        monkeypatch.undo()
        for name in ("acl.rt.memcpy", "acl.mdl.execute"):
            with sim.fault(name, 500000), pytest.raises(AclError) as ei:
                m.infer(_x())
            assert (ei.value.func, ei.value.code) == (name, 500000)
            assert any(f.filename.endswith("_model/fastinfer.py") for f in traceback.extract_tb(ei.value.__traceback__))
            x = _x(seed=3)
            np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)  # slot given back


def test_unusual_calls_take_the_general_path(make_bundle):
    om, w0 = make_bundle(batch_sizes=[1, 4])
    with BundleModel(om, acl=ACL) as m:
        x1 = _x()
        assert m._fast((x1,)) is None  # first call of batch 1: no slot yet
        m.infer(x1)
        assert m._fast((x1,)) is not None
        x4 = _x(4)
        f64 = x4.astype(np.float64)
        cases = {
            "first call of batch 4": (x4,),
            "padding (3 rows)": (_x(3),),
            "a mapping": ({"x": x1},),
            "a conversion": (f64,),
            "not C-contiguous": (np.asfortranarray(_x(4)),),
            "a list": (x1.tolist(),),
            "two arguments": (x1, x1),
        }
        for what, args in cases.items():
            assert m._fast(args) is None, what
        # and the general path answers them (or explains)
        np.testing.assert_allclose(m.infer(_x(3)), reference(_x(3), w0), rtol=1e-5, atol=1e-5)
        with pytest.raises(TypeError, match="dtype float32"):
            m.infer(f64)
        # a commit waiting: the fast path does not admit (phase fairness is the general path's)
        gate = m._gate
        gate.begin_read(1)  # hold a reader so a commit has to wait
        t = threading.Thread(target=m.update, args=({"fc0.bias": w0["fc0.bias"]},))
        t.start()
        while not gate._writers_waiting:
            pass
        assert m._fast((x1,)) is None
        gate.end_read(1, None)
        t.join()
        assert m.version == 1
    assert m._fast((x1,)) is None  # closed


def _two_input_bundle(tmp_path):
    """y = x @ W + z: two data inputs, one variable (built here with onnx, checked against numpy)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from acl_bundle.sim import builder

    w = np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "z"], ["y"])],
        "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    om, _ = builder.save(builder.build_bundle(proto), tmp_path / "two.om")
    return om, w


def test_two_inputs_take_the_general_fast_path_with_numpy_answers(tmp_path):
    om, w = _two_input_bundle(tmp_path)
    rng = np.random.default_rng(6)
    with BundleModel(om, acl=ACL) as m:
        x, z = rng.standard_normal((1, 4)).astype(np.float32), rng.standard_normal((1, 3)).astype(np.float32)
        m.infer(x, z)  # builds the slot
        assert ACL.rt.set_context(m._ctx.handle) == 0
        with sim.record() as calls:
            y = m.infer(x, z)
        np.testing.assert_allclose(y, x @ w + z, rtol=1e-5, atol=1e-5)
        assert calls == ["acl.rt.get_context", "acl.util.numpy_to_ptr", "acl.rt.memcpy", "acl.util.numpy_to_ptr",
                         "acl.rt.memcpy", "acl.mdl.execute", "acl.util.numpy_to_ptr", "acl.rt.memcpy"]
        assert m._fast((x, z)) is not None
        for what, args in {"one argument": (x,), "z as float64": (x, z.astype(np.float64)),
                           "x a strided view": (np.ones((1, 8), np.float32)[:, ::2], z)}.items():
            assert m._fast(args) is None, what
        np.testing.assert_allclose(m.infer(np.ones((1, 8), np.float32)[:, ::2], z), np.ones((1, 4)) @ w + z, rtol=1e-5)


def test_an_equal_dtype_object_that_is_not_numpys_own_still_takes_the_fast_path(make_bundle):
    """The one-input path compares the dtype by identity first, then by equality: both reach the fast path."""
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        m.infer(_x())
        native = np.dtype(np.float32).newbyteorder("=")
        assert native is not np.dtype(np.float32) and native == np.float32
        x = _x(seed=4).astype(native)
        assert x.dtype is not np.dtype(np.float32)
        done = m._fast((x,))
        assert done is not None
        np.testing.assert_allclose(done[0], reference(x, w0), rtol=1e-5, atol=1e-5)
