"""``acl.mdl``: model and bundle loading, model descriptions, dynamic shapes, execution
(onnxruntime IOBinding, zero copy).

Sources: hicann/ge ``api/acl/acl_model/model/model.cpp`` (load, execute, set_dynamic_*),
``model_om2.cpp`` (descs, dynamic gear queries) and ``runtime/v1/executor/ge_executor.cc``
(init check, gear checks); hicann/runtime ``src/runtime/api/impl/api_impl.cc`` (a model runs
only in the context it was loaded in, ModelExecute :4413 -> 107004).
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._constants import ACL_DYNAMIC_TENSOR_NAME, ACL_FORMAT_ND, NUMPY_TO_ACL
from . import _state as S
from ._data import get_db, get_ds, get_td
from ._dynamic import Dynamic, read_values, values_view, write_values
from ._memory import (
    Block,
    describe,
    device_alloc,
    device_range,
    device_release,
    free_device_block,
    new_device_block,
    resolve,
)
from ._precision import emulate as emulate_precision
from ._state import LOCK, WORLD, api, bump, ints, new_bundle_id, new_handle, new_model_id, set_err
from .format import FormatError, GraphSpec, ModelFile, TensorSpec, loads

log = logging.getLogger("acl_bundle.sim")


@dataclass(frozen=True)
class IOInfo:
    """One input/output as a model desc reports it."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]  # -1 dynamic batch, (-2,) unknown rank
    size: int

    def acl_dtype(self) -> int:
        return NUMPY_TO_ACL.get(self.dtype, -1)


@dataclass(eq=False)
class Var:
    spec: TensorSpec
    buf: np.ndarray
    ptr: int
    accounted: int


@dataclass(eq=False)
class Bundle:
    id: int
    device: int
    model_ids: list[int]
    vars: list[Var]
    initial_values: list[bytes]


@dataclass(eq=False)
class Model:
    id: int
    role: str  # "model" | "infer" | "init" | "update"
    graph: GraphSpec
    device: int
    ctx: int  # the context it was loaded in: it executes only there (107004)
    dyn: Dynamic | None
    inputs: list[IOInfo]
    outputs: list[IOInfo]
    session: Any = None
    bundle: Bundle | None = None
    last_gear: int | None = None  # index into dyn.gears of the gear last set or executed
    exec_cache: dict[tuple[int, int], _ExecCache] = field(default_factory=dict)  # (in_ds, out_ds) -> bindings


@dataclass(eq=False)
class ModelDesc:
    id: int
    model: Model | None = None  # snapshot source (kept alive even after unload)
    inputs: list[IOInfo] = field(default_factory=list)
    outputs: list[IOInfo] = field(default_factory=list)
    dyn: Dynamic | None = None


def _describe(mf: ModelFile, g: GraphSpec) -> tuple[list[IOInfo], list[IOInfo], Dynamic | None]:
    if g.role in ("model", "infer"):
        dyn = Dynamic.of(mf, g.inputs, g.outputs)
        if dyn is None:
            ins = [IOInfo(t.name, t.np_dtype, tuple(t.shape), t.nbytes()) for t in g.inputs]
            outs = [IOInfo(t.name, t.np_dtype, tuple(t.shape), t.nbytes()) for t in g.outputs]
            return ins, outs, None
        ins = [IOInfo(t.name, t.np_dtype, tuple(t.shape), dyn.max_input_bytes(i)) for i, t in enumerate(g.inputs)]
        ins.append(IOInfo(ACL_DYNAMIC_TENSOR_NAME, np.dtype(np.int64), (dyn.width,), 8 * dyn.width))
        outs = [IOInfo(t.name, t.np_dtype, tuple(t.shape), dyn.max_output_bytes(i)) for i, t in enumerate(g.outputs)]
        return ins, outs, dyn
    if g.role == "update":
        return [IOInfo(f"{v.name}_var_data", v.np_dtype, (-2,), v.nbytes()) for v in mf.variables], [], None
    return [], [], None  # init


# ---- loading -----------------------------------------------------------------------------
def _ort() -> Any:
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        log.error(
            "acl_bundle.sim needs onnxruntime to load models: pip install -e '.[sim]' in a checkout of acl_bundle"
        )
        return None
    return onnxruntime


