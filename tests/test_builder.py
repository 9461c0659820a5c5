"""The ONNX -> simulator model builder, checked against independent numpy references."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from acl_bundle.sim import builder, models
from acl_bundle.sim.format import GraphSpec, TensorSpec, dumps, loads

MLP_NAMES = ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"]


def _run(graph: GraphSpec, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(graph.onnx, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    m = helper.make_model(
        helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits)),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    m.ir_version = 8
    return m


def _mixed_model() -> onnx.ModelProto:
    """y = Gather(x * w, idx) with float w, int64 idx and a bfloat16 initializer feeding nothing."""
    w = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w")
    idx = numpy_helper.from_array(np.array([2, 0], np.int64), "idx")
    bf = helper.make_tensor("bf", TensorProto.BFLOAT16, [1], [1.0])
    d = numpy_helper.from_array(np.array([0.5], np.float64), "d")
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["xw"]),
        helper.make_node("Gather", ["xw", "idx"], ["y"], axis=1),
        helper.make_node("Cast", ["bf"], ["bf32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["bf32", "bf32"], ["z"]),
        helper.make_node("Cast", ["d"], ["d32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["z", "d32"], ["z2"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("z2", TensorProto.FLOAT, [1]),
        ],
        [w, idx, bf, d],
    )


# --- variables --------------------------------------------------------------------

def test_default_variables_are_the_float_initializers_in_order() -> None:
    model, weights = models.mlp((8, 16, 4))
    mf = builder.build_bundle(model)
    assert mf.kind == "bundle"
    assert [g.role for g in mf.graphs] == ["infer", "init", "update"]
    assert [v.name for v in mf.variables] == MLP_NAMES == list(weights)
    assert [v.shape for v in mf.variables] == [(8, 16), (16,), (16, 4), (4,)]
    assert all(v.dtype == "float32" for v in mf.variables)
    for v, raw in zip(mf.variables, mf.initial_values):
        np.testing.assert_array_equal(np.frombuffer(raw, v.dtype).reshape(v.shape), weights[v.name])
    infer = mf.graphs[0]
    assert infer.inputs == (TensorSpec("x", "float32", (1, 8)),)
    assert infer.outputs == (TensorSpec("y", "float32", (1, 4)),)
    assert mf.graphs[1] == GraphSpec("init", (), ()) and mf.graphs[2] == GraphSpec("update", (), ())
    g = onnx.load_from_string(infer.onnx).graph
    assert list(g.initializer) == []
    assert [i.name for i in g.input] == ["x", *MLP_NAMES]


def test_default_skips_int_and_bfloat16_initializers() -> None:
    mf = builder.build_bundle(_mixed_model())
    assert [(v.name, v.dtype, v.shape) for v in mf.variables] == [("w", "float32", (3,)), ("d", "float64", (1,))]
    g = onnx.load_from_string(mf.graphs[0].onnx).graph
    assert sorted(t.name for t in g.initializer) == ["bf", "idx"]


def test_explicit_variables_keep_the_given_order_and_any_dtype() -> None:
    mf = builder.build_bundle(_mixed_model(), variables=["idx", "w"])
    assert [(v.name, v.dtype, v.shape) for v in mf.variables] == [("idx", "int64", (2,)), ("w", "float32", (3,))]
    np.testing.assert_array_equal(np.frombuffer(mf.initial_values[0], np.int64), [2, 0])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    # the variables are ordinary inputs now: feeding other values changes the result
    y, z2 = _run(mf.graphs[0], {"x": x, "idx": np.array([1, 1], np.int64), "w": np.array([10, 20, 30], np.float32)})
    np.testing.assert_array_equal(y, (x * [10, 20, 30])[:, [1, 1]])
    np.testing.assert_allclose(z2, [2.5])


@pytest.mark.parametrize(
    "variables,match",
    [
        (["nope"], r"variable 'nope' is not an initializer; initializers: 'w', 'idx', 'bf', 'd'"),
        (["w", "w"], r"variable 'w' is listed twice"),
        (["x"], r"variable 'x' is a graph input, not an initializer; initializers: 'w'"),
        ([], r"variables is empty"),
        ("w", r"sequence of names"),
        (["bf"], r"variable 'bf' has dtype BFLOAT16"),
    ],
)
def test_variable_errors(variables: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        builder.build_bundle(_mixed_model(), variables=variables)


def test_model_without_float_initializers_needs_explicit_variables() -> None:
    idx = numpy_helper.from_array(np.array([1], np.int64), "idx")
    m = _model(
        [helper.make_node("Add", ["x", "idx"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [3])],
        [idx],
    )
    with pytest.raises(ValueError, match=r"no float16/float32/float64 initializer.*'idx'"):
        builder.build_bundle(m)
    mf = builder.build_bundle(m, variables=["idx"])
    (y,) = _run(mf.graphs[0], {"x": np.array([1, 2, 3]), "idx": np.array([5])})
    np.testing.assert_array_equal(y, [6, 7, 8])


def test_input_model_is_not_modified() -> None:
    model, _ = models.mlp()
    before = model.SerializeToString()
    builder.build_bundle(model, batch_sizes=[1, 2])
    assert model.SerializeToString() == before


def test_accepts_path_and_bytes(tmp_path: Path) -> None:
    model, _ = models.mlp()
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    a = builder.build_bundle(model)
    assert builder.build_bundle(p) == a
    assert builder.build_bundle(str(p)) == a
    assert builder.build_bundle(model.SerializeToString()) == a


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        builder.build_bundle(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ValueError, match="not an ONNX model"):
        builder.build_bundle(bad)
    with pytest.raises(ValueError, match="not an ONNX model"):
        builder.build_bundle(b"")
    with pytest.raises(TypeError, match="ModelProto, a path or bytes"):
        builder.build_bundle(42)  # type: ignore[arg-type]


# --- numbers ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-2)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_infer_graph_matches_numpy(dtype: str, tol: float, activation: str) -> None:
    model, weights = models.mlp((8, 32, 16, 4), dtype=dtype, seed=3, activation=activation)
    mf = builder.build_bundle(model)
    x = np.random.default_rng(5).standard_normal((1, 8)).astype(dtype)
    (y,) = _run(mf.graphs[0], {"x": x, **weights})
    assert y.dtype == np.dtype(dtype) and y.shape == (1, 4)
    ref = models.mlp_reference(x, weights, activation)
    np.testing.assert_allclose(y.astype(np.float32), ref.astype(np.float32), rtol=tol, atol=tol)
    # a changed weight must change the result exactly as numpy says
    w2 = dict(weights, **{"fc2.bias": weights["fc2.bias"] + np.asarray(1, dtype)})
    (y2,) = _run(mf.graphs[0], {"x": x, **w2})
    np.testing.assert_allclose(
        y2.astype(np.float32), models.mlp_reference(x, w2, activation).astype(np.float32), rtol=tol, atol=tol
    )
    assert not np.allclose(y2, y)


def test_float16_model_is_float16_end_to_end() -> None:
    model, weights = models.mlp(dtype="float16")
    mf = builder.build_bundle(model)
    assert {v.dtype for v in mf.variables} == {"float16"}
    assert mf.graphs[0].inputs[0].dtype == mf.graphs[0].outputs[0].dtype == "float16"
    assert sum(len(b) for b in mf.initial_values) == sum(w.nbytes for w in weights.values())


def test_many_variables_and_classifier_match_numpy() -> None:
    model, weights = models.many_variables(12, 32, seed=1)
    mf = builder.build_bundle(model)
    assert [v.name for v in mf.variables] == [f"v{i:03d}" for i in range(12)]
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    (y,) = _run(mf.graphs[0], {"x": x, **weights})
    np.testing.assert_allclose(y, models.many_variables_reference(x, weights), rtol=1e-5, atol=1e-5)

    for hidden in (None, 6):
        model, weights = models.classifier(5, 3, hidden, seed=2)
        mf = builder.build_bundle(model, batch_sizes=[1, 4])
        assert [o.name for o in mf.graphs[0].outputs] == ["logits", "probs"]
        x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
        logits, probs = _run(mf.graphs[0], {"x": x, **weights})
        ref = models.classifier_reference(x, weights)
        np.testing.assert_allclose(logits, ref["logits"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probs, ref["probs"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


# --- shapes and batch -------------------------------------------------------------

def test_batch_sizes_mark_minus_one_and_run_at_each_batch() -> None:
    model, weights = models.mlp((8, 16, 4))
    mf = builder.build_bundle(model, batch_sizes=[1, 3, 32])
    assert mf.batch_sizes == [1, 3, 32]
    infer = mf.graphs[0]
    assert infer.inputs == (TensorSpec("x", "float32", (-1, 8)),)
    assert infer.outputs == (TensorSpec("y", "float32", (-1, 4)),)
    g = onnx.load_from_string(infer.onnx).graph
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for b in (1, 3, 32):
        x = np.random.default_rng(b).standard_normal((b, 8)).astype(np.float32)
        (y,) = _run(infer, {"x": x, **weights})
        assert y.shape == (b, 4)
        np.testing.assert_allclose(y, models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
    assert loads(dumps(mf)) == mf


def test_symbolic_input_without_batch_sizes_is_rejected() -> None:
    model, _ = models.mlp()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(ValueError, match=r"input 'x' has dynamic dim 0 \('N'\); give batch_sizes or fix the shape"):
        builder.build_bundle(model)
    mf = builder.build_bundle(model, batch_sizes=[2])
    assert mf.graphs[0].inputs[0].shape == (-1, 8)


def test_only_dim0_may_be_dynamic() -> None:
    model, _ = models.mlp()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    with pytest.raises(ValueError, match=r"input 'x' has dynamic dim 1 \('F'\); only dim 0"):
        builder.build_bundle(model, batch_sizes=[2])


def test_unknown_rank_input_is_rejected() -> None:
    m = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(ValueError, match="input 'x' has unknown rank"):
        builder.build_plain(m)


@pytest.mark.parametrize("sizes", [[], [0], [2, -1], [2, 2], [1.5], "8", [True]])
def test_bad_batch_sizes(sizes: object) -> None:
    model, _ = models.mlp()
    with pytest.raises(ValueError, match="batch"):
        builder.build_bundle(model, batch_sizes=sizes)  # type: ignore[arg-type]


def test_output_shapes_are_inferred_when_undeclared() -> None:
    w = numpy_helper.from_array(np.ones((3, 5), np.float32), "w")
    m = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Transpose", ["h"], ["y"], perm=[1, 0]),
            helper.make_node("Shape", ["h"], ["s"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None),
            helper.make_tensor_value_info("s", TensorProto.UNDEFINED, None),
        ],
        [w],
    )
    mf = builder.build_bundle(m)
    assert mf.graphs[0].outputs == (TensorSpec("y", "float32", (5, 2)), TensorSpec("s", "int64", (2,)))
    with pytest.raises(ValueError, match=r"output 'y' dim 0 does not follow the batch size"):
        builder.build_bundle(m, batch_sizes=[2, 4])  # after the transpose, dim 0 is not the batch


@pytest.mark.parametrize("declared", [None, [1, 1]], ids=["undeclared", "declared"])
def test_output_not_following_the_batch_is_rejected(declared: list[int] | None) -> None:
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    m = _model(
        [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("ReduceSum", ["xw"], ["y"], keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, declared)],
        [w],
    )
    assert builder.build_bundle(m).graphs[0].outputs == (TensorSpec("y", "float32", (1, 1)),)
    with pytest.raises(ValueError, match=r"output 'y' dim 0 does not follow the batch size"):
        builder.build_bundle(m, batch_sizes=[2, 4])


def test_probing_when_shape_inference_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    model, weights = models.mlp((8, 16, 4))
    real = builder._inferred_outputs
    calls = []

    def blind(proto):  # type: ignore[no-untyped-def]
        calls.append(1)
        inferred_model, outs = real(proto)
        return inferred_model, [(n, et, None) for n, et, _ in outs]

    monkeypatch.setattr(builder, "_inferred_outputs", blind)
    assert builder.build_bundle(model).graphs[0].outputs == (TensorSpec("y", "float32", (1, 4)),)
    assert builder.build_bundle(model, batch_sizes=[5]).graphs[0].outputs == (TensorSpec("y", "float32", (-1, 4)),)
    assert len(calls) == 2


def test_unsupported_io_dtype_and_reserved_name() -> None:
    m = _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2])],
    )
    with pytest.raises(ValueError, match=r"input 'x' has dtype BFLOAT16"):
        builder.build_plain(m)
    m = _model(
        [helper.make_node("Identity", ["ascend_mbatch_shape_data"], ["y"])],
        [helper.make_tensor_value_info("ascend_mbatch_shape_data", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(ValueError, match="reserved"):
        builder.build_plain(m)


def test_graph_onnxruntime_rejects_is_a_value_error() -> None:
    m = _model(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ValueError, match="onnxruntime rejects the graph"):
        builder.build_plain(m)


def test_constant_listed_as_input_becomes_a_pure_constant() -> None:
    """IR<4 models list initializers as inputs too; ATC treats them as constants."""
    model, weights = models.mlp()
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    mf = builder.build_bundle(model, variables=["fc1.bias"])
    assert [i.name for i in mf.graphs[0].inputs] == ["x"]
    g = onnx.load_from_string(mf.graphs[0].onnx).graph
    assert [i.name for i in g.input] == ["x", "fc1.bias"]
    x = np.ones((1, 8), np.float32)
    (y,) = _run(mf.graphs[0], {"x": x, "fc1.bias": np.zeros(4, np.float32)})
    np.testing.assert_allclose(
        y, models.mlp_reference(x, dict(weights, **{"fc1.bias": np.zeros(4, np.float32)})), rtol=1e-5, atol=1e-6
    )


# --- no-init and plain ---------------------------------------------------------------

def test_no_init_bundle_has_no_initial_values() -> None:
    model, _ = models.mlp()
    mf = builder.build_bundle(model, init=False)
    assert [g.role for g in mf.graphs] == ["infer", "update"]
    assert mf.initial_values == [] and not mf.has_init
    assert len(mf.variables) == 4
    assert loads(dumps(mf)) == mf
    assert all(v["sha256"] is None for v in builder.manifest(mf)["variables"])


def test_plain_build_keeps_constants() -> None:
    model, weights = models.mlp()
    mf = builder.build_plain(model, batch_sizes=[2, 4])
    assert mf.kind == "plain" and [g.role for g in mf.graphs] == ["model"]
    assert mf.variables == [] and mf.initial_values == []
    g = onnx.load_from_string(mf.graphs[0].onnx).graph
    assert [i.name for i in g.input] == ["x"]
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    (y,) = _run(mf.graphs[0], {"x": x})
    np.testing.assert_allclose(y, models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


# --- manifest and save ----------------------------------------------------------------

def test_manifest_content() -> None:
    model, weights = models.mlp((8, 16, 4), dtype="float16")
    mf = builder.build_bundle(model, batch_sizes=[1, 8])
    m = builder.manifest(mf)
    json.dumps(m)  # JSON-able
    assert m["format"] == "acl-bundle-manifest" and m["version"] == 1
    assert m["kind"] == "bundle" and m["graphs"] == ["infer", "init", "update"] and m["model_count"] == 3
    assert m["inputs"] == [{"name": "x", "dtype": "float16", "shape": [-1, 8]}]
    assert m["outputs"] == [{"name": "y", "dtype": "float16", "shape": [-1, 4]}]
    assert m["batch_sizes"] == [1, 8] and m["has_init"] is True
    assert [v["index"] for v in m["variables"]] == [0, 1, 2, 3]
    for v, (name, w) in zip(m["variables"], weights.items()):
        assert (v["name"], v["dtype"], v["shape"]) == (name, "float16", list(w.shape))
        assert v["nbytes"] == w.nbytes
        assert v["sha256"] == hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()


def test_manifest_path() -> None:
    assert builder.manifest_path("d/bundle.om") == Path("d/bundle.manifest.json")
    assert builder.manifest_path(Path("/x/a.b.om")) == Path("/x/a.b.manifest.json")
    assert builder.manifest_path("bundle") == Path("bundle.manifest.json")


def test_save_and_load_manifest_round_trip(tmp_path: Path) -> None:
    model, weights = models.mlp()
    mf = builder.build_bundle(model)
    om, man = builder.save(mf, tmp_path / "b.om")
    assert om == tmp_path / "b.om" and man == tmp_path / "b.manifest.json"
    assert loads(om.read_bytes()) == mf
    assert builder.load_manifest(om) == builder.manifest(mf) == builder.load_manifest(man)
    assert builder.variables_from_manifest(builder.load_manifest(om)) == mf.variables
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.manifest.json", "b.om"]  # no temp files left
    # overwriting replaces both
    mf2 = builder.build_bundle(model, variables=["fc0.weight"])
    builder.save(mf2, om)
    assert loads(om.read_bytes()) == mf2
    assert [v["name"] for v in builder.load_manifest(om)["variables"]] == ["fc0.weight"]


def test_save_plain_writes_no_manifest(tmp_path: Path) -> None:
    model, _ = models.mlp()
    om, man = builder.save(builder.build_plain(model), tmp_path / "p.om")
    assert man is None and sorted(p.name for p in tmp_path.iterdir()) == ["p.om"]


def test_hand_written_minimal_manifest(tmp_path: Path) -> None:
    p = tmp_path / "real.manifest.json"
    p.write_text(
        json.dumps(
            {
                "format": "acl-bundle-manifest",
                "version": 1,
                "variables": [{"name": "w", "dtype": "float16", "shape": [2, 3]}],
            }
        )
    )
    m = builder.load_manifest(tmp_path / "real.om")
    assert builder.variables_from_manifest(m) == [TensorSpec("w", "float16", (2, 3))]


@pytest.mark.parametrize(
    "content,match",
    [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"format": "other", "version": 1, "variables": []}', '"format" must be'),
        ('{"format": "acl-bundle-manifest", "version": 2, "variables": []}', '"version" must be'),
        ('{"format": "acl-bundle-manifest", "version": 1}', '"variables" must be a non-empty list'),
        (
            '{"format": "acl-bundle-manifest", "version": true, '
            '"variables": [{"name": "a", "dtype": "float32", "shape": [1]}]}',
            '"version" must be',
        ),
        ('{"format": "acl-bundle-manifest", "version": 1, "variables": []}', '"variables" must be a non-empty list'),
        ('{"format": "acl-bundle-manifest", "version": 1, "variables": [3]}', r"variables\[0\] must be an object"),
        (
            '{"format": "acl-bundle-manifest", "version": 1, "variables": [{"dtype": "float32", "shape": []}]}',
            '"name" must be',
        ),
        (
            '{"format": "acl-bundle-manifest", "version": 1, '
            '"variables": [{"name": "a", "dtype": "object", "shape": []}]}',
            '"dtype" must be',
        ),
        (
            '{"format": "acl-bundle-manifest", "version": 1, '
            '"variables": [{"name": "a", "dtype": "float32", "shape": [-1]}]}',
            '"shape" must be',
        ),
        (
            '{"format": "acl-bundle-manifest", "version": 1, "variables": '
            '[{"name": "a", "dtype": "float32", "shape": [1]}, {"name": "a", "dtype": "float32", "shape": [1]}]}',
            "appears twice",
        ),
    ],
)
def test_bad_manifests(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "m.manifest.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        builder.load_manifest(p)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no manifest at"):
        builder.load_manifest(tmp_path / "none.om")
