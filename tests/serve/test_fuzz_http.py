"""A client's mistake is a 4xx, never a 5xx: Hypothesis over infer bodies against a real server process.

Bodies are drawn near the valid request (each field valid, absent or any JSON value) so
the fuzz reaches deep into the parsing, plus integers past Python's int-string limit,
deep nesting, NaN/Infinity and the binary tensor extension's header and byte counts.
Every answer must be < 500 with a one-line ``{"error": ...}``; the server log must
hold no traceback.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import reference
from helpers.serve import TOKEN, serve_process

BIG = "@@BIG@@"    # replaced in the JSON text by a 5000-digit integer literal
DEEP = "@@DEEP@@"  # replaced by 3000 nested lists
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("fuzz"), "--max-request-bytes", str(1 << 20)) as s:
        yield s


def _text(obj) -> bytes:
    s = json.dumps(obj)
    return s.replace(f'"{BIG}"', "1" * 5000).replace(f'"{DEEP}"', "[" * 3000 + "]" * 3000).encode()


def _post(srv, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{srv.name}/infer", body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _assert_client_error_or_ok(status: int, data: bytes, body: bytes) -> None:
    assert status < 500, (status, data[:300], body[:300])
    assert status in (200, 400), (status, data[:300], body[:300])
    if status == 400:
        err = json.loads(data)["error"]
        assert isinstance(err, str) and err and "\n" not in err, err


def _assert_log_clean(srv) -> None:
    log = srv.log()
    assert "Traceback" not in log and "internal error" not in log and " ERROR " not in log, log[-3000:]


leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2 ** 70), 2 ** 70), st.floats(),
                 st.text(max_size=8), st.sampled_from(["x", "y", "FP32", "INT32", "BYTES", "binary_data_size"]))
anything = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                        max_leaves=12)
replacement = st.one_of(anything, st.sampled_from([BIG, DEEP]), st.floats(width=32), st.integers(-10, 10),
                        st.lists(st.integers(-2, 10), max_size=4))


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:12]):
            yield from _paths(v, path + (i,))


@st.composite
def infer_request(draw, binary: bool = False):
    """A valid infer request (JSON or binary-extension header) with 0..3 random mutations."""
    n = draw(st.sampled_from([1, 2, 3, 4, 8]))
    x: dict = {"name": "x", "shape": [n, 8], "datatype": "FP32"}
    if binary:
        x["parameters"] = {"binary_data_size": n * 32}
    else:
        flat = draw(st.booleans())
        values = draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=n * 8,
                               max_size=n * 8))
        x["data"] = values if flat else [values[i * 8:(i + 1) * 8] for i in range(n)]
    req: dict = {"inputs": [x], "outputs": [{"name": "y", "parameters": {"binary_data": binary}}], "id": "r"}
    if draw(st.booleans()):
        req["parameters"] = {"binary_data_output": binary}
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(list(_paths(req))))
        if not path:
            return draw(replacement)
        parent = req
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(parent[path[-1]])
        else:
            parent[path[-1]] = draw(replacement)
    return req


@FUZZ
@given(req=infer_request())
def test_fuzzed_json_infer_bodies_never_5xx(srv, req):
    body = _text(req)
    status, data = _post(srv, body, {"Content-Type": "application/json"})
    _assert_client_error_or_ok(status, data, body)


@FUZZ
@given(req=infer_request(binary=True), payload=st.sampled_from([32, 64, 96, 128, 256]).flatmap(
    lambda n: st.binary(min_size=n - 4, max_size=n + 4)),
       header_length=st.one_of(st.none(), st.just("exact"), st.integers(-5, 200).map(str),
                               st.text(max_size=6), st.just("9" * 5000)))
def test_fuzzed_binary_infer_bodies_never_5xx(srv, req, payload, header_length):
    head = _text(req)
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        value = str(len(head)) if header_length == "exact" else header_length
        if value.isascii() and value.isprintable():  # a header value http.client can send
            headers["Inference-Header-Content-Length"] = value
    body = head + payload
    status, data = _post(srv, body, headers)
    _assert_client_error_or_ok(status, data, body)


@FUZZ
@given(body=st.binary(max_size=200))
def test_fuzzed_raw_bodies_never_5xx(srv, body):
    status, data = _post(srv, body)
    _assert_client_error_or_ok(status, data, body)


@pytest.mark.parametrize("where", ["data", "shape", "binary_data_size", "id", "parameters"])
def test_an_integer_past_the_int_string_limit_is_a_400_naming_it(srv, where):
    t = {"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    req: dict = {"inputs": [t]}
    if where == "data":
        t["data"] = [BIG] + [0.5] * 7
    elif where == "shape":
        t["shape"] = [1, BIG]
    elif where == "binary_data_size":
        del t["data"]
        t["parameters"] = {"binary_data_size": BIG}
    elif where == "id":
        req["id"] = BIG
    else:
        req["parameters"] = {"n": BIG}
    status, data = _post(srv, _text(req))
    assert status == 400, data
    assert "integer of more than 4300 digits" in json.loads(data)["error"]
    _assert_log_clean(srv)


def test_after_the_fuzz_the_server_still_answers_correctly_and_logged_no_traceback(srv):
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()
    status, data = _post(srv, body)
    assert status == 200, data
    y = np.array(json.loads(data)["outputs"][0]["data"], np.float32).reshape(2, 4)
    np.testing.assert_allclose(y, reference(x, srv.weights), rtol=1e-5, atol=1e-5)
    _assert_log_clean(srv)


# --------------------------------------------------------------------------- weight bodies
@pytest.fixture(scope="module")
def upd(tmp_path_factory):
    """A server of its own: a fuzzed update may be valid and change the weights."""
    with serve_process(tmp_path_factory.mktemp("fuzzupd"), "--max-update-bytes", str(1 << 20)) as s:
        yield s


@st.composite
def npz_body(draw) -> bytes:
    """A zip of .npy-ish members: right and wrong names, dtypes, shapes, cut-off headers and data, junk."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore")  # duplicate member names are part of the fuzz
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(["fc0.weight.npy", "fc0.bias.npy", "x.npy", "fc0.weight", "../a.npy"]))
            if draw(st.booleans()):
                a = np.zeros(draw(st.lists(st.integers(0, 20), max_size=3)),
                             dtype=draw(st.sampled_from(["f4", "f8", "i4", "u1", "?", "f2"])))
                b = io.BytesIO()
                np.save(b, a)
                data = b.getvalue()
                if draw(st.booleans()):
                    data = data[:draw(st.integers(0, len(data)))]
            else:
                data = draw(st.binary(max_size=80))
            z.writestr(name, data)
    return buf.getvalue()


