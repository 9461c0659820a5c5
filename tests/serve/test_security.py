"""Who may change weights, bounded bodies, and clear 400s for malformed requests; the server keeps serving.

Each refused update is checked to have changed nothing: the weight version and the
inference output (against numpy) stay those of the last accepted update.
"""
from __future__ import annotations

import contextlib
import io
import json
import socket
import time
import zipfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import reference
from helpers.serve import TOKEN, new_weights, npz_bytes, serve_process

REQUEST_LIMIT = 64 * 1024
UPDATE_LIMIT = 256 * 1024
WRONG = "wrong-token-but-long-enough-1234"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("sec"), "--max-request-bytes", str(REQUEST_LIMIT),
                       "--max-update-bytes", str(UPDATE_LIMIT)) as s:
        s.current = (0, s.weights)  # (version, weights) last accepted
        yield s


def _infer(srv, x):
    c = httpclient.InferenceServerClient(srv.http_url)
    try:
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        r = c.infer(srv.name, [inp])
        return r.as_numpy("y"), r.get_response()["parameters"]["weight_version"]
    finally:
        c.close()


def assert_unchanged(srv):
    """Still serving, same version, output still that version's numpy result."""
    assert srv.alive()
    x = np.random.default_rng(9).standard_normal((3, 8)).astype(np.float32)
    y, version = _infer(srv, x)
    assert version == srv.current[0]
    np.testing.assert_allclose(y, reference(x, srv.current[1]), rtol=1e-5, atol=1e-5)


def _post_json(srv, path, obj, headers=None):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    status, data, hdrs = srv.request("POST", path, body, headers or {})
    return status, (json.loads(data)["error"] if data and status != 200 else data), hdrs


