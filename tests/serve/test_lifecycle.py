"""Readiness, --require-weights, --watch (checkpoint step in responses), SIGTERM drain, startup errors, Python API."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

from acl_bundle import BundleModel, write_checkpoint
from helpers import reference
from helpers.serve import TOKEN, build_bundle, free_port, new_weights, npz_bytes, serve_process, wait_ready


def _infer_json(srv, x):
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    status, data, _ = srv.request("POST", f"/v2/models/{srv.name}/infer", body)
    return status, json.loads(data)


def test_require_weights_not_ready_until_the_first_update(tmp_path):
    with serve_process(tmp_path, "--require-weights", wait="live", bundle_kwargs={"init": False}) as srv:
        wait_ready(srv, ready=False)
        time.sleep(0.5)  # model loaded by now; still not ready: no weights yet
        assert srv.request("GET", "/v2/health/ready")[0] == 503
        assert srv.request("GET", f"/v2/models/{srv.name}/ready")[0] == 503
        x = np.ones((1, 8), np.float32)
        status, reply = _infer_json(srv, x)
        assert status == 503 and "first weight update" in reply["error"]
        w = new_weights(srv.weights, seed=1)
        status, _, _ = srv.request("PUT", f"/v2/models/{srv.name}/weights", npz_bytes(w),
                                   {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        assert srv.request("GET", "/v2/health/ready")[0] == 200
        status, reply = _infer_json(srv, x)
        assert status == 200 and reply["parameters"] == {"weight_version": 1}
        np.testing.assert_allclose(np.array(reply["outputs"][0]["data"]).reshape(1, 4), reference(x, w), rtol=1e-5,
                                   atol=1e-5)


def test_watch_applies_checkpoints_and_responses_carry_the_step(tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    _, w0 = build_bundle(tmp_path, "probe")
    w5 = new_weights(w0, seed=5)
    write_checkpoint(ckpts, w5, step=5)
    with serve_process(tmp_path, "--watch", str(ckpts), "--poll-interval", "0.05", "--require-weights") as srv:
        x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
        # ready means step 5 was applied (require-weights); the step comes with the version that produced the result
        status, reply = _infer_json(srv, x)
        assert status == 200 and reply["parameters"] == {"weight_version": 1, "checkpoint_step": 5}
        np.testing.assert_allclose(np.array(reply["outputs"][0]["data"]).reshape(2, 4), reference(x, w5),
                                   rtol=1e-5, atol=1e-5)
        w9 = new_weights(w0, seed=9)
        write_checkpoint(ckpts, w9, step=9)
        deadline = time.monotonic() + 30
        while reply["parameters"].get("checkpoint_step") != 9 and time.monotonic() < deadline:
            time.sleep(0.01)
            status, reply = _infer_json(srv, x)
            # never the new version without its step (nor the old step with it), however soon after the commit
            assert reply["parameters"] in ({"weight_version": 1, "checkpoint_step": 5},
                                           {"weight_version": 2, "checkpoint_step": 9}), reply["parameters"]
        assert reply["parameters"] == {"weight_version": 2, "checkpoint_step": 9}
        np.testing.assert_allclose(np.array(reply["outputs"][0]["data"]).reshape(2, 4), reference(x, w9),
                                   rtol=1e-5, atol=1e-5)
        # a wire update after the checkpoint: its version has no checkpoint step
        status, _, _ = srv.request("PUT", f"/v2/models/{srv.name}/weights", npz_bytes(w5),
                                   {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        status, reply = _infer_json(srv, x)
        assert reply["parameters"] == {"weight_version": 3}
        _, metrics, _ = srv.request("GET", "/metrics")
        assert "acl_bundle_checkpoint_step 9.0" in metrics.decode()
        assert 'acl_bundle_updates_total{outcome="ok",source="watch"} 2.0' in metrics.decode()


def _metric(srv, name):
    _, body, _ = srv.request("GET", "/metrics")
    return next(float(line.split()[1]) for line in body.decode().splitlines() if line.startswith(name + " "))


def test_watch_guard_options_no_finite_check_and_allow_step_reset(tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    _, w0 = build_bundle(tmp_path, "probe")
    bad = new_weights(w0, seed=3)
    bad["fc0.bias"][1] = np.nan
    write_checkpoint(ckpts, bad, step=3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with serve_process(tmp_path / "a", "--watch", str(ckpts), "--poll-interval", "0.05") as srv:
        deadline = time.monotonic() + 30
        while "skipping checkpoint" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "skipping checkpoint" in srv.log() and "fc0.bias" in srv.log(), srv.log()
        assert _metric(srv, "acl_bundle_weight_version") == 0.0  # the served weights are kept
    with serve_process(tmp_path / "b", "--watch", str(ckpts), "--poll-interval", "0.05", "--no-finite-check",
                       "--allow-step-reset", "--require-weights") as srv:  # ready = the NaN checkpoint was applied
        assert _metric(srv, "acl_bundle_weight_version") == 1.0
        assert _metric(srv, "acl_bundle_checkpoint_step") == 3.0
        w1 = new_weights(w0, seed=1)
        write_checkpoint(ckpts, w1, step=1)  # a restarted trainer: lower step, committed later, applied
        x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
        deadline = time.monotonic() + 30
        while _metric(srv, "acl_bundle_weight_version") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, reply = _infer_json(srv, x)
        assert status == 200 and reply["parameters"] == {"weight_version": 2, "checkpoint_step": 1}
        np.testing.assert_allclose(np.array(reply["outputs"][0]["data"]).reshape(2, 4), reference(x, w1),
                                   rtol=1e-5, atol=1e-5)


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path):
    # a long queue delay keeps requests in flight (waiting for a batch) when SIGTERM arrives
    with serve_process(tmp_path, "--max-queue-delay-us", "1500000", check_exit=False) as srv:
        x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
        results = []

        def client():
            c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
            inp = httpclient.InferInput("x", [1, 8], "FP32")
            inp.set_data_from_numpy(x)
            results.append(c.infer(srv.name, [inp]).as_numpy("y"))
            c.close()

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.4)  # the three requests are queued, well inside the 1.5 s delay
        t0 = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        code = srv.proc.wait(30)
        for t in threads:
            t.join(10)
        assert code == 0, srv.log()
        assert time.monotonic() - t0 < 15
        assert len(results) == 3
        for y in results:
            np.testing.assert_allclose(y, reference(x, srv.weights), rtol=1e-5, atol=1e-5)
        assert "SIGTERM: draining" in srv.log() and "closed bundle" in srv.log()


def test_a_bundle_that_does_not_load_exits_1_with_the_reason(tmp_path):
    bad = tmp_path / "bad.om"
    bad.write_bytes(b"not a bundle at all")
    r = subprocess.run([sys.executable, "-m", "acl_bundle", "serve", str(bad), "--sim", "--http-port", "0",
                        "--grpc-port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    # one error line, printed once, with the runtime's reason and no unrelated get_context trailer (issue 23)
    assert len(errors) == 1 and errors[0].startswith("acl-bundle: error: acl.mdl.bundle_load_from_file returned"), (
        r.stderr
    )
    assert "get_context" not in r.stderr and "unexpected" not in r.stderr, r.stderr


@pytest.mark.parametrize("busy", ["http", "grpc"])
def test_a_busy_port_exits_1_naming_it(tmp_path, busy):
    import socket

    om, _ = build_bundle(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        other = free_port()
        ports = (port, other) if busy == "http" else (other, port)
        r = subprocess.run([sys.executable, "-m", "acl_bundle", "serve", str(om), "--sim", "--http-port", str(ports[0]),
                            "--grpc-port", str(ports[1])], capture_output=True, text=True, timeout=60)
    # one line, printed once, with the OS's reason (gRPC's own bind error used to lose it), no log record (issue 23)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"acl-bundle: error: cannot listen for {busy.upper() if busy == 'http' else 'gRPC'} on "
                        f"127.0.0.1:{port}: Address already in use\n"), r.stderr


@pytest.mark.parametrize("args, expect", [
    (["missing.om"], "no such bundle file"),
    (["{om}", "--update-token-file", "nofile"], "cannot read the update token file"),
    (["{om}", "--update-token-file", "{short}"], "at least 16"),
    (["{om}", "--http-port", "70000"], "--http-port must be 0..65535"),
    (["{om}", "--max-queue-delay-us", "-1"], "--max-queue-delay-us must be >= 0"),
    (["{om}", "--header-timeout", "0"], "--header-timeout must be a positive number of seconds"),
    (["{om}", "--max-connections", "0"], "--max-connections must be a positive integer"),
    (["{om}", "--max-header-bytes", "-5"], "--max-header-bytes must be a positive integer"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, expect):
    om, _ = build_bundle(tmp_path)
    short = tmp_path / "short"
    short.write_text("abc")
    args = [a.format(om=om, short=short) for a in args]
    r = subprocess.run([sys.executable, "-m", "acl_bundle", "serve", *args, "--sim"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and expect in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_help_does_not_import_the_server_stack():
    code = (
        "import sys; from acl_bundle import cli; cli.main(['--help']); "
        "heavy = [m for m in ('uvicorn', 'starlette', 'grpc', 'tritonclient', 'prometheus_client') "
        "if m in sys.modules]; "
        "sys.exit(len(heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "serve" in r.stdout


def test_python_api_serves_an_open_model_and_leaves_it_open(make_bundle):
    """Server(ServeConfig(model=BundleModel)) in a background thread, on a static-shape bundle."""
    from acl_bundle import sim
    from acl_bundle.serve import ServeConfig, Server

    om, w = make_bundle()  # static shape (1, 8)
    with BundleModel(om, acl=sim.acl) as m:
        with Server(ServeConfig(m, http_port=0, grpc_port=0, model_name="static")) as s:
            c = httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")
            x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)
            inp = httpclient.InferInput("x", [1, 8], "FP32")
            inp.set_data_from_numpy(x)
            r = c.infer("static", [inp])
            np.testing.assert_allclose(r.as_numpy("y"), reference(x, w), rtol=1e-5, atol=1e-5)
            assert c.get_model_metadata("static")["inputs"][0]["shape"] == [1, 8]
            inp = httpclient.InferInput("x", [2, 8], "FP32")
            inp.set_data_from_numpy(np.zeros((2, 8), np.float32))
            with pytest.raises(Exception, match="expects \\[1, 8\\]"):
                c.infer("static", [inp])
            c.close()
        assert s.exit_code == 0
        assert not m.closed  # the caller's model: served, not closed
        np.testing.assert_allclose(m.infer(x), reference(x, w), rtol=1e-5, atol=1e-5)


def test_a_stop_during_the_bundle_load_never_logs_ready_and_closes_the_model(make_bundle, monkeypatch, caplog):
    """Ctrl-C / SIGTERM while the bundle loads (issue 23): no "model ready" after the stop, the loaded model closed."""
    import logging
    import threading

    import acl_bundle.model as model_module
    from acl_bundle.serve import ServeConfig, Server

    om, _ = make_bundle()
    loading = threading.Event()
    opened = []

    class SlowLoad(model_module.BundleModel):
        def __init__(self, *a, **k):
            loading.set()
            time.sleep(0.5)  # the stop arrives now
            super().__init__(*a, **k)
            opened.append(self)

    monkeypatch.setattr(model_module, "BundleModel", SlowLoad)
    caplog.set_level(logging.INFO, logger="acl_bundle")
    s = Server(ServeConfig(str(om), http_port=0, grpc_port=0))
    t = threading.Thread(target=lambda: s.start(timeout=60))
    t.start()
    assert loading.wait(30)
    s.stop()
    t.join(60)
    s.stop(60)
    assert s.exit_code == 0 and opened and opened[0].closed
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("acl_bundle.serve")]
    assert not any(" ready (" in m for m in messages), messages
