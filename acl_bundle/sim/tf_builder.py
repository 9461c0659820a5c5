"""Build simulator bundles from TensorFlow models: a frozen GraphDef (``.pb``) or a SavedModel directory.

The TF graph is converted to ONNX with tf2onnx and then built by
:func:`acl_bundle.sim.builder.build_bundle` (optional extras ``tf`` and ``sim``)::

    mf = build_bundle_from_tf("model.pb", inputs=["x:0"], outputs=["y:0"])
    builder.save(mf, "model.om")

Names are TensorFlow's: data inputs and outputs keep their tensor names (``x:0``,
``y:0``; for a SavedModel the signature's keys, ``<key>:0``), and each updatable
variable is named like TF's ``Variable.name`` (``dense/kernel:0``), so
``m.update({v.name: value for v in tf.trainable_variables()})`` works unchanged and a
checkpoint of the training graph (keys ``dense/kernel``) matches by
:mod:`acl_bundle.tf_checkpoint`'s default naming.

Which tensors become variables:

* frozen GraphDef: by default every floating-point ``Const`` that freezing made from a
  variable (``convert_variables_to_constants`` / ``freeze_graph`` keep the variable's
  name and leave it read through an ``Identity``); ``variables=`` may name any numeric
  ``Const`` (with or without ``:0``);
* SavedModel: by default every variable the signature reads (names from the variables
  themselves); ``variables=`` names a subset.

Keeping a variable updatable: before conversion each chosen variable's constant is
replaced by a graph input, so neither grappler nor tf2onnx can fold it into another
constant (tf2onnx fuses a Conv + BatchNormalization of constants,
``tf2onnx/optimizer/back_to_back_optimizer.py`` ``('Conv', 'BatchNormalization')``, and
transposes a constant conv kernel to OIHW in place, ``tf2onnx/onnx_opset/nn.py``
``conv_convert_inputs``; with inputs both stay ops and the variable keeps TF's layout).  The
build fails, naming the variable and the reason, if a requested variable is not in the
graph, does not feed the outputs, or must stay a constant for the converter.  After
conversion the ONNX graph is run beside TensorFlow on a probe input and must agree.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from . import builder
from .format import ModelFile

log = logging.getLogger(__name__)

__all__ = ["TFConversion", "build_bundle_from_tf", "is_tf_source", "parse_tensor_spec", "tf_to_onnx"]

MAX_GRAPHDEF_BYTES = (2 << 30) - 1  # protobuf cannot parse a message of 2 GiB or more
_FLOAT_TYPES = ("float16", "float32", "float64")
_SPEC_RE = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<dims>[^\[\]]*)\])?$")

TFSource = Union[str, "os.PathLike[str]", Any]  # a path, or a tf GraphDef proto


def _tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            "building from TensorFlow models needs TensorFlow and tf2onnx: pip install -e '.[tf,sim]' in a checkout "
            "of acl_bundle"
        ) from None
    return tf


def _tf2onnx() -> Any:
    try:
        import tf2onnx
    except ImportError:
        raise ImportError(
            "building from TensorFlow models needs tf2onnx: pip install -e '.[tf,sim]' in a checkout of acl_bundle"
        ) from None
    logging.getLogger("tf2onnx").setLevel(max(logging.getLogger("tf2onnx").level, logging.WARNING))
    return tf2onnx


def is_tf_source(path: str | os.PathLike[str]) -> bool:
    """True for a ``.pb`` file or a SavedModel directory (one holding ``saved_model.pb``)."""
    p = Path(path)
    return (p.is_dir() and (p / "saved_model.pb").is_file()) or (p.suffix.lower() == ".pb" and p.is_file())


def tensor_name(name: str) -> str:
    """``x`` -> ``x:0``; ``x:1`` stays."""
    return name if re.search(r":\d+$", name) else f"{name}:0"


def parse_tensor_spec(text: str) -> tuple[str, tuple[int, ...] | None]:
    """``"x:0[1,8]"`` -> ``("x:0", (1, 8))``; ``"x:0"`` -> ``("x:0", None)`` (tf2onnx's ``--inputs`` syntax)."""
    m = _SPEC_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad tensor {text!r}; expected NAME or NAME[d0,d1,...], e.g. x:0[1,8]")
    dims = m.group("dims")
    if dims is None:
        return tensor_name(m.group("name")), None
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise ValueError(f"bad shape in {text!r}; dims must be integers (-1 for unknown)") from None
    return tensor_name(m.group("name")), shape


@dataclass
class _Graph:
    """A frozen GraphDef plus what the conversion needs to know about it."""

    graph_def: Any
    inputs: list[str]  # data input tensor names in graph_def
    outputs: list[str]  # output tensor names in graph_def
    input_names: dict[str, str]  # graph_def tensor -> bundle name
    output_names: dict[str, str]
    variables: dict[str, str]  # Const node name -> variable name, in order
    what: str


@dataclass(frozen=True)
class TFConversion:
    """The ONNX model tf2onnx made (variables as initializers of their TF names) and its names."""

    model: Any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    variables: tuple[str, ...]


# --------------------------------------------------------------------------- loading
def _read_graph_def(source: TFSource) -> tuple[Any, str]:
    tf = _tf()
    from google.protobuf.message import DecodeError

    if isinstance(source, tf.compat.v1.GraphDef):
        gd = tf.compat.v1.GraphDef()
        gd.CopyFrom(source)
        return gd, "the GraphDef"
    p = Path(source)
    size = p.stat().st_size
    if size > MAX_GRAPHDEF_BYTES:
        raise ValueError(f"{p} is {size} bytes; a GraphDef must be under 2 GiB")
    gd = tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(p.read_bytes())
    except DecodeError as e:
        raise ValueError(f"{p} is not a TensorFlow GraphDef (.pb): {e}") from None
    if not gd.node:
        raise ValueError(f"{p} is not a TensorFlow GraphDef (.pb): it has no nodes")
    return gd, str(p)


def _ancestors(graph_def: Any, outputs: Sequence[str]) -> set[str]:
    by_name = {n.name: n for n in graph_def.node}
    seen: set[str] = set()
    todo = [t.split(":")[0] for t in outputs]
    while todo:
        n = todo.pop()
        if n in seen or n not in by_name:
            continue
        seen.add(n)
        todo.extend(i.lstrip("^").split(":")[0] for i in by_name[n].input)
    return seen


def _frozen_variables(graph_def: Any, reachable: set[str]) -> list[str]:
    """Float Consts that freezing made from variables: read only through Identity nodes."""
    tf = _tf()
    consumers: dict[str, list[Any]] = {}
    for n in graph_def.node:
        for i in n.input:
            consumers.setdefault(i.lstrip("^").split(":")[0], []).append(n)
    out = []
    for n in graph_def.node:
        if n.op != "Const" or n.name not in reachable:
            continue
        if tf.dtypes.as_dtype(n.attr["dtype"].type).name not in _FLOAT_TYPES:
            continue
        users = consumers.get(n.name, [])
        if users and all(u.op == "Identity" for u in users):
            out.append(n.name)
    return out


def _load_graph_def(source: TFSource, inputs: Sequence[str] | None, outputs: Sequence[str] | None,
                    variables: Sequence[str] | None) -> _Graph:
    tf = _tf()
    gd, what = _read_graph_def(source)
    by_name = {n.name: n for n in gd.node}
    stateful = sorted(
        n.name for n in gd.node if n.op in ("VariableV2", "Variable", "VarHandleOp", "VarIsInitializedOp")
    )
    if stateful:
        raise ValueError(f"{what} is not frozen: it holds variable ops {stateful[:5]}; freeze it first "
                         "(tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph_def, outputs))")
    if not outputs:
        raise ValueError(
            f"{what}: give the output tensors (outputs=['y:0'], --outputs y:0); a GraphDef does not say which they are"
        )
    outs = [tensor_name(o) for o in outputs]
    for o in outs:
        if o.split(":")[0] not in by_name:
            raise ValueError(f"{what}: output {o!r} is not a tensor of the graph")
    reachable = _ancestors(gd, outs)
    if inputs:
        ins = [tensor_name(i) for i in inputs]
        for i in ins:
            if i.split(":")[0] not in by_name:
                raise ValueError(f"{what}: input {i!r} is not a tensor of the graph")
    else:
        ins = [
            f"{n.name}:0" for n in gd.node if n.op in ("Placeholder", "PlaceholderWithDefault") and n.name in reachable
        ]
    if variables is None:
        chosen = _frozen_variables(gd, reachable)
        if not chosen:
            raise ValueError(f"{what} has no frozen variable (a float Const read through an Identity) feeding {outs}; "
                             "name the constants to make updatable with variables=")
    else:
        chosen = []
        for v in variables:
            node = v[:-2] if v.endswith(":0") else v
            n = by_name.get(node)
            if n is None:
                raise ValueError(
                    f"variable {v!r} cannot stay updatable: there is no such node in {what} "
                    "(a constant folded away or pruned when the graph was frozen or optimised no longer exists)"
                )
            if n.op != "Const":
                raise ValueError(
                    f"variable {v!r} cannot stay updatable: its node is a {n.op}, not a constant of the frozen graph"
                )
            if tf.dtypes.as_dtype(n.attr["dtype"].type).as_numpy_dtype is object:
                raise ValueError(f"variable {v!r} cannot stay updatable: it is a string constant")
            if node not in reachable:
                raise ValueError(f"variable {v!r} cannot stay updatable: it does not feed the outputs {outs}")
            if node in chosen:
                raise ValueError(f"variable {v!r} is listed twice")
            chosen.append(node)
    return _Graph(gd, ins, outs, {i: i for i in ins}, {o: o for o in outs}, {c: f"{c}:0" for c in chosen}, what)


def _load_saved_model(path: Path, inputs: Sequence[str] | None, outputs: Sequence[str] | None,
                      variables: Sequence[str] | None, signature: str | None) -> _Graph:
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    what = f"SavedModel {str(path)!r}"
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # noqa: BLE001 - TF raises many types for a bad SavedModel
        raise ValueError(f"{what} cannot be loaded: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    sigs = dict(loaded.signatures)
    if not sigs:
        raise ValueError(
            f"{what} has no signatures; save it with signatures= (tf.saved_model.save(m, dir, signatures=...))"
        )
    key = signature or ("serving_default" if "serving_default" in sigs or len(sigs) != 1 else next(iter(sigs)))
    if key not in sigs:
        raise ValueError(f"{what} has no signature {key!r}; it has {sorted(sigs)}")
    fn = sigs[key]
    by_handle = {id(v.handle): v for v in fn.graph.variables}
    var_of: dict[str, Any] = {}  # captured placeholder (becomes a Const) -> variable
    for external, internal in fn.graph.captures:
        v = by_handle.get(id(external))
        if v is not None:
            var_of[internal.op.name] = v
    frozen = convert_variables_to_constants_v2(fn)
    gd = frozen.graph.as_graph_def()
    consts = {n.name for n in gd.node if n.op == "Const"}
    var_of = {c: v for c, v in var_of.items() if c in consts}

    data_in = [t for t in fn.inputs if t.dtype != tf.resource]
    specs = fn.structured_input_signature[1]
    in_by_key: dict[str, str] = {}
    for k in sorted(specs):
        name = f"{specs[k].name}:0" if specs[k].name else None
        in_by_key[k] = name if name is not None and name in {t.name for t in data_in} \
            else data_in[sorted(specs).index(k)].name
    out_specs = fn.structured_outputs
    flat_keys = sorted(out_specs) if isinstance(out_specs, Mapping) else [f"output_{i}" for i in range(len(fn.outputs))]
    out_by_key = {k: t.name for k, t in zip(flat_keys, fn.outputs)}

    def pick(requested: Sequence[str] | None, by_key: dict[str, str], kind: str) -> dict[str, str]:
        if not requested:
            return {t: f"{k}:0" for k, t in by_key.items()}
        out = {}
        for r in requested:
            k = r[:-2] if r.endswith(":0") else r
            if k in by_key:
                out[by_key[k]] = f"{k}:0"
            elif tensor_name(r) in by_key.values():
                out[tensor_name(r)] = tensor_name(r)
            else:
                raise ValueError(f"{what}: signature {key!r} has no {kind} {r!r}; its {kind}s are "
                                 f"{[f'{k}:0' for k in by_key]}")
        return out

    in_map, out_map = pick(inputs, in_by_key, "input"), pick(outputs, out_by_key, "output")
    available: dict[str, list[str]] = {}
    for c, v in var_of.items():
        available.setdefault(v.name, []).append(c)
    if variables is None:
        chosen = list(var_of)
        if not chosen:
            raise ValueError(f"{what}: signature {key!r} reads no variables; nothing would be updatable")
    else:
        chosen = []
        for r in variables:
            cs = available.get(tensor_name(r))
            if cs is None:
                raise ValueError(f"variable {r!r} cannot stay updatable: signature {key!r} of {what} reads no such "
                                 f"variable; it reads {sorted(available)}")
            if cs[0] in chosen:
                raise ValueError(f"variable {r!r} is listed twice")
            chosen.extend(cs)  # several: refused below, by name
    names = [var_of[c].name for c in chosen]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what}: several variables are named {dup} (TF2 does not make names unique); "
                         "give each tf.Variable a distinct name= before saving")
    return _Graph(gd, list(in_map), list(out_map), in_map, out_map, {c: var_of[c].name for c in chosen}, what)


