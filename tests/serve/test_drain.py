"""SIGTERM under load: every request sent gets a response (ok or 503), none is cut off; exit 0 when drained.

Looping tritonclient HTTP clients (and a weight pusher) run while the server is told to
stop.  A client's loop ends at its first 503 or refused connection (the listener is
closed); anything else -- a reset, a connection closed without a response, a 500 -- is a
request the drain cut off.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import reference
from helpers.serve import TOKEN, new_weights, npz_bytes, serve_process, sigterm_under_load


def _outcome(fn) -> str:
    try:
        fn()
        return "ok"
    except InferenceServerException as e:
        return f"status {e.status()}: {e.message()}"
    except ConnectionRefusedError:
        return "refused"
    except Exception as e:  # a reset, a connection closed mid-request: cut off
        return f"cut off: {type(e).__name__}: {e}"


def _loop_infer(srv, outcomes: list, stop_at: threading.Event) -> None:
    x = np.random.default_rng(threading.get_ident() % 1000).standard_normal((2, 8)).astype(np.float32)
    c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
    inp = httpclient.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(x)
    try:
        while True:
            t0 = time.monotonic()
            got: list = []
            res = _outcome(lambda got=got: got.append(c.infer(srv.name, [inp]).as_numpy("y")))
            outcomes.append((t0, res))
            if res != "ok" or stop_at.is_set() and time.monotonic() > stop_at.deadline:  # type: ignore[attr-defined]
                break
            assert got[0].shape == (2, 4)
    finally:
        c.close()


def _loop_push(srv, outcomes: list) -> None:
    i = 0
    while True:
        i += 1
        body = npz_bytes(new_weights(srv.weights, seed=i))
        t0 = time.monotonic()

        def push(body: bytes = body) -> None:
            status, data, _ = srv.request("PUT", f"/v2/models/{srv.name}/weights", body,
                                          {"Authorization": f"Bearer {TOKEN}"})
            if status != 200:
                raise InferenceServerException(data.decode(errors="replace"), status=str(status))

        res = _outcome(push)
        outcomes.append((t0, res))
        if res != "ok":
            break


def _drain_under_load(tmp_path, clients: int, runs: int) -> None:
    for run in range(runs):
        (tmp_path / f"r{run}").mkdir()
        with serve_process(tmp_path / f"r{run}", "--max-queue-delay-us", "20000", check_exit=False) as srv:
            outcomes: list = []
            stop_at = threading.Event()
            stop_at.deadline = time.monotonic() + 60  # type: ignore[attr-defined]
            loads = [partial(_loop_infer, srv, outcomes, stop_at) for _ in range(clients)]
            code, t_sig = sigterm_under_load(srv, [*loads, partial(_loop_push, srv, outcomes)], stop_at, 1.5)
            cut = [r for _, r in outcomes if r not in ("ok", "refused") and not r.startswith("status 503")]
            assert not cut, (cut, srv.log()[-3000:])
            assert code == 0, srv.log()[-3000:]
            before = sum(1 for t0, r in outcomes if r == "ok" and t0 < t_sig)
            assert before > clients, outcomes[-20:]  # the load really ran
            assert "SIGTERM: draining" in srv.log() and "the drain did not finish" not in srv.log()


def test_sigterm_under_load_answers_every_request_and_exits_0(tmp_path):
    _drain_under_load(tmp_path, clients=4, runs=1)


@pytest.mark.slow
def test_sigterm_under_heavy_load_five_times(tmp_path):
    _drain_under_load(tmp_path, clients=48, runs=5)


def test_new_requests_on_open_connections_get_503_and_health_is_not_ready_at_once(tmp_path):
    # a request waiting 3 s for its batch keeps the drain open while the other connections ask
    with serve_process(tmp_path, "--max-queue-delay-us", "3000000", check_exit=False) as srv:
        c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
        c3 = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
        assert c.is_server_ready() and c3.is_server_live()  # both connections open (keep-alive) before the signal
        x = np.ones((1, 8), np.float32)
        result: list = []

        def slow() -> None:
            c2 = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
            inp = httpclient.InferInput("x", [1, 8], "FP32")
            inp.set_data_from_numpy(x)
            result.append(c2.infer(srv.name, [inp]).as_numpy("y"))
            c2.close()

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        os.kill(srv.proc.pid, signal.SIGTERM)
        time.sleep(0.2)  # well inside the drain's 1 s idle grace
        assert not c.is_server_ready()
        with pytest.raises(InferenceServerException) as e:
            c3.get_server_metadata()
        assert e.value.status() == "503" and "shutting down" in e.value.message()
        c4 = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
        with pytest.raises(InferenceServerException) as e:  # a new connection in the first second: answered 503
            c4.get_server_metadata()
        assert e.value.status() == "503"
        time.sleep(1.2)
        c4.close()
        c4 = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
        with pytest.raises(ConnectionRefusedError):  # then the listener is closed
            c4.get_server_metadata()
        for client in (c, c3, c4):
            client.close()
        t.join(30)
        assert srv.proc.wait(30) == 0, srv.log()
        np.testing.assert_allclose(result[0], reference(x, srv.weights), rtol=1e-5, atol=1e-5)


def test_past_the_drain_timeout_requests_still_running_get_503_and_the_exit_status_is_3(tmp_path):
    with serve_process(tmp_path, "--max-queue-delay-us", "5000000", "--drain-timeout", "0.5",
                       check_exit=False) as srv:
        errors: list = []

        def slow() -> None:
            c = httpclient.InferenceServerClient(srv.http_url, network_timeout=30)
            inp = httpclient.InferInput("x", [1, 8], "FP32")
            inp.set_data_from_numpy(np.ones((1, 8), np.float32))
            errors.append(_outcome(lambda: c.infer(srv.name, [inp])))
            c.close()

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        os.kill(srv.proc.pid, signal.SIGTERM)
        code = srv.proc.wait(30)
        t.join(30)
        assert code == 3, srv.log()
        assert errors == ["status 503: the server stopped before this request finished (drain timeout)"], errors
        assert "the drain did not finish within 0.5 s" in srv.log()
