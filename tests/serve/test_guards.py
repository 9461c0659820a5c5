"""Wire updates are guarded like the watcher (issue 23): NaN/Inf refused on every route, nothing changed,
rollback over the wire (REST route and gRPC load parameter) needs the token and restores outputs exactly.

A real ``acl-bundle serve`` process on loopback, started with no ``--sim`` and no ``ACL_BUNDLE_BACKEND``:
the bundle is in the simulator's format, so it runs there by itself.
"""

from __future__ import annotations

import base64
import json
import os

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import reference
from helpers.serve import TOKEN, new_weights, npz_bytes, serve_process

AUTH = {"Authorization": f"Bearer {TOKEN}"}
X = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    saved = os.environ.pop("ACL_BUNDLE_BACKEND", None)  # the child inherits no backend choice
    try:
        with serve_process(tmp_path_factory.mktemp("guards"), sim=False) as s:
            yield s
    finally:
        if saved is not None:
            os.environ["ACL_BUNDLE_BACKEND"] = saved


def _raw(srv) -> tuple[bytes, int]:
    """The served output's exact bytes (binary tensor data) and the weight version that produced it."""
    c = httpclient.InferenceServerClient(srv.http_url)
    try:
        inp = httpclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=True)
        r = c.infer(srv.name, [inp], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)])
        return r.as_numpy("y").tobytes(), r.get_response()["parameters"]["weight_version"]
    finally:
        c.close()


def _put(srv, weights, headers=AUTH):
    status, body, _ = srv.request("PUT", f"/v2/models/{srv.name}/weights", npz_bytes(weights), headers)
    return status, json.loads(body)


def _bad(weights, value):
    bad = {k: v.copy() for k, v in weights.items()}
    bad["fc1.bias"][1] = value
    return bad


def test_the_server_chose_the_simulator_by_itself(srv):
    y, version = _raw(srv)
    assert version == 0
    np.testing.assert_allclose(
        np.frombuffer(y, np.float32).reshape(3, 4), reference(X, srv.weights), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_push_is_refused_on_every_route_and_changes_nothing(srv, value):
    before = _raw(srv)
    bad = _bad(new_weights(srv.weights, seed=11), value)
    status, body = _put(srv, bad)
    assert status == 400 and "nothing changed" in body["error"] and "fc1.bias" in body["error"], body
    # repository load over REST (file: parameters, base64) and over gRPC (bytes_param)
    status, raw, _ = srv.request(
        "POST",
        f"/v2/repository/models/{srv.name}/load",
        json.dumps({"parameters": {"file:w.npz": base64.b64encode(npz_bytes(bad)).decode()}}).encode(),
        AUTH,
    )
    assert status == 400 and "nothing changed" in json.loads(raw)["error"]
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as e:
            g.load_model(srv.name, headers={"authorization": f"Bearer {TOKEN}"}, files={"file:w.npz": npz_bytes(bad)})
        assert "INVALID_ARGUMENT" in e.value.status() and "nothing changed" in e.value.message()
    finally:
        g.close()
    assert _raw(srv) == before  # bit-identical outputs, same version


def _grpc_rollback(srv, param, token=TOKEN):
    with grpc.insecure_channel(srv.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = service_pb2.RepositoryModelLoadRequest(model_name=srv.name)
        req.parameters["rollback"].CopyFrom(param)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        _, call = stub.RepositoryModelLoad.with_call(req, metadata=md, timeout=30)
        return int(dict(call.initial_metadata())["weight_version"])


def test_rollback_over_rest_and_grpc_restores_outputs_exactly_and_needs_the_token(srv):
    y0, v0 = _raw(srv)
    w1, w2 = new_weights(srv.weights, seed=21), new_weights(srv.weights, seed=22)
    assert _put(srv, w1)[0] == 200
    y1, v1 = _raw(srv)
    assert _put(srv, w2)[0] == 200
    y2, v2 = _raw(srv)
    assert v2 == v1 + 1 == v0 + 2 and len({y0, y1, y2}) == 3
    path = f"/v2/models/{srv.name}/weights/rollback"
    for headers in (None, {"Authorization": "Bearer wrong-token-but-long-enough-1234"}):
        status, _, _ = srv.request("POST", path, b"{}", headers or {})
        assert status == 401
    assert _raw(srv) == (y2, v2)
    status, body, _ = srv.request("POST", path, b"{}", AUTH)  # {} = the previous version
    body = json.loads(body)
    assert status == 200 and body["weight_version"] == v2 + 1 and body["restored_version"] == v1, body
    assert _raw(srv) == (y1, v2 + 1)  # the outputs of version v1, bit for bit
    status, body, _ = srv.request("POST", path, json.dumps({"to": v2}).encode(), AUTH)
    assert status == 200 and json.loads(body)["weight_version"] == v2 + 2
    assert _raw(srv) == (y2, v2 + 2)
    # the load-time weights came from the init graph, not an update: the host does not know them
    for bad, expect in (
        (json.dumps({"to": v0}).encode(), "nothing changed"),
        (b'{"to": 99}', "nothing changed"),
        (b'{"to": "x"}', "version number"),
        (b'{"step": 1}', "takes only 'to'"),
    ):
        status, body, _ = srv.request("POST", path, bad, AUTH)
        assert status == 400 and expect in json.loads(body)["error"], body
    assert _raw(srv) == (y2, v2 + 2)
    # gRPC: RepositoryModelLoad with the parameter "rollback" ("previous", or an int64 version)
    with pytest.raises(grpc.RpcError) as e:
        _grpc_rollback(srv, service_pb2.ModelRepositoryParameter(string_param="previous"), token=None)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    v = _grpc_rollback(srv, service_pb2.ModelRepositoryParameter(int64_param=v1))
    assert v == v2 + 3 and _raw(srv) == (y1, v2 + 3)
    v = _grpc_rollback(srv, service_pb2.ModelRepositoryParameter(string_param="previous"))
    assert v == v2 + 4 and _raw(srv) == (y2, v2 + 4)
    with pytest.raises(grpc.RpcError) as e:
        _grpc_rollback(srv, service_pb2.ModelRepositoryParameter(string_param="yesterday"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_finite_check_is_the_documented_opt_out_and_nan_outputs_stay_valid_json(tmp_path):
    with serve_process(tmp_path, "--no-finite-check") as s:
        bad = _bad(s.weights, np.nan)
        status, body = _put(s, bad)
        assert status == 200 and body["weight_version"] == 1
        # JSON has no NaN: a JSON infer response must still parse strictly; the NaN output goes as binary data
        req = {"inputs": [{"name": "x", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}
        status, raw, headers = s.request("POST", f"/v2/models/{s.name}/infer", json.dumps(req).encode())
        assert status == 200
        n = int(headers.get("inference-header-content-length", len(raw)))
        head = json.loads(raw[:n], parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
        out = head["outputs"][0]
        assert "data" not in out and out["parameters"]["binary_data_size"] == 3 * 4 * 4
        y = np.frombuffer(raw[n:], np.float32).reshape(3, 4)
        assert np.isnan(y[:, 1]).all() and np.isfinite(np.delete(y, 1, axis=1)).all()