@FUZZ
@given(body=st.one_of(npz_body(), st.binary(max_size=100)),
       ctype=st.sampled_from(["application/x-npz", "application/x-safetensors", ""]))
def test_fuzzed_weight_bodies_never_5xx(upd, body, ctype):
    status, data, _ = upd.request("PUT", f"/v2/models/{upd.name}/weights", body,
                                  {"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype})
    assert status < 500, (status, data[:300], body[:300])
    if status != 200:
        assert status in (400, 413, 415) and "\n" not in json.loads(data)["error"], (status, data)


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["file:w.npz", "file:w.safetensors", "file:w", "config", "x"]),
                              st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                                        anything), max_size=3),
       wrap=st.booleans())
def test_fuzzed_load_bodies_never_5xx(upd, params, wrap):
    body = _text({"parameters": params} if wrap else params)
    status, data, _ = upd.request("POST", f"/v2/repository/models/{upd.name}/load", body,
                                  {"Authorization": f"Bearer {TOKEN}"})
    assert status < 500, (status, data[:300], body[:300])


def test_a_cut_off_npy_header_is_a_400(upd):
    head = b"{'descr': '<f4', 'shape': (16,"  # a header dict that never closes
    npy = b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fc0.bias.npy", npy)  # numpy's header tokenizer hits EOF (was a 500: TokenError)
    status, data, _ = upd.request("PUT", f"/v2/models/{upd.name}/weights", buf.getvalue(),
                                  {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-npz"})
    assert status == 400 and "no valid .npy header" in json.loads(data)["error"], data
    _assert_log_clean(upd)
