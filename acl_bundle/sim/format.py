"""The simulator's model file format (``.om`` files that load on ``acl_bundle.sim`` only).

Layout (all integers little-endian)::

    header   : magic b"ACLBSIM\\x00" (8 B) | u16 major | u16 minor | u32 section_count
    section  : tag (4 B ASCII) | u64 length | u32 crc32(payload) | payload
    sections : "META" once, first (UTF-8 JSON, see ``ModelFile``),
               then "ONNX" once per graph that has one, in graph order,
               then "VARV" once per variable initial value, in variable order.

Never pickle: the metadata is JSON, graphs are ONNX protobuf bytes, values are raw
C-order bytes.  Every length is checked against what remains of the file before it
is used, so a truncated, corrupted or foreign file raises :class:`FormatError`
carrying the ACL error code the simulator returns for it (choices are ours; the
reference lists per-cause load codes as unconfirmed):

* 145006 ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID: empty/truncated file, section
  length past the end, trailing bytes, absurd section count;
* 145000 ACL_ERROR_GE_PARAM_INVALID: not our magic (foreign file), unsupported
  major version;
* 545001 ACL_ERROR_GE_LOAD_MODEL: CRC mismatch, malformed metadata, sections that
  disagree with the metadata.  Metadata is checked for consistency too: dtypes from
  ``DTYPES`` only, integer shapes, graph roles in order with ONNX exactly for
  "model"/"infer", unique static-shape variables (>= 1 in a weight-update bundle, none
  in a plain file or a bundle of plain graphs), initial values iff an init graph, -1
  dims iff one dynamic-shape kind (batch sizes, image sizes or dims gears) is given.

Version 1.1 adds ``dynamic_hw`` / ``dynamic_dims`` (ATC ``--dynamic_image_size`` /
``--dynamic_dims``) with the output shapes of every gear, and bundles of plain graphs
(GE's ``aclgrphBundleBuildModel`` of arbitrary graphs); 1.0 files read unchanged.
Version 1.2 adds ``precision_mode`` (ATC ``--precision_mode``, see :mod:`acl_bundle.sim._precision`);
a file built without one is written as 1.1, byte for byte as before, and computes in float32.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from .._constants import CODES, NUMPY_TO_ACL, SIM_MAGIC
from ..device.precision import PRECISION_MODES

MAGIC = SIM_MAGIC  # b"ACLBSIM\x00"; kept in _constants so the backend rule reads it without the simulator
FORMAT_MAJOR = 1
FORMAT_MINOR = 1
PRECISION_MINOR = 2  # the minor version of a file with a precision mode (1.1 files are written as before)
_HEADER = struct.Struct("<8sHHI")
_SECTION = struct.Struct("<4sQI")
MAX_SECTIONS = 1 << 16
#: numpy dtype names a TensorSpec may carry (the types ACL moves between host and device).
DTYPES = frozenset(d.name for d in NUMPY_TO_ACL)
_ROLE_HAS_ONNX = {"model": True, "infer": True, "init": False, "update": False}
MAX_GEARS = 100  # ATC accepts at most 100 gears of --dynamic_batch_size/_image_size/_dims

ERR_SIZE = CODES["ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID"]  # 145006
ERR_FOREIGN = CODES["ACL_ERROR_GE_PARAM_INVALID"]  # 145000
ERR_CORRUPT = CODES["ACL_ERROR_GE_LOAD_MODEL"]  # 545001


class FormatError(Exception):
    """A model file could not be parsed; ``code`` is the ACL error the loader returns."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output or variable: name, numpy dtype name, shape (-1 = dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def nbytes(self, batch: int | None = None) -> int:
        """Byte size with the dynamic dim (-1) replaced by ``batch``."""
        n = 1
        for d in self.shape:
            if d == -1:
                if batch is None:
                    raise ValueError(f"{self.name} has a dynamic dim; its byte size needs a batch")
                d = batch
            n *= d
        return n * self.np_dtype.itemsize

    def nbytes_of(self, shape: tuple[int, ...]) -> int:
        """Byte size of this tensor at a concrete ``shape``."""
        n = 1
        for d in shape:
            n *= d
        return n * self.np_dtype.itemsize

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        name, dtype, shape = d["name"], d["dtype"], d["shape"]
        if not isinstance(name, str):
            raise ValueError(f"bad name {name!r}")
        if dtype not in DTYPES:  # np.dtype() alone would accept "object", "U8", None...
            raise ValueError(f"unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or any(type(x) is not int or x < -1 for x in shape):
            raise ValueError(f"bad shape {shape!r}")
        return cls(name, dtype, tuple(shape))


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a model file.

    ``role`` is "model" (plain file) or "infer" / "init" / "update" (bundle).
    ``onnx`` holds the ONNX bytes for "model" and "infer"; init and update graphs
    are executed natively by the simulator (Assign semantics) and have ``onnx=b""``.
    ``inputs``/``outputs`` are the *data* inputs/outputs as ACL reports them: for an
    infer graph the variables are extra ONNX inputs named after the variables and are
    not listed here; the dynamic-batch input is not listed either (the runtime adds it).
    """

    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx: bytes = b""


@dataclass
class ModelFile:
    """Everything a simulator model file holds.

    At most one dynamic-shape kind is set, as with ATC: ``batch_sizes`` (dim 0 of every data
    input and output), ``dynamic_hw`` ((height, width) gears for the two -1 dims of the
    image inputs) or ``dynamic_dims`` (one value per -1 dim of all data inputs, in input
    order).  For the last two, ``gear_outputs[g][i]`` is the shape of output ``i`` at gear ``g``.
    """

    kind: str  # "plain" or "bundle"
    graphs: list[GraphSpec]  # bundle order: infer, [init], update; or >= 2 "model" graphs
    variables: list[TensorSpec] = field(default_factory=list)
    initial_values: list[bytes | memoryview] = field(
        default_factory=list
    )  # one per variable when an init graph exists (loads: views into the file)
    batch_sizes: list[int] = field(default_factory=list)  # [] = static shapes
    dynamic_hw: list[tuple[int, int]] = field(default_factory=list)
    dynamic_dims: list[tuple[int, ...]] = field(default_factory=list)
    gear_outputs: list[list[tuple[int, ...]]] = field(default_factory=list)
    precision_mode: str = ""  # ATC --precision_mode the graphs compute in; "" = exact float32 (no mode)

    @property
    def has_init(self) -> bool:
        return any(g.role == "init" for g in self.graphs)

    @property
    def dynamic(self) -> str:
        """"batch", "hw", "dims" or "" (static)."""
        return "batch" if self.batch_sizes else "hw" if self.dynamic_hw else "dims" if self.dynamic_dims else ""

    @property
    def gears(self) -> list[tuple[int, ...]]:
        """The gear values of the dynamic kind: (batch,), (h, w) or the dims values."""
        if self.batch_sizes:
            return [(b,) for b in self.batch_sizes]
        return [tuple(g) for g in (self.dynamic_hw or self.dynamic_dims)]


def dumps(model: ModelFile) -> bytes:
    """Serialise ``model`` to bytes."""
    onnx_graphs = [g for g in model.graphs if g.onnx]
    meta = {
        "kind": model.kind,
        "graphs": [
            {
                "role": g.role,
                "inputs": [t.to_json() for t in g.inputs],
                "outputs": [t.to_json() for t in g.outputs],
                "has_onnx": bool(g.onnx),
            }
            for g in model.graphs
        ],
        "variables": [v.to_json() for v in model.variables],
        "has_initial_values": bool(model.initial_values),
        "batch_sizes": list(model.batch_sizes),
    }
    if model.dynamic_hw or model.dynamic_dims or model.gear_outputs:
        meta["dynamic_hw"] = [list(g) for g in model.dynamic_hw]
        meta["dynamic_dims"] = [list(g) for g in model.dynamic_dims]
        meta["gear_outputs"] = [[list(s) for s in gear] for gear in model.gear_outputs]
    if model.precision_mode:
        meta["precision_mode"] = model.precision_mode
    sections: list[tuple[bytes, bytes | memoryview]] = [(b"META", json.dumps(meta, sort_keys=True).encode())]
    sections += [(b"ONNX", g.onnx) for g in onnx_graphs]
    sections += [(b"VARV", v) for v in model.initial_values]
    minor = PRECISION_MINOR if model.precision_mode else FORMAT_MINOR
    out: list[bytes | memoryview] = [_HEADER.pack(MAGIC, FORMAT_MAJOR, minor, len(sections))]
    for tag, payload in sections:
        out.append(_SECTION.pack(tag, len(payload), zlib.crc32(payload)))
        out.append(payload)
    return b"".join(out)


def loads(data: bytes | memoryview) -> ModelFile:
    """Parse bytes written by :func:`dumps`; raise :class:`FormatError` on anything else."""
    mv = memoryview(data).cast("B")
    if len(mv) < len(MAGIC):
        raise FormatError(ERR_SIZE, f"file is {len(mv)} bytes, smaller than the header")
    if bytes(mv[: len(MAGIC)]) != MAGIC:
        raise FormatError(ERR_FOREIGN, "not a simulator model file (bad magic)")
    if len(mv) < _HEADER.size:
        raise FormatError(ERR_SIZE, "truncated header")
    _, major, _minor, count = _HEADER.unpack_from(mv, 0)
    if major != FORMAT_MAJOR:
        raise FormatError(ERR_FOREIGN, f"unsupported format version {major} (this simulator reads {FORMAT_MAJOR})")
    if count > MAX_SECTIONS:
        raise FormatError(ERR_SIZE, f"absurd section count {count}")
    pos = _HEADER.size
    sections: list[tuple[bytes, memoryview]] = []
    for i in range(count):
        if len(mv) - pos < _SECTION.size:
            raise FormatError(ERR_SIZE, f"truncated at section {i} header")
        tag, length, crc = _SECTION.unpack_from(mv, pos)
        pos += _SECTION.size
        if length > len(mv) - pos:
            raise FormatError(ERR_SIZE, f"section {i} claims {length} bytes, only {len(mv) - pos} remain")
        payload = mv[pos : pos + length]
        pos += length
        if zlib.crc32(payload) != crc:
            raise FormatError(ERR_CORRUPT, f"section {i} ({tag!r}) checksum mismatch")
        sections.append((tag, payload))
    if pos != len(mv):
        raise FormatError(ERR_SIZE, f"{len(mv) - pos} trailing bytes after the last section")
    try:
        return _from_sections(sections)
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise FormatError(ERR_CORRUPT, f"malformed metadata: {e}") from None


def _from_sections(sections: list[tuple[bytes, memoryview]]) -> ModelFile:
    if not sections or sections[0][0] != b"META":
        raise FormatError(ERR_CORRUPT, "first section is not META")
    meta = json.loads(bytes(sections[0][1]).decode())
    rest = sections[1:]
    onnx_payloads = [bytes(p) for t, p in rest if t == b"ONNX"]
    # Views into the file's bytes, not copies: loading then moves only the bytes init really writes.
    var_payloads: list[bytes | memoryview] = [p for t, p in rest if t == b"VARV"]
    if len(onnx_payloads) + len(var_payloads) != len(rest):
        raise FormatError(ERR_CORRUPT, "unknown section tag")
    kind = meta["kind"]
    if kind not in ("plain", "bundle"):
        raise ValueError(f"unknown kind {kind!r}")
    graphs = []
    it = iter(onnx_payloads)
    for g in meta["graphs"]:
        role = g["role"]
        if role not in _ROLE_HAS_ONNX or g["has_onnx"] is not _ROLE_HAS_ONNX[role]:
            raise FormatError(ERR_CORRUPT, f"graph role {role!r} with has_onnx={g['has_onnx']!r}")
        onnx_bytes = next(it, None) if g["has_onnx"] else b""
        if onnx_bytes is None:
            raise FormatError(ERR_CORRUPT, "missing ONNX section")
        graphs.append(
            GraphSpec(
                role=role,
                inputs=tuple(TensorSpec.from_json(t) for t in g["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in g["outputs"]),
                onnx=onnx_bytes,
            )
        )
    if next(it, None) is not None:
        raise FormatError(ERR_CORRUPT, "more ONNX sections than graphs")
    roles = [g.role for g in graphs]
    plain_bundle = kind == "bundle" and len(roles) >= 2 and all(r == "model" for r in roles)
    if kind == "plain" and roles != ["model"]:
        raise ValueError(f"plain file with graphs {roles}")
    if kind == "bundle" and roles not in (["infer", "init", "update"], ["infer", "update"]) and not plain_bundle:
        raise ValueError(f"bundle with graphs {roles}")
    variables = [TensorSpec.from_json(v) for v in meta["variables"]]
    if len({v.name for v in variables}) != len(variables):
        raise FormatError(ERR_CORRUPT, "duplicate variable names")
    if any(-1 in v.shape for v in variables):
        raise FormatError(ERR_CORRUPT, "variables must have static shapes")
    if (kind == "plain" or plain_bundle) and (variables or meta["has_initial_values"]):
        raise FormatError(
            ERR_CORRUPT, f"{'plain file' if kind == 'plain' else 'bundle of plain graphs'} with variables"
        )
    if kind == "bundle" and not plain_bundle and not variables:
        raise FormatError(ERR_CORRUPT, "bundle without variables")
    has_init = "init" in roles
    if meta["has_initial_values"] is not has_init:
        raise FormatError(ERR_CORRUPT, "initial values present iff the bundle has an init graph")
    if meta["has_initial_values"]:
        if len(var_payloads) != len(variables):
            raise FormatError(ERR_CORRUPT, "initial values do not match variables")
        for v, p in zip(variables, var_payloads):
            if len(p) != v.nbytes():
                raise FormatError(ERR_CORRUPT, f"initial value of {v.name!r} has {len(p)} bytes, expected {v.nbytes()}")
    elif var_payloads:
        raise FormatError(ERR_CORRUPT, "unexpected initial values")
    batch_sizes = meta["batch_sizes"]
    if not isinstance(batch_sizes, list) or any(type(b) is not int or b <= 0 for b in batch_sizes):
        raise ValueError("batch sizes must be positive ints")
    hw = _gears(meta.get("dynamic_hw", []), "dynamic_hw")
    dims = _gears(meta.get("dynamic_dims", []), "dynamic_dims")
    mf = ModelFile(kind, graphs, variables, var_payloads, batch_sizes, [tuple(g) for g in hw], [tuple(g) for g in dims])  # type: ignore[misc]
    if sum(map(bool, (batch_sizes, hw, dims))) > 1:
        raise FormatError(ERR_CORRUPT, "more than one dynamic-shape kind (batch sizes, image sizes, dims)")
    for g in graphs:
        _check_dynamic(mf, g, meta.get("gear_outputs", []))
    mf.gear_outputs = [[tuple(s) for s in gear] for gear in meta.get("gear_outputs", [])]
    mode = meta.get("precision_mode", "")
    if not isinstance(mode, str) or (mode and mode not in PRECISION_MODES):
        raise FormatError(ERR_CORRUPT, f"unknown precision_mode {mode!r}")
    mf.precision_mode = mode
    return mf


def _gears(raw: object, what: str) -> list[list[int]]:
    if not isinstance(raw, list) or len(raw) > MAX_GEARS or any(
        not isinstance(g, list) or not g or any(type(v) is not int or v <= 0 for v in g) for g in raw
    ):
        raise ValueError(f"{what} must be a list of at most {MAX_GEARS} lists of positive ints")
    return raw


def _check_dynamic(mf: ModelFile, g: GraphSpec, gear_outputs: object) -> None:
    """The -1 dims of ``g`` must be exactly what the dynamic-shape kind describes."""
    if g.role not in ("model", "infer"):
        return
    dyn_in = [t.shape.count(-1) for t in g.inputs]
    dyn_out = any(-1 in t.shape for t in g.outputs)
    kind = mf.dynamic
    if not kind:
        if any(dyn_in) or dyn_out:
            raise FormatError(ERR_CORRUPT, "dynamic (-1) dims present without a dynamic-shape kind")
        if gear_outputs:
            raise FormatError(ERR_CORRUPT, "gear outputs in a static model")
        return
    if kind == "batch":
        if not any(dyn_in) or any(-1 in t.shape[1:] for t in (*g.inputs, *g.outputs)):
            raise FormatError(ERR_CORRUPT, "batch sizes need -1 in dim 0 (only) of the inputs")
        return
    if kind == "hw":
        if not any(dyn_in) or any(n not in (0, 2) for n in dyn_in) or any(len(v) != 2 for v in mf.dynamic_hw):
            raise FormatError(
                ERR_CORRUPT, "image sizes need (height, width) gears and exactly two -1 dims per image input"
            )
    elif kind == "dims" and (not any(dyn_in) or any(len(v) != sum(dyn_in) for v in mf.dynamic_dims)):
        raise FormatError(ERR_CORRUPT, f"every dims gear needs one value per -1 input dim ({sum(dyn_in)})")
    if not isinstance(gear_outputs, list) or len(gear_outputs) != len(mf.gears):
        raise FormatError(ERR_CORRUPT, "gear outputs must list the output shapes of every gear")
    for shapes in gear_outputs:
        if not isinstance(shapes, list) or len(shapes) != len(g.outputs):
            raise FormatError(ERR_CORRUPT, "gear outputs must give one shape per output")
        for spec, shape in zip(g.outputs, shapes):
            if (not isinstance(shape, list) or len(shape) != len(spec.shape)
                    or any(type(d) is not int or d < 0 or (s != -1 and s != d) for s, d in zip(spec.shape, shape))):
                raise FormatError(
                    ERR_CORRUPT, f"gear output shape {shape!r} does not fit output {spec.name!r} {list(spec.shape)}"
                )