# --------------------------------------------------------------------------- conversion
def _as_inputs(graph_def: Any, consts: Sequence[str]) -> tuple[Any, dict[str, np.ndarray]]:
    """A copy of ``graph_def`` whose ``consts`` are Placeholders; returns it and their values."""
    tf = _tf()
    from tensorflow.core.framework import attr_value_pb2

    gd = tf.compat.v1.GraphDef()
    gd.CopyFrom(graph_def)
    want = set(consts)
    values: dict[str, np.ndarray] = {}
    for n in gd.node:
        if n.name in want:
            value = tf.make_ndarray(n.attr["value"].tensor)
            dtype = attr_value_pb2.AttrValue()
            dtype.CopyFrom(n.attr["dtype"])
            n.op = "Placeholder"
            n.attr.clear()
            n.attr["dtype"].CopyFrom(dtype)
            n.attr["shape"].CopyFrom(attr_value_pb2.AttrValue(shape=tf.TensorShape(value.shape).as_proto()))
            values[n.name] = value
    return gd, values


def _convert(
    g: _Graph, as_inputs: Sequence[str], shapes: Mapping[str, tuple[int, ...]], opset: int | None
) -> tuple[Any, dict[str, np.ndarray]]:
    """tf2onnx with ``as_inputs`` (Const names) turned into graph inputs named by their variables."""
    tf2onnx = _tf2onnx()
    gd, values = _as_inputs(g.graph_def, as_inputs)
    names = list(g.inputs) + [f"{c}:0" for c in as_inputs]
    rename = {**g.input_names, **g.output_names, **{f"{c}:0": g.variables[c] for c in as_inputs}}
    with _ConversionErrors() as errors:
        model, _ = tf2onnx.convert.from_graph_def(gd, input_names=names, output_names=list(g.outputs), opset=opset,
                                                  shape_override=dict(shapes) or None,
                                                  tensors_to_rename={k: v for k, v in rename.items() if k != v} or None)
    if errors.records:
        raise ValueError(errors.describe())
    return model, values


