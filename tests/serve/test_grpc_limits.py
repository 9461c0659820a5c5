"""gRPC receive limits enforced before a message is parsed, and the gRPC drain, against a real server process.

Memory is the server's peak RSS (``VmHWM`` of /proc/<pid>/status, reset through clear_refs before each case)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from helpers import reference
from helpers.serve import TOKEN, free_port, npz_bytes, serve_process, sigterm_under_load

MiB = 1 << 20
INFER = "/inference.GRPCInferenceService/ModelInfer"
LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _reset_peak(pid: int) -> float:
    """Reset the peak RSS to the current RSS (Linux clear_refs 5) when allowed; return the baseline."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _hwm_mib(pid)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("glim"), "--max-request-bytes", str(64 * MiB)) as s:
        s.channel = grpc.insecure_channel(s.grpc_url, options=[("grpc.max_send_message_length", -1)])
        yield s
        s.channel.close()


def _raw_infer(srv, body: bytes, **kw):
    return srv.channel.unary_unary(INFER, response_deserializer=service_pb2.ModelInferResponse.FromString)(
        body, timeout=60, **kw)


def _assert_infers(url: str, x: np.ndarray, weights: dict) -> None:
    """One unary gRPC infer of ``x`` answers the numpy reference for ``weights``."""
    c = grpcclient.InferenceServerClient(url)
    i = grpcclient.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    try:
        np.testing.assert_allclose(c.infer("mlp", [i]).as_numpy("y"), reference(x, weights), rtol=1e-5, atol=1e-5)
    finally:
        c.close()


def test_oversize_infer_is_refused_before_it_is_buffered(srv):
    head = service_pb2.ModelInferRequest(
        model_name="mlp", inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[256 * MiB // 32, 8])]).SerializeToString()
    body = head + b"\x3a" + _varint(256 * MiB) + bytes(256 * MiB)  # raw_input_contents: 256 MiB, limit 64 MiB
    base = _reset_peak(srv.proc.pid)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        _raw_infer(srv, body)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in ei.value.details()
    grew = _hwm_mib(srv.proc.pid) - base
    assert grew < 2 * 64, f"the server's peak RSS grew by {grew:.0f} MiB for one refused 256 MiB message"
    assert time.monotonic() - t0 < 30
    assert srv.alive()


def test_a_million_tiny_inputs_are_refused_on_their_wire_bytes(srv):
    entry = service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1]).SerializeToString()
    one = b"\x2a" + _varint(len(entry)) + entry  # field 5 (inputs)
    body = service_pb2.ModelInferRequest(model_name="mlp").SerializeToString() + one * 1_000_000
    assert len(body) > 10 * MiB
    base = _reset_peak(srv.proc.pid)
    with pytest.raises(grpc.RpcError) as ei:
        _raw_infer(srv, body)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 256 input tensors" in ei.value.details()
    grew = _hwm_mib(srv.proc.pid) - base
    # received whole (gRPC's buffer and grpcio's bytes of it) but never parsed: parsed, it cost +546 MiB
    assert grew < 4 * len(body) / MiB, f"peak RSS grew by {grew:.0f} MiB for a {len(body) / MiB:.0f} MiB message"


@pytest.mark.parametrize("case, needle", [
    ("dims", "more than 128 dims"), ("parameters", "more than 64 request parameters"),
    ("garbage", "not a valid"),
])
def test_other_bounds_and_malformed_bytes(srv, case, needle):
    r = service_pb2.ModelInferRequest(model_name="mlp")
    if case == "dims":
        r.inputs.add(name="x", datatype="FP32", shape=[1] * 129)
    elif case == "parameters":
        for i in range(65):
            r.parameters[f"p{i}"].int64_param = i
    body = r.SerializeToString() if case != "garbage" else b"\x2a\xff\xff\xff\x0f"
    with pytest.raises(grpc.RpcError) as ei:
        _raw_infer(srv, body)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in ei.value.details()


def test_a_bounded_request_still_infers(srv):
    _assert_infers(srv.grpc_url, np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), srv.weights)


