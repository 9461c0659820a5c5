"""A client's mistake over gRPC is a client-error status, never INTERNAL / UNKNOWN: Hypothesis over
``ModelInferRequest`` fields (names, datatypes, shapes, typed and raw contents, parameters) against a
real server process, through the same request checks as REST (``serve/protocol.py``)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from helpers.serve import serve_process

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.UNIMPLEMENTED}


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    with serve_process(tmp_path_factory.mktemp("gfuzz"), "--max-request-bytes", str(1 << 20)) as srv:
        with grpc.insecure_channel(srv.grpc_url) as ch:
            yield srv, service_pb2_grpc.GRPCInferenceServiceStub(ch)
        log = srv.log()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


int64 = st.one_of(st.integers(-3, 10), st.integers(-(2 ** 63), 2 ** 63 - 1))
text = st.one_of(st.sampled_from(["x", "y", "", "FP32", "mlp"]), st.text(max_size=6))
datatype = st.one_of(st.sampled_from(["FP32", "FP64", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", "FP16"]),
                     st.text(max_size=5))
param = st.one_of(st.booleans().map(lambda v: {"bool_param": v}), int64.map(lambda v: {"int64_param": v}),
                  st.text(max_size=5).map(lambda v: {"string_param": v}))
params = st.dictionaries(st.sampled_from(["binary_data_size", "binary_data", "classification", "priority", "k"]),
                         param, max_size=2)
contents = st.fixed_dictionaries({}, optional={
    "fp32_contents": st.lists(st.floats(width=32), max_size=40),
    "int_contents": st.lists(st.integers(-(2 ** 31), 2 ** 31 - 1), max_size=20),
    "int64_contents": st.lists(int64, max_size=10),
    "bool_contents": st.lists(st.booleans(), max_size=10),
    "bytes_contents": st.lists(st.binary(max_size=8), max_size=3),
})


@st.composite
def infer_request(draw) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(
        model_name=draw(st.one_of(st.just("mlp"), st.just("mlp"), text)),
        model_version=draw(st.sampled_from(["", "", "1", "2"])), id=draw(st.text(max_size=4)))
    n = draw(st.sampled_from([1, 2, 4, 8, 3]))
    raw = draw(st.booleans())
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2, 3]))):
        t = req.inputs.add()
        valid = draw(st.booleans())
        t.name = "x" if valid else draw(text)
        t.datatype = "FP32" if valid else draw(datatype)
        t.shape.extend([n, 8] if draw(st.booleans()) else draw(st.lists(int64, max_size=4)))
        for k, v in draw(params).items():
            t.parameters[k].CopyFrom(service_pb2.InferParameter(**v))
        if not raw:
            if valid and draw(st.booleans()):
                t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), min_size=n * 8, max_size=n * 8)))
            else:
                t.contents.CopyFrom(service_pb2.InferTensorContents(**draw(contents)))
    if raw:
        for _ in range(draw(st.sampled_from([len(req.inputs), len(req.inputs), 0, 2]))):
            size = draw(st.sampled_from([n * 32, n * 32, 0, 31, 64, 7]))
            req.raw_input_contents.append(np.ones(size, np.uint8).tobytes())
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        o = req.outputs.add()
        o.name = draw(st.one_of(st.just("y"), text))
        for k, v in draw(params).items():
            o.parameters[k].CopyFrom(service_pb2.InferParameter(**v))
    for k, v in draw(params).items():
        req.parameters[k].CopyFrom(service_pb2.InferParameter(**v))
    return req


@FUZZ
@given(req=infer_request())
def test_fuzzed_grpc_infer_requests_never_internal(stub, req):
    _, s = stub
    try:
        r = s.ModelInfer(req, timeout=30)
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS, (e.code(), e.details(), req)
        assert e.details() and "\n" not in e.details(), e.details()
    else:
        assert len(r.raw_output_contents) == len(r.outputs) >= 1


@FUZZ
@given(body=st.binary(max_size=200))
def test_undecodable_grpc_messages_are_not_internal(stub, body):
    srv, _ = stub
    with grpc.insecure_channel(srv.grpc_url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(body, timeout=30)
        except grpc.RpcError as e:
            assert e.code() in CLIENT_ERRORS, (e.code(), e.details(), body)