def _session(ort: Any, g: GraphSpec, extra_inputs: list[str], precision_mode: str = "") -> tuple[Any, str]:
    """An InferenceSession for ``g`` (computing as ``precision_mode`` says) or (None, reason)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        graph = emulate_precision(g.onnx, precision_mode) if precision_mode else g.onnx
        sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises assorted exception types
        return None, f"onnxruntime rejected the {g.role} graph: {e}"
    have_in = {i.name for i in sess.get_inputs()}
    want_in = {t.name for t in g.inputs} | set(extra_inputs)
    if have_in != want_in:
        return None, f"{g.role} graph inputs {sorted(have_in)} do not match the model file {sorted(want_in)}"
    have_out = {o.name for o in sess.get_outputs()}
    missing = {t.name for t in g.outputs} - have_out
    if missing:
        return None, f"{g.role} graph lacks outputs {sorted(missing)}"
    return sess, ""


def _read_file(name: str, path: Any) -> tuple[bytes | None, int]:
    if not isinstance(path, str):
        raise TypeError(f"{name}: path must be str, not {type(path).__name__}")
    try:
        with open(path, "rb") as f:
            return f.read(), 0
    except OSError as e:
        return None, set_err(S.E_GE_PATH, f"{name}: cannot read model file {path!r}: {e.strerror or e}")


def _read_mem(name: str, ptr: int, size: int) -> tuple[bytes | None, int]:
    if size <= 0:
        return None, set_err(S.E_PARAM, f"{name}: size {size} must be > 0")
    with LOCK:
        blk, msg = resolve(ptr, size)
        if blk is None:
            return None, set_err(S.E_RT_PARAM, f"{name}: model memory {msg}")
        keep = blk.owner()
    data = ctypes.string_at(ptr, size)
    del keep
    return data, 0


def _parse(name: str, data: bytes, want: str) -> tuple[ModelFile | None, int]:
    try:
        mf = loads(data)
    except FormatError as e:
        return None, set_err(e.code, f"{name}: {e}")
    if mf.kind != want:
        right = "acl.mdl.bundle_load_from_file/_mem" if mf.kind == "bundle" else "acl.mdl.load_from_file/_mem"
        return None, set_err(S.E_GE_PARAM, f"{name}: this is a {mf.kind} model file; load it with {right}")
    return mf, 0


def _sessions(name: str, mf: ModelFile) -> tuple[dict[int, Any] | None, int]:
    out: dict[int, Any] = {}
    ort = None
    for i, g in enumerate(mf.graphs):
        if g.role not in ("model", "infer"):
            continue
        if ort is None:
            ort = _ort()
            if ort is None:
                return None, set_err(
                    S.E_LOAD,
                    f"{name}: onnxruntime is not installed (pip install -e '.[sim]' in a checkout of acl_bundle)",
                )
        extra = [v.name for v in mf.variables] if g.role == "infer" else []
        sess, why = _session(ort, g, extra, mf.precision_mode)
        if sess is None:
            return None, set_err(S.E_LOAD, f"{name}: {why}")
        out[i] = sess
    return out, 0


def _parse_with_sessions(name: str, data: bytes | None, ret: int, kind: str) -> tuple[Any, Any, int]:
    """Parse a model file of ``kind`` and build its onnxruntime sessions: (mf, sessions, ret)."""
    if data is None:
        return None, None, ret
    mf, ret = _parse(name, data, kind)
    if mf is None:
        return None, None, ret
    sessions, ret = _sessions(name, mf)
    return (mf, sessions, ret) if sessions is not None else (None, None, ret)


def _load_plain(name: str, data: bytes | None, ret: int) -> tuple[int, int]:
    mf, sessions, ret = _parse_with_sessions(name, data, ret, "plain")
    if mf is None:
        return 0, ret
    g = mf.graphs[0]
    ins, outs, dyn = _describe(mf, g)
    with LOCK:
        ctx = S.current_context()
        if ctx is None:
            return 0, set_err(S.E_CTX_NULL, f"{name}: no current context in this thread")
        m = Model(new_model_id(), "model", g, ctx.device, ctx.id, dyn, ins, outs, session=sessions[0])
        WORLD.models[m.id] = m
        return m.id, 0


def _load_bundle(name: str, data: bytes | None, ret: int) -> tuple[int, int]:
    mf, sessions, ret = _parse_with_sessions(name, data, ret, "bundle")
    if mf is None:
        return 0, ret
    with LOCK:
        ctx = S.current_context()
        if ctx is None:
            return 0, set_err(S.E_CTX_NULL, f"{name}: no current context in this thread")
        dev = ctx.device
        vars_: list[Var] = []
        # Variables the init graph writes whole are not zero-filled first (it would be a second
        # pass over every byte); the others start at zero.
        init_writes = bool(mf.initial_values)
        for v in mf.variables:
            got = device_alloc(dev, max(v.nbytes(), 1), fill=None if init_writes else 0)
            if got is None:
                for done in vars_:
                    device_release(dev, done.ptr, done.accounted)
                return 0, set_err(S.E_ALLOC, f"{name}: no device memory for variable {v.name!r} ({v.nbytes()} bytes)")
            view, ptr, rounded = got
            vars_.append(Var(v, view, ptr, rounded))
        b = Bundle(new_bundle_id(), dev, [], vars_, list(mf.initial_values))
        for i, g in enumerate(mf.graphs):
            ins, outs, dyn = _describe(mf, g)
            m = Model(new_model_id(), g.role, g, dev, ctx.id, dyn, ins, outs, session=sessions.get(i), bundle=b)
            WORLD.models[m.id] = m
            b.model_ids.append(m.id)
        WORLD.bundles[b.id] = b
        return b.id, 0


@api("acl.mdl.load_from_file", "t1", ge_init=True, pre=lambda path: _check_path("load_from_file", path))
def load_from_file(path: str) -> tuple[int, int]:
    return _load_plain("load_from_file", *_read_file("load_from_file", path))


@api("acl.mdl.load_from_mem", "t1", ge_init=True, pre=ints("model", "model_size"))
def load_from_mem(model: int, model_size: int) -> tuple[int, int]:
    return _load_plain("load_from_mem", *_read_mem("load_from_mem", model, model_size))


@api("acl.mdl.bundle_load_from_file", "t1", ge_init=True, pre=lambda path: _check_path("bundle_load_from_file", path))
def bundle_load_from_file(path: str) -> tuple[int, int]:
    return _load_bundle("bundle_load_from_file", *_read_file("bundle_load_from_file", path))


@api("acl.mdl.bundle_load_from_mem", "t1", ge_init=True, pre=ints("model", "model_size"))
def bundle_load_from_mem(model: int, model_size: int) -> tuple[int, int]:
    return _load_bundle("bundle_load_from_mem", *_read_mem("bundle_load_from_mem", model, model_size))


def _check_path(name: str, path: Any) -> None:
    if not isinstance(path, str):
        raise TypeError(f"{name}: path must be str, not {type(path).__name__}")


@api("acl.mdl.unload", "ret", ctx=True, pre=ints("model_id"))
def unload(model_id: int) -> int:
    with LOCK:
        m = WORLD.models.get(model_id)
        if m is None:
            return set_err(S.E_MODEL_ID, f"unload: model id {model_id} is not loaded")
        if m.bundle is not None:
            return set_err(
                S.E_PARAM, f"unload: model {model_id} belongs to bundle {m.bundle.id}; use acl.mdl.bundle_unload"
            )
        del WORLD.models[model_id]
    return 0


def _bundle(name: str, bundle_id: int) -> tuple[Bundle | None, int]:
    b = WORLD.bundles.get(bundle_id)
    if b is None:
        return None, set_err(S.E_BUNDLE_ID, f"{name}: bundle id {bundle_id} is not loaded")
    return b, 0


@api("acl.mdl.bundle_unload", "ret", ctx=True, pre=ints("bundle_id"))
def bundle_unload(bundle_id: int) -> int:
    """Unloads every inner model, then frees the variables."""
    with LOCK:
        b, ret = _bundle("bundle_unload", bundle_id)
        if b is None:
            return ret
        for mid in b.model_ids:
            WORLD.models.pop(mid, None)
        for v in b.vars:
            device_release(b.device, v.ptr, v.accounted)
        del WORLD.bundles[bundle_id]
    return 0


@api("acl.mdl.bundle_get_model_num", "t1", pre=ints("bundle_id"))
def bundle_get_model_num(bundle_id: int) -> tuple[int, int]:
    with LOCK:
        b, ret = _bundle("bundle_get_model_num", bundle_id)
        return (len(b.model_ids), 0) if b is not None else (0, ret)


@api("acl.mdl.bundle_get_model_id", "t1", pre=ints("bundle_id", "index"))
def bundle_get_model_id(bundle_id: int, index: int) -> tuple[int, int]:
    with LOCK:
        b, ret = _bundle("bundle_get_model_id", bundle_id)
        if b is None:
            return 0, ret
        if not 0 <= index < len(b.model_ids):
            return 0, set_err(S.E_PARAM, f"bundle_get_model_id: index {index} >= model num {len(b.model_ids)}")
        return b.model_ids[index], 0


def variables(bundle_id: int) -> dict[str, np.ndarray]:
    """Copies of a loaded bundle's current variable values."""
    with LOCK:
        b = WORLD.bundles.get(bundle_id)
        if b is None:
            raise KeyError(f"bundle {bundle_id} is not loaded")
        vs = list(b.vars)
    return {
        v.spec.name: v.buf[: v.spec.nbytes()].view(v.spec.np_dtype).reshape(v.spec.shape).copy() for v in vs
    }