def test_an_unauthenticated_push_is_refused_before_its_message_is_read(srv):
    push = service_pb2.RepositoryModelLoadRequest(model_name="mlp")
    push.parameters["file:w.npz"].bytes_param = bytes(60 * MiB)
    body = push.SerializeToString()
    base = _reset_peak(srv.proc.pid)
    with pytest.raises(grpc.RpcError) as ei:
        srv.channel.unary_unary(LOAD)(body, timeout=60, metadata=(("authorization", "Bearer wrong"),))
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    grew = _hwm_mib(srv.proc.pid) - base
    assert grew < 30, f"peak RSS grew by {grew:.0f} MiB for a refused 60 MiB push"
    # the same push with the token (a real npz this time) is read and applied
    w = {k: v + 1 for k, v in srv.weights.items()}
    ok = service_pb2.RepositoryModelLoadRequest(model_name="mlp")
    ok.parameters["file:w.npz"].bytes_param = npz_bytes(w)
    srv.channel.unary_unary(LOAD)(ok.SerializeToString(), timeout=60,
                                  metadata=(("authorization", f"Bearer {TOKEN}"),))
    _assert_infers(srv.grpc_url, np.ones((1, 8), np.float32), w)


def test_sigterm_under_grpc_load_calls_finish_or_are_refused_unavailable(tmp_path):
    calls: list = []  # (started, status)
    stop = threading.Event()
    with serve_process(tmp_path, "--max-queue-delay-us", "500", token=False) as s:
        def client() -> None:
            c = grpcclient.InferenceServerClient(s.grpc_url)
            x = np.ones((1, 8), np.float32)
            i = grpcclient.InferInput("x", [1, 8], "FP32")
            i.set_data_from_numpy(x)
            while not stop.is_set():
                t = time.monotonic()
                try:
                    y = c.infer("mlp", [i], client_timeout=30).as_numpy("y")
                    np.testing.assert_allclose(y, reference(x, s.weights), rtol=1e-5, atol=1e-5)
                    calls.append((t, "OK"))
                except Exception as e:  # noqa: BLE001 - every outcome recorded
                    calls.append((t, str(e.status()) if hasattr(e, "status") else repr(e)))
                    time.sleep(0.001)
            c.close()

        code, t_sig = sigterm_under_load(s, [client] * 6, stop, 1.0)
    assert code == 0
    before = [st for t, st in calls if t < t_sig - 0.05]
    assert before and set(before) == {"OK"}  # calls well before the signal all completed
    after = [st for t, st in calls if t >= t_sig - 0.05]
    assert after.count("StatusCode.UNAVAILABLE") > 0
    odd = [st for st in after if st not in ("OK", "StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")]
    assert not odd, odd
    # grpc core cancels the calls that reach it after its shutdown began (before the client saw GOAWAY):
    # the drain keeps that window to the stop itself, a few calls of the thousands a looping client makes
    assert after.count("StatusCode.CANCELLED") <= max(6, len(after) // 100), after.count("StatusCode.CANCELLED")


def test_sigterm_ends_open_streams_unavailable_and_the_drain_completes(tmp_path):
    """An idle ModelStreamInfer stream and busy ones (closed-loop, results checked) all end UNAVAILABLE soon after
    SIGTERM, never with a wrong result; the drain completes (exit 0) well inside its 30 s timeout."""
    import queue

    ends: dict[str, str] = {}
    with serve_process(tmp_path, "--drain-timeout", "30", token=False) as s:
        x = np.ones((1, 8), np.float32)
        want = reference(x, s.weights)

        def stream(name: str, busy: bool) -> None:
            c = grpcclient.InferenceServerClient(s.grpc_url)
            i = grpcclient.InferInput("x", [1, 8], "FP32")
            i.set_data_from_numpy(x)
            got: queue.SimpleQueue = queue.SimpleQueue()
            c.start_stream(callback=lambda result, error: got.put((result, error)))
            try:
                while True:
                    if busy:
                        # the stream may have just ended: then this raises and its error is queued
                        with contextlib.suppress(InferenceServerException):
                            c.async_stream_infer("mlp", [i])
                    result, error = got.get(timeout=20)
                    if error is not None and error.status() is None:  # answered in the stream, which goes on
                        assert "shutting down" in error.message(), error.message()
                        continue
                    if error is not None:
                        ends[name] = str(error.status())
                        return
                    np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-5, atol=1e-5)
            except queue.Empty:
                ends[name] = "no end"
            finally:
                c.stop_stream()
                c.close()

        ts = [threading.Thread(target=stream, args=(f"busy{k}", True)) for k in range(3)]
        ts.append(threading.Thread(target=stream, args=("idle", False)))
        for t in ts:
            t.start()
        time.sleep(1.0)
        t_sig = time.monotonic()
        os.kill(s.proc.pid, signal.SIGTERM)
        code = s.proc.wait(30)
        took = time.monotonic() - t_sig
        for t in ts:
            t.join(30)
    assert code == 0
    assert took < 10, f"the drain took {took:.1f} s: an open stream held it"
    assert ends == dict.fromkeys(("busy0", "busy1", "busy2", "idle"), "StatusCode.UNAVAILABLE"), ends