# --------------------------------------------------------------------------- tokens
def test_updates_need_the_token_http(srv):
    w = new_weights(srv.weights, seed=1)
    c = httpclient.InferenceServerClient(srv.http_url)
    try:
        for headers in (None, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            with pytest.raises(InferenceServerException) as e:
                c.load_model(srv.name, headers=headers, files={"file:w.npz": npz_bytes(w)})
            assert e.value.status() == "401", (headers, e.value)
    finally:
        c.close()
    status, err, hdrs = srv.request("PUT", f"/v2/models/{srv.name}/weights", npz_bytes(w),
                                    {"Authorization": f"Bearer {WRONG}"})
    assert status == 401 and hdrs.get("www-authenticate") == "Bearer"
    assert_unchanged(srv)


def test_updates_need_the_token_grpc(srv):
    w = new_weights(srv.weights, seed=2)
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        for headers in (None, {"authorization": f"Bearer {WRONG}"}):
            with pytest.raises(InferenceServerException) as e:
                c.load_model(srv.name, headers=headers, files={"file:w.npz": npz_bytes(w)})
            assert "UNAUTHENTICATED" in e.value.status()
    finally:
        c.close()
    assert_unchanged(srv)


def test_token_never_logged(srv):
    w = new_weights(srv.weights, seed=3)
    status, _, _ = srv.request(
        "PUT", f"/v2/models/{srv.name}/weights", npz_bytes(w), {"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200
    srv.current = (srv.current[0] + 1, w)
    srv.request("PUT", f"/v2/models/{srv.name}/weights", npz_bytes(w), {"Authorization": f"Bearer {WRONG}"})
    time.sleep(0.2)
    log = srv.log()
    assert "PUT /v2/models/mlp/weights 200" in log  # the access log is there ...
    assert TOKEN not in log and WRONG not in log  # ... the tokens are not


def test_updates_off_without_a_token_file(tmp_path):
    with serve_process(tmp_path, token=False) as s:
        status, body, _ = s.request("PUT", f"/v2/models/{s.name}/weights", npz_bytes(s.weights),
                                    {"Authorization": f"Bearer {TOKEN}"})
        assert status == 403 and b"--update-token-file" in body
        s.current = (0, s.weights)
        assert_unchanged(s)


# --------------------------------------------------------------------------- bounded bodies
def _raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send a hand-made request (e.g. a Content-Length the body does not have); return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_declared_oversized_bodies_get_413_before_any_is_read(srv):
    for path, auth in ((f"/v2/models/{srv.name}/infer", ""),
                       (f"/v2/repository/models/{srv.name}/load", f"Authorization: Bearer {TOKEN}\r\n"),
                       (f"/v2/models/{srv.name}/weights", f"Authorization: Bearer {TOKEN}\r\n")):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {10 << 30}\r\n\r\n").encode()
        reply = _raw_request(srv.http_port, head)  # no body sent: a server that waited for it would time out
        assert reply.startswith(b"HTTP/1.1 413"), (path, reply[:200])
    # without a token the update routes refuse before looking at the body at all
    head = (f"POST /v2/models/{srv.name}/weights HTTP/1.1\r\nHost: x\r\nContent-Length: {10 << 30}\r\n\r\n").encode()
    assert _raw_request(srv.http_port, head).startswith(b"HTTP/1.1 401")
    assert_unchanged(srv)


def test_streamed_oversized_body_is_cut_off_without_allocating_it(srv):
    rss0 = _rss_kib(srv.proc.pid)
    head = (f"POST /v2/models/{srv.name}/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"[" * (64 * 1024))
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        s.sendall(head)
        reply = b""
        try:
            for _ in range(2048):  # up to 128 MiB offered; the server must answer after REQUEST_LIMIT
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert _rss_kib(srv.proc.pid) - rss0 < 32 * 1024  # far below the 128 MiB offered
    assert_unchanged(srv)


def test_compressed_body_inflating_past_the_limit_gets_413_and_changes_nothing(srv):
    # two deflated members, each under the limit, together over it: refused from the headers, before inflating
    each = np.zeros(UPDATE_LIMIT * 3 // 4 // 4, np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{"fc0.weight": each, "fc1.weight": each})
    assert len(buf.getvalue()) < UPDATE_LIMIT // 10
    status, data, _ = srv.request("PUT", f"/v2/models/{srv.name}/weights", buf.getvalue(),
                                  {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-npz"})
    assert status == 413 and f"more than the limit of {UPDATE_LIMIT}" in json.loads(data)["error"], data
    assert_unchanged(srv)


def test_oversized_grpc_messages_are_refused(srv):
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        for rows_bytes in (REQUEST_LIMIT + 1024, UPDATE_LIMIT + 1024):  # over our infer limit / over gRPC's own
            req_x = np.zeros((rows_bytes // 32, 8), np.float32)
            inp = grpcclient.InferInput("x", list(req_x.shape), "FP32")
            inp.set_data_from_numpy(req_x)
            with pytest.raises(InferenceServerException) as e:
                c.infer(srv.name, [inp])
            assert "RESOURCE_EXHAUSTED" in e.value.status(), e.value
    finally:
        c.close()
    assert_unchanged(srv)


# --------------------------------------------------------------------------- malformed requests
X_OK = {"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}


@pytest.mark.parametrize("body, expect", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"[" * 30000 + b"]" * 30000, "nested too deeply"),
    ({}, "non-empty 'inputs'"),
    ({"inputs": [dict(X_OK, datatype="FP64")]}, "datatype FP64, the model expects FP32"),
    ({"inputs": [dict(X_OK, datatype="FLOAT")]}, "unknown datatype 'FLOAT'"),
    ({"inputs": [dict(X_OK, shape=[1, 7], data=[0.5] * 7)]}, "the model expects [N, 8]"),
    ({"inputs": [dict(X_OK, shape=[9, 8], data=[0.5] * 72)]}, "1 <= N <= 8"),
    ({"inputs": [dict(X_OK, shape=[1, -8])]}, "negative"),
    ({"inputs": [dict(X_OK, shape="1,8")]}, "'shape' must be a list of integers"),
    ({"inputs": [dict(X_OK, data=[0.5] * 7)]}, "7 values in 'data', shape [1, 8] needs 8"),
    ({"inputs": [dict(X_OK, data=["a"] * 8)]}, "holds strings"),
    ({"inputs": [dict(X_OK, data=[[0.5] * 4, [0.5] * 3])]}, "not a regular array"),
    ({"inputs": [dict(X_OK, name="z")]}, "unknown ['z'], missing ['x']"),
    ({"inputs": [X_OK, X_OK]}, "given twice"),
    ({"inputs": [X_OK], "outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
    ({"inputs": [{"name": "x", "datatype": "FP32"}]}, "has no 'shape'"),
    ({"inputs": [dict(X_OK, name=5)]}, "inputs[0]: 'name' must be a string, got 5"),
])
def test_malformed_json_requests_get_clear_400s(srv, body, expect):
    status, err, _ = _post_json(srv, f"/v2/models/{srv.name}/infer", body)
    assert status == 400 and expect in err, (status, err)


def _binary(header: dict, payload: bytes, header_len=None):
    head = json.dumps(header).encode()
    n = len(head) if header_len is None else header_len
    return head + payload, {"Inference-Header-Content-Length": str(n), "Content-Type": "application/octet-stream"}


@pytest.mark.parametrize("case, expect", [
    ("size_mismatch", "28 bytes of binary data, shape [1, 8] of FP32 needs 32"),
    ("past_end", "runs past the end of the body"),
    ("leftover", "no input claims"),
    ("bad_header_length", "is not a number"),
    ("header_length_too_big", "outside the body"),
    ("header_cut", "not valid JSON"),
])
def test_malformed_binary_requests_get_clear_400s(srv, case, expect):
    x = np.ones((1, 8), np.float32).tobytes()
    hdr = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]}
    if case == "size_mismatch":
        hdr["inputs"][0]["parameters"]["binary_data_size"] = 28
        body, headers = _binary(hdr, x[:28])
    elif case == "past_end":
        body, headers = _binary(hdr, x[:20])
    elif case == "leftover":
        body, headers = _binary(hdr, x + b"extra")
    elif case == "bad_header_length":
        body, headers = _binary(hdr, x)
        headers["Inference-Header-Content-Length"] = "12abc"
    elif case == "header_length_too_big":
        body, headers = _binary(hdr, x, header_len=10 ** 6)
    else:
        body, headers = _binary(hdr, x, header_len=10)
    status, data, _ = srv.request("POST", f"/v2/models/{srv.name}/infer", body, headers)
    err = json.loads(data)["error"]
    assert status == 400 and expect in err, (status, err)


def test_malformed_grpc_requests_get_invalid_argument(srv):
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        inp = grpcclient.InferInput("x", [1, 8], "FP64")
        inp.set_data_from_numpy(np.ones((1, 8), np.float64))
        with pytest.raises(InferenceServerException) as e:
            c.infer(srv.name, [inp])
        assert "INVALID_ARGUMENT" in e.value.status() and "FP64, the model expects FP32" in e.value.message()
        # half the bytes the shape needs (tritonclient checks this itself, so use the raw stub)
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        with grpc.insecure_channel(srv.grpc_url) as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            req = service_pb2.ModelInferRequest(model_name=srv.name)
            t = req.inputs.add()
            t.name, t.datatype = "x", "FP32"
            t.shape.extend([2, 8])
            req.raw_input_contents.append(np.ones((1, 8), np.float32).tobytes())
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(req)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 64" in e.value.details()
            req.raw_input_contents.append(b"")
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(req)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one per input" in e.value.details()
            # typed contents instead of raw bytes work too
            req = service_pb2.ModelInferRequest(model_name=srv.name)
            t = req.inputs.add()
            t.name, t.datatype = "x", "FP32"
            t.shape.extend([1, 8])
            x = np.arange(8, dtype=np.float32).reshape(1, 8)
            t.contents.fp32_contents.extend(x.ravel().tolist())
            r = stub.ModelInfer(req)
            assert r.parameters["weight_version"].int64_param == srv.current[0]
            y = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(1, 4)
            np.testing.assert_allclose(y, reference(x, srv.current[1]), rtol=1e-5, atol=1e-5)
        inp = grpcclient.InferInput("x", [1, 8], "FP32")
        inp.set_data_from_numpy(np.ones((1, 8), np.float32))
        with pytest.raises(InferenceServerException) as e:
            c.infer("other", [inp])
        assert "NOT_FOUND" in e.value.status() and "'mlp'" in e.value.message()
    finally:
        c.close()
    assert_unchanged(srv)


def test_unknown_model_and_version_404_with_names(srv):
    status, err, _ = _post_json(srv, "/v2/models/other/infer", {"inputs": [X_OK]})
    assert status == 404 and "['mlp']" in err
    status, err, _ = _post_json(srv, f"/v2/models/{srv.name}/versions/3/infer", {"inputs": [X_OK]})
    assert status == 404 and "versions are ['1']" in err
    status, data, _ = srv.request("GET", "/v2/nothing/here")
    assert status == 404


# --------------------------------------------------------------------------- bad weight files
def _npz_with_header(shape, data: bytes) -> bytes:
    """An .npz whose member's .npy header declares ``shape`` float32 but carries only ``data``."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fc0.bias.npy", npy.getvalue() + data)
    return buf.getvalue()


def _bad_files(srv):
    w = srv.weights
    obj = io.BytesIO()
    np.savez(obj, **{"fc0.bias": np.array([object()] * 16, dtype=object)})
    return [
        ({"file:w.npz": b"PK\x03\x04garbage"}, "not a valid .npz"),
        ({"file:w.npz": npz_bytes({"fc0.bias": np.zeros(15, np.float32)})}, "fc0.bias"),
        ({"file:w.npz": npz_bytes({"fc0.bias": np.zeros(16, np.float64)})}, "astype(numpy.float32)"),
        ({"file:w.npz": npz_bytes({"nope": np.zeros(16, np.float32)})}, "unknown variable 'nope'"),
        ({"file:w.npz": obj.getvalue()}, "Python objects"),
        ({"file:w.npz": _npz_with_header((1 << 40,), b"\0" * 64)}, "declares"),
        ({"file:w.pt": b"\x80\x04"}, "unsupported weight file type"),
        ({"file:a.npz": npz_bytes({"fc0.bias": w["fc0.bias"]}), "file:b.npz": npz_bytes({"fc0.bias": w["fc0.bias"]})},
         "in both"),
        # one good file and one bad: the whole update is refused, the good half is not applied
        ({"file:a.npz": npz_bytes(new_weights(w, 5)), "file:b.npz": npz_bytes({"fc1.bias": np.zeros(3, np.float32)})},
         "fc1.bias"),
    ]


def test_bad_weight_files_are_refused_and_change_nothing(srv):
    c = httpclient.InferenceServerClient(srv.http_url)
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        for files, expect in _bad_files(srv):
            with pytest.raises(InferenceServerException) as e:
                c.load_model(srv.name, headers={"Authorization": f"Bearer {TOKEN}"}, files=files)
            assert e.value.status() == "400" and expect in e.value.message(), (expect, e.value.message())
            with pytest.raises(InferenceServerException) as e:
                g.load_model(srv.name, headers={"authorization": f"Bearer {TOKEN}"}, files=files)
            assert "INVALID_ARGUMENT" in e.value.status() and expect in e.value.message(), (expect, e.value.message())
            assert_unchanged(srv)
        status, data, _ = srv.request("POST", f"/v2/repository/models/{srv.name}/load",
                                      b'{"parameters": {"file:w.npz": "not base64!"}}',
                                      {"Authorization": f"Bearer {TOKEN}"})
        assert status == 400 and b"not valid base64" in data
        status, data, _ = srv.request("PUT", f"/v2/models/{srv.name}/weights", b"hello",
                                      {"Authorization": f"Bearer {TOKEN}"})
        assert status == 400 and b"neither an .npz" in data
    finally:
        c.close()
        g.close()
    assert_unchanged(srv)
    _, body, _ = srv.request("GET", "/metrics")
    assert 'acl_bundle_updates_total{outcome="rejected",source="grpc"}' in body.decode()
