"""Triton's extensions beyond the core protocol, read by tritonclient (HTTP and gRPC) from a real server process:
statistics, streaming."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import reference
from helpers.serve import TOKEN, new_weights, npz_bytes, serve_process

VERSIONS: dict[int, dict] = {}  # weight version -> its weights (the stream test pushes one)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("ext")) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv):
    c = httpclient.InferenceServerClient(srv.http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(srv):
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    yield c
    c.close()


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def _infer_http(c, x):
    i = httpclient.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return c.infer("mlp", [i]).as_numpy("y")


def _infer_grpc(c, x):
    i = grpcclient.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return c.infer("mlp", [i]).as_numpy("y")


def _stats(http, grpc, **kw):
    """The model's entry from both clients (they must agree once no request runs)."""
    h = http.get_inference_statistics("mlp", **kw)["model_stats"]
    g = grpc.get_inference_statistics("mlp", as_json=True, **kw)["model_stats"]
    assert len(h) == len(g) == 1
    return h[0], g[0]


def _count(entry, key):
    return int(entry["inference_stats"][key].get("count", 0))


def test_statistics_count_the_requests_made(srv, http, grpc):
    h0, _ = _stats(http, grpc)
    base = {k: _count(h0, k) for k in ("success", "fail")}
    base_inf, base_exec = int(h0.get("inference_count", 0)), int(h0.get("execution_count", 0))
    sizes0 = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in h0.get("batch_stats", [])}
    for seed in range(3):  # sequential: each request is its own execution
        x = _x(2, seed)
        np.testing.assert_allclose(_infer_http(http, x), reference(x, srv.weights), rtol=1e-5, atol=1e-5)
    for seed in range(2):
        x = _x(1, 10 + seed)
        np.testing.assert_allclose(_infer_grpc(grpc, x), reference(x, srv.weights), rtol=1e-5, atol=1e-5)
    bad = httpclient.InferInput("x", [1, 7], "FP32")  # wrong shape: refused after naming the model
    bad.set_data_from_numpy(np.zeros((1, 7), np.float32))
    with pytest.raises(InferenceServerException):
        http.infer("mlp", [bad])
    h, g = _stats(http, grpc)
    for e in (h, g):
        assert e["name"] == "mlp" and e["version"] == "1"
        assert _count(e, "success") - base["success"] == 5
        assert _count(e, "fail") - base["fail"] == 1
        assert int(e["inference_count"]) - base_inf == 3 * 2 + 2 * 1  # rows, not requests
        assert int(e["execution_count"]) - base_exec == 5
        for k in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            assert int(e["inference_stats"][k]["ns"]) > 0, k
        sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in e["batch_stats"]}
        assert sizes.get(2, 0) - sizes0.get(2, 0) == 3 and sizes.get(1, 0) - sizes0.get(1, 0) == 2
        assert int(e["last_inference"]) > 0
    assert int(h["inference_stats"]["success"]["ns"]) >= int(h["inference_stats"]["compute_infer"]["ns"])


def test_statistics_routes_and_errors(srv, http, grpc):
    assert [m["name"] for m in http.get_inference_statistics()["model_stats"]] == ["mlp"]  # every model
    assert [m["name"] for m in grpc.get_inference_statistics(as_json=True)["model_stats"]] == ["mlp"]
    h, g = _stats(http, grpc, model_version="1")
    assert h["name"] == g["name"] == "mlp"
    status, body, _ = srv.request("GET", "/v2/models/mlp/versions/2/stats")
    assert status == 404 and b"version" in body
    status, body, _ = srv.request("GET", "/v2/models/nope/stats")
    assert status == 404 and b"unknown model 'nope'" in body
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as ei:
        grpc.get_inference_statistics("nope")
    assert "NOT_FOUND" in str(ei.value.status())
    assert "statistics" in http.get_server_metadata()["extensions"]


