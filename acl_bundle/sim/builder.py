"""Build simulator model files from ONNX: the stand-in for ATC and the GE bundle API.

Real Ascend bundles come from ``aclgrphConvertToWeightRefreshableGraphs`` +
``aclgrphBundleBuildModel`` + ``aclgrphBundleSaveModel`` (CANN GE graph API documentation); plain
models from ATC.  :func:`build_bundle` and :func:`build_plain` produce the
equivalent :class:`~acl_bundle.sim.format.ModelFile`; :func:`save` writes it.
**The files load on the simulator (``acl_bundle.sim``) only**, never on a device.

Bundle construction mirrors GE: the infer graph is the original graph with every
chosen initializer ("const") turned into a variable, i.e. removed from the
initializers and added as a graph input of the same name, dtype and shape; the
simulated runtime binds that input to the shared variable memory by name.  The
init and update graphs are executed natively by the simulator (Assign semantics),
so they carry no ONNX.  As with ATC, data inputs need static shapes unless one
dynamic-shape kind is given: ``batch_sizes`` (ATC ``--dynamic_batch_size``) makes dim 0
the batch dim; ``dynamic_image_size`` (``--dynamic_image_size``, (height, width) gears)
is for inputs whose two non-static dims are the image height and width;
``dynamic_dims`` (``--dynamic_dims``) gives one value per non-static input dim, all
inputs in order.  The runtime then adds the ``ascend_mbatch_shape_data`` input.
:func:`build_plain_bundle` bundles plain graphs without variables, as GE's
``aclgrphBundleBuildModel`` does for any list of graphs.

Manifest (``<name>.manifest.json`` beside ``<name>.om``)
--------------------------------------------------------
A real bundle does not report variable shapes (its update inputs are unknown-rank),
so the wrapper reads them from a JSON manifest.  :func:`save` writes one for every
bundle with variables; for a bundle built by GE, write it by hand.  Schema (version 1)::

    {
      "format": "acl-bundle-manifest",        # required, exactly this
      "version": 1,                           # required, integer <= 1
      "variables": [                          # required, update-input order
        {"name": "fc0.weight",                # required, unique
         "dtype": "float32",                  # required, numpy dtype name
         "shape": [8, 16],                    # required, non-negative ints
         "index": 0, "nbytes": 512,           # optional (written by save)
         "sha256": "..." | null}              # optional: sha256 of the initial value
      ],
      "kind": "bundle", "graphs": ["infer", "init", "update"], "model_count": 3,
      "inputs":  [{"name", "dtype", "shape"}],   # optional, infer data inputs (-1 = dynamic)
      "outputs": [{"name", "dtype", "shape"}],   # optional
      "batch_sizes": [1, 8], "has_init": true,   # optional
      "dynamic_image_size": [[224, 224]],        # optional, (height, width) gears
      "dynamic_dims": [[1, 224]],                # optional, one value per -1 input dim
      "precision_mode": "force_fp16"             # optional, ATC --precision_mode built with
    }

The native builder (``native/bundle_builder``, ``acl-bundle build --target ascend``) writes the same
schema, without ``outputs`` (the device reports them) and with ``precision_mode`` always (GE's default
``force_fp16`` when none is given), ``"target": "ascend"`` and ``"soc_version"``.

Readers rely only on ``variables[].name/dtype/shape``; :func:`load_manifest`
validates those and keeps every other key as written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .._constants import ACL_DYNAMIC_TENSOR_NAME, ACL_MAX_DIM_CNT
from .._files import write_atomic
from .._manifest import MANIFEST_FORMAT, MANIFEST_VERSION, load_manifest, manifest_path
from ._precision import check_mode as check_precision_mode
from .format import GraphSpec, ModelFile, TensorSpec, dumps

if TYPE_CHECKING:
    import onnx

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "build_bundle",
    "build_plain",
    "build_plain_bundle",
    "parse_gears",
    "manifest",
    "manifest_path",
    "save",
    "load_manifest",
    "variables_from_manifest",
]

log = logging.getLogger(__name__)

ModelSource = Union["onnx.ModelProto", str, os.PathLike, bytes]

BATCH_DIM = "batch"
MAX_BATCH_GEARS = 100  # ATC accepts at most 100 --dynamic_batch_size gears
MAX_GEARS = MAX_BATCH_GEARS  # likewise --dynamic_image_size and --dynamic_dims

# ONNX TensorProto.DataType -> numpy dtype name, for the types the runtime can move.
_ONNX_TO_NP: dict[int, str] = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}
_DEFAULT_VARIABLE_TYPES = {1, 10, 11}  # float32, float16, float64 (bfloat16 has no numpy dtype)
_SUPPORTED_NP = frozenset(_ONNX_TO_NP.values())


def _onnx() -> Any:
    import onnx  # deferred: the simulator extra is optional for the wrapper

    return onnx


def _type_name(elem_type: int) -> str:
    onnx = _onnx()
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def _np_dtype_name(elem_type: int, what: str) -> str:
    try:
        return _ONNX_TO_NP[elem_type]
    except KeyError:
        raise ValueError(
            f"{what} has dtype {_type_name(elem_type)}, which the runtime cannot move; "
            f"supported: {', '.join(sorted(_SUPPORTED_NP))}"
        ) from None


def _load(model: ModelSource) -> Any:
    """Return a private copy of ``model`` as a ModelProto (ValueError if not ONNX)."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        try:
            proto = onnx.load_from_string(bytes(model))
        except (DecodeError, ValueError, RuntimeError) as e:
            raise ValueError(f"not an ONNX model: {e}") from None
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"no such ONNX file: {path}")
        try:
            proto = onnx.load(str(path))
        except (DecodeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{path} is not an ONNX model: {e}") from None
    else:
        raise TypeError(f"model must be an onnx.ModelProto, a path or bytes, not {type(model).__name__}")
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ValueError("not an ONNX model: it has no graph")
    return proto


def _check_batch_sizes(batch_sizes: Sequence[int] | None) -> list[int]:
    if batch_sizes is None:
        return []
    if isinstance(batch_sizes, (str, bytes)):
        raise ValueError(f"batch_sizes must be a sequence of ints, got {batch_sizes!r}")
    out = list(batch_sizes)
    if not out:
        raise ValueError("batch_sizes is empty; give at least one batch size or None for static shapes")
    for b in out:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b <= 0:
            raise ValueError(f"batch sizes must be positive ints, got {out}")
    out = [int(b) for b in out]
    if len(set(out)) != len(out):
        raise ValueError(f"batch sizes must be distinct, got {out}")
    if len(out) > MAX_BATCH_GEARS:
        raise ValueError(f"at most {MAX_BATCH_GEARS} batch sizes are allowed, got {len(out)}")
    return out


def parse_gears(text: str, option: str = "gears", *, width: int | None = None) -> list[tuple[int, ...]]:
    """Parse ATC's gear syntax, ``"224,224;448,448"``: gears split by ``;``, values by ``,``."""
    gears = []
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            gear = tuple(int(v) for v in part.split(","))
        except ValueError:
            raise ValueError(
                f'{option}: {part!r} is not comma-separated integers (ATC syntax: "224,224;448,448")'
            ) from None
        gears.append(gear)
    return _check_gears(gears, option, width=width)


def _check_gears(
    gears: Sequence[Sequence[int]] | None, option: str, *, width: int | None = None
) -> list[tuple[int, ...]]:
    if gears is None:
        return []
    if isinstance(gears, (str, bytes)):
        raise ValueError(
            f"{option} must be a sequence of gears (sequences of ints), got {gears!r}; parse_gears reads ATC's string "
            "form"
        )
    out: list[tuple[int, ...]] = []
    for g in gears:
        try:
            vals = tuple(g)
        except TypeError:
            raise ValueError(f"{option}: each gear must be a sequence of ints, got {g!r}") from None
        if not vals or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in vals):
            raise ValueError(f"{option}: gear values must be positive ints, got {list(vals)}")
        out.append(tuple(int(v) for v in vals))
    if not out:
        raise ValueError(f"{option} is empty; give at least one gear or None for static shapes")
    if width is not None and any(len(g) != width for g in out):
        raise ValueError(f"{option}: every gear needs {width} values, got {[list(g) for g in out]}")
    if len({len(g) for g in out}) != 1:
        raise ValueError(f"{option}: gears must all have the same number of values, got {[list(g) for g in out]}")
    if len(set(out)) != len(out):
        raise ValueError(f"{option}: gears must be distinct, got {[list(g) for g in out]}")
    if len(out) > MAX_GEARS:
        raise ValueError(f"{option}: at most {MAX_GEARS} gears are allowed, got {len(out)}")
    return out