# ---- descs -------------------------------------------------------------------------------
@api("acl.mdl.create_desc", "handle")
def create_desc() -> int:
    with LOCK:
        d = ModelDesc(new_handle())
        WORLD.model_descs[d.id] = d
        return d.id


def _desc(h: Any) -> ModelDesc | None:
    return WORLD.model_descs.get(h) if isinstance(h, int) else None


@api("acl.mdl.destroy_desc", "ret", pre=ints("model_desc"))
def destroy_desc(model_desc: int) -> int:
    with LOCK:
        if WORLD.model_descs.pop(model_desc, None) is None:
            return set_err(S.E_PARAM, f"destroy_desc: {model_desc:#x} is not a live model desc")
    return 0


@api("acl.mdl.get_desc", "ret", ge_init=True, pre=ints("model_desc", "model_id"))
def get_desc(model_desc: int, model_id: int) -> int:
    """Fills a snapshot that stays valid after the model is unloaded."""
    with LOCK:
        d = _desc(model_desc)
        if d is None:
            return set_err(S.E_PARAM, f"get_desc: {model_desc:#x} is not a live model desc")
        m = WORLD.models.get(model_id)
        if m is None:
            return set_err(S.E_MODEL_ID, f"get_desc: model id {model_id} is not loaded")
        d.model, d.inputs, d.outputs, d.dyn = m, list(m.inputs), list(m.outputs), m.dyn
    return 0


def _getter(name: str, form: str, default: Any, side: str, fn: Callable[[IOInfo], Any]) -> Callable:
    @api(f"acl.mdl.{name}", form, pre=ints("model_desc", "index"))
    def getter(model_desc: int, index: int) -> Any:
        with LOCK:
            d = _desc(model_desc)
            if d is None:
                set_err(S.E_PARAM, f"{name}: {model_desc:#x} is not a live model desc")
                return default
            lst = d.inputs if side == "in" else d.outputs
            if not 0 <= index < len(lst):
                set_err(S.E_PARAM, f"{name}: index {index} out of range ({len(lst)} {side}puts)")
                return default
            return fn(lst[index])

    return getter


def _dims(io: IOInfo, batch: int | None = None) -> tuple[dict, int]:
    dims = [batch if (d == -1 and batch is not None) else d for d in io.dims]
    return {"name": io.name, "dimCount": len(dims), "dims": dims}, 0


get_input_size_by_index = _getter("get_input_size_by_index", "int0", 0, "in", lambda io: io.size)
get_output_size_by_index = _getter("get_output_size_by_index", "int0", 0, "out", lambda io: io.size)
get_input_data_type = _getter("get_input_data_type", "intm1", -1, "in", IOInfo.acl_dtype)
get_output_data_type = _getter("get_output_data_type", "intm1", -1, "out", IOInfo.acl_dtype)
get_input_format = _getter("get_input_format", "intm1", -1, "in", lambda io: ACL_FORMAT_ND)
get_output_format = _getter("get_output_format", "intm1", -1, "out", lambda io: ACL_FORMAT_ND)
get_input_name_by_index = _getter("get_input_name_by_index", "str", "", "in", lambda io: io.name)
get_output_name_by_index = _getter("get_output_name_by_index", "str", "", "out", lambda io: io.name)
get_input_dims = _getter("get_input_dims", "dims", ({}, S.E_PARAM), "in", _dims)
get_input_dims_v2 = _getter("get_input_dims_v2", "dims", ({}, S.E_PARAM), "in", _dims)


