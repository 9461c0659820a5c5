"""The REST front end (KServe v2 / Triton HTTP protocol) as a Starlette app.

Routes (``{v}`` = ``/versions/<version>``, optional)::

    GET  /v2/health/live  /v2/health/ready            200 when live / ready, else 503
    GET  /v2                                          server metadata (name, version, extensions)
    GET  /v2/models/{name}[{v}]                       model metadata
    GET  /v2/models/{name}[{v}]/ready                 model ready
    GET  /v2/models/{name}[{v}]/config                Triton-style model configuration
    GET  /v2/models[/{name}[{v}]]/stats               statistics extension (Triton's schema; serve/stats.py)
    GET  /v2/systemsharedmemory[/region/{r}]/status   system shared memory (serve/shm.py)
    POST /v2/systemsharedmemory/region/{r}/register   {"key", "offset", "byte_size"}            [token if set]
    POST /v2/systemsharedmemory[/region/{r}]/unregister                                          [token if set]
    *    /v2/cudasharedmemory/...                     501: CUDA shared memory is not supported
    POST /v2/models/{name}[{v}]/infer                 infer: JSON tensors and/or binary tensor data
    POST /v2/repository/index                         the one model, READY or UNAVAILABLE
    POST /v2/repository/models/{name}/load            apply "file:<path>" parameters as one update  [token]
    POST /v2/repository/models/{name}/unload          refused (the bundle stays loaded)            [token]
    PUT  /v2/models/{name}/weights                    body = one .npz/.safetensors: one update      [token]
    POST /v2/models/{name}/weights/rollback           {} = previous version, {"to": V} = version V  [token]
    GET  /metrics                                     Prometheus text format

Every update route (weights, load, and the watcher) refuses weights holding NaN/Inf unless
the server runs with ``finite_check=False`` (``--no-finite-check``): 400, nothing changed.
An infer output holding NaN/Inf is sent as binary tensor data (JSON has no NaN), whatever
the request asked.  Bodies are bounded: a declared ``Content-Length`` over the limit is answered 413 before
any of the body is read, a streamed body is cut off at the limit.  Update routes check
the token before reading the body.  Errors are ``{"error": "<what was wrong>"}``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .metrics import CONTENT_TYPE_LATEST
from .protocol import InputTensor, ServeError, check_parameters, response_parameters
from .service import InferOutcome, ModelService
from .shm import cuda_unsupported

log = logging.getLogger("acl_bundle.serve")
access_log = logging.getLogger("acl_bundle.serve.access")

__all__ = ["create_app", "EXTENSIONS", "SERVER_NAME"]

SERVER_NAME = "acl_bundle"
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "parameters", "statistics",
              "system_shared_memory"]
HEADER_LENGTH = "inference-header-content-length"

Handler = Callable[[Request], Awaitable[Response]]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status_code=status, media_type="application/json")


def _error(e: ServeError) -> Response:
    r = _json({"error": e.message}, e.status)
    if e.status == 401:
        r.headers["WWW-Authenticate"] = "Bearer"
    elif e.status in (408, 413):  # the body was not read to its end: the connection cannot go on
        r.headers["Connection"] = "close"
    return r


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed), 408 after ``timeout`` s."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout)
    except asyncio.TimeoutError:  # TimeoutError from 3.11 on
        raise ServeError(408, f"the request body was not received within {timeout:g} s") from None


async def _read_body(request: Request, limit: int) -> bytes:
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ServeError(415, "compressed request bodies (Content-Encoding) are not accepted; send them uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ServeError(400, f"Content-Length {declared!r} is not a number") from None
        if n > limit:
            raise ServeError(413, f"request body of {n} bytes is over the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ServeError(400, f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ServeError(400, f"{what} is nested too deeply") from None
    except ValueError:  # json.loads: an integer literal past Python's int-string limit
        raise ServeError(400, f"{what} holds an integer of more than {sys.get_int_max_str_digits()} digits") from None
    if not isinstance(obj, dict):
        raise ServeError(400, f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


_Parsed = tuple[dict[str, Any], list[InputTensor], "list[str] | None", set[str], bool]


def _infer_request(body: bytes, header_length: str | None) -> _Parsed:
    """Split and check an infer request: (json, inputs, requested outputs, binary outputs, all binary)."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ServeError(400, f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < n <= len(body):
            raise ServeError(400, f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
        head, rest = body[:n], body[n:]
    req = _parse_json(head, "the inference request header" if header_length is not None else "the inference request")
    params = check_parameters(req.get("parameters"), "request")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ServeError(400, "the inference request needs a non-empty 'inputs' list")
    tensors = []
    offset = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise ServeError(400, f"inputs[{i}] must be an object with 'name', 'shape', 'datatype' and 'data'")
        name = t.get("name")
        for key in ("name", "shape", "datatype"):
            if key not in t:
                raise ServeError(400, f"inputs[{i}] ({name!r}) has no {key!r}")
        if not isinstance(name, str):
            raise ServeError(400, f"inputs[{i}]: 'name' must be a string, got {name!r}")
        tparams = check_parameters(t.get("parameters"), f"input {name!r}")
        size = tparams.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ServeError(400, f"input {name!r}: 'binary_data_size' must be a non-negative integer, "
                                      f"got {size!r}")
            if "data" in t:
                raise ServeError(400, f"input {name!r} has both 'data' and 'binary_data_size'")
            if offset + size > len(rest):
                raise ServeError(400, f"input {name!r}: binary_data_size {size} runs past the end of the body "
                                      f"({len(rest) - offset} bytes left)")
            tensors.append(InputTensor(name, t["datatype"], t["shape"], rest[offset:offset + size], True))
            offset += size
        else:
            tensors.append(InputTensor(name, t["datatype"], t["shape"], t.get("data"), False))
    if offset != len(rest):
        raise ServeError(400, f"the body has {len(rest) - offset} bytes of binary data that no input claims "
                              "(check Inference-Header-Content-Length and binary_data_size)")
    all_binary = params.get("binary_data_output") is True
    outputs = req.get("outputs")
    names: list[str] | None = None
    binary: set[str] = set()
    if outputs is not None:
        if not isinstance(outputs, list):
            raise ServeError(400, "'outputs' must be a list")
        names = []
        for i, o in enumerate(outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ServeError(400, f"outputs[{i}] must be an object with a 'name'")
            oparams = check_parameters(o.get("parameters"), f"output {o['name']!r}")
            if "classification" in oparams:
                raise ServeError(400, f"output {o['name']!r}: the classification extension is not supported")
            if oparams.get("binary_data", all_binary) is True:
                binary.add(o["name"])
            names.append(o["name"])
    return req, tensors, names, binary, all_binary


def _infer_response(service: ModelService, req: dict[str, Any], out: InferOutcome, binary: set[str],
                    all_binary: bool, shm_out: dict[str, Any] | None = None) -> Response:
    outputs = []
    blobs = []
    for spec, a in out.outputs:
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(a.shape)}
        if shm_out and spec.name in shm_out:  # written into the client's shared memory region, no data here
            entry["parameters"] = service.shm.write_output(shm_out[spec.name], spec.name, a)
        elif all_binary or spec.name in binary:
            raw = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif a.dtype.kind in "fc" and not np.isfinite(a).all():
            # JSON has no NaN/Inf: this output goes as binary data (tritonclient reads either form)
            raw = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = a.reshape(-1).tolist()
        outputs.append(entry)
    resp: dict[str, Any] = {"model_name": service.name, "model_version": "1",
                            "parameters": response_parameters(out.version, out.step), "outputs": outputs}
    if "id" in req:
        resp["id"] = req["id"]
    head = json.dumps(resp, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def _shared_memory(service: ModelService, req: dict[str, Any],
                   tensors: list[InputTensor]) -> tuple[list[InputTensor], dict[str, Any]]:
    """Inputs read from / outputs bound to shared memory regions (``shared_memory_region`` parameters)."""
    for i, t in enumerate(req["inputs"]):
        p = t.get("parameters")
        if isinstance(p, dict) and "shared_memory_region" in p:
            if "data" in t:
                raise ServeError(400, f"input {t.get('name')!r} has both 'data' and 'shared_memory_region'")
            tensors[i] = service.shm.read_input(t["name"], t["datatype"], t["shape"], p)
    shm_out = {}
    for o in req.get("outputs") or ():
        p = o.get("parameters")
        if isinstance(p, dict) and "shared_memory_region" in p:
            shm_out[o["name"]] = service.shm.output_target(o["name"], p)
    return tensors, shm_out


def create_app(service: ModelService, *, max_request_bytes: int, server_version: str,
               live: Callable[[], bool], body_timeout: float | None = None) -> Starlette:
    """The Starlette app serving ``service``.

    While the service is shutting down, every route but health answers 503 and every
    response closes its connection (the drain, :mod:`acl_bundle.serve.http_conn`)."""
    metrics = service.metrics

    async def receive_body(request: Request, limit: int) -> bytes:
        return await read_body(request, limit, body_timeout)

    def endpoint(name: str, fn: Handler) -> Handler:
        """Wrap a handler: ServeError -> JSON error, metrics, one access-log record per request."""
        hist = metrics.request_seconds.labels("http", name)
        counters: dict[int, Any] = {}  # status -> the requests counter's child (labels() looked up once)

        async def wrapped(request: Request) -> Response:
            t0 = time.perf_counter()
            draining = service.shutting_down
            try:
                if draining and name not in ("live", "ready"):
                    raise ServeError(503, "the server is shutting down; retry on another replica")
                response = await fn(request)
            except ServeError as e:
                response = _error(e)
            except ClientDisconnect:  # the client went away while sending: nobody reads the answer
                response = _error(ServeError(400, "the client disconnected before sending the whole body"))
            except asyncio.CancelledError:
                if not service.shutting_down:
                    raise
                response = _error(ServeError(503, "the server stopped before this request finished (drain timeout)"))
            except Exception as e:  # a bug: say so without a traceback to the client
                log.exception("%s %s failed", request.method, request.url.path)
                response = _error(ServeError(500, f"internal error: {type(e).__name__}"))
            if draining or service.shutting_down:
                response.headers["Connection"] = "close"
            dt = time.perf_counter() - t0
            hist.observe(dt)
            status = response.status_code
            counter = counters.get(status)
            if counter is None:
                counter = counters[status] = metrics.requests.labels("http", name, str(status))
            counter.inc()
            if access_log.isEnabledFor(logging.INFO):  # from the ASGI scope: no URL object, no Address per request
                scope = request.scope
                client = scope.get("client")
                peer = f"{client[0]}:{client[1]}" if client else "-"
                method, path = scope["method"], scope["path"]
                access_log.info("http %s %s %d %.3fms client=%s", method, path, status, dt * 1e3, peer,
                                extra={"protocol": "http", "method": method, "path": path, "status": status,
                                       "duration_ms": round(dt * 1e3, 3), "client": peer, "endpoint": name})
            return response

        return wrapped

    async def health_live(request: Request) -> Response:
        return Response(status_code=200 if live() else 503)

    async def health_ready(request: Request) -> Response:
        return Response(status_code=200 if live() and service.model_ready else 503)

    async def server_metadata(request: Request) -> Response:
        return _json({"name": SERVER_NAME, "version": server_version, "extensions": EXTENSIONS})

    def model_of(request: Request) -> Any:
        return service.check_model(request.path_params["name"], request.path_params.get("version"))

    async def model_metadata(request: Request) -> Response:
        return _json(model_of(request).metadata())

    async def model_ready(request: Request) -> Response:
        model_of(request)
        return Response(status_code=200 if service.model_ready else 503)

    async def model_config(request: Request) -> Response:
        spec = model_of(request)
        batching = service.batcher is not None and service.batcher.enabled
        return _json(spec.config(int(service.max_queue_delay * 1e6), batching))

    async def infer(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        service.check_model(name, version)  # 404 before reading the body
        body = await receive_body(request, max_request_bytes)
        req, tensors, outputs, binary, all_binary = _infer_request(body, request.headers.get(HEADER_LENGTH))
        tensors, shm_out = _shared_memory(service, req, tensors)
        out = await service.infer(name, version, tensors, outputs)
        return _infer_response(service, req, out, binary, all_binary, shm_out)

    async def repository_index(request: Request) -> Response:
        await receive_body(request, 1 << 16)
        state = "READY" if service.model_ready else "UNAVAILABLE"
        return _json([{"name": service.name, "version": "1", "state": state}])

    async def repository_load(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"), "http")
        service.check_model(request.path_params["name"])
        body = await receive_body(request, service.max_update_bytes)
        req = _parse_json(body, "the load request") if body.strip() else {}
        params = check_parameters(req.get("parameters"), "load request")
        files: dict[str, bytes] = {}
        for key, value in params.items():
            if key == "config":  # Triton's override config: the bundle describes itself, nothing to apply
                continue
            if not key.startswith("file:"):
                raise ServeError(400, f"load parameter {key!r} is not supported; give weight files as "
                                      "'file:<name>.npz' or 'file:<name>.safetensors' (base64)")
            if not isinstance(value, str):
                raise ServeError(400, f"load parameter {key!r} must be a base64 string")
            try:
                files[key[5:]] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ServeError(400, f"load parameter {key!r} is not valid base64") from None
        if not files:
            return _json({"model_name": service.name, "weight_version": int(service.model.version)})
        return _json(await service.update_files(request.path_params["name"], files, source="http"))

    async def repository_unload(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"), "http")
        service.check_model(request.path_params["name"])
        raise ServeError(400, "unload is not supported: the server keeps its bundle loaded (stop the server instead)")

    async def put_weights(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"), "http")
        service.check_model(request.path_params["name"])
        body = await receive_body(request, service.max_update_bytes)
        if not body:
            raise ServeError(400, "the body is empty; send one .npz or .safetensors file")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        fname = {"application/x-npz": "body.npz", "application/x-safetensors": "body.safetensors"}.get(ctype, "")
        return _json(await service.update_files(request.path_params["name"], {fname: body}, source="http"))

    async def model_stats(request: Request) -> Response:
        return _json(service.statistics(request.path_params.get("name", ""), request.path_params.get("version")))

    async def shm_status(request: Request) -> Response:
        return _json(service.shm.status(request.path_params.get("region")))

    async def shm_register(request: Request) -> Response:
        if service.auth.enabled:
            service.authorize(request.headers.get("authorization"), "shm")
        req = _parse_json(await read_body(request, 1 << 16), "the register request")
        service.shm.register(request.path_params["region"], req.get("key"), req.get("offset", 0), req.get("byte_size"))
        return _json({})

    async def shm_unregister(request: Request) -> Response:
        if service.auth.enabled:
            service.authorize(request.headers.get("authorization"), "shm")
        await read_body(request, 1 << 16)
        service.shm.unregister(request.path_params.get("region"))
        return _json({})

    async def cuda_shm(request: Request) -> Response:
        raise cuda_unsupported()

    async def rollback_weights(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"), "http")
        service.check_model(request.path_params["name"])
        body = await read_body(request, 1 << 16)
        req = _parse_json(body, "the rollback request") if body.strip() else {}
        unknown = sorted(set(req) - {"to"})
        if unknown:
            raise ServeError(400, f"the rollback request takes only 'to' (a version; none = the previous one), "
                                  f"got {unknown}")
        return _json(await service.rollback(request.path_params["name"], req.get("to"), source="http"))

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", endpoint("live", health_live), methods=["GET"]),
        Route("/v2/health/ready", endpoint("ready", health_ready), methods=["GET"]),
        Route("/v2", endpoint("server_metadata", server_metadata), methods=["GET"]),
        Route("/v2/repository/index", endpoint("repository_index", repository_index), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", endpoint("load", repository_load), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", endpoint("unload", repository_unload), methods=["POST"]),
        Route("/v2/models/{name}/weights", endpoint("weights", put_weights), methods=["PUT", "POST"]),
        Route("/v2/models/{name}/weights/rollback", endpoint("rollback", rollback_weights), methods=["POST"]),
        Route("/metrics", endpoint("metrics", prometheus), methods=["GET"]),
        Route("/v2/models/stats", endpoint("model_stats", model_stats), methods=["GET"]),
        Route("/v2/systemsharedmemory/status", endpoint("shm_status", shm_status), methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/status", endpoint("shm_status", shm_status), methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/register", endpoint("shm_register", shm_register),
              methods=["POST"]),
        Route("/v2/systemsharedmemory/unregister", endpoint("shm_unregister", shm_unregister), methods=["POST"]),
        Route("/v2/systemsharedmemory/region/{region}/unregister", endpoint("shm_unregister", shm_unregister),
              methods=["POST"]),
        Route("/v2/cudasharedmemory/{rest:path}", endpoint("cuda_shm", cuda_shm), methods=["GET", "POST"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, endpoint("model_metadata", model_metadata), methods=["GET"]),
            Route(prefix + "/ready", endpoint("model_ready", model_ready), methods=["GET"]),
            Route(prefix + "/config", endpoint("model_config", model_config), methods=["GET"]),
            Route(prefix + "/infer", endpoint("infer", infer), methods=["POST"]),
            Route(prefix + "/stats", endpoint("model_stats", model_stats), methods=["GET"]),
        ]
    app = Starlette(routes=routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json({"error": f"no route {request.method} {request.url.path}; see the KServe v2 routes under /v2"},
                     404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _json({"error": f"{request.method} is not allowed on {request.url.path}"}, 405)

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, method_not_allowed)
    return app
