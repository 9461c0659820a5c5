"""GE's ``precision_mode`` on the simulator: the infer graph rewritten to round where the device would.

The names are ATC's ``--precision_mode`` values (:mod:`acl_bundle._precision`: GE's list, and its
inference default ``force_fp16``, which a device bundle built without the option computes in).
A simulator bundle built without
a mode keeps exact float32 arithmetic (the simulator's behaviour before modes existed) and is the
reference the modes are compared with.

How each mode is simulated (ATC ``--precision_mode`` documentation,
``docs/zh/user_guides/atc_tools/CLI_options/--precision_mode.md:21-80``).  "Rounding to fp16" means a
``Cast`` to float16 and back inserted after a float32 tensor, so every consumer sees the fp16 value;
an op then computes on fp16 values and its result is rounded again, which for element-wise ops is
IEEE fp16 arithmetic (a float32 result of fp16 operands rounded once to fp16 is the correctly rounded
fp16 result) and for matrix ops is the Cube unit's fp16 inputs with float32 accumulation:

* ``force_fp16``: every float32 tensor (inputs, variables, constants, each op's result) rounded to fp16
  (":35-37": fp16, bf16 and fp32 ops all computed in fp16);
* ``allow_fp32_to_fp16``, ``allow_mix_precision``, ``allow_mix_precision_fp16``: the inputs and outputs
  of the matrix ops (MatMul, Gemm, Conv, ConvTranspose) rounded to fp16, vector ops stay float32
  (":39-46"; for the mixed modes the matrix ops stand in for GE's built-in white list, ":56-66", which
  the simulator does not have);
* ``force_fp32``, ``cube_fp16in_fp32out``: matrix ops take fp16-rounded inputs and give float32
  results (":21-31": fp16 in, fp32 out first), vector ops float32;
* ``allow_mix_precision_bf16``: matrix ops' inputs and outputs rounded to bfloat16 (":68-76");
* ``must_keep_origin_dtype``, ``allow_fp32_to_bf16``: the graph's own dtypes (":48-54", ":78-80": fp32
  ops keep fp32 where the op supports it, and on the simulator every op does).

Only float32 tensors of the top-level graph are rounded; float16 graphs already compute in fp16 and
float64 is left as it is.  The bundle's inputs, outputs and variables keep their dtypes: the device
casts at the graph's edges.
"""
from __future__ import annotations

from typing import Any

from ..device.precision import PRECISION_DEFAULT as GE_DEFAULT
from ..device.precision import PRECISION_MODES as MODES
from ..device.precision import check_precision_mode as check_mode

__all__ = ["GE_DEFAULT", "MATRIX_OPS", "MODES", "check_mode", "emulate"]

MATRIX_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})

_FLOAT, _FLOAT16, _BFLOAT16 = 1, 10, 16  # onnx.TensorProto.DataType
# mode -> (what is rounded, to which type): "all" tensors, matrix ops' "in"puts and outputs, or "in" only
_PLAN: dict[str, tuple[str, int] | None] = {
    "force_fp16": ("all", _FLOAT16),
    "allow_fp32_to_fp16": ("matrix", _FLOAT16),
    "allow_mix_precision": ("matrix", _FLOAT16),
    "allow_mix_precision_fp16": ("matrix", _FLOAT16),
    "force_fp32": ("matrix_in", _FLOAT16),
    "cube_fp16in_fp32out": ("matrix_in", _FLOAT16),
    "allow_mix_precision_bf16": ("matrix", _BFLOAT16),
    "must_keep_origin_dtype": None,
    "allow_fp32_to_bf16": None,
}


def emulate(onnx_bytes: bytes, mode: str) -> bytes:
    """Return the ONNX graph rewritten to compute as ``mode`` says (see the module docstring)."""
    plan = _PLAN[check_mode(mode) or "must_keep_origin_dtype"]
    if plan is None:
        return onnx_bytes
    import onnx  # the simulator extra, loaded with the model
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    what, to = plan
    graph = model.graph
    types = _float_types(model)
    new_nodes: list[Any] = []
    counter = iter(range(1 << 62))

    def pair(src: str, dst: str) -> list[Any]:
        k = next(counter)
        mid = f"{dst}__acl_bundle_round{k}"
        return [helper.make_node("Cast", [src], [mid], name=f"acl_bundle_round{k}a", to=to),
                helper.make_node("Cast", [mid], [dst], name=f"acl_bundle_round{k}b", to=_FLOAT)]

    if what == "all":
        rounded_in: dict[str, str] = {}
        for vi in graph.input:
            if types.get(vi.name) == _FLOAT:
                rounded_in[vi.name] = f"{vi.name}__acl_bundle_rounded"
                new_nodes += pair(vi.name, rounded_in[vi.name])
        for init in graph.initializer:
            if init.data_type == _FLOAT:
                value = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(value.astype("float16").astype("float32"), init.name))
        for node in graph.node:
            node.input[:] = [rounded_in.get(i, i) for i in node.input]
            new_nodes.append(node)
            if node.op_type == "Constant" and types.get(node.output[0]) == _FLOAT:
                _round_constant(node, numpy_helper)
                continue
            for j, out in enumerate(node.output):
                if out and types.get(out) == _FLOAT:
                    raw = f"{out}__acl_bundle_fp32"
                    node.output[j] = raw
                    new_nodes += pair(raw, out)
    else:
        for node in graph.node:
            if node.op_type not in MATRIX_OPS:
                new_nodes.append(node)
                continue
            for j, i in enumerate(node.input):
                if i and types.get(i) == _FLOAT:
                    r = f"{i}__acl_bundle_in{next(counter)}"
                    new_nodes += pair(i, r)
                    node.input[j] = r
            new_nodes.append(node)
            if what == "matrix":
                for j, out in enumerate(node.output):
                    if out and types.get(out) == _FLOAT:
                        raw = f"{out}__acl_bundle_fp32"
                        node.output[j] = raw
                        new_nodes += pair(raw, out)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model.SerializeToString()


def _float_types(model: Any) -> dict[str, int]:
    """Element type of every top-level tensor whose type is known (inputs, initializers, inferred values)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - custom ops: fall back to the declared types
        inferred = model
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    types[node.output[0]] = a.t.data_type
    return types


def _round_constant(node: Any, numpy_helper: Any) -> None:
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            value = numpy_helper.to_array(a.t)
            a.t.CopyFrom(numpy_helper.from_array(value.astype("float16").astype("float32"), a.t.name))
