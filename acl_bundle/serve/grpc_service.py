"""The gRPC front end: Triton's ``inference.GRPCInferenceService`` (the KServe v2 gRPC protocol).

The message and service stubs are the ones ``tritonclient`` ships
(``tritonclient.grpc.service_pb2`` / ``service_pb2_grpc``, generated from Triton's
``grpc_service.proto``, a superset of KServe's ``grpc_predict_v2.proto``), so the
server speaks exactly what ``tritonclient.grpc`` speaks.  Implemented: ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelInfer
(``raw_input_contents`` or typed ``contents``; outputs as ``raw_output_contents``),
ModelStreamInfer (bidirectional, same checks as ModelInfer), ModelStatistics (the
statistics extension), SystemSharedMemory{Status,Register,Unregister} (inputs and outputs in
registered regions, :mod:`.shm`; CudaSharedMemory* answer UNIMPLEMENTED), RepositoryIndex,
RepositoryModelLoad (``file:`` parameters with ``bytes_param``, one atomic update; or the
parameter ``rollback``: string ``"previous"`` or an int64 version; token in the
``authorization`` metadata; the ``weight_version`` metadata answers) and RepositoryModelUnload
(refused).  Others answer UNIMPLEMENTED.  Runs on grpc.aio in the server's event loop.

Receive limits, each enforced before the message is parsed: the server's receive limit is
the infer limit (``max_request_bytes``), which gRPC's core checks against the message's
length prefix before buffering it (a 256 MiB message to a 64 MiB limit costs the server
~2 MiB); an infer request's tensor, dim and parameter counts are bounded on its wire bytes
(:mod:`.grpc_limits`) before protobuf builds it; ``RepositoryModelLoad`` is served as a
client-streaming call so that its token is checked from the metadata before its message is
read (an unauthenticated push costs the flow-control window, not its size).  A push is
bounded by the receive limit of the port it arrives on: the main port's is the infer limit,
an update port (``grpc_update_port``) has ``max_update_bytes`` and serves only the
repository calls (and health).

Drain (:meth:`GrpcFrontEnd.stop`): new calls are answered UNAVAILABLE at once (health
still answers: live, not ready), calls in flight finish up to the grace period, then the
gRPC server stops.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .grpc_limits import WireError, parse_infer_request
from .http_app import EXTENSIONS, SERVER_NAME
from .protocol import InputTensor, ServeError, response_parameters
from .service import ModelService
from .shm import cuda_unsupported

log = logging.getLogger("acl_bundle.serve")
access_log = logging.getLogger("acl_bundle.serve.access")

__all__ = ["GrpcFrontEnd", "create_grpc_server"]

_HEALTH = frozenset({"live", "ready"})
_SHM = "shared_memory_region"
STREAM_WINDOW = 64  # requests of one ModelStreamInfer stream running at once
_DRAIN = object()  # put in a stream's queue by drain_streams: an idle stream ends

# InferTensorContents field per datatype (typed, non-raw inputs).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def _params(params: Any) -> dict[str, Any]:
    """A protobuf parameters map as plain values."""
    out: dict[str, Any] = {}
    for k, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[k] = getattr(p, which) if which else None
    return out


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: ModelService, server_version: str, live: Callable[[], bool]) -> None:
        self.s = service
        self.version = server_version
        self.live = live
        self.draining = False  # set by GrpcFrontEnd.stop: every new call but health answers UNAVAILABLE
        self.in_flight = 0
        self._children: dict[tuple[str, int], Any] = {}
        self._streams: set[asyncio.Queue[Any]] = set()  # the open ModelStreamInfer streams' response queues

    async def _call(self, name: str, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.perf_counter()
        code = 200
        self.in_flight += 1
        try:
            if self.draining and name not in _HEALTH:
                raise ServeError(503, "the server is shutting down")
            return await fn()
        except ServeError as e:
            code = e.status
            await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
        except Exception as e:
            if isinstance(e, grpc.aio.AbortError):
                raise
            code = 500
            log.exception("gRPC %s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")
        finally:
            self.in_flight -= 1
            self._record(name, code, time.perf_counter() - t0, context)

    def _record(self, name: str, code: int, dt: float, context: grpc.aio.ServicerContext) -> None:
        """One call's metrics and access-log line."""
        children = self._children.get((name, code))
        if children is None:  # prometheus labels() looked up once per (method, outcome)
            m = self.s.metrics
            children = self._children[(name, code)] = (m.request_seconds.labels("grpc", name),
                                                       m.requests.labels("grpc", name, str(code)))
        children[0].observe(dt)
        children[1].inc()
        if access_log.isEnabledFor(logging.INFO):
            peer = context.peer()
            access_log.info("grpc %s %d %.3fms client=%s", name, code, dt * 1e3, peer,
                            extra={"protocol": "grpc", "method": name, "path": name, "status": code,
                                   "duration_ms": round(dt * 1e3, 3), "client": peer, "endpoint": name})

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return await self._call("live", context, self._live)

    async def _live(self) -> Any:
        return service_pb2.ServerLiveResponse(live=self.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            return service_pb2.ServerReadyResponse(ready=self.live() and self.s.model_ready)
        return await self._call("ready", context, fn)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            self.s.check_model(request.name, request.version)
            return service_pb2.ModelReadyResponse(ready=self.s.model_ready)
        return await self._call("model_ready", context, fn)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=EXTENSIONS)
        return await self._call("server_metadata", context, fn)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            md = self.s.check_model(request.name, request.version).metadata()
            t = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=md["name"], versions=md["versions"], platform=md["platform"],
                inputs=[t(name=i["name"], datatype=i["datatype"], shape=i["shape"]) for i in md["inputs"]],
                outputs=[t(name=o["name"], datatype=o["datatype"], shape=o["shape"]) for o in md["outputs"]])
        return await self._call("model_metadata", context, fn)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            spec = self.s.check_model(request.name, request.version)
            b = self.s.batcher
            cfg = spec.config(int(self.s.max_queue_delay * 1e6), b is not None and b.enabled)
            mc = model_config_pb2.ModelConfig(name=cfg["name"], platform=cfg["platform"], backend=cfg["backend"],
                                              max_batch_size=cfg["max_batch_size"])
            for key, target in (("input", mc.input), ("output", mc.output)):
                for t in cfg[key]:
                    e = target.add()
                    e.name = t["name"]
                    e.data_type = model_config_pb2.DataType.Value(t["data_type"])
                    e.dims.extend(t["dims"])
            if "dynamic_batching" in cfg:
                mc.dynamic_batching.preferred_batch_size.extend(cfg["dynamic_batching"]["preferred_batch_size"])
                mc.dynamic_batching.max_queue_delay_microseconds = cfg["dynamic_batching"][
                    "max_queue_delay_microseconds"
                ]
            return service_pb2.ModelConfigResponse(config=mc)
        return await self._call("model_config", context, fn)

    async def _infer(self, request: Any) -> Any:
        """One ModelInferRequest (or the WireError its deserializer returned) -> ModelInferResponse."""
        if isinstance(request, WireError):  # refused by the bounded deserializer, before parsing
            raise ServeError(400, str(request))
        shm = self.s.shm
        in_shm = [_SHM in t.parameters for t in request.inputs]
        raw = request.raw_input_contents
        n_raw = in_shm.count(False)  # one raw_input_contents per input not in shared memory, in input order
        if raw and len(raw) != n_raw:
            raise ServeError(400, f"{len(raw)} raw_input_contents for {n_raw} inputs not in shared memory; give one "
                                  "per input, in input order, or none")
        tensors = []
        k = 0
        for i, t in enumerate(request.inputs):
            if in_shm[i]:
                tensors.append(shm.read_input(t.name, t.datatype, list(t.shape), _params(t.parameters)))
                continue
            if raw:
                if t.HasField("contents"):
                    raise ServeError(400, f"input {t.name!r} has both contents and raw_input_contents")
                tensors.append(InputTensor(t.name, t.datatype, list(t.shape), raw[k], True))
                k += 1
                continue
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise ServeError(400, f"input {t.name!r}: datatype {t.datatype!r} has no typed contents field; "
                                      "send it in raw_input_contents")
            tensors.append(InputTensor(t.name, t.datatype, list(t.shape), list(getattr(t.contents, field)), False))
        names = [o.name for o in request.outputs] or None
        shm_out = {}
        for o in request.outputs:
            if "classification" in o.parameters:
                raise ServeError(400, f"output {o.name!r}: the classification extension is not supported")
            if _SHM in o.parameters:
                shm_out[o.name] = shm.output_target(o.name, _params(o.parameters))
        out = await self.s.infer(request.model_name, request.model_version, tensors, names)
        resp = service_pb2.ModelInferResponse(model_name=self.s.name, model_version="1", id=request.id)
        for key, value in response_parameters(out.version, out.step).items():
            resp.parameters[key].int64_param = value
        for spec, a in out.outputs:
            o = resp.outputs.add()
            o.name, o.datatype = spec.name, spec.datatype
            o.shape.extend(a.shape)
            if spec.name in shm_out:  # written into the client's region; an empty raw entry keeps the order
                for key, value in shm.write_output(shm_out[spec.name], spec.name, a).items():
                    if isinstance(value, str):
                        o.parameters[key].string_param = value
                    else:
                        o.parameters[key].int64_param = value
                resp.raw_output_contents.append(b"")
                continue
            resp.raw_output_contents.append(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
        return resp

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._call("infer", context, lambda: self._infer(request))

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
        """Bidirectional streaming infer: each request is run as a unary infer would be (batched with the others
        in flight, its response naming its weight version); responses come back in request order; a refused
        request is answered in the stream (``error_message``) and the stream goes on.  At most
        ``STREAM_WINDOW`` requests of one stream run at once (reading pauses beyond).  When the server drains,
        the stream ends UNAVAILABLE once the requests it read before the drain are answered (an idle stream at
        once); one read during the drain is answered "shutting down" or, if the stream ends first, not at all
        (the UNAVAILABLE end tells the client to send it elsewhere)."""
        pending: asyncio.Queue[Any] = asyncio.Queue(STREAM_WINDOW)

        async def one(request: Any) -> Any:
            t0 = time.perf_counter()
            code = 200
            self.in_flight += 1
            try:
                if self.draining:
                    raise ServeError(503, "the server is shutting down")
                return service_pb2.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ServeError as e:
                code = e.status
                return service_pb2.ModelStreamInferResponse(
                    error_message=e.message, infer_response=service_pb2.ModelInferResponse(
                        id=getattr(request, "id", ""), model_name=self.s.name))
            except Exception as e:
                code = 500
                log.exception("gRPC stream infer failed")
                return service_pb2.ModelStreamInferResponse(error_message=f"internal error: {type(e).__name__}")
            finally:
                self.in_flight -= 1
                self._record("stream_infer", code, time.perf_counter() - t0, context)

        async def reader() -> None:
            try:
                async for request in requests:
                    await pending.put(asyncio.ensure_future(one(request)))
            finally:
                await pending.put(None)

        read = asyncio.ensure_future(reader())
        self._streams.add(pending)
        try:
            while True:
                task = await pending.get()  # the next response in request order; or None (end), or _DRAIN
                if task is None:
                    read.result()
                    break
                if task is _DRAIN:
                    break
                yield await task
                if self.draining and pending.empty():  # drained while busy: end once answered
                    break
        finally:
            self._streams.discard(pending)
            read.cancel()
            while not pending.empty():
                t = pending.get_nowait()
                if t is not None and t is not _DRAIN:
                    t.cancel()
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")

    def drain_streams(self) -> None:
        """Draining: every open ModelStreamInfer stream that waits for its next request ends."""
        self.draining = True
        for q in self._streams:
            with contextlib.suppress(asyncio.QueueFull):  # a full stream is busy: it ends once it has answered
                q.put_nowait(_DRAIN)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            stats = self.s.statistics(request.name, request.version or None)
            return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)
        return await self._call("model_stats", context, fn)

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            resp = service_pb2.SystemSharedMemoryStatusResponse()
            for r in self.s.shm.status(request.name or None):
                st = resp.regions[r["name"]]
                st.name, st.key, st.offset, st.byte_size = r["name"], r["key"], r["offset"], r["byte_size"]
            return resp
        return await self._call("shm_status", context, fn)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            if self.s.auth.enabled:
                self.s.authorize(_metadata(context, "authorization"), "shm")
            self.s.shm.register(request.name, request.key, request.offset, request.byte_size)
            return service_pb2.SystemSharedMemoryRegisterResponse()
        return await self._call("shm_register", context, fn)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            if self.s.auth.enabled:
                self.s.authorize(_metadata(context, "authorization"), "shm")
            self.s.shm.unregister(request.name or None)
            return service_pb2.SystemSharedMemoryUnregisterResponse()
        return await self._call("shm_unregister", context, fn)

    async def _cuda(self, context: Any) -> Any:
        async def fn() -> Any:
            raise cuda_unsupported()
        return await self._call("cuda_shm", context, fn)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return await self._cuda(context)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return await self._cuda(context)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return await self._cuda(context)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            state = "READY" if self.s.model_ready else "UNAVAILABLE"
            idx = service_pb2.RepositoryIndexResponse.ModelIndex
            return service_pb2.RepositoryIndexResponse(models=[idx(name=self.s.name, version="1", state=state)])
        return await self._call("repository_index", context, fn)

    async def RepositoryModelLoad(self, requests: Any, context: Any) -> Any:
        """Served client-streaming (the wire is the same as unary): the token before the message is read."""
        async def fn() -> Any:
            self.s.authorize(_metadata(context, "authorization"), "grpc")
            request = await context.read()
            if request is grpc.aio.EOF:
                raise ServeError(400, "the load call carried no request message")
            self.s.check_model(request.model_name)
            files: dict[str, bytes] = {}
            if "rollback" in request.parameters:  # rollback over gRPC: "previous" (string) or a version (int64)
                p = request.parameters["rollback"]
                kind = p.WhichOneof("parameter_choice")
                if len(request.parameters) > 1 or not (kind == "int64_param" or (
                        kind == "string_param" and p.string_param == "previous")):
                    raise ServeError(400, "load parameter 'rollback' comes alone, as string_param 'previous' or "
                                          "int64_param <version>")
                to = p.int64_param if kind == "int64_param" else None
                result = await self.s.rollback(request.model_name, to, source="grpc")
                await context.send_initial_metadata((("weight_version", str(result["weight_version"])),))
                return service_pb2.RepositoryModelLoadResponse()
            for key, p in request.parameters.items():
                if key == "config":
                    continue
                if not key.startswith("file:"):
                    raise ServeError(400, f"load parameter {key!r} is not supported; give weight files as "
                                          "'file:<name>.npz' or 'file:<name>.safetensors' (bytes_param)")
                if p.WhichOneof("parameter_choice") != "bytes_param":
                    raise ServeError(400, f"load parameter {key!r} must carry the file in bytes_param")
                files[key[5:]] = p.bytes_param
            if files:
                result = await self.s.update_files(request.model_name, files, source="grpc")
                version = result["weight_version"]
            else:
                version = int(self.s.model.version)
            await context.send_initial_metadata((("weight_version", str(version)),))
            return service_pb2.RepositoryModelLoadResponse()
        return await self._call("load", context, fn)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def fn() -> Any:
            self.s.authorize(_metadata(context, "authorization"), "grpc")
            self.s.check_model(request.model_name)
            raise ServeError(
                400, "unload is not supported: the server keeps its bundle loaded (stop the server instead)"
            )

        return await self._call("unload", context, fn)


