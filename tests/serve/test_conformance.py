"""tritonclient (HTTP and gRPC) against a real ``acl-bundle serve`` process: the protocol as Triton's client speaks it.

Every inference result is compared with an independent numpy forward pass of the
weights of the version the response reports.
"""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import reference
from helpers.serve import TOKEN, new_weights, npz_bytes

AUTH_HTTP = {"Authorization": f"Bearer {TOKEN}"}
AUTH_GRPC = {"authorization": f"Bearer {TOKEN}"}

# weight version -> the weights that version serves; filled as the tests push updates (one server per module).
PUSHED: dict[int, dict] = {}


@pytest.fixture(scope="module")
def http(server):
    PUSHED.setdefault(0, server.weights)
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(server):
    PUSHED.setdefault(0, server.weights)
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def _http_infer(c, name, x, *, binary=True):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    r = c.infer(name, [inp], outputs=[out])
    return r.as_numpy("y"), r.get_response()["parameters"]["weight_version"], r


def _grpc_infer(c, name, x):
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer(name, [inp])
    return r.as_numpy("y"), r.get_response().parameters["weight_version"].int64_param, r


def _check(y, version, x):
    assert version in PUSHED, f"response reports version {version}, pushed {sorted(PUSHED)}"
    np.testing.assert_allclose(y, reference(x, PUSHED[version]), rtol=1e-5, atol=1e-5)