@api("acl.mdl.get_output_dims", "dims", pre=ints("model_desc", "index"))
def get_output_dims(model_desc: int, index: int) -> tuple[dict, int]:
    """Output dims; a dynamic model reports those of its largest gear ("the maximum profile", CANN docs)."""
    with LOCK:
        d = _desc(model_desc)
        if d is None or not 0 <= index < len(d.outputs):
            return {}, set_err(S.E_PARAM, f"get_output_dims: bad desc {model_desc:#x} or index {index}")
        io = d.outputs[index]
        dims = d.dyn.max_output_dims(index) if d.dyn is not None else list(io.dims)
        return {"name": io.name, "dimCount": len(dims), "dims": dims}, 0


@api("acl.mdl.get_cur_output_dims", "dims", pre=ints("model_desc", "index"))
def get_cur_output_dims(model_desc: int, index: int) -> tuple[dict, int]:
    """Output dims at the gear last set (set_dynamic_*) or executed; before any, the largest (model.cpp:1978)."""
    with LOCK:
        d = _desc(model_desc)
        if d is None or not 0 <= index < len(d.outputs):
            return {}, set_err(S.E_PARAM, f"get_cur_output_dims: bad desc {model_desc:#x} or index {index}")
        io = d.outputs[index]
        if d.dyn is None:
            dims = list(io.dims)
        elif d.model is not None and d.model.last_gear is not None:
            dims = list(d.dyn.output_shapes(d.model.last_gear)[index])
        else:
            dims = d.dyn.max_output_dims(index)
        return {"name": io.name, "dimCount": len(dims), "dims": dims}, 0


def _num(name: str, side: str) -> Callable:
    @api(f"acl.mdl.{name}", "int0", pre=ints("model_desc"))
    def num(model_desc: int) -> int:
        with LOCK:
            d = _desc(model_desc)
            if d is None:
                set_err(S.E_PARAM, f"{name}: {model_desc:#x} is not a live model desc")
                return 0
            return len(d.inputs if side == "in" else d.outputs)

    return num


get_num_inputs = _num("get_num_inputs", "in")
get_num_outputs = _num("get_num_outputs", "out")


def _index_by_name(name: str, side: str) -> Callable:
    @api(f"acl.mdl.{name}", "t1")
    def by_name(model_desc: int, tensor_name: str) -> tuple[int, int]:
        S.check_int(("model_desc", model_desc))
        if not isinstance(tensor_name, str):
            raise TypeError(f"{name}: name must be str")
        with LOCK:
            d = _desc(model_desc)
            if d is None:
                return 0, set_err(S.E_PARAM, f"{name}: {model_desc:#x} is not a live model desc")
            for i, io in enumerate(d.inputs if side == "in" else d.outputs):
                if io.name == tensor_name:
                    return i, 0
            return 0, set_err(S.E_PARAM, f"{name}: no {side}put named {tensor_name!r}")

    return by_name


get_input_index_by_name = _index_by_name("get_input_index_by_name", "in")
get_output_index_by_name = _index_by_name("get_output_index_by_name", "out")


def _kind(d: ModelDesc, kind: str) -> Dynamic | None:
    return d.dyn if d.dyn is not None and d.dyn.kind == kind else None


@api("acl.mdl.get_dynamic_batch", "dims", pre=ints("model_desc"))
def get_dynamic_batch(model_desc: int) -> tuple[dict, int]:
    with LOCK:
        d = _desc(model_desc)
        if d is None:
            return {}, set_err(S.E_PARAM, f"get_dynamic_batch: {model_desc:#x} is not a live model desc")
        dyn = _kind(d, "batch")
        batches = [g[0] for g in dyn.gears] if dyn is not None else []
        return {"batchCount": len(batches), "batch": batches}, 0


@api("acl.mdl.get_dynamic_hw", "dims", pre=ints("model_desc", "index"))
def get_dynamic_hw(model_desc: int, index: int) -> tuple[dict, int]:
    """``{"hwCount": n, "hw": [[h, w], ...]}``; ``index`` is reserved (-1) and ignored (model_om2.cpp:1817)."""
    with LOCK:
        d = _desc(model_desc)
        if d is None:
            return {}, set_err(S.E_PARAM, f"get_dynamic_hw: {model_desc:#x} is not a live model desc")
        dyn = _kind(d, "hw")
        hw = [list(g) for g in dyn.gears] if dyn is not None else []
        return {"hwCount": len(hw), "hw": hw}, 0


@api("acl.mdl.get_input_dynamic_gear_count", "t1", pre=ints("model_desc", "index"))
def get_input_dynamic_gear_count(model_desc: int, index: int) -> tuple[int, int]:
    """Gears of a ``--dynamic_dims`` model (0 for others); ``index`` must be -1 (model_om2.cpp:1851)."""
    with LOCK:
        d = _desc(model_desc)
        if d is None:
            return 0, set_err(S.E_PARAM, f"get_input_dynamic_gear_count: {model_desc:#x} is not a live model desc")
        if index != -1:
            return 0, set_err(S.E_PARAM, f"get_input_dynamic_gear_count: index must be -1, not {index}")
        dyn = _kind(d, "dims")
        return (len(dyn.gears) if dyn is not None else 0), 0


