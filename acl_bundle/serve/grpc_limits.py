"""Bounds on a gRPC infer request checked on its wire bytes, before protobuf builds anything.

A ``ModelInferRequest`` within the receive limit can still hold a million tiny input
tensors (19 MiB on the wire, over 500 MiB once parsed into Python objects).  The
server's request deserializer calls :func:`check_infer_request` first: it walks the
message's wire format (tags and lengths only, no allocation per field) and refuses a
request with more than ``MAX_TENSORS`` inputs / outputs / raw contents, more than
``MAX_DIMS`` dims in a shape (ACL's ``ACL_MAX_DIM_CNT``) or more than ``MAX_PARAMETERS``
parameters in one map; only then is the message parsed.

A message of at most ``SMALL_REQUEST`` bytes parses into a few MiB at most, whatever it
holds, so :func:`parse_infer_request` parses it first and checks the same bounds on the
parsed message (one ``len`` per repeated field instead of a Python walk over its bytes).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DIMS", "MAX_PARAMETERS", "MAX_TENSORS", "SMALL_REQUEST", "WireError", "check_infer_request",
           "parse_infer_request"]

MAX_TENSORS = 256      # inputs, requested outputs, raw_input_contents: each at most this many
MAX_DIMS = 128         # dims of one shape (ACL_MAX_DIM_CNT in CANN's acl_base.h)
MAX_PARAMETERS = 64    # entries of one parameters map (request, input or output)
SMALL_REQUEST = 64 * 1024  # bytes: parsed before its bounds are checked (32K tiny fields at most: a few MiB parsed)

# ModelInferRequest field numbers (grpc_service.proto)
_REQ_PARAMETERS, _REQ_INPUTS, _REQ_OUTPUTS, _REQ_RAW = 4, 5, 6, 7
_IN_SHAPE, _IN_PARAMETERS = 3, 4
_OUT_PARAMETERS = 2
_LOW = bytes(range(128))  # varint bytes that end a varint


class WireError(ValueError):
    """The request's wire bytes break a bound (or are not a protobuf message)."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise WireError("the request is not a valid protobuf message (truncated varint)")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes, start: int, end: int):  # -> Iterator[(field, wire type, value start, value end)]
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            j = i
            _, i = _varint(buf, i)
            yield field, wt, j, i
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise WireError("the request is not a valid protobuf message (a field runs past its end)")
            yield field, wt, i, i + n
            i += n
        elif wt == 1:
            i += 8
            yield field, wt, i - 8, i
        elif wt == 5:
            i += 4
            yield field, wt, i - 4, i
        else:
            raise WireError(f"the request is not a valid protobuf message (wire type {wt})")
    if i != end:
        raise WireError("the request is not a valid protobuf message (a field runs past its end)")


def _bump(counts: dict[str, int], key: str, limit: int, what: str) -> None:
    n = counts[key] = counts.get(key, 0) + 1
    if n > limit:
        raise WireError(f"the request has more than {limit} {what}")


def check_infer_request(buf: bytes) -> None:
    """Raise :class:`WireError` if ``buf`` (a serialized ModelInferRequest) breaks a bound."""
    counts: dict[str, int] = {}
    for field, wt, a, b in _fields(buf, 0, len(buf)):
        if field == _REQ_INPUTS and wt == 2:
            _bump(counts, "inputs", MAX_TENSORS, "input tensors")
            _check_input(buf, a, b, counts["inputs"] - 1)
        elif field == _REQ_OUTPUTS and wt == 2:
            _bump(counts, "outputs", MAX_TENSORS, "requested outputs")
            params = 0
            for f, _, _, _ in _fields(buf, a, b):
                if f == _OUT_PARAMETERS:
                    params += 1
                    if params > MAX_PARAMETERS:
                        raise WireError(f"output {counts['outputs'] - 1} has more than {MAX_PARAMETERS} parameters")
        elif field == _REQ_RAW:
            _bump(counts, "raw", MAX_TENSORS, "raw_input_contents")
        elif field == _REQ_PARAMETERS:
            _bump(counts, "parameters", MAX_PARAMETERS, "request parameters")


def _check_input(buf: bytes, start: int, end: int, index: int) -> None:
    dims = params = 0
    for f, wt, a, b in _fields(buf, start, end):
        if f == _IN_SHAPE:
            # packed: one varint per dim = one byte below 0x80 per dim; unpacked: one field per dim
            dims += (b - a) - len(buf[a:b].translate(None, _LOW)) if wt == 2 else 1
            if dims > MAX_DIMS:
                raise WireError(f"input {index} has a shape of more than {MAX_DIMS} dims")
        elif f == _IN_PARAMETERS:
            params += 1
            if params > MAX_PARAMETERS:
                raise WireError(f"input {index} has more than {MAX_PARAMETERS} parameters")


def parse_infer_request(buf: bytes, parse: Callable[[bytes], Any]) -> Any:
    """``parse(buf)`` (a ModelInferRequest), refused with :class:`WireError` if it breaks a bound: checked on the
    wire bytes before parsing when ``buf`` is over ``SMALL_REQUEST`` bytes, on the parsed message otherwise."""
    if len(buf) > SMALL_REQUEST:
        check_infer_request(buf)
        return parse(buf)
    req = parse(buf)
    _check_parsed(req)
    return req


def _check_parsed(req: Any) -> None:
    """The bounds of :func:`check_infer_request`, on a parsed (small) ModelInferRequest; the same messages."""
    for n, limit, what in ((len(req.inputs), MAX_TENSORS, "input tensors"),
                           (len(req.outputs), MAX_TENSORS, "requested outputs"),
                           (len(req.raw_input_contents), MAX_TENSORS, "raw_input_contents"),
                           (len(req.parameters), MAX_PARAMETERS, "request parameters")):
        if n > limit:
            raise WireError(f"the request has more than {limit} {what}")
    for i, t in enumerate(req.inputs):
        if len(t.shape) > MAX_DIMS:
            raise WireError(f"input {i} has a shape of more than {MAX_DIMS} dims")
        if len(t.parameters) > MAX_PARAMETERS:
            raise WireError(f"input {i} has more than {MAX_PARAMETERS} parameters")
    for i, o in enumerate(req.outputs):
        if len(o.parameters) > MAX_PARAMETERS:
            raise WireError(f"output {i} has more than {MAX_PARAMETERS} parameters")