def test_stream_infer_results_equal_numpy_for_the_version_each_names(srv, grpc):
    import queue

    VERSIONS.setdefault(0, srv.weights)
    versions = {int(http_version(srv)): VERSIONS[int(http_version(srv))]}
    results: queue.Queue = queue.Queue()
    grpc.start_stream(callback=lambda result, error: results.put((result, error)))
    xs = {}

    def send(rid: str, x: np.ndarray) -> None:
        xs[rid] = x
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        grpc.async_stream_infer("mlp", [inp], request_id=rid)

    try:
        for i in range(12):
            send(str(i), _x(1 + i % 4, 100 + i))
        got = [results.get(timeout=30) for _ in range(12)]
        w1 = new_weights(srv.weights, 7)  # a push while the stream is open
        status, body, _ = srv.request("PUT", "/v2/models/mlp/weights", npz_bytes(w1),
                                      {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-npz"})
        assert status == 200, body
        versions[json.loads(body)["weight_version"]] = w1
        for i in range(12, 24):
            send(str(i), _x(1 + i % 4, 100 + i))
        bad = grpcclient.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        grpc.async_stream_infer("mlp", [bad], request_id="bad")
        send("after", _x(2, 999))  # the stream goes on after a refusal
        got += [results.get(timeout=30) for _ in range(14)]
    finally:
        grpc.stop_stream()
    ids, seen = [], set()
    for result, error in got:
        if error is not None:
            assert "shape" in str(error) or "x" in str(error)
            ids.append("bad")
            continue
        r = result.get_response()
        v = r.parameters["weight_version"].int64_param  # the version that produced it
        np.testing.assert_allclose(result.as_numpy("y"), reference(xs[r.id], versions[v]), rtol=1e-5, atol=1e-5)
        ids.append(r.id)
        seen.add(v)
    assert ids == [str(i) for i in range(24)] + ["bad", "after"]  # in request order
    assert seen == set(versions)  # both versions served, each checked against its own weights
    VERSIONS.update(versions)


def http_version(srv) -> int:
    status, body, _ = srv.request("POST", "/v2/repository/models/mlp/load", b"{}",
                                  {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    return json.loads(body)["weight_version"]


AUTH = {"Authorization": f"Bearer {TOKEN}"}
GAUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def regions():
    import tritonclient.utils.shared_memory as shm

    made = []

    def make(name: str, nbytes: int):
        h = shm.create_shared_memory_region(name, f"/acl_bundle_test_{os.getpid()}_{name}", nbytes)
        made.append(h)
        return h, f"/acl_bundle_test_{os.getpid()}_{name}"

    yield make
    for h in made:
        shm.destroy_shared_memory_region(h)


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_system_shared_memory_inputs_and_outputs(srv, http, grpc, regions, proto):
    import tritonclient.utils.shared_memory as shm

    c, mod, auth = (http, httpclient, AUTH) if proto == "http" else (grpc, grpcclient, GAUTH)
    x = _x(4, 21)
    h_in, k_in = regions(f"in_{proto}", x.nbytes + 64)
    h_out, k_out = regions(f"out_{proto}", 4 * 4 * 4)
    shm.set_shared_memory_region(h_in, [x], offset=64)
    c.register_system_shared_memory(f"in_{proto}", k_in, x.nbytes + 64, headers=auth)
    c.register_system_shared_memory(f"out_{proto}", k_out, 64, headers=auth)
    try:
        st = c.get_system_shared_memory_status(**({"as_json": True} if proto == "grpc" else {}))
        names = [r["name"] for r in st] if proto == "http" else list(st["regions"])
        assert {f"in_{proto}", f"out_{proto}"} <= set(names)
        inp = mod.InferInput("x", [4, 8], "FP32")
        inp.set_shared_memory(f"in_{proto}", x.nbytes, offset=64)
        out = mod.InferRequestedOutput("y", **({"binary_data": True} if proto == "http" else {}))
        out.set_shared_memory(f"out_{proto}", 64)
        r = c.infer("mlp", [inp], outputs=[out])
        assert r.get_output("y") is not None
        y = shm.get_contents_as_numpy(h_out, np.float32, [4, 4])
        version = (r.get_response()["parameters"]["weight_version"] if proto == "http"
                   else r.get_response().parameters["weight_version"].int64_param)
        assert version == http_version(srv)
        VERSIONS.setdefault(0, srv.weights)
        np.testing.assert_allclose(y, reference(x, VERSIONS[version]), rtol=1e-5, atol=1e-5)
        # a region span past its registered size, an unknown region: clear errors
        bad = mod.InferInput("x", [4, 8], "FP32")
        bad.set_shared_memory(f"in_{proto}", x.nbytes, offset=128)
        with pytest.raises(InferenceServerException, match="outside region"):
            c.infer("mlp", [bad])
        bad.set_shared_memory("nope", x.nbytes)
        with pytest.raises(InferenceServerException, match="'nope' is not registered"):
            c.infer("mlp", [bad])
        # the object truncated behind the server's back: refused, never read past its end
        os.truncate(f"/dev/shm/{k_in.lstrip('/')}", 16)
        with pytest.raises(InferenceServerException, match="no longer holds the region"):
            c.infer("mlp", [inp], outputs=[out])
    finally:
        c.unregister_system_shared_memory(f"in_{proto}", headers=auth)
        c.unregister_system_shared_memory(f"out_{proto}", headers=auth)
    st = c.get_system_shared_memory_status(**({"as_json": True} if proto == "grpc" else {}))
    assert not (st if proto == "http" else st.get("regions"))


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_shared_memory_registration_is_checked(srv, http, grpc, regions, proto):
    c, auth = (http, AUTH) if proto == "http" else (grpc, GAUTH)
    _, key = regions(f"small_{proto}", 100)
    with pytest.raises(InferenceServerException, match="past the end"):
        c.register_system_shared_memory(f"small_{proto}", key, 64, offset=64, headers=auth)
    with pytest.raises(InferenceServerException, match="cannot open shared memory key"):
        c.register_system_shared_memory("gone", "/acl_bundle_no_such_key", 8, headers=auth)
    with pytest.raises(InferenceServerException, match="not a POSIX shared memory name"):
        c.register_system_shared_memory("evil", "/../etc/passwd", 8, headers=auth)
    with pytest.raises(InferenceServerException, match="update token is not valid"):
        c.register_system_shared_memory(f"small_{proto}", key, 64,
                                        headers=dict.fromkeys(auth, "Bearer wrong"))
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported"):
        c.get_cuda_shared_memory_status()
    assert "system_shared_memory" in http.get_server_metadata()["extensions"]