@api("acl.mdl.get_input_dynamic_dims", "dims", pre=ints("model_desc", "index", "gear_count"))
def get_input_dynamic_dims(model_desc: int, index: int, gear_count: int) -> tuple[list, int]:
    """One aclmdlIODims dict per gear: all input dims with the gear's values in the -1 places (model_om2.cpp:1876)."""
    with LOCK:
        d = _desc(model_desc)
        if d is None:
            return [], set_err(S.E_PARAM, f"get_input_dynamic_dims: {model_desc:#x} is not a live model desc")
        if index != -1:
            return [], set_err(S.E_PARAM, f"get_input_dynamic_dims: index must be -1, not {index}")
        dyn = _kind(d, "dims")
        n = len(dyn.gears) if dyn is not None else 0
        if gear_count < n:
            return [], set_err(
                S.E_PARAM, f"get_input_dynamic_dims: gear_count {gear_count} is less than the model's {n} gears"
            )
        out = []
        for g in range(n):
            dims = dyn.all_dims(g)  # type: ignore[union-attr]
            out.append({"name": "", "dimCount": len(dims), "dims": dims})
        return out, 0


def _set_gear(
    name: str,
    kind: str,
    model_id: int,
    dataset: int,
    index: int,
    values: tuple[int, ...] | None,
    *,
    dims: list[int] | None = None,
) -> int:
    """Common part of set_dynamic_batch_size / set_dynamic_hw_size / set_input_dynamic_dims (LOCK held)."""
    m = WORLD.models.get(model_id)
    if m is None:
        return set_err(S.E_MODEL_ID, f"{name}: model id {model_id} is not loaded")
    ds = get_ds(dataset)
    if ds is None:
        return set_err(S.E_PARAM, f"{name}: {dataset:#x} is not a live dataset")
    if (values is not None and any(v <= 0 for v in values)) or (dims is not None and not dims):
        return set_err(S.E_PARAM, f"{name}: values must be > 0 (model.cpp:1845, :1886, :1925)")
    db = get_db(ds.buffers[index]) if 0 <= index < len(ds.buffers) else None
    if db is None or db.addr == 0:
        return set_err(S.E_PARAM, f"{name}: the dataset has no buffer (or a NULL one) at index {index}")
    dyn = m.dyn
    if dyn is None:
        return set_err(S.E_NOT_DYNAMIC, f"{name}: model {model_id} has no dynamic shapes")
    want = len(m.inputs) - 1
    if index != want:
        return set_err(S.E_PARAM, f"{name}: index {index} is not the {ACL_DYNAMIC_TENSOR_NAME} input ({want})")
    if dyn.kind != kind:
        return set_err(S.E_BATCH, f"{name}: model {model_id} has dynamic {dyn.kind} gears, not {kind}")
    if dims is not None:
        values, why = dyn.dims_values(dims)
        if values is None:
            return set_err(S.E_DYN_LENGTH, f"{name}: {why}")
    assert values is not None
    if db.size < 4 * len(values):
        return set_err(
            S.E_DYN_LENGTH,
            f"{name}: the {ACL_DYNAMIC_TENSOR_NAME} buffer has {db.size} bytes, needs >= {4 * len(values)}",
        )
    g = dyn.find(values)
    if g is None:
        return set_err(
            S.E_BATCH, f"{name}: {list(values)} is not one of the model's gears {[list(x) for x in dyn.gears]}"
        )
    if device_range(db.addr, db.size) is None:
        return set_err(S.E_PARAM, f"{name}: buffer {index} {describe(db.addr)} is not device memory")
    write_values(db.addr, db.size, values)
    m.last_gear = g
    return 0


@api("acl.mdl.set_dynamic_batch_size", "ret", pre=ints("model_id", "dataset", "index", "batch_size"))
def set_dynamic_batch_size(model_id: int, dataset: int, index: int, batch_size: int) -> int:
    """Writes the batch into the ``ascend_mbatch_shape_data`` input's device buffer (ge_executor.cc:375)."""
    with LOCK:
        return _set_gear("set_dynamic_batch_size", "batch", model_id, dataset, index, (batch_size,))


@api("acl.mdl.set_dynamic_hw_size", "ret", pre=ints("model_id", "dataset", "index", "height", "width"))
def set_dynamic_hw_size(model_id: int, dataset: int, index: int, height: int, width: int) -> int:
    """Writes height then width into the ``ascend_mbatch_shape_data`` buffer (ge_executor.cc:434)."""
    with LOCK:
        return _set_gear("set_dynamic_hw_size", "hw", model_id, dataset, index, (height, width))


@api("acl.mdl.set_input_dynamic_dims", "ret")
def set_input_dynamic_dims(model_id: int, dataset: int, index: int, dims: dict) -> int:
    """``dims = {"dimCount": n, "name": "", "dims": [...]}``: all input dims of one gear (ge_executor.cc:515, :585)."""
    S.check_int(("model_id", model_id), ("dataset", dataset), ("index", index))
    if (
        not isinstance(dims, dict)
        or not isinstance(dims.get("dims"), list)
        or not isinstance(dims.get("dimCount"), int)
    ):
        raise TypeError("set_input_dynamic_dims: dims must be a dict with an int 'dimCount' and a list 'dims'")
    values = dims["dims"][: dims["dimCount"]]
    S.check_int(*((f"dims[{k}]", v) for k, v in enumerate(values)))
    with LOCK:
        return _set_gear(
            "set_input_dynamic_dims", "dims", model_id, dataset, index, None, dims=[int(v) for v in values]
        )


# ---- execute -----------------------------------------------------------------------------
Work = Callable[[], int]
EXEC_CACHE_SIZE = 64  # cached (input, output) dataset pairs per model


