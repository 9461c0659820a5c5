"""The simulator file format: round trip, and every corruption gives FormatError with its code."""
from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl_bundle.sim import format as F
from acl_bundle.sim.format import (
    ERR_CORRUPT,
    ERR_FOREIGN,
    ERR_SIZE,
    FormatError,
    GraphSpec,
    ModelFile,
    TensorSpec,
    dumps,
    loads,
)

HEADER = struct.Struct("<8sHHI")
SECTION = struct.Struct("<4sQI")
FAKE_ONNX = b"\x08\x08\x12\x04fake-onnx-graph"


def _bundle(init: bool = True, batch: bool = False) -> ModelFile:
    b = -1 if batch else 2
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    bias = np.array([1, -2, 3], dtype=np.float16)
    graphs = [
        GraphSpec(
            "infer",
            (TensorSpec("x", "float32", (b, 3)),),
            (TensorSpec("y", "float32", (b, 4)), TensorSpec("n", "int64", (b,))),
            FAKE_ONNX,
        )
    ]
    if init:
        graphs.append(GraphSpec("init", (), ()))
    graphs.append(GraphSpec("update", (), ()))
    return ModelFile(
        "bundle",
        graphs,
        [TensorSpec("w", "float32", (3, 4)), TensorSpec("b", "float16", (3,))],
        [w.tobytes(), bias.tobytes()] if init else [],
        [1, 4, 8] if batch else [],
    )


def _plain() -> ModelFile:
    return ModelFile(
        "plain", [GraphSpec("model", (TensorSpec("x", "uint8", (1, 2, 2)),), (TensorSpec("y", "bool", ()),), FAKE_ONNX)]
    )


def _pack(sections: list[tuple[bytes, bytes]], *, major: int = F.FORMAT_MAJOR, count: int | None = None) -> bytes:
    out = [HEADER.pack(F.MAGIC, major, 0, len(sections) if count is None else count)]
    for tag, payload in sections:
        out.append(SECTION.pack(tag, len(payload), zlib.crc32(payload)) + payload)
    return b"".join(out)


def _meta(mf: ModelFile) -> dict:
    """The META JSON that dumps writes for ``mf`` (read back from the bytes)."""
    data = dumps(mf)
    _, length, _ = SECTION.unpack_from(data, HEADER.size)
    return json.loads(data[HEADER.size + SECTION.size : HEADER.size + SECTION.size + length])


def _with_meta(mf: ModelFile, meta: object) -> bytes:
    """``mf``'s file with the META section replaced by ``meta`` (valid CRCs everywhere)."""
    payload = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    sections = [(b"META", payload)]
    sections += [(b"ONNX", g.onnx) for g in mf.graphs if g.onnx]
    sections += [(b"VARV", v) for v in mf.initial_values]
    return _pack(sections)


def _code(data: bytes) -> int:
    with pytest.raises(FormatError) as ei:
        loads(data)
    assert str(ei.value)
    return ei.value.code


# --- round trip ------------------------------------------------------------------

@pytest.mark.parametrize(
    "mf", [_bundle(), _bundle(init=False), _bundle(batch=True), _plain()], ids=["bundle", "no-init", "batch", "plain"]
)
def test_round_trip(mf: ModelFile) -> None:
    data = dumps(mf)
    assert data[:8] == b"ACLBSIM\x00"
    back = loads(data)
    assert back == mf
    assert back.has_init == mf.has_init
    assert loads(memoryview(data)) == mf
    assert loads(bytearray(data)) == mf


def test_layout_is_as_documented() -> None:
    mf = _bundle()
    data = dumps(mf)
    magic, major, minor, count = HEADER.unpack_from(data, 0)
    assert (magic, major, minor, count) == (F.MAGIC, 1, F.FORMAT_MINOR, 1 + 1 + 2)
    pos = HEADER.size
    tags = []
    for _ in range(count):
        tag, length, crc = SECTION.unpack_from(data, pos)
        pos += SECTION.size
        assert zlib.crc32(data[pos : pos + length]) == crc
        tags.append(tag)
        pos += length
    assert pos == len(data)
    assert tags == [b"META", b"ONNX", b"VARV", b"VARV"]
    # initial values are raw C-order bytes of the arrays
    assert data.endswith(np.array([1, -2, 3], np.float16).tobytes())


def test_tensor_spec_nbytes() -> None:
    assert TensorSpec("a", "float16", (-1, 3)).nbytes(batch=4) == 24
    assert TensorSpec("a", "int64", ()).nbytes() == 8
    assert TensorSpec("a", "float32", (0, 5)).nbytes() == 0


# --- truncation -----------------------------------------------------------------

@pytest.mark.parametrize("mf", [_bundle(), _plain()], ids=["bundle", "plain"])
def test_every_truncation_is_a_size_error(mf: ModelFile) -> None:
    data = dumps(mf)
    # every prefix: inside the file header, each section header and each payload
    for cut in range(len(data)):
        assert _code(data[:cut]) == ERR_SIZE, cut


