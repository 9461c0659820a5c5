"""Non-float tensors end to end (int32, int64, uint8, bool inputs, variables and outputs), wrapper on the simulator."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from acl_bundle import BundleModel, sim
from acl_bundle.sim import builder
from helpers import device_weights


def _model(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.INT32, [2, 3]),
        helper.make_tensor_value_info("m", TensorProto.BOOL, [2, 3]),
        helper.make_tensor_value_info("u", TensorProto.UINT8, [2, 3]),
        helper.make_tensor_value_info("l", TensorProto.INT64, [3]),
    ]
    outputs = [
        helper.make_tensor_value_info("yi", TensorProto.INT32, [2, 3]),
        helper.make_tensor_value_info("yb", TensorProto.BOOL, [2, 3]),
        helper.make_tensor_value_info("yu", TensorProto.UINT8, [4, 3]),
        helper.make_tensor_value_info("yl", TensorProto.INT64, [3]),
    ]
    nodes = [
        helper.make_node("Add", ["a", "wi"], ["yi"]),
        helper.make_node("And", ["m", "wb"], ["yb"]),
        helper.make_node("Concat", ["u", "wu"], ["yu"], axis=0),
        helper.make_node("Mul", ["l", "wl"], ["yl"]),
    ]
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _reference(a, m, u, i64, w):
    return a + w["wi"], m & w["wb"], np.concatenate([u, w["wu"]]), i64 * w["wl"]


def test_int_uint8_bool_tensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    w = {
        "wi": rng.integers(-100, 100, (2, 3), dtype=np.int32),
        "wb": rng.random((2, 3)) > 0.5,
        "wu": rng.integers(0, 255, (2, 3), dtype=np.uint8),
        "wl": rng.integers(-(2**40), 2**40, 3, dtype=np.int64),
    }
    om, _ = builder.save(builder.build_bundle(_model(w), variables=list(w)), tmp_path / "d.om")
    a = rng.integers(-5, 5, (2, 3), dtype=np.int32)
    m = rng.random((2, 3)) > 0.3
    u = rng.integers(0, 255, (2, 3), dtype=np.uint8)
    i64 = rng.integers(-1000, 1000, 3, dtype=np.int64)
    with BundleModel(om, acl=sim.acl) as model:
        assert [(v.name, v.dtype) for v in model.variables] == [(k, v.dtype) for k, v in w.items()]
        assert [t.dtype for t in model.outputs] == [
            np.dtype(np.int32),
            np.dtype(np.bool_),
            np.dtype(np.uint8),
            np.dtype(np.int64),
        ]
        out = model.infer(a, m, u, i64)
        assert type(out) is tuple and len(out) == 4  # several outputs: a tuple in model.outputs order
        for got, want in zip(out, _reference(a, m, u, i64, w)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        new = {"wb": ~w["wb"], "wl": w["wl"] * 3, "wu": 255 - w["wu"]}
        model.update(new)
        w2 = {**w, **new}
        for got, want in zip(model.infer({"a": a, "m": m, "u": u, "l": i64}), _reference(a, m, u, i64, w2)):
            np.testing.assert_array_equal(got, want)
        for k, v in device_weights(model).items():
            np.testing.assert_array_equal(v, w2[k])


def test_two_batched_inputs_must_share_one_batch_size(tmp_path):
    """Both inputs carry the dynamic batch dim: mixing batch sizes is refused before any copy, also on the fast path."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("a", "b")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]
    w = {"w": np.arange(3, dtype=np.float32)}
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Add", ["s", "w"], ["y"])]
    graph = helper.make_graph(nodes, "two", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    om, _ = builder.save(builder.build_bundle(model, variables=["w"], batch_sizes=[1, 2]), tmp_path / "two.om")
    rng = np.random.default_rng(1)
    with BundleModel(om, acl=sim.acl) as m:
        assert [t.shape for t in m.inputs] == [(-1, 3), (-1, 3)]
        for ba, bb in ((1, 2), (2, 1)):
            a = rng.standard_normal((ba, 3)).astype(np.float32)
            b = rng.standard_normal((bb, 3)).astype(np.float32)
            h2d = sim.stats()["bytes_copied"]["HOST_TO_DEVICE"]
            with pytest.raises(ValueError, match=r"^all inputs must share one batch size, got \[1, 2\]$"):
                m.infer(a, b)
            assert sim.stats()["bytes_copied"]["HOST_TO_DEVICE"] == h2d
        for batch in (1, 2):
            a = rng.standard_normal((batch, 3)).astype(np.float32)
            b = rng.standard_normal((batch, 3)).astype(np.float32)
            np.testing.assert_allclose(m.infer(a, b), a + b + w["w"], rtol=1e-6)


def _scalar_model(scale: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(scale, "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_scalar_variable_with_and_without_manifest(tmp_path):
    """A 0-d variable keeps rank 0 end to end (its tensor desc has dims [], which the update graph applies)."""
    om, man = builder.save(builder.build_bundle(_scalar_model(np.array(2.0, np.float32))), tmp_path / "s.om")
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    for manifest in (None, False):
        with BundleModel(om, acl=sim.acl, manifest=manifest) as m:
            assert m.variables[0].shape == ((), None)[manifest is False]
            np.testing.assert_array_equal(m.infer(x), x * 2)
            m.update({"scale": np.array(-0.5, np.float32)})
            np.testing.assert_array_equal(m.infer(x), x * -0.5)
            assert device_weights(m)["scale"].shape == ()
            with pytest.raises(ValueError):
                m.update({"scale": np.array([1.0, 2.0], np.float32)})