def test_an_update_port_takes_pushes_over_the_infer_limit(tmp_path):
    up = free_port()
    with serve_process(tmp_path, "--max-request-bytes", str(1 * MiB), "--grpc-update-port", str(up)) as s:
        rng = np.random.default_rng(3)
        w = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in s.weights.items()}
        big = service_pb2.RepositoryModelLoadRequest(model_name="mlp")
        big.parameters["file:w.npz"].bytes_param = npz_bytes(w)
        big.parameters["config"].string_param = "x" * (2 * MiB)  # over the main port's 1 MiB, ignored when applied
        body = big.SerializeToString()
        auth = (("authorization", f"Bearer {TOKEN}"),)
        opts = [("grpc.max_send_message_length", -1)]
        with grpc.insecure_channel(s.grpc_url, options=opts) as main:
            with pytest.raises(grpc.RpcError) as ei:
                main.unary_unary(LOAD)(body, timeout=60, metadata=auth)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with grpc.insecure_channel(f"127.0.0.1:{up}", options=opts) as upd:
            upd.unary_unary(LOAD)(body, timeout=60, metadata=auth)  # the update port's limit: --max-update-bytes
            with pytest.raises(grpc.RpcError) as ei:  # and it serves nothing else
                upd.unary_unary(INFER)(b"", timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        _assert_infers(s.grpc_url, np.ones((2, 8), np.float32), w)


def _over_bound(case: str) -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name="mlp")
    if case == "inputs":
        for _ in range(257):
            r.inputs.add(name="x", datatype="FP32", shape=[1])
    elif case == "outputs":
        for _ in range(257):
            r.outputs.add(name="y")
    elif case == "raw":
        r.raw_input_contents.extend([b""] * 257)
    elif case == "request parameters":
        for i in range(65):
            r.parameters[f"p{i}"].int64_param = i
    elif case == "dims":
        r.inputs.add(name="x", datatype="FP32", shape=[1] * 129)
    elif case == "input parameters":
        t = r.inputs.add(name="x", datatype="FP32", shape=[1])
        for i in range(65):
            t.parameters[f"p{i}"].int64_param = i
    elif case == "output parameters":
        o = r.outputs.add(name="y")
        for i in range(65):
            o.parameters[f"p{i}"].int64_param = i
    return r


@pytest.mark.parametrize("case, needle", [
    ("inputs", "more than 256 input tensors"), ("outputs", "more than 256 requested outputs"),
    ("raw", "more than 256 raw_input_contents"), ("request parameters", "more than 64 request parameters"),
    ("dims", "input 0 has a shape of more than 128 dims"), ("input parameters", "input 0 has more than 64 parameters"),
    ("output parameters", "output 0 has more than 64 parameters"),
])
def test_small_and_large_requests_are_held_to_the_same_bounds(case, needle):
    """A small request is parsed first and checked on the parsed message, a large one on its wire bytes: both
    paths refuse every bound with the same message (and a request within the bounds passes both)."""
    from acl_bundle.serve.grpc_limits import SMALL_REQUEST, WireError, parse_infer_request

    small = _over_bound(case)
    large = service_pb2.ModelInferRequest()
    large.CopyFrom(small)
    large.id = "p" * (SMALL_REQUEST + 1)  # padding that breaks no bound: the wire path
    parse = service_pb2.ModelInferRequest.FromString
    for r in (small, large):
        body = r.SerializeToString()
        assert (len(body) > SMALL_REQUEST) == (r is large)
        with pytest.raises(WireError, match=needle):
            parse_infer_request(body, parse)
    ok = service_pb2.ModelInferRequest(model_name="mlp", id="p" * (SMALL_REQUEST + 1))
    ok.inputs.add(name="x", datatype="FP32", shape=[1] * 128)
    for r in (ok, service_pb2.ModelInferRequest(model_name="mlp")):
        assert parse_infer_request(r.SerializeToString(), parse) == r
