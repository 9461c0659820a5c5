"""Open Inference Protocol (KServe v2) pieces shared by the REST and gRPC front ends.

Datatype names, the model's description in protocol terms, and turning a decoded
request (name, datatype, shape, data) into numpy arrays that fit the model.  Every
check that can be made from the request's *header* (names, datatypes, shapes, byte
counts) is made before its tensor data is converted, so a wrong request is refused
before anything of its declared size is allocated.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DATATYPES", "ServeError", "ModelSpec", "TensorSpec", "datatype_of", "dtype_of"]

#: OIP datatype name -> numpy dtype (BYTES and BF16 have no numpy equivalent the bundles use).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {v: k for k, v in DATATYPES.items()}

# HTTP status -> gRPC status code name (grpc.StatusCode member), as Triton maps them.
_GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
         405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 503: "UNAVAILABLE",
         500: "INTERNAL", 501: "UNIMPLEMENTED"}


class ServeError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, ``grpc_code`` the gRPC one."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def grpc_code(self) -> str:
        return _GRPC.get(self.status, "UNKNOWN")


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype name of a numpy dtype."""
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def dtype_of(datatype: str) -> np.dtype:
    return DATATYPES[datatype]


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output in protocol terms (shape[0] == -1 marks the dynamic batch)."""

    name: str
    datatype: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1


@dataclass(frozen=True)
class ModelSpec:
    """What the protocol needs to know about the served bundle."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_sizes: tuple[int, ...]
    version: str = "1"

    @classmethod
    def from_model(cls, name: str, model: Any) -> ModelSpec:
        def spec(t: Any) -> TensorSpec:
            return TensorSpec(t.name, datatype_of(t.dtype), np.dtype(t.dtype), tuple(int(d) for d in t.shape))

        return cls(name, tuple(spec(t) for t in model.inputs), tuple(spec(t) for t in model.outputs),
                   tuple(int(b) for b in model.batch_sizes))

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes) if self.batch_sizes else 0

    @property
    def can_batch(self) -> bool:
        """Requests can be stacked along dim 0: dynamic batch sizes and every tensor batched."""
        return bool(self.batch_sizes) and all(t.batched for t in self.inputs + self.outputs)

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise ServeError(400, f"unknown input {name!r}; the model's inputs are {[t.name for t in self.inputs]}")

    def metadata(self) -> dict[str, Any]:
        """The model metadata response (``GET /v2/models/{name}``)."""
        return {
            "name": self.name, "versions": [self.version], "platform": "acl_bundle",
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in self.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in self.outputs],
        }

    def config(self, max_queue_delay_us: int, dynamic_batching: bool) -> dict[str, Any]:
        """A Triton-style model configuration (``GET /v2/models/{name}/config``); dims exclude the batch."""
        def dims(t: TensorSpec) -> list[int]:
            return list(t.shape[1:] if self.batch_sizes and t.batched else t.shape)

        cfg: dict[str, Any] = {
            "name": self.name, "platform": "acl_bundle", "backend": "acl_bundle",
            "max_batch_size": self.max_batch,
            "input": [{"name": t.name, "data_type": "TYPE_" + ("STRING" if t.datatype == "BYTES" else t.datatype),
                       "dims": dims(t)} for t in self.inputs],
            "output": [{"name": t.name, "data_type": "TYPE_" + t.datatype, "dims": dims(t)} for t in self.outputs],
        }
        if dynamic_batching and self.can_batch:
            cfg["dynamic_batching"] = {"preferred_batch_size": list(self.batch_sizes),
                                       "max_queue_delay_microseconds": int(max_queue_delay_us)}
        return cfg

    def check_version(self, version: str | None) -> None:
        if version not in (None, "", self.version):
            raise ServeError(
                404, f"model {self.name!r} has no version {version!r}; its versions are [{self.version!r}]"
            )


@dataclass
class InputTensor:
    """One input as the request declares it; ``data`` is a JSON list, raw bytes, or a typed-contents list."""

    name: str
    datatype: Any
    shape: Any
    data: Any
    raw: bool  # data is the tensor's raw little-endian bytes


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ServeError(400, f"{what}: 'shape' must be a list of integers, got {value!r}"[:300])
    if any(d < 0 for d in value):
        raise ServeError(400, f"{what}: 'shape' must not have negative dims, got {list(value)}")
    return tuple(int(d) for d in value)