class _ConversionErrors(logging.Handler):
    """Collect the errors tf2onnx logs: its Python API converts with ``continue_on_error=True``
    (``tf2onnx/convert.py`` ``from_graph_def``), logging a node it cannot convert and going on."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger("tf2onnx")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _ConversionErrors:
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False  # reported by us, once, as the build error
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate

    def describe(self) -> str:
        r = self.records[0]
        cause = f": {_err(r.exc_info[1])}" if r.exc_info and r.exc_info[1] is not None else ""
        if str(r.msg).startswith("Failed to convert node") and isinstance(r.args, tuple) and r.args:
            text = f"cannot convert node {r.args[0]!r}"
        else:
            text = (r.getMessage().splitlines() or ["failed"])[0]
        return f"tf2onnx {text}{cause}".replace("make_sure failure: ", "")


def _err(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _localise(g: _Graph, shapes: Mapping[str, tuple[int, ...]], opset: int | None, first: BaseException) -> ValueError:
    """Conversion failed with the variables as inputs: find which must stay constants, for the error."""
    try:
        _convert(g, [], shapes, opset)
    except Exception:  # noqa: BLE001 - the graph does not convert at all: not a variable's fault
        return ValueError(f"cannot convert {g.what}: {_err(first)}")
    culprits = []
    for c in list(g.variables)[:64]:
        try:
            _convert(g, [c], shapes, opset)
        except Exception:  # noqa: BLE001
            culprits.append(g.variables[c])
    which = culprits or list(g.variables.values())
    return ValueError(f"variable(s) {which} cannot stay updatable: the converter needs them as constants "
                      f"({_err(first)}); leave them out of variables=")


def _used(model: Any) -> set[str]:
    """Every tensor name any node (including nested subgraphs) reads, plus the graph outputs."""
    seen: set[str] = set()

    def walk(graph: Any) -> None:
        seen.update(o.name for o in graph.output)
        for node in graph.node:
            seen.update(node.input)
            for a in node.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub)

    walk(model.graph)
    return seen


def _verify(g: _Graph, conv: TFConversion, batch: int) -> None:
    """Run TF (the frozen graph, constants included) and the ONNX model on one probe input; they must agree."""
    tf = _tf()
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(conv.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise ValueError(f"onnxruntime rejects the graph tf2onnx made from {g.what}: {_err(e)}") from None
    rng = np.random.default_rng(0)
    to_graph = {v: k for k, v in g.input_names.items()}
    feed_onnx: dict[str, np.ndarray] = {}
    feed_tf: dict[str, np.ndarray] = {}
    for vi in conv.model.graph.input:
        if vi.name not in to_graph:
            continue  # a variable: its initializer holds the value the frozen graph has
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim)
        value = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        feed_onnx[vi.name] = value
        feed_tf[to_graph[vi.name]] = value
    got = sess.run(list(conv.outputs), feed_onnx)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(g.graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as s:
        want = s.run(list(g.outputs), feed_tf)
    for name, a, b in zip(conv.outputs, got, want):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"the converted output {name!r} has shape {a.shape}, TensorFlow's {b.shape}")
        if a.dtype.kind in "fc":
            scale = float(np.abs(b).max()) if b.size else 0.0
            err = float(np.abs(a.astype(np.float64) - b).max()) if b.size else 0.0
            if not err <= 1e-4 * max(1.0, scale):
                raise ValueError(f"the converted output {name!r} differs from TensorFlow's by {err:.3g} "
                                 f"(max |TF| {scale:.3g}) on a probe input: tf2onnx mis-converted the graph")
        elif not np.array_equal(a, b):
            raise ValueError(f"the converted output {name!r} differs from TensorFlow's on a probe input")


def tf_to_onnx(
    source: TFSource,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    variables: Sequence[str] | None = None,
    signature: str | None = None,
    opset: int | None = None,
    verify: bool = True,
    probe_batch: int = 1,
) -> TFConversion:
    """Convert a frozen GraphDef / SavedModel to ONNX keeping the chosen variables updatable.

    ``inputs``/``outputs``: TF tensor names, optionally with a static shape (``"x:0[1,8]"``);
    a GraphDef needs ``outputs``, a SavedModel defaults to its signature's.  ``variables``:
    see the module docstring.  The returned model has each variable as an initializer
    named by its TF variable name, ready for :func:`builder.build_bundle`.
    Raises ValueError (with the variable and the reason when one cannot stay updatable).
    """
    if isinstance(variables, str) or isinstance(inputs, str) or isinstance(outputs, str):
        raise TypeError("inputs, outputs and variables must be sequences of names, not one string")
    in_specs = [parse_tensor_spec(i) for i in inputs] if inputs else []
    out_specs = [parse_tensor_spec(o) for o in outputs] if outputs else []
    if any(s is not None for _, s in out_specs):
        raise ValueError("outputs take no shape; give shapes on inputs (x:0[1,8])")
    in_names = [n for n, _ in in_specs] or None
    out_names = [n for n, _ in out_specs] or None
    if not isinstance(source, (str, os.PathLike)):
        if not isinstance(source, _tf().compat.v1.GraphDef):
            raise TypeError(f"source must be a frozen GraphDef (.pb) path, a SavedModel directory or a tf GraphDef, "
                            f"not {type(source).__name__}")
        g = _load_graph_def(source, in_names, out_names, variables)
    else:
        p = Path(source)
        if p.is_file() and p.name == "saved_model.pb":
            p = p.parent
        if p.is_dir():
            if not (p / "saved_model.pb").is_file():
                raise FileNotFoundError(f"{p} is a directory without saved_model.pb, so not a SavedModel")
            g = _load_saved_model(p, in_names, out_names, variables, signature)
        elif p.is_file():
            if signature is not None:
                raise ValueError("signature= applies to SavedModels, not to a frozen GraphDef")
            g = _load_graph_def(p, in_names, out_names, variables)
        else:
            raise FileNotFoundError(f"no such TensorFlow model: {p} (a frozen GraphDef .pb or a SavedModel directory)")
    # shapes are given by bundle name (x:0); tf2onnx wants the graph's tensor name
    to_graph = {v: k for k, v in g.input_names.items()}
    shapes = {to_graph.get(n, n): s for n, s in in_specs if s is not None}
    for n in shapes:
        if n not in g.inputs:
            raise ValueError(
                f"{g.what}: {n!r} is not an input of the conversion (inputs: {list(g.input_names.values())})"
            )
    consts = list(g.variables)
    try:
        model, values = _convert(g, consts, shapes, opset)
    except Exception as e:  # noqa: BLE001 - tf2onnx raises anything from ValueError to KeyError
        raise _localise(g, shapes, opset, e) from None
    present = {i.name for i in model.graph.input}
    used = _used(model)
    for var in g.variables.values():
        if var not in present or var not in used:
            raise ValueError(f"variable {var!r} cannot stay updatable: the converted graph does not read it "
                             f"(it does not influence the outputs {list(g.output_names.values())})")
    from onnx import numpy_helper

    for c in consts:
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values[c]), g.variables[c]))
    conv = TFConversion(model, tuple(g.input_names[i] for i in g.inputs), tuple(g.output_names[o] for o in g.outputs),
                        tuple(g.variables[c] for c in consts))
    if verify:
        _verify(g, conv, probe_batch)
    log.debug(
        "converted %s: inputs %s, outputs %s, %d variables", g.what, conv.inputs, conv.outputs, len(conv.variables)
    )
    return conv


def build_bundle_from_tf(
    source: TFSource,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    variables: Sequence[str] | None = None,
    signature: str | None = None,
    init: bool = True,
    batch_sizes: Sequence[int] | None = None,
    opset: int | None = None,
    verify: bool = True,
    precision_mode: str | None = None,
) -> ModelFile:
    """Build a simulator bundle from a frozen GraphDef or SavedModel (see :func:`tf_to_onnx`).

    ``init``, ``batch_sizes`` and ``precision_mode`` as in :func:`acl_bundle.sim.builder.build_bundle`; with
    ``batch_sizes`` a TF input of shape ``[None, ...]`` keeps its batch dim dynamic.
    """
    sizes = list(batch_sizes) if batch_sizes is not None else None
    conv = tf_to_onnx(source, inputs=inputs, outputs=outputs, variables=variables, signature=signature,
                      opset=opset, verify=verify, probe_batch=min(sizes) if sizes else 1)
    return builder.build_bundle(conv.model, variables=list(conv.variables), init=init, batch_sizes=sizes,
                                precision_mode=precision_mode)