def _static_dims(vi: Any, what: str, batch: bool) -> tuple[int, ...]:
    """Return the shape of a data input (-1 for the batch dim); rewrite dim 0 in batch mode."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        raise ValueError(f"{what} has unknown rank; give it a static shape")
    dims = tt.shape.dim
    if len(dims) > ACL_MAX_DIM_CNT:
        raise ValueError(f"{what} has {len(dims)} dims, more than ACL's {ACL_MAX_DIM_CNT}")
    if batch:
        if not dims:
            raise ValueError(f"{what} is a scalar, so it has no batch dim (dim 0) for batch_sizes")
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
    shape: list[int] = [-1] if batch else []
    for i, d in enumerate(dims):
        if batch and i == 0:
            continue
        if not d.HasField("dim_value") or d.dim_value < 0:
            label = d.dim_param or "?"
            raise ValueError(
                f"{what} has dynamic dim {i} ({label!r}); give batch_sizes or fix the shape"
                if i == 0
                else f"{what} has dynamic dim {i} ({label!r}); only dim 0 may be dynamic (with batch_sizes)"
            )
        shape.append(int(d.dim_value))
    return tuple(shape)


def _prepare(proto: Any, variables: list[str]) -> tuple[list[TensorSpec], list[bytes]]:
    """Turn ``variables`` into graph inputs in place; return their specs and raw values."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    specs: list[TensorSpec] = []
    values: list[bytes] = []
    for name in variables:
        t = inits[name]
        dtype = _np_dtype_name(t.data_type, f"variable {name!r}")
        arr = np.ascontiguousarray(numpy_helper.to_array(t))
        if arr.dtype != np.dtype(dtype):
            arr = arr.astype(dtype)
        specs.append(TensorSpec(name, dtype, tuple(int(d) for d in t.dims)))
        values.append(arr.tobytes(order="C"))
    var_set = set(variables)
    kept = [t for t in graph.initializer if t.name not in var_set]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Constants listed as graph inputs (IR < 4 style) become pure constants, as in ATC.
    const_names = {t.name for t in kept}
    data = [vi for vi in graph.input if vi.name not in const_names and vi.name not in var_set]
    del graph.input[:]
    graph.input.extend(data)
    onnx = _onnx()
    for spec in specs:
        graph.input.append(
            onnx.helper.make_tensor_value_info(
                spec.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)), list(spec.shape)
            )
        )
    return specs, values