def decode_inputs(spec: ModelSpec, tensors: Sequence[InputTensor]) -> tuple[list[np.ndarray], int]:
    """Check the request's inputs against the model and convert them; return (arrays in model order, rows).

    ``rows`` is the request's batch (dim 0 of the batched inputs), 0 for a static model.
    """
    given: dict[str, InputTensor] = {}
    for t in tensors:
        if not isinstance(t.name, str):
            raise ServeError(400, f"input 'name' must be a string, got {t.name!r}"[:200])
        if t.name in given:
            raise ServeError(400, f"input {t.name!r} is given twice")
        given[t.name] = t
    names = [t.name for t in spec.inputs]
    unknown = [n for n in given if n not in names]
    missing = [n for n in names if n not in given]
    if unknown or missing:
        raise ServeError(400, f"inputs do not match the model: unknown {unknown}, missing {missing}; "
                              f"the model's inputs are {names}")
    shapes: list[tuple[int, ...]] = []
    rows = 0
    for ts in spec.inputs:
        t = given[ts.name]
        what = f"input {ts.name!r}"
        if t.datatype != ts.datatype:
            if not isinstance(t.datatype, str) or t.datatype not in DATATYPES and t.datatype not in ("BYTES", "BF16"):
                raise ServeError(400, f"{what}: unknown datatype {t.datatype!r}; expected {ts.datatype!r}"[:300])
            raise ServeError(400, f"{what}: datatype {t.datatype}, the model expects {ts.datatype} (no conversions)")
        shape = _shape(t.shape, what)
        if ts.batched and spec.batch_sizes:
            if len(shape) != len(ts.shape) or shape[1:] != ts.shape[1:] or not 1 <= shape[0] <= spec.max_batch:
                raise ServeError(400, f"{what}: shape {list(shape)}, the model expects [N, "
                                      f"{', '.join(map(str, ts.shape[1:]))}] with 1 <= N <= {spec.max_batch} "
                                      f"(batch sizes {list(spec.batch_sizes)})")
            if rows and shape[0] != rows:
                raise ServeError(400, f"{what}: batch {shape[0]} differs from the other inputs' batch {rows}")
            rows = shape[0]
        elif shape != ts.shape:
            raise ServeError(400, f"{what}: shape {list(shape)}, the model expects {list(ts.shape)}")
        shapes.append(shape)
    arrays = []
    for ts, shape in zip(spec.inputs, shapes):
        arrays.append(_to_array(given[ts.name], ts, shape))
    return arrays, rows


def _to_array(t: InputTensor, ts: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    what = f"input {ts.name!r}"
    count = math.prod(shape)
    if t.raw:
        want = count * ts.dtype.itemsize
        if len(t.data) != want:
            raise ServeError(400, f"{what}: {len(t.data)} bytes of binary data, shape {list(shape)} of {ts.datatype} "
                                  f"needs {want}")
        return np.frombuffer(t.data, dtype=ts.dtype.newbyteorder("<")).astype(ts.dtype, copy=False).reshape(shape)
    data = t.data
    if data is None:
        raise ServeError(400, f"{what}: no 'data' (give it in JSON or as binary data with the "
                              "'binary_data_size' parameter)")
    if not isinstance(data, (list, tuple)):
        data = [data]
    try:
        a = np.array(data)
    except (ValueError, TypeError, RecursionError):
        raise ServeError(400, f"{what}: 'data' is not a regular array of numbers (ragged or mixed nesting)") from None
    if a.size != count:
        raise ServeError(400, f"{what}: {a.size} values in 'data', shape {list(shape)} needs {count}")
    kind = ts.dtype.kind
    if count:
        ok = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(kind, "")
        if a.dtype.kind not in ok:
            raise ServeError(400, f"{what}: 'data' holds {_kind_name(a.dtype)}, {ts.datatype} needs "
                                  f"{'booleans' if kind == 'b' else 'integers' if kind in 'iu' else 'numbers'}")
        if kind in "iu":
            info = np.iinfo(ts.dtype)
            lo, hi = a.min(), a.max()
            if int(lo) < info.min or int(hi) > info.max:
                raise ServeError(400, f"{what}: values in [{lo}, {hi}] do not fit {ts.datatype} "
                                      f"[{info.min}, {info.max}]")
    return a.astype(ts.dtype).reshape(shape)


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floating-point numbers",
            "U": "strings", "S": "strings", "O": "non-numeric values"}.get(dtype.kind, f"values of dtype {dtype}")


def requested_outputs(spec: ModelSpec, names: Sequence[str] | None) -> list[int]:
    """Indexes of the outputs to return (all when ``names`` is None), 400 for an unknown name."""
    if names is None:
        return list(range(len(spec.outputs)))
    known = [t.name for t in spec.outputs]
    out = []
    for n in names:
        if n not in known:
            raise ServeError(400, f"unknown output {n!r}; the model's outputs are {known}")
        out.append(known.index(n))
    return out


def response_parameters(version: int, step: int | None) -> dict[str, int]:
    params = {"weight_version": int(version)}
    if step is not None:
        params["checkpoint_step"] = int(step)
    return params


def check_parameters(params: Any, what: str) -> Mapping[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ServeError(400, f"{what} 'parameters' must be an object, got {type(params).__name__}")
    return params