@dataclass(eq=False)
class _ExecCache:
    """What an infer execute of one (model, input dataset, output dataset) validated and built: the checked
    bindings and onnxruntime's IOBinding over them.  Valid exactly while neither dataset changed (a buffer added,
    re-pointed or destroyed, a desc set: ``Dataset.gen``), no device memory was freed (a checked address may have
    died: ``WORLD.device_frees``) and the dynamic gear the input's shape buffer selects is the same; then an
    execute re-checks only the context and that gear, as every check above would pass again unchanged."""

    ids: Any
    ods: Any
    ids_gen: int
    ods_gen: int
    frees: int
    gear: int | None
    mb: Any  # the ascend_mbatch_shape_data DataBuffer (dynamic models)
    keep: list[Any]
    bind_in: list[Any]
    bind_out: list[Any]
    values: tuple[int, ...] | None = None  # the gear's values in that buffer when checked (dynamic models)
    view: Any = None  # a ctypes array over those values in the buffer's memory: read on every execute
    io: Any = None  # the IOBinding, kept once a run wrote every output into its bound buffer
    works: dict[str, Work] = field(default_factory=dict)  # the work over ``io`` by API name, made once
    busy: Any = field(default_factory=threading.Lock)

    def valid(self, ids: Any, ods: Any) -> bool:
        return (self.ids is ids and self.ods is ods and self.ids_gen == ids.gen and self.ods_gen == ods.gen
                and self.frees == WORLD.device_frees)


def _prepare(name: str, model_id: int, in_ds: int, out_ds: int) -> tuple[int, Work | None]:
    """Validate an execute (LOCK held, current context checked); return (ret, work). Work runs outside the lock."""
    m = WORLD.models.get(model_id)
    if m is None:
        return set_err(S.E_MODEL_ID, f"{name}: model id {model_id} is not loaded (or was unloaded)"), None
    cur = S.current_context()
    if cur is not None and cur.id != m.ctx:  # api_impl.cc:4419 (ModelExecute), :4441 (ModelExecuteAsync)
        return set_err(
            S.E_MODEL_CTX,
            f"{name}: model {model_id} was loaded in context {m.ctx:#x}, but the current context is {cur.id:#x}",
        ), None
    ids, ods = get_ds(in_ds), get_ds(out_ds)
    if ids is None:
        return set_err(S.E_PARAM, f"{name}: input dataset {in_ds!r} is not a live dataset"), None
    if ods is None:
        return set_err(S.E_PARAM, f"{name}: output dataset {out_ds!r} is not a live dataset"), None
    if m.exec_cache:  # an infer execute of these datasets validated before, nothing changed since: its work
        hit = _cached(name, m, ids, ods)
        if hit is not None:
            return hit
    if len(ids.buffers) != len(m.inputs):
        return set_err(
            S.E_PARAM,
            f"{name}: input dataset has {len(ids.buffers)} buffers, model {model_id} ({m.role}) has {len(m.inputs)} "
            "inputs",
        ), None
    if len(ods.buffers) != len(m.outputs):
        return set_err(
            S.E_PARAM,
            f"{name}: output dataset has {len(ods.buffers)} buffers, model {model_id} ({m.role}) has {len(m.outputs)} "
            "outputs",
        ), None
    in_dbs = [get_db(h) for h in ids.buffers]
    out_dbs = [get_db(h) for h in ods.buffers]
    for side, dbs in (("input", in_dbs), ("output", out_dbs)):
        for i, db in enumerate(dbs):
            if db is None:
                return set_err(S.E_PARAM, f"{name}: {side} buffer {i} was destroyed"), None
    if m.role == "update":
        return _prepare_update(name, m, ids, in_dbs)
    if m.role == "init":
        return 0, _init_work(m)
    return _prepare_infer(name, m, ids, ods, in_dbs, out_dbs)


def _gear_of(name: str, m: Model, mb: Any) -> tuple[int | None, int]:
    """The gear the ascend_mbatch_shape_data buffer selects: (index, 0) or (None, code)."""
    dyn = m.dyn
    assert dyn is not None
    values = read_values(mb.addr, mb.size, dyn.width)
    if values is None:
        return None, set_err(
            S.E_PARAM, f"{name}: {ACL_DYNAMIC_TENSOR_NAME} buffer has {mb.size} bytes, needs >= {4 * dyn.width}"
        )
    g = dyn.find(values)
    if g is None:
        how = {"batch": "set_dynamic_batch_size", "hw": "set_dynamic_hw_size", "dims": "set_input_dynamic_dims"}[
            dyn.kind
        ]
        return None, set_err(
            S.E_BATCH,
            f"{name}: dynamic {dyn.kind} not set or invalid ({list(values)}); call {how} with one of "
            f"{[list(x) for x in dyn.gears]}",
        )
    return g, 0


def _cached(name: str, m: Model, ids: Any, ods: Any) -> tuple[int, Work | None] | None:
    """The cached work of this (model, datasets) if still valid (LOCK held), else None."""
    key = (ids.id, ods.id)
    c = m.exec_cache.get(key)
    if c is None:
        return None
    if not (c.ids is ids and c.ods is ods and c.ids_gen == ids.gen and c.ods_gen == ods.gen
            and c.frees == WORLD.device_frees):
        del m.exec_cache[key]
        return None
    if c.view is not None and tuple(c.view) != c.values:  # the shape buffer holds other values: which gear, if any
        gear, ret = _gear_of(name, m, c.mb)
        if gear is None:
            return ret, None
        if gear != c.gear:
            return None
    if c.io is None:  # no binding kept yet (the first run checks that onnxruntime writes in place)
        return 0, _infer_work(name, m, c, c.bind_in, c.bind_out, c.keep, c.gear)
    work = c.works.get(name)
    if work is None:
        work = c.works[name] = _bound_work(name, m, c)
    return 0, work