def _dynamic_dims(vi: Any, what: str, mode: str) -> tuple[int, ...]:
    """Shape of a data input for dynamic image sizes / dims: every non-static dim becomes -1."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        raise ValueError(f"{what} has unknown rank; give it a fixed rank")
    dims = tt.shape.dim
    if len(dims) > ACL_MAX_DIM_CNT:
        raise ValueError(f"{what} has {len(dims)} dims, more than ACL's {ACL_MAX_DIM_CNT}")
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else -1 for d in dims)
    if mode == "hw" and shape.count(-1) not in (0, 2):
        raise ValueError(
            f"{what} has {shape.count(-1)} dynamic dims {list(shape)}; dynamic_image_size needs exactly two "
            "(height and width, in that order) or none"
        )
    return shape


def _data_inputs(proto: Any, var_names: set[str], batch: bool, mode: str = "") -> list[TensorSpec]:
    specs = []
    for vi in proto.graph.input:
        if vi.name in var_names:
            continue
        what = f"input {vi.name!r}"
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"{what} is not a tensor")
        dtype = _np_dtype_name(vi.type.tensor_type.elem_type, what)
        dims = _dynamic_dims(vi, what, mode) if mode in ("hw", "dims") else _static_dims(vi, what, batch)
        specs.append(TensorSpec(vi.name, dtype, dims))
    if batch and not specs:
        raise ValueError("batch_sizes given but the graph has no data input to carry the batch dim")
    return specs


def _gear_shapes(inputs: list[TensorSpec], gear: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Concrete input shapes at ``gear``: the -1 dims take the gear's values in input order."""
    it = iter(gear)
    return [tuple(next(it) if d == -1 else d for d in t.shape) for t in inputs]