def test_empty_file() -> None:
    assert _code(b"") == ERR_SIZE


# --- foreign data and headers ------------------------------------------------------

def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.onnx", b"x" * 100)
    return buf.getvalue()


def _onnx_bytes() -> bytes:
    from acl_bundle.sim.models import mlp

    return mlp()[0].SerializeToString()


@pytest.mark.parametrize(
    "data",
    [
        _onnx_bytes(),
        _zip_bytes(),
        bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
        b"ACLBSIM\x01" + bytes(20),
        b"\x00" * 64,
    ],
    ids=["onnx", "zip", "random", "near-magic", "zeros"],
)
def test_foreign_data(data: bytes) -> None:
    assert _code(data) == ERR_FOREIGN


def test_bad_magic_short_file() -> None:
    assert _code(b"PK\x03") == ERR_SIZE  # shorter than the magic: a size error first


def test_future_major_version() -> None:
    data = bytearray(dumps(_bundle()))
    struct.pack_into("<H", data, 8, F.FORMAT_MAJOR + 1)
    assert _code(bytes(data)) == ERR_FOREIGN
    struct.pack_into("<H", data, 8, 0)
    assert _code(bytes(data)) == ERR_FOREIGN


def test_newer_minor_version_still_loads() -> None:
    data = bytearray(dumps(_bundle()))
    struct.pack_into("<H", data, 10, 7)
    assert loads(bytes(data)) == _bundle()


@pytest.mark.parametrize("count", [F.MAX_SECTIONS + 1, 2**32 - 1])
def test_absurd_section_count(count: int) -> None:
    data = bytearray(dumps(_bundle()))
    struct.pack_into("<I", data, 12, count)
    assert _code(bytes(data)) == ERR_SIZE


def test_section_count_too_high_or_low() -> None:
    data = bytearray(dumps(_bundle()))
    struct.pack_into("<I", data, 12, 5)  # one more than present: truncated section header
    assert _code(bytes(data)) == ERR_SIZE
    struct.pack_into("<I", data, 12, 3)  # one fewer: the last section is trailing bytes
    assert _code(bytes(data)) == ERR_SIZE


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 10**9])
def test_absurd_section_length(length: int) -> None:
    data = bytearray(dumps(_bundle()))
    struct.pack_into("<Q", data, HEADER.size + 4, length)
    assert _code(bytes(data)) == ERR_SIZE


def test_trailing_bytes() -> None:
    data = dumps(_bundle())
    assert _code(data + b"\x00") == ERR_SIZE
    assert _code(data + dumps(_bundle())) == ERR_SIZE


# --- checksums ------------------------------------------------------------------

def test_crc_flip_in_every_payload() -> None:
    data = dumps(_bundle())
    pos = HEADER.size
    n = 0
    while pos < len(data):
        _, length, _ = SECTION.unpack_from(data, pos)
        start = pos + SECTION.size
        for off in (start, start + length - 1):
            bad = bytearray(data)
            bad[off] ^= 0x01
            assert _code(bytes(bad)) == ERR_CORRUPT, off
        bad = bytearray(data)
        bad[pos + 12] ^= 0x80  # the stored crc itself
        assert _code(bytes(bad)) == ERR_CORRUPT
        pos = start + length
        n += 1
    assert n == 4


def test_unknown_section_tag() -> None:
    mf = _bundle()
    sections = [
        (b"META", json.dumps(_meta(mf)).encode()),
        (b"ONNX", FAKE_ONNX),
        (b"VARV", mf.initial_values[0]),
        (b"JUNK", mf.initial_values[1]),
    ]
    assert _code(_pack(sections)) == ERR_CORRUPT


def test_meta_not_first() -> None:
    mf = _bundle()
    sections = [(b"ONNX", FAKE_ONNX), (b"META", json.dumps(_meta(mf)).encode())] + [
        (b"VARV", v) for v in mf.initial_values
    ]
    assert _code(_pack(sections)) == ERR_CORRUPT
    assert _code(_pack([])) == ERR_CORRUPT  # no sections at all


# --- metadata valid JSON but wrong ------------------------------------------------