def _bound_work(name: str, m: Model, c: _ExecCache) -> Work:
    """The work of a cached execute whose binding is kept (``c.io``): one onnxruntime run."""
    run, io, gear, mid = m.session.run_with_iobinding, c.io, c.gear, m.id
    acquire, release = c.busy.acquire, c.busy.release

    def work() -> int:
        if not acquire(False):  # another thread runs this binding: one of its own
            return _infer_work(name, m, c, c.bind_in, c.bind_out, c.keep, gear)()
        try:
            run(io)
        except Exception as e:  # onnxruntime error types vary
            return set_err(S.E_EXEC, f"{name}: model {mid} failed in onnxruntime: {e}")
        finally:
            release()
        if gear is not None:
            m.last_gear = gear
        bump("executions", 1, mid)
        return 0

    return work


def _infer_work(name: str, m: Model, c: _ExecCache | None, bind_in: list, bind_out: list, keep: list,
                gear: int | None) -> Work:
    sess = m.session
    run = sess.run_with_iobinding
    mid = m.id

    def work() -> int:
        _ = keep
        mine = c is not None and c.busy.acquire(blocking=False)  # the cached binding, unless another thread has it
        try:
            io = c.io if mine and c is not None else None
            if io is not None:
                run(io)
            else:
                io = sess.io_binding()
                for n, dt, shape, ptr in bind_in:
                    io.bind_input(n, "cpu", 0, dt.type, shape, ptr)
                for n, dt, shape, ptr in bind_out:
                    io.bind_output(n, "cpu", 0, dt.type, shape, ptr)
                run(io)
                in_place = True
                for (_n, dt, _shape, ptr), ov in zip(bind_out, io.get_outputs()):
                    if ov.data_ptr() != ptr:  # onnxruntime allocated its own output: copy it into place
                        in_place = False
                        arr = np.ascontiguousarray(ov.numpy(), dtype=dt)
                        ctypes.memmove(ptr, arr.ctypes.data, arr.nbytes)
                if mine and c is not None and in_place:  # only a binding that writes in place is kept
                    c.io = io
        except Exception as e:  # onnxruntime error types vary
            return set_err(S.E_EXEC, f"{name}: model {mid} failed in onnxruntime: {e}")
        finally:
            if mine and c is not None:
                c.busy.release()
        if gear is not None:
            m.last_gear = gear
        bump("executions", 1, mid)
        return 0

    return work


def _prepare_infer(name: str, m: Model, ids: Any, ods: Any, in_dbs: list,
                   out_dbs: list) -> tuple[int, Work | None]:
    keep: list[Any] = []
    for i, db in enumerate(in_dbs):
        blk = device_range(db.addr, db.size) if db.addr else None
        if blk is None:
            return set_err(
                S.E_PARAM,
                f"{name}: input {i} ({m.inputs[i].name}) buffer {describe(db.addr) if db.addr else 'NULL'} +{db.size} "
                "is not device memory",
            ), None
        keep.append(blk.owner())
    specs_in, specs_out = m.graph.inputs, m.graph.outputs
    gear: int | None = None
    if m.dyn is not None:
        gear, ret = _gear_of(name, m, in_dbs[-1])
        if gear is None:
            return ret, None
        shapes_in, shapes_out = m.dyn.input_shapes(gear), m.dyn.output_shapes(gear)
    else:
        shapes_in, shapes_out = [tuple(t.shape) for t in specs_in], [tuple(t.shape) for t in specs_out]
    for i, (spec, shape) in enumerate(zip(specs_in, shapes_in)):
        need = spec.nbytes_of(shape)
        if in_dbs[i].size < need:
            return set_err(
                S.E_PARAM, f"{name}: input {i} ({spec.name}) buffer has {in_dbs[i].size} bytes, needs {need}"
            ), None
        td = get_td(ids.descs[i]) if ids.descs[i] else None
        if td is not None and td.dims != list(shape):
            return set_err(
                S.E_PARAM,
                f"{name}: input {i} ({spec.name}) tensor desc dims {td.dims} differ from the model's {list(shape)}",
            ), None
    to_alloc: list[int] = []
    for i, (spec, shape) in enumerate(zip(specs_out, shapes_out)):
        db = out_dbs[i]
        need = spec.nbytes_of(shape)
        if db.addr == 0 and db.size == 0:
            to_alloc.append(i)
            continue
        blk = device_range(db.addr, db.size) if db.addr else None
        if blk is None:
            return set_err(
                S.E_PARAM,
                f"{name}: output {i} ({spec.name}) buffer {describe(db.addr)} +{db.size} is not device memory",
            ), None
        if db.size < need:
            return set_err(
                S.E_PARAM, f"{name}: output {i} ({spec.name}) buffer has {db.size} bytes, needs {need}"
            ), None
        keep.append(blk.owner())
    made: list[Block] = []
    for i in to_alloc:
        need = specs_out[i].nbytes_of(shapes_out[i])
        blk = new_device_block(m.device, max(need, 1))
        if blk is None:
            for b in made:
                free_device_block(b)
            return set_err(S.E_ALLOC, f"{name}: no device memory for output {i} ({need} bytes)"), None
        made.append(blk)
        keep.append(blk.owner())
        out_dbs[i].addr, out_dbs[i].size = blk.ptr, need
    bind_in = [
        (s.name, s.np_dtype, list(shape), in_dbs[i].addr) for i, (s, shape) in enumerate(zip(specs_in, shapes_in))
    ]
    if m.bundle is not None:
        for v in m.bundle.vars:
            bind_in.append((v.spec.name, v.spec.np_dtype, list(v.spec.shape), v.ptr))
            keep.append(v.buf)
    bind_out = [
        (s.name, s.np_dtype, list(shape), out_dbs[i].addr) for i, (s, shape) in enumerate(zip(specs_out, shapes_out))
    ]
    for key in [k for k, e in m.exec_cache.items() if not e.valid(e.ids, e.ods) or get_ds(k[0]) is not e.ids
                or get_ds(k[1]) is not e.ods]:
        del m.exec_cache[key]  # stale (a dataset destroyed or changed): keep nothing of it alive
    if len(m.exec_cache) >= EXEC_CACHE_SIZE:
        m.exec_cache.pop(next(iter(m.exec_cache)))
    mb = in_dbs[-1] if m.dyn is not None else None
    c = m.exec_cache[(ids.id, ods.id)] = _ExecCache(
        ids, ods, ids.gen, ods.gen, WORLD.device_frees, gear, mb, keep, bind_in, bind_out)
    if mb is not None and m.dyn is not None and gear is not None:  # checked above: live memory, big enough
        c.values, c.view = m.dyn.gears[gear], values_view(mb.addr, mb.size, m.dyn.width)
    return 0, _infer_work(name, m, c, bind_in, bind_out, keep, gear)


