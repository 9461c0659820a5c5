"""Load on loopback: 32 concurrent tritonclient clients (16 HTTP, 16 gRPC) while weights stream in at 10 Hz.

Every response must succeed and equal the numpy forward pass of the weight version it
reports (no torn or mislabelled result, whatever batch it was coalesced into).
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import reference
from helpers.serve import TOKEN, new_weights, npz_bytes, serve_process


def _run_load(srv, requests_per_client: int, clients: int = 32, rate_hz: float = 10.0) -> dict:
    pushed = {0: srv.weights}
    results: list[tuple[np.ndarray, np.ndarray, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def updater() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            w = new_weights(srv.weights, seed=1000 + k)
            t0 = time.monotonic()
            try:
                status, body, _ = srv.request("PUT", f"/v2/models/{srv.name}/weights", npz_bytes(w),
                                              {"Authorization": f"Bearer {TOKEN}"})
                if status != 200:
                    errors.append(f"update: {status} {body[:200]!r}")
                    return
                with lock:
                    pushed[json.loads(body)["weight_version"]] = w
            except Exception as e:  # recorded, fails the test
                errors.append(f"update: {e!r}")
                return
            stop.wait(max(0.0, 1 / rate_hz - (time.monotonic() - t0)))

    def client(i: int) -> None:
        use_grpc = i % 2 == 1
        rng = np.random.default_rng(i)
        c = (
            grpcclient.InferenceServerClient(srv.grpc_url)
            if use_grpc
            else httpclient.InferenceServerClient(srv.http_url)
        )
        mod = grpcclient if use_grpc else httpclient
        try:
            start.wait()
            for _ in range(requests_per_client):
                rows = int(rng.integers(1, 4))
                x = rng.standard_normal((rows, 8)).astype(np.float32)
                inp = mod.InferInput("x", [rows, 8], "FP32")
                inp.set_data_from_numpy(x)
                r = c.infer(srv.name, [inp])
                params = r.get_response().parameters if use_grpc else r.get_response()["parameters"]
                version = params["weight_version"].int64_param if use_grpc else params["weight_version"]
                with lock:
                    results.append((x, r.as_numpy("y"), int(version)))
        except Exception as e:
            errors.append(f"client {i}: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    up = threading.Thread(target=updater)
    up.start()
    t0 = time.monotonic()
    for t in threads:
        t.join(600)
    elapsed = time.monotonic() - t0
    stop.set()
    up.join(30)
    assert not errors, errors[:5]
    assert len(results) == clients * requests_per_client
    bad = []
    for x, y, v in results:
        if v not in pushed:
            bad.append(f"version {v} was never pushed")
        elif not np.allclose(y, reference(x, pushed[v]), rtol=1e-5, atol=1e-5):
            bad.append(f"output of version {v} differs from numpy")
    assert not bad, f"{len(bad)} of {len(results)} responses wrong: {bad[:5]}"
    return {"versions": {v for _, _, v in results}, "elapsed": elapsed, "updates": max(pushed)}


def test_32_clients_while_updates_stream_at_10hz(tmp_path):
    with serve_process(tmp_path, "--max-queue-delay-us", "500") as srv:
        out = _run_load(srv, requests_per_client=25)
        assert srv.alive()
    # the responses span several weight versions, so updates really interleaved with serving
    assert len(out["versions"]) >= 2, out


@pytest.mark.slow
def test_32_clients_while_updates_stream_at_10hz_long(tmp_path):
    with serve_process(tmp_path, "--max-queue-delay-us", "500") as srv:
        out = _run_load(srv, requests_per_client=400)
        assert srv.alive()
    assert len(out["versions"]) >= 10, out