def test_health_and_metadata_http(server, http):
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready(server.name)
    assert not http.is_model_ready("nope")
    md = http.get_server_metadata()
    assert md["name"] == "acl_bundle"
    assert {"binary_tensor_data", "model_repository"} <= set(md["extensions"])
    mm = http.get_model_metadata(server.name)
    assert mm["name"] == server.name and mm["versions"] == ["1"]
    assert mm["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert mm["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    cfg = http.get_model_config(server.name)
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [8]
    with pytest.raises(InferenceServerException) as e:
        http.get_model_metadata("nope")
    assert e.value.status() == "404" and server.name in e.value.message()
    idx = http.get_model_repository_index()
    assert idx == [{"name": server.name, "version": "1", "state": "READY"}]


def test_health_and_metadata_grpc(server, grpc):
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert grpc.is_model_ready(server.name)
    md = grpc.get_server_metadata()
    assert md.name == "acl_bundle" and "binary_tensor_data" in md.extensions
    mm = grpc.get_model_metadata(server.name)
    assert [(t.name, t.datatype, list(t.shape)) for t in mm.inputs] == [("x", "FP32", [-1, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in mm.outputs] == [("y", "FP32", [-1, 4])]
    cfg = grpc.get_model_config(server.name).config
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [8]
    with pytest.raises(InferenceServerException) as e:
        grpc.get_model_metadata("nope")
    assert "StatusCode.NOT_FOUND" in e.value.status() and server.name in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        grpc.get_model_metadata(server.name, model_version="7")
    assert "NOT_FOUND" in e.value.status() and "'1'" in e.value.message()


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_http(server, http, rows, binary):
    x = _x(rows, seed=rows)
    y, version, r = _http_infer(http, server.name, x, binary=binary)
    assert y.shape == (rows, 4)  # padding rows (3 -> batch 4) dropped
    _check(y, version, x)


def test_infer_http_all_outputs_binary_by_default(server, http):
    x = _x(2)
    inp = httpclient.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(x)
    r = http.infer(server.name, [inp], request_id="req-7")  # no outputs named: binary_data_output
    assert r.get_response()["id"] == "req-7"
    assert r.get_output("y")["parameters"]["binary_data_size"] == 2 * 4 * 4
    _check(r.as_numpy("y"), r.get_response()["parameters"]["weight_version"], x)


@pytest.mark.parametrize("rows", [1, 5, 8])
def test_infer_grpc(server, grpc, rows):
    x = _x(rows, seed=10 + rows)
    y, version, r = _grpc_infer(grpc, server.name, x)
    assert y.shape == (rows, 4)
    _check(y, version, x)


def test_load_model_files_is_a_hot_update_http(server, http):
    x = _x(4, seed=3)
    _, before, _ = _http_infer(http, server.name, x)
    w = new_weights(server.weights, seed=101)
    http.load_model(server.name, headers=AUTH_HTTP, config="{}", files={"file:1/weights.npz": npz_bytes(w)})
    PUSHED[before + 1] = w
    y, version, _ = _http_infer(http, server.name, x)
    assert version == before + 1
    _check(y, version, x)
    assert http.is_model_ready(server.name)


def test_load_model_files_is_a_hot_update_grpc(server, grpc):
    from safetensors.numpy import save

    x = _x(2, seed=4)
    _, before, _ = _grpc_infer(grpc, server.name, x)
    w = new_weights(server.weights, seed=202)
    # two files, each with some of the variables: one atomic update, one new version
    first = {k: w[k] for k in ("fc0.weight", "fc0.bias")}
    second = {k: w[k] for k in ("fc1.weight", "fc1.bias")}
    grpc.load_model(server.name, headers=AUTH_GRPC,
                    files={"file:a.npz": npz_bytes(first), "file:b.safetensors": save(second)})
    PUSHED[before + 1] = w
    y, version, _ = _grpc_infer(grpc, server.name, x)
    assert version == before + 1
    _check(y, version, x)


def test_partial_update_keeps_the_other_variables(server, http):
    x = _x(1, seed=5)
    _, before, _ = _http_infer(http, server.name, x)
    bias = np.full((4,), 3.0, np.float32)
    http.load_model(server.name, headers=AUTH_HTTP, files={"file:bias.npz": npz_bytes({"fc1.bias": bias})})
    PUSHED[before + 1] = dict(PUSHED[before], **{"fc1.bias": bias})
    y, version, _ = _http_infer(http, server.name, x)
    assert version == before + 1
    _check(y, version, x)


def test_plain_weights_endpoint(server, http):
    x = _x(3, seed=6)
    _, before, _ = _http_infer(http, server.name, x)
    w = new_weights(server.weights, seed=303)
    status, body, _ = server.request("PUT", f"/v2/models/{server.name}/weights", npz_bytes(w),
                                     {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-npz"})
    assert status == 200, body
    import json

    reply = json.loads(body)
    assert reply["weight_version"] == before + 1 and sorted(reply["variables"]) == sorted(w)
    PUSHED[before + 1] = w
    y, version, _ = _http_infer(http, server.name, x)
    assert version == before + 1
    _check(y, version, x)


def test_metrics_count_what_happened(server, http):
    x = _x(1)
    _http_infer(http, server.name, x)
    status, body, headers = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    version = max(PUSHED)
    assert f"acl_bundle_weight_version {float(version)}" in text
    assert 'acl_bundle_requests_total{code="200",endpoint="infer",protocol="http"}' in text
    assert 'acl_bundle_updates_total{outcome="ok",source="http"}' in text
    assert "acl_bundle_batch_size_bucket" in text and "acl_bundle_update_commit_seconds_count" in text


def test_grpc_load_reports_the_new_version_in_metadata(server, grpc):
    import grpc as grpclib
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = _x(1, seed=8)
    _, before, _ = _grpc_infer(grpc, server.name, x)
    w = new_weights(server.weights, seed=404)
    req = service_pb2.RepositoryModelLoadRequest(model_name=server.name)
    req.parameters["file:w.npz"].bytes_param = npz_bytes(w)
    with grpclib.insecure_channel(server.grpc_url) as ch:
        _, call = service_pb2_grpc.GRPCInferenceServiceStub(ch).RepositoryModelLoad.with_call(
            req, metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert dict(call.initial_metadata())["weight_version"] == str(before + 1)
    PUSHED[before + 1] = w
    y, version, _ = _grpc_infer(grpc, server.name, x)
    assert version == before + 1
    _check(y, version, x)