def _init_work(m: Model) -> Work:
    b = m.bundle
    assert b is not None
    pairs = list(zip(b.vars, b.initial_values))

    def work() -> int:
        for v, val in pairs:
            v.buf[: len(val)] = np.frombuffer(val, dtype=np.uint8)
        bump("executions", 1, m.id)
        return 0

    return work


def _prepare_update(name: str, m: Model, ids: Any, in_dbs: list) -> tuple[int, Work | None]:
    """Validate the update graph's inputs: an empty one (dims [0]) needs a live device address, a
    non-empty one the variable's desc and a buffer covering its bytes.

    Only what may have changed is validated again: the inputs whose desc or buffer changed
    since this dataset last passed (``Dataset.dirty``) and the non-empty ones (they are
    copied; their buffers may move); all of them after any device memory was freed (an
    empty input's address may have died) or on another model.  An unchanged empty input
    thus costs nothing, as on the device, where the graph reads no bytes of it.
    """
    b = m.bundle
    assert b is not None
    todo: list[int] | range
    if ids.checked_for == m.id and ids.checked_frees == WORLD.device_frees:
        todo = sorted(ids.dirty | ids.nonempty)
    else:
        todo = range(len(b.vars))
    ids.checked_for = 0  # until this validation passes
    nonempty = set(ids.nonempty) if isinstance(todo, list) else set()
    copies: list[tuple[Var, int, int, Any]] = []
    for i in todo:
        v, db = b.vars[i], in_dbs[i]
        td = get_td(ids.descs[i]) if ids.descs[i] else None
        if td is None:
            return set_err(
                S.E_PARAM,
                f"{name}: update input {i} ({v.spec.name}_var_data) has no tensor desc; use dims [0] for unchanged "
                "weights",
            ), None
        if td.dims and all(d >= 0 for d in td.dims) and 0 in td.dims:
            if (device_range(db.addr, 1) if db.addr else None) is None:
                return set_err(
                    S.E_PARAM,
                    f"{name}: update input {i} ({v.spec.name}) is empty but its buffer "
                    f"{describe(db.addr) if db.addr else 'NULL'} is not a live device address",
                ), None
            nonempty.discard(i)
            continue
        if td.dims != list(v.spec.shape):
            return set_err(
                S.E_SHAPE,
                f"{name}: update input {i} ({v.spec.name}) desc dims {td.dims} != variable shape {list(v.spec.shape)}",
            ), None
        if NUMPY_TO_ACL.get(v.spec.np_dtype) != td.dtype:
            return set_err(
                S.E_DTYPE,
                f"{name}: update input {i} ({v.spec.name}) desc dtype {td.dtype} != variable dtype {v.spec.dtype}",
            ), None
        n = v.spec.nbytes()
        blk = device_range(db.addr, n) if db.addr else None
        if db.size < n or blk is None:
            return set_err(
                S.E_SHAPE,
                f"{name}: update input {i} ({v.spec.name}) buffer {describe(db.addr) if db.addr else 'NULL'} size "
                f"{db.size} does not cover the variable's {n} bytes of device memory",
            ), None
        nonempty.add(i)
        copies.append((v, db.addr, n, blk.owner()))
    ids.nonempty, ids.checked_for, ids.checked_frees = nonempty, m.id, WORLD.device_frees
    ids.dirty.clear()

    def work() -> int:
        # All or nothing, even under a signal: every input was validated above, and Python
        # signal handlers (KeyboardInterrupt, sys.exit in a SIGTERM handler) are held back
        # until the last variable is written, as a C call of the real runtime would be.
        if len(copies) == 1:  # one C call: nothing can run in between
            v, src, n, _keep = copies[0]
            ctypes.memmove(v.ptr, src, n)
        elif copies:
            with S.signals_deferred():
                for v, src, n, _keep in copies:
                    ctypes.memmove(v.ptr, src, n)
        bump("update_bytes_applied", sum(n for _, _, n, _ in copies))
        bump("executions", 1, m.id)
        return 0

    return 0, work


@api("acl.mdl.execute", "ret", ge_init=True, ctx=True, pre=ints("model_id", "input", "output"))
def execute(model_id: int, input: int, output: int) -> int:
    with LOCK:
        ret, work = _prepare("execute", model_id, input, output)
    if work is None:
        return ret
    return work()


@api("acl.mdl.execute_async", "ret", ge_init=True, ctx=True, pre=ints("model_id", "input", "output", "stream"))
def execute_async(model_id: int, input: int, output: int, stream: int) -> int:
    """Validated now; runs when the stream is waited for (0: the context's default stream).

    Another context's stream -> 107003.
    """
    from ._rt import check_stream, enqueue

    with LOCK:
        ret = check_stream("execute_async", stream)
        if ret:
            return ret
        ret, work = _prepare("execute_async", model_id, input, output)
        if work is None:
            return ret
        return enqueue(stream, work)
