"""Small ONNX model factories with independent numpy references.

Shared by tests, the demo and the benchmarks.  Each factory returns
``(onnx.ModelProto, weights)`` where ``weights`` maps initializer name -> array in
initializer order (the order :func:`acl_bundle.sim.builder.build_bundle` turns them
into variables).  Models use opset 17 / IR 8 so any onnxruntime >= 1.14 runs them.
Every ``*_reference`` function is plain numpy and shares no code with the graphs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "IR_VERSION",
    "mlp",
    "mlp_reference",
    "many_variables",
    "many_variables_reference",
    "embedding",
    "embedding_reference",
    "classifier",
    "classifier_reference",
    "image_model",
    "image_model_reference",
    "sequence_model",
    "sequence_model_reference",
    "elementwise",
]

OPSET = 17
IR_VERSION = 8

_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "identity": "Identity"}


def _elem_type(dtype: str) -> int:
    try:
        return _DTYPES[np.dtype(dtype).name]
    except (KeyError, TypeError):
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


def _activation(name: str) -> str:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None


def _make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="acl_bundle.sim.models"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _initializers(weights: Mapping[str, np.ndarray]) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.ascontiguousarray(v), name=k) for k, v in weights.items()]


def mlp(
    sizes: Sequence[int] = (8, 16, 4),
    *,
    dtype: str = "float32",
    seed: int = 0,
    activation: str = "relu",
    batch: int = 1,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Return a multi-layer perceptron ``y = fcN(act(...act(fc0(x))))`` and its weights.

    Input ``"x"`` is ``[batch, sizes[0]]``, output ``"y"`` is ``[batch, sizes[-1]]``.
    Layer ``i`` is ``MatMul(·, fc{i}.weight [in, out]) + fc{i}.bias [out]``; the
    activation sits between layers, not after the last.  ``dtype`` is "float32" or
    "float16" (the whole model, input to output, uses it).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise ValueError(f"sizes needs >= 2 positive ints, got {sizes}")
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    et = _elem_type(dtype)
    act = _activation(activation)
    np_dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    nodes = []
    cur = "x"
    n_layers = len(sizes) - 1
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        b = rng.uniform(-0.5, 0.5, fan_out)  # non-zero so a dropped bias shows in tests
        weights[f"fc{i}.weight"] = w.astype(np_dt)
        weights[f"fc{i}.bias"] = b.astype(np_dt)
        nodes.append(helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"fc{i}.mm"], name=f"fc{i}/MatMul"))
        out = "y" if i == n_layers - 1 else f"fc{i}.out"
        nodes.append(helper.make_node("Add", [f"fc{i}.mm", f"fc{i}.bias"], [out], name=f"fc{i}/Add"))
        if i < n_layers - 1:
            nodes.append(helper.make_node(act, [out], [f"act{i}.out"], name=f"act{i}"))
            cur = f"act{i}.out"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", et, [batch, sizes[0]])],
        [helper.make_tensor_value_info("y", et, [batch, sizes[-1]])],
        initializer=_initializers(weights),
    )
    return _make_model(graph), weights


def _np_activation(name: str, h: np.ndarray) -> np.ndarray:
    _activation(name)
    if name == "relu":
        return np.maximum(h, 0)
    if name == "tanh":
        return np.tanh(h)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-h))
    return h


def mlp_reference(x: np.ndarray, weights: Mapping[str, np.ndarray], activation: str = "relu") -> np.ndarray:
    """Numpy forward pass of :func:`mlp`.

    Computes in float64 and casts the result to ``x.dtype`` (so float16 results differ
    from onnxruntime's per-op float16 rounding: compare with a tolerance).
    """
    n_layers = sum(1 for k in weights if k.endswith(".weight"))
    h = np.asarray(x, dtype=np.float64)
    for i in range(n_layers):
        h = h @ np.asarray(weights[f"fc{i}.weight"], np.float64) + np.asarray(weights[f"fc{i}.bias"], np.float64)
        if i < n_layers - 1:
            h = _np_activation(activation, h)
    return h.astype(np.asarray(x).dtype)


def many_variables(
    n: int = 100, size: int = 1024, *, dtype: str = "float32", seed: int = 0, batch: int = 1
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Return ``y = x + v000 + v001 + ...`` (one Sum node) with ``n`` variables of ``[size]``.

    For benchmarks where update cost should scale with the number of changed variables.
    """
    if n <= 0 or size <= 0 or batch <= 0:
        raise ValueError(f"n, size and batch must be positive, got {n}, {size}, {batch}")
    et = _elem_type(dtype)
    rng = np.random.default_rng(seed)
    weights = {f"v{i:03d}": rng.uniform(-1, 1, size).astype(dtype) for i in range(n)}
    graph = helper.make_graph(
        [helper.make_node("Sum", ["x", *weights], ["y"], name="sum")],
        "many_variables",
        [helper.make_tensor_value_info("x", et, [batch, size])],
        [helper.make_tensor_value_info("y", et, [batch, size])],
        initializer=_initializers(weights),
    )
    return _make_model(graph), weights


def many_variables_reference(x: np.ndarray, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """Numpy reference of :func:`many_variables` (float64 accumulation, cast to ``x.dtype``)."""
    acc = np.asarray(x, dtype=np.float64).copy()
    for v in weights.values():
        acc = acc + np.asarray(v, np.float64)
    return acc.astype(np.asarray(x).dtype)


def embedding(
    tables: int = 4, rows: int = 1024, dim: int = 64, *, seed: int = 0, batch: int = 1
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Return ``y = sum_i table_i[ids]`` (Gather per table, one Sum): large variables, cheap infer.

    Input ``"ids"`` is int64 ``[batch]``, output ``"y"`` float32 ``[batch, dim]``; the
    variables ``emb{i}`` are ``[rows, dim]``.  An infer reads ``tables * batch`` rows, so
    its cost does not grow with the tables (recommendation models: the embedding tables
    are most of the device memory), while a full update copies all of them.
    """
    if tables <= 0 or rows <= 0 or dim <= 0 or batch <= 0:
        raise ValueError(f"tables, rows, dim and batch must be positive, got {tables}, {rows}, {dim}, {batch}")
    rng = np.random.default_rng(seed)
    weights = {f"emb{i}": rng.uniform(-1, 1, (rows, dim)).astype(np.float32) for i in range(tables)}
    nodes = [helper.make_node("Gather", [name, "ids"], [f"g{i}"], axis=0, name=f"gather{i}")
             for i, name in enumerate(weights)]
    nodes.append(helper.make_node("Sum", [f"g{i}" for i in range(tables)], ["y"], name="sum"))
    graph = helper.make_graph(
        nodes,
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [batch])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, dim])],
        initializer=_initializers(weights),
    )
    return _make_model(graph), weights


def embedding_reference(ids: np.ndarray, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """Numpy reference of :func:`embedding` (float64 accumulation, cast to float32)."""
    acc = np.zeros((len(ids), next(iter(weights.values())).shape[1]), np.float64)
    for t in weights.values():
        acc += t[np.asarray(ids)].astype(np.float64)
    return acc.astype(np.float32)


def classifier(
    n_features: int,
    n_classes: int,
    hidden: int | None = None,
    *,
    dtype: str = "float32",
    seed: int = 0,
    batch: int = 1,
    probs: bool = True,
    zeros: bool = False,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Return a softmax classifier for online learning and its weights.

    Linear: ``logits = x @ W1 + b1``.  With ``hidden``: ``logits = relu(x @ W1 + b1) @ W2 + b2``.
    Input ``"x"`` ``[batch, n_features]``; outputs ``"logits"`` and, when ``probs``,
    ``"probs"`` = softmax over the last axis.  ``zeros`` starts from all-zero weights
    (a common online-learning start; hidden layers still need random ``W1``).
    """
    if n_features <= 0 or n_classes <= 0 or batch <= 0 or (hidden is not None and hidden <= 0):
        raise ValueError("n_features, n_classes, hidden and batch must be positive")
    et = _elem_type(dtype)
    rng = np.random.default_rng(seed)

    def dense(fan_in: int, fan_out: int, random: bool) -> tuple[np.ndarray, np.ndarray]:
        if not random:
            return np.zeros((fan_in, fan_out), dtype), np.zeros(fan_out, dtype)
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(1.0 / fan_in)
        return w.astype(dtype), rng.uniform(-0.1, 0.1, fan_out).astype(dtype)

    weights: dict[str, np.ndarray] = {}
    if hidden is None:
        weights["W1"], weights["b1"] = dense(n_features, n_classes, not zeros)
        nodes = [
            helper.make_node("MatMul", ["x", "W1"], ["mm1"], name="dense1/MatMul"),
            helper.make_node("Add", ["mm1", "b1"], ["logits"], name="dense1/Add"),
        ]
    else:
        weights["W1"], weights["b1"] = dense(n_features, hidden, True)
        weights["W2"], weights["b2"] = dense(hidden, n_classes, not zeros)
        nodes = [
            helper.make_node("MatMul", ["x", "W1"], ["mm1"], name="dense1/MatMul"),
            helper.make_node("Add", ["mm1", "b1"], ["h1"], name="dense1/Add"),
            helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
            helper.make_node("MatMul", ["a1", "W2"], ["mm2"], name="dense2/MatMul"),
            helper.make_node("Add", ["mm2", "b2"], ["logits"], name="dense2/Add"),
        ]
    outputs = [helper.make_tensor_value_info("logits", et, [batch, n_classes])]
    if probs:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"))
        outputs.append(helper.make_tensor_value_info("probs", et, [batch, n_classes]))
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", et, [batch, n_features])],
        outputs,
        initializer=_initializers(weights),
    )
    return _make_model(graph), weights


def classifier_reference(x: np.ndarray, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Numpy reference of :func:`classifier`: ``{"logits": ..., "probs": ...}`` in ``x.dtype``.

    Computes in float64; softmax subtracts the row max for stability.
    """
    h = np.asarray(x, np.float64) @ np.asarray(weights["W1"], np.float64) + np.asarray(weights["b1"], np.float64)
    if "W2" in weights:
        h = np.maximum(h, 0) @ np.asarray(weights["W2"], np.float64) + np.asarray(weights["b2"], np.float64)
    e = np.exp(h - h.max(axis=-1, keepdims=True))
    dt = np.asarray(x).dtype
    return {"logits": h.astype(dt), "probs": (e / e.sum(axis=-1, keepdims=True)).astype(dt)}


def image_model(channels: int = 3, *, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """An image graph with free height and width, for ``dynamic_image_size`` (ATC ``--dynamic_image_size``).

    Input ``"img"`` ``[1, channels, H, W]`` (H and W symbolic).  Outputs ``"scaled"`` =
    ``img * scale + shift`` (per channel, ``[1, C, H, W]``) and ``"pooled"`` = the mean of
    ``scaled`` over H and W (``[1, C]``).
    """
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    rng = np.random.default_rng(seed)
    weights = {
        "scale": rng.uniform(0.5, 1.5, (1, channels, 1, 1)).astype(np.float32),
        "shift": rng.uniform(-0.5, 0.5, (1, channels, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["img", "scale"], ["mul"], name="scale"),
        helper.make_node("Add", ["mul", "shift"], ["scaled"], name="shift"),
        helper.make_node("ReduceMean", ["scaled"], ["pooled"], axes=[2, 3], keepdims=0, name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "image_model",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, channels, "H", "W"])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [1, channels, "H", "W"]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, channels])],
        initializer=_initializers(weights),
    )
    return _make_model(graph), weights


def image_model_reference(img: np.ndarray, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Numpy reference of :func:`image_model` (float64, cast to float32)."""
    scaled = np.asarray(img, np.float64) * weights["scale"].astype(np.float64) + weights["shift"].astype(np.float64)
    return {"scaled": scaled.astype(np.float32), "pooled": scaled.mean(axis=(2, 3)).astype(np.float32)}


def sequence_model(features: int = 4, out: int = 3, *, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A sequence graph with free batch and length, for ``dynamic_dims`` (ATC ``--dynamic_dims``).

    Inputs ``"seq"`` ``[B, T, features]`` and ``"mask"`` ``[B, T]`` (B, T symbolic; one
    dims gear gives B, T, B, T in input order).  Outputs ``"proj"`` = ``seq @ W + b``
    ``[B, T, out]`` and ``"summed"`` = the mask-weighted sum of ``proj`` over T ``[B, out]``.
    """
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {
        "W": rng.standard_normal((features, out)).astype(np.float32),
        "b": rng.uniform(-0.5, 0.5, out).astype(np.float32),
        "axes": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["seq", "W"], ["mm"], name="proj/MatMul"),
        helper.make_node("Add", ["mm", "b"], ["proj"], name="proj/Add"),
        helper.make_node("Unsqueeze", ["mask", "axes_m"], ["mask3"], name="mask/Unsqueeze"),
        helper.make_node("Mul", ["proj", "mask3"], ["masked"], name="mask/Mul"),
        helper.make_node("ReduceSum", ["masked", "axes"], ["summed"], keepdims=0, name="sum"),
    ]
    inits = _initializers(weights) + [numpy_helper.from_array(np.array([2], np.int64), name="axes_m")]
    graph = helper.make_graph(
        nodes,
        "sequence_model",
        [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["B", "T", features]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", "T"])],
        [helper.make_tensor_value_info("proj", TensorProto.FLOAT, ["B", "T", out]),
         helper.make_tensor_value_info("summed", TensorProto.FLOAT, ["B", out])],
        initializer=inits,
    )
    return _make_model(graph), weights


def sequence_model_reference(
    seq: np.ndarray, mask: np.ndarray, weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Numpy reference of :func:`sequence_model` (float64, cast to float32)."""
    proj = np.asarray(seq, np.float64) @ weights["W"].astype(np.float64) + weights["b"].astype(np.float64)
    summed = (proj * np.asarray(mask, np.float64)[..., None]).sum(axis=1)
    return {"proj": proj.astype(np.float32), "summed": summed.astype(np.float32)}


def elementwise(op: str, shape: Sequence[int] = (2, 3)) -> onnx.ModelProto:
    """``z = x <op> y`` for two float32 inputs of ``shape`` ("Add", "Mul", "Sub", "Div"): GE's bundle sample graphs."""
    if op not in ("Add", "Mul", "Sub", "Div"):
        raise ValueError(f"op must be Add, Mul, Sub or Div, got {op!r}")
    dims = [int(d) for d in shape]
    graph = helper.make_graph(
        [helper.make_node(op, ["input_x", "input_y"], ["z"], name=op.lower())],
        f"elementwise_{op.lower()}",
        [helper.make_tensor_value_info("input_x", TensorProto.FLOAT, dims),
         helper.make_tensor_value_info("input_y", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, dims)],
    )
    return _make_model(graph)