def _infer_request(data: bytes) -> Any:
    """ModelInfer's request deserializer: bounds checked (on the wire bytes first, unless the message is small); a
    refusal is returned, not raised (grpcio would answer a raising deserializer INTERNAL), so the handler can answer
    INVALID_ARGUMENT."""
    try:
        return parse_infer_request(data, service_pb2.ModelInferRequest.FromString)
    except WireError as e:
        return e
    except Exception as e:  # google.protobuf.message.DecodeError
        return WireError(f"the request is not a valid ModelInferRequest: {e}")


_UPDATE_PORT_METHODS = ("ServerLive", "ServerReady", "RepositoryModelLoad", "RepositoryModelUnload")


def _handlers(servicer: _Servicer, only: tuple[str, ...] | None) -> grpc.GenericRpcHandler:
    """The service's method handlers (generated messages), with the bounded infer deserializer and the
    client-streaming load."""
    desc = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for m in desc.methods:
        impl = getattr(type(servicer), m.name, None)
        base = getattr(service_pb2_grpc.GRPCInferenceServiceServicer, m.name, None)
        if impl is base or (only and m.name not in only):
            continue  # not implemented here: grpc answers UNIMPLEMENTED
        req_cls, resp_cls = getattr(service_pb2, m.input_type.name), getattr(service_pb2, m.output_type.name)
        fn = getattr(servicer, m.name)
        if m.name == "ModelInfer":
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=_infer_request, response_serializer=resp_cls.SerializeToString)
        elif m.name == "RepositoryModelLoad":
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(
                fn, request_deserializer=req_cls.FromString, response_serializer=resp_cls.SerializeToString)
        elif m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                fn, request_deserializer=_infer_request if m.name == "ModelStreamInfer" else req_cls.FromString,
                response_serializer=resp_cls.SerializeToString)
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req_cls.FromString, response_serializer=resp_cls.SerializeToString)
    return grpc.method_handlers_generic_handler(desc.full_name, handlers)