def _meta_cases() -> list[tuple[str, object]]:
    base = _meta(_bundle())
    cases: list[tuple[str, object]] = []
    for key in base:
        m = dict(base)
        del m[key]
        cases.append((f"missing-{key}", m))

    def edit(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        m = json.loads(json.dumps(base))
        fn(m)
        cases.append((name, m))

    edit("role-order", lambda m: m["graphs"].insert(0, m["graphs"].pop(1)))
    edit("update-first", lambda m: m["graphs"].append(m["graphs"].pop(0)))
    edit("unknown-role", lambda m: m["graphs"][2].__setitem__("role", "train"))
    edit("unknown-kind", lambda m: m.__setitem__("kind", "ensemble"))
    edit("plain-kind", lambda m: m.__setitem__("kind", "plain"))
    edit("init-has-onnx", lambda m: m["graphs"][1].__setitem__("has_onnx", True))
    edit("infer-without-onnx", lambda m: m["graphs"][0].__setitem__("has_onnx", False))
    edit("dtype-object", lambda m: m["variables"][0].__setitem__("dtype", "object"))
    edit("dtype-null", lambda m: m["variables"][0].__setitem__("dtype", None))
    edit("dtype-bfloat16", lambda m: m["graphs"][0]["inputs"][0].__setitem__("dtype", "bfloat16"))
    edit("shape-negative", lambda m: m["variables"][0].__setitem__("shape", [-2, 4]))
    edit("shape-float", lambda m: m["variables"][0].__setitem__("shape", [3.0, 4]))
    edit("shape-string", lambda m: m["variables"][0].__setitem__("shape", "34"))
    edit("shape-int", lambda m: m["variables"][0].__setitem__("shape", 12))
    edit("name-not-string", lambda m: m["variables"][0].__setitem__("name", 7))
    edit("variable-wrong-size", lambda m: m["variables"][0].__setitem__("shape", [4, 4]))
    edit("duplicate-variable", lambda m: m["variables"][1].update(name="w", dtype="float32", shape=[3, 4]))
    edit("dynamic-variable", lambda m: m["variables"][0].__setitem__("shape", [-1, 4]))
    edit(
        "no-variables",
        lambda m: m.update(variables=[], has_initial_values=False, graphs=[m["graphs"][0], m["graphs"][2]]),
    )
    edit("values-without-init", lambda m: m.__setitem__("graphs", [m["graphs"][0], m["graphs"][2]]))
    edit("init-without-values", lambda m: m.__setitem__("has_initial_values", False))
    edit("batch-zero", lambda m: m.__setitem__("batch_sizes", [0]))
    edit("batch-string", lambda m: m.__setitem__("batch_sizes", "12"))
    edit("batch-without-dynamic-dims", lambda m: m.__setitem__("batch_sizes", [1, 2]))
    edit("graphs-not-list", lambda m: m.__setitem__("graphs", {"role": "infer"}))
    cases += [
        ("json-list", [1, 2]),
        ("json-null", None),
        ("json-string", "bundle"),
        ("not-json", b"{kind: bundle"),
        ("not-utf8", b"\xff\xfe{}"),
    ]
    return cases


@pytest.mark.parametrize("name,meta", _meta_cases(), ids=[c[0] for c in _meta_cases()])
def test_wrong_metadata(name: str, meta: object) -> None:
    assert _code(_with_meta(_bundle(), meta)) == ERR_CORRUPT


def test_dynamic_dims_without_batch_sizes() -> None:
    m = _meta(_bundle(batch=True))
    m["batch_sizes"] = []
    assert _code(_with_meta(_bundle(batch=True), m)) == ERR_CORRUPT


def test_meta_edit_helper_is_faithful() -> None:
    """The unedited metadata through the same helper loads: failures above are the edits."""
    assert loads(_with_meta(_bundle(), _meta(_bundle()))) == _bundle()


def test_more_onnx_sections_than_graphs() -> None:
    mf = _bundle()
    sections = [(b"META", json.dumps(_meta(mf)).encode()), (b"ONNX", FAKE_ONNX), (b"ONNX", FAKE_ONNX)] + [
        (b"VARV", v) for v in mf.initial_values
    ]
    assert _code(_pack(sections)) == ERR_CORRUPT


def test_missing_initial_value_section() -> None:
    mf = _bundle()
    sections = [(b"META", json.dumps(_meta(mf)).encode()), (b"ONNX", FAKE_ONNX), (b"VARV", mf.initial_values[0])]
    assert _code(_pack(sections)) == ERR_CORRUPT


# --- random damage --------------------------------------------------------------

_DATA = dumps(_bundle(batch=True))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, len(_DATA) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_random_byte_flips_raise_only_format_error(flips: list[tuple[int, int]]) -> None:
    bad = bytearray(_DATA)
    for off, mask in flips:
        bad[off] ^= mask
    try:
        mf = loads(bytes(bad))
    except FormatError as e:
        assert e.code in (ERR_SIZE, ERR_FOREIGN, ERR_CORRUPT)
    else:  # only harmless fields (minor version) may change without detection
        assert mf == _bundle(batch=True)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        loads(F.MAGIC + data if data[:1] == b"\x00" else data)


@settings(max_examples=300, deadline=None)
@given(
    meta=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.sampled_from(["kind", "graphs", "role", "inputs", "outputs", "has_onnx", "variables", "name",
                                 "dtype", "shape", "has_initial_values", "batch_sizes"]),
                c,
                max_size=6,
            )
        ),
        max_leaves=20,
    )
)
def test_random_metadata_raises_only_format_error(meta: object) -> None:
    with pytest.raises(FormatError):
        loads(_with_meta(_bundle(), meta))