def _gear_outputs(
    proto: Any,
    inputs: list[TensorSpec],
    variables: list[TensorSpec],
    values: list[bytes],
    gears: list[tuple[int, ...]],
    mode: str,
) -> tuple[list[TensorSpec], list[list[tuple[int, ...]]]]:
    """Output specs (-1 where a dim changes between gears) and each gear's output shapes, by running every gear."""
    n_dyn = sum(t.shape.count(-1) for t in inputs)
    option = "dynamic_image_size" if mode == "hw" else "dynamic_dims"
    if n_dyn == 0:
        raise ValueError(f"{option} given but no data input has a dynamic dim")
    if mode == "hw":
        gears_in = [tuple(v for _ in range(n_dyn // 2) for v in g) for g in gears]  # every image input takes (h, w)
    else:
        if any(len(g) != n_dyn for g in gears):
            raise ValueError(
                f"{option}: every gear needs {n_dyn} values (one per dynamic input dim), got {[list(g) for g in gears]}"
            )
        gears_in = gears
    _forget_all_output_shapes(proto)
    sess = _session(proto.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    dtypes = [_np_dtype_name(et, f"output {name!r}") for name, et, _ in _inferred_outputs(proto)[1]]
    per_gear: list[list[tuple[int, ...]]] = []
    for g, gin in zip(gears, gears_in):
        feed = {t.name: np.zeros(shape, t.dtype) for t, shape in zip(inputs, _gear_shapes(inputs, gin))}
        for v, raw in zip(variables, values):
            feed[v.name] = np.frombuffer(raw, v.dtype).reshape(v.shape)
        try:
            outs = sess.run(None, feed)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types
            raise ValueError(f"onnxruntime failed to run the graph at gear {list(g)}: {e}") from None
        per_gear.append([tuple(int(d) for d in np.shape(o)) for o in outs])
    specs = []
    for i, (name, dt) in enumerate(zip(names, dtypes)):
        shapes = [pg[i] for pg in per_gear]
        if len({len(sh) for sh in shapes}) != 1:
            raise ValueError(f"output {name!r} changes rank between gears: {shapes}")
        dims = tuple(-1 if len({sh[k] for sh in shapes}) > 1 else shapes[0][k] for k in range(len(shapes[0])))
        specs.append(TensorSpec(name, dt, dims))
    order = [o.name for o in proto.graph.output]
    idx = [names.index(n) for n in order]
    return [specs[i] for i in idx], [[pg[i] for i in idx] for pg in per_gear]


def _forget_all_output_shapes(proto: Any) -> None:
    """Drop declared output and intermediate shapes: with dynamic dims only running the graph tells them."""
    for vo in proto.graph.output:
        if vo.type.tensor_type.HasField("shape"):
            vo.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]


def _forget_output_shapes(proto: Any) -> None:
    """Drop declared output/intermediate shapes so only propagation can call dim 0 the batch.

    Declared shapes pin the old static batch; keeping the symbol we put on the inputs
    as the sole source of "batch" means an output whose dim 0 does not follow it is caught.
    """
    for vo in proto.graph.output:
        tt = vo.type.tensor_type
        if tt.HasField("shape"):
            if not tt.shape.dim:
                raise ValueError(f"output {vo.name!r} is a scalar, so it has no batch dim (dim 0) for batch_sizes")
            tt.ClearField("shape")
    del proto.graph.value_info[:]


def _inferred_outputs(proto: Any) -> tuple[Any, list[tuple[str, int, list[int | str | None] | None]]]:
    """Return the inferred model and (name, elem_type, dims) per output (dims: int, symbol or None)."""
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - custom ops etc.; onnxruntime validates below
        log.debug("strict shape inference failed (%s); retrying non-strict", e)
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception as e2:  # noqa: BLE001
            log.debug("shape inference failed: %s", e2)
            inferred = proto
    out = []
    for vo in inferred.graph.output:
        tt = vo.type.tensor_type
        dims: list[int | str | None] | None = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        out.append((vo.name, tt.elem_type, dims))
    return inferred, out


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise ValueError(f"onnxruntime rejects the graph: {e}") from None


def _probe(
    sess: Any, inputs: list[TensorSpec], variables: list[TensorSpec], values: list[bytes], batch: int
) -> list[tuple[int, ...]]:
    feed: dict[str, np.ndarray] = {}
    for t in inputs:
        feed[t.name] = np.zeros(tuple(batch if d == -1 else d for d in t.shape), t.dtype)
    for v, raw in zip(variables, values):
        feed[v.name] = np.frombuffer(raw, v.dtype).reshape(v.shape)
    try:
        outs = sess.run(None, feed)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"onnxruntime failed to run the graph on zeros at batch {batch}: {e}") from None
    return [tuple(int(d) for d in np.shape(o)) for o in outs]


def _output_specs(
    proto: Any,
    inputs: list[TensorSpec],
    variables: list[TensorSpec],
    values: list[bytes],
    batch_sizes: list[int],
) -> list[TensorSpec]:
    """Work out each output's dtype and shape: shape inference first, then probing with onnxruntime."""
    inferred_model, inferred = _inferred_outputs(proto)
    batch = bool(batch_sizes)
    specs: list[TensorSpec | None] = []
    need_probe = False
    elem_types: list[str] = []
    for name, et, dims in inferred:
        if not et:
            raise ValueError(f"cannot determine the dtype of output {name!r}; declare it in the graph")
        elem_types.append(_np_dtype_name(et, f"output {name!r}"))
        ok = dims is not None and (
            (batch and dims and dims[0] == BATCH_DIM and all(isinstance(d, int) for d in dims[1:]))
            or (not batch and all(isinstance(d, int) for d in dims))
        )
        if ok and batch and dims is not None:  # ok: every dim but a batch dim is an int
            specs.append(TensorSpec(name, "", (-1, *(d for d in dims[1:] if isinstance(d, int)))))  # dtype below
        elif ok and dims is not None:
            specs.append(TensorSpec(name, "", tuple(d for d in dims if isinstance(d, int))))
        else:
            specs.append(None)
            need_probe = True
    if need_probe:
        sess = _session(inferred_model.SerializeToString())
        names = [o.name for o in sess.get_outputs()]
        # two batch sizes show which dims move; the smallest keep probing cheap
        probe_batches = (
            (sorted(batch_sizes)[:2] if len(batch_sizes) >= 2 else [batch_sizes[0], batch_sizes[0] + 1])
            if batch
            else [1]
        )
        runs = [_probe(sess, inputs, variables, values, b) for b in probe_batches]
        for i, (name, _et, _dims) in enumerate(inferred):
            if specs[i] is not None:
                continue
            shapes = [r[names.index(name)] for r in runs]
            if batch:
                if any(len(s) == 0 or s[0] != b for s, b in zip(shapes, probe_batches)):
                    raise ValueError(
                        f"output {name!r} dim 0 does not follow the batch size "
                        f"(batches {probe_batches} gave shapes {shapes}); batch_sizes needs dim 0 of every output to "
                        "be the batch"
                    )
                if len({s[1:] for s in shapes}) != 1:
                    raise ValueError(f"output {name!r} has dims other than dim 0 that change with the batch: {shapes}")
                specs[i] = TensorSpec(name, "", (-1, *shapes[0][1:]))
            else:
                specs[i] = TensorSpec(name, "", shapes[0])
    out: list[TensorSpec] = []
    for spec, dt, (_name, _et, _dims) in zip(specs, elem_types, inferred):
        assert spec is not None
        out.append(TensorSpec(spec.name, dt, spec.shape))
    if len({t.name for t in out}) != len(out):
        raise ValueError("graph outputs must have distinct names")
    return out


def _set_output_types(proto: Any, outputs: list[TensorSpec], dynamic_name: str = BATCH_DIM) -> None:
    """Declare the determined output dtypes and shapes in the graph (onnx.checker requires them)."""
    onnx = _onnx()
    by_name = {t.name: t for t in outputs}
    for vo in proto.graph.output:
        t = by_name[vo.name]
        dims: list[int | str] = [
            (BATCH_DIM if dynamic_name == BATCH_DIM else f"{dynamic_name}{k}") if d == -1 else d
            for k, d in enumerate(t.shape)
        ]
        vo.type.CopyFrom(onnx.helper.make_tensor_type_proto(onnx.helper.np_dtype_to_tensor_dtype(t.np_dtype), dims))


def _validate(proto: Any) -> tuple[bytes, Any]:
    onnx = _onnx()
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - ValidationError and friends
        raise ValueError(f"invalid ONNX graph: {e}") from None
    data = proto.SerializeToString()
    return data, _session(data)


@dataclass
class _Built:
    graph: GraphSpec
    variables: list[TensorSpec]
    values: list[bytes]
    batch_sizes: list[int]
    hw: list[tuple[int, int]]
    dims: list[tuple[int, ...]]
    gear_outputs: list[list[tuple[int, ...]]]


def _build(
    model: ModelSource,
    variables: Sequence[str] | None,
    batch_sizes: Sequence[int] | None,
    bundle: bool,
    dynamic_image_size: Sequence[Sequence[int]] | None = None,
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    role: str | None = None,
) -> _Built:
    sizes = _check_batch_sizes(batch_sizes)
    hw = _check_gears(dynamic_image_size, "dynamic_image_size", width=2)
    dyn_dims = _check_gears(dynamic_dims, "dynamic_dims")
    if sum(map(bool, (sizes, hw, dyn_dims))) > 1:
        raise ValueError(
            "give at most one of batch_sizes, dynamic_image_size and dynamic_dims (ATC accepts one dynamic-shape "
            "option)"
        )
    mode = "batch" if sizes else "hw" if hw else "dims" if dyn_dims else ""
    proto = _load(model)
    graph = proto.graph
    var_names: list[str] = []
    if bundle:
        inits = [t.name for t in graph.initializer]
        available = ", ".join(repr(n) for n in inits) or "none"
        if variables is None:
            var_names = [t.name for t in graph.initializer if t.data_type in _DEFAULT_VARIABLE_TYPES]
            if not var_names:
                raise ValueError(
                    "the model has no float16/float32/float64 initializer to make a variable; initializers: "
                    f"{available}"
                )
        else:
            if isinstance(variables, str):
                raise ValueError(f"variables must be a sequence of names, got the string {variables!r}")
            var_names = list(variables)
            if not var_names:
                raise ValueError(f"variables is empty; a bundle needs at least one. Initializers: {available}")
            seen: set[str] = set()
            init_set = set(inits)
            for n in var_names:
                if n in seen:
                    raise ValueError(f"variable {n!r} is listed twice")
                seen.add(n)
                if n not in init_set:
                    kind = (
                        "a graph input, not an initializer"
                        if any(vi.name == n for vi in graph.input)
                        else "not an initializer"
                    )
                    raise ValueError(f"variable {n!r} is {kind}; initializers: {available}")
    var_specs, values = _prepare(proto, var_names)
    names = {vi.name for vi in graph.input}
    if ACL_DYNAMIC_TENSOR_NAME in names:
        raise ValueError(f"graph input name {ACL_DYNAMIC_TENSOR_NAME!r} is reserved for the dynamic batch input")
    if len(names) != len(graph.input):
        raise ValueError("graph input names must be distinct")
    inputs = _data_inputs(proto, set(var_names), bool(sizes), mode)
    if not graph.output:
        raise ValueError("the graph has no outputs")
    gear_outputs: list[list[tuple[int, ...]]] = []
    if mode in ("hw", "dims"):
        outputs, gear_outputs = _gear_outputs(proto, inputs, var_specs, values, hw or dyn_dims, mode)
        _set_output_types(proto, outputs, dynamic_name="dyn")
    else:
        if sizes:
            _forget_output_shapes(proto)
        outputs = _output_specs(proto, inputs, var_specs, values, sizes)
        _set_output_types(proto, outputs)
    data, _sess = _validate(proto)
    role = role or ("infer" if bundle else "model")
    log.debug("built %s graph: %d inputs, %d outputs, %d variables", role, len(inputs), len(outputs), len(var_specs))
    hw_pairs = [(h, w) for h, w in hw]  # _check_gears(width=2): each gear is (height, width)
    return _Built(
        GraphSpec(role, tuple(inputs), tuple(outputs), data), var_specs, values, sizes, hw_pairs, dyn_dims, gear_outputs
    )


def build_bundle(
    model: ModelSource,
    *,
    variables: Sequence[str] | None = None,
    init: bool = True,
    batch_sizes: Sequence[int] | None = None,
    dynamic_image_size: Sequence[Sequence[int]] | None = None,
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    precision_mode: str | None = None,
) -> ModelFile:
    """Build a bundle (infer, [init], update) whose variables are the chosen initializers.

    ``model`` is an ``onnx.ModelProto``, a path or ONNX bytes (never modified).
    ``variables`` defaults to every float16/float32/float64 initializer in order.
    ``init=False`` omits the init graph and the initial values (GE: saves device
    memory; the caller must then update every variable before inferring).
    ``batch_sizes`` makes dim 0 of every data input and output the dynamic batch dim;
    ``dynamic_image_size`` [(h, w), ...] and ``dynamic_dims`` [(v, ...), ...] are ATC's
    other dynamic-shape options (at most one of the three; see the module docstring).
    ``precision_mode`` is ATC's ``--precision_mode`` (``"force_fp16"``, GE's inference default, ...): the
    simulator then computes the way the device would (:mod:`acl_bundle.sim._precision`); None keeps
    exact float32 arithmetic.
    Raises ValueError (TypeError for a wrong ``model`` type, FileNotFoundError for a
    missing path) with what is wrong.
    """
    mode = check_precision_mode(precision_mode) or ""
    b = _build(model, variables, batch_sizes, True, dynamic_image_size, dynamic_dims)
    graphs = [b.graph]
    if init:
        graphs.append(GraphSpec("init", (), ()))
    graphs.append(GraphSpec("update", (), ()))
    values: list[bytes | memoryview] = list(b.values) if init else []
    return ModelFile("bundle", graphs, b.variables, values, b.batch_sizes, b.hw, b.dims, b.gear_outputs, mode)


def build_plain(
    model: ModelSource,
    *,
    batch_sizes: Sequence[int] | None = None,
    dynamic_image_size: Sequence[Sequence[int]] | None = None,
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    precision_mode: str | None = None,
) -> ModelFile:
    """Build a plain single-graph model file (what ATC makes): every initializer stays a constant."""
    mode = check_precision_mode(precision_mode) or ""
    b = _build(model, None, batch_sizes, False, dynamic_image_size, dynamic_dims)
    return ModelFile("plain", [b.graph], [], [], b.batch_sizes, b.hw, b.dims, b.gear_outputs, mode)


def build_plain_bundle(models: Sequence[ModelSource]) -> ModelFile:
    """Bundle two or more plain graphs without variables (GE's ``aclgrphBundleBuildModel`` of any graphs).

    Each graph keeps its constants; ``bundle_get_model_id(bundle, i)`` is graph ``i``.  Such a
    bundle has no update graph, so :class:`~acl_bundle.BundleModel` does not load it; drive it
    with the raw ``acl.mdl`` calls.  Shapes must be static.
    """
    if isinstance(models, (str, bytes, os.PathLike)) or not isinstance(models, Sequence):
        raise TypeError("models must be a sequence of ONNX models (ModelProto, paths or bytes)")
    if len(models) < 2:
        raise ValueError(f"a bundle needs at least 2 graphs (GE rejects fewer), got {len(models)}")
    graphs = [_build(m, None, None, False).graph for m in models]
    return ModelFile("bundle", graphs)


def manifest(mf: ModelFile) -> dict[str, Any]:
    """Return the JSON-able manifest of ``mf`` (schema in the module docstring)."""
    main = mf.graphs[0] if mf.graphs else GraphSpec("model", (), ())
    variables = []
    for i, v in enumerate(mf.variables):
        digest = hashlib.sha256(mf.initial_values[i]).hexdigest() if i < len(mf.initial_values) else None
        variables.append({**v.to_json(), "index": i, "nbytes": v.nbytes(), "sha256": digest})
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": mf.kind,
        "graphs": [g.role for g in mf.graphs],
        "model_count": len(mf.graphs),
        "inputs": [t.to_json() for t in main.inputs],
        "outputs": [t.to_json() for t in main.outputs],
        "variables": variables,
        "batch_sizes": list(mf.batch_sizes),
        "dynamic_image_size": [list(g) for g in mf.dynamic_hw],
        "dynamic_dims": [list(g) for g in mf.dynamic_dims],
        "has_init": mf.has_init,
        **({"precision_mode": mf.precision_mode} if mf.precision_mode else {}),
    }


def save(mf: ModelFile, path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Write ``mf`` to ``path`` (atomically) and, for a bundle, its manifest beside it.

    Returns ``(om_path, manifest_path_or_None)``.  Readers never see a half-written file.
    """
    om = Path(path)
    write_atomic(om, lambda f: f.write(dumps(mf)))
    if mf.kind != "bundle" or not mf.variables:
        stale = manifest_path(om)
        if stale.exists():
            log.warning("%s has no variables but %s exists beside it; the manifest is ignored", om, stale)
        return om, None
    mp = manifest_path(om)
    write_atomic(mp, lambda f: f.write((json.dumps(manifest(mf), indent=2) + "\n").encode()))
    return om, mp


def variables_from_manifest(m: dict[str, Any]) -> list[TensorSpec]:
    """Return the variable specs of a manifest returned by :func:`load_manifest`, in order."""
    return [TensorSpec(v["name"], v["dtype"], tuple(v["shape"])) for v in m["variables"]]