class GrpcFrontEnd:
    """One grpc.aio server and its servicer: ``start()``, and ``stop(grace)`` that drains first."""

    def __init__(self, server: grpc.aio.Server, servicer: _Servicer) -> None:
        self.server, self.servicer = server, servicer
        self.drained: bool | None = None  # after stop: did every call in flight finish within the grace?

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace or 0.0)
        self.servicer.drain_streams()
        while self.servicer.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.005)
        self.drained = not self.servicer.in_flight
        if not self.drained:
            log.warning("gRPC: %d calls still running after the %.1f s drain; cancelling them",
                        self.servicer.in_flight, grace or 0.0)
        await self.server.stop(max(0.2, deadline - loop.time()))


def create_grpc_server(service: ModelService, address: str, *, server_version: str, live: Callable[[], bool],
                       max_request_bytes: int, updates_only: bool = False) -> tuple[GrpcFrontEnd, int]:
    """A gRPC server bound to ``address`` (not started); returns (front end, bound port).

    Its receive limit is ``max_request_bytes`` (infer), or ``service.max_update_bytes`` for an
    update port (``updates_only``: health and the repository calls only).
    """
    limit = service.max_update_bytes if updates_only else max_request_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", min(limit, 2**31 - 1)),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
    ])
    servicer = _Servicer(service, server_version, live)
    server.add_generic_rpc_handlers((_handlers(servicer, _UPDATE_PORT_METHODS if updates_only else None),))
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return GrpcFrontEnd(server, servicer), port
