"""Server CPU per request: the transports' own floors against acl-bundle's full server, one interleaved run (issue 27).

Trivial servers answer a fixed single-row infer response with no model behind it:

- ``grpc.aio``: grpcio's asyncio server (what acl-bundle serves gRPC with);
- ``grpc sync``: grpcio's synchronous server on an 8-thread pool;
- ``grpc sync+loop``: the synchronous server handing each call to an asyncio loop thread and waiting (what serving
  through the asyncio batcher would need);
- ``grpclib``: the pure-Python asyncio gRPC server on h2 (only when ``grpclib`` is importable, or found on
  ``--grpclib-path``);
- ``uvicorn``: a bare ASGI app on uvicorn (httptools, uvloop) answering the binary-tensor HTTP response: the floor
  under acl-bundle's HTTP front end.

``acl-bundle`` is the real server (``acl-bundle serve --sim --no-access-log``, an MLP 64-256-256-10, batch sizes
1-8), loaded over gRPC (unary ``ModelInfer``; and ``ModelStreamInfer``, one stream per thread, one request in flight
on each) and over HTTP (binary tensors).  ``--concurrency`` tritonclient threads send ``--requests``
single-row requests per window, windows in A..Z Z..A order over ``--rounds`` rounds (round 0 warms up); the
server's CPU is utime + stime from /proc/<pid>/stat.  Prints the median CPU µs per request and throughput.

Run: ``python scripts/grpc_server_alternatives.py [--rounds 3] [--requests 2000]``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import numpy as np

TRIVIAL = ("grpc.aio", "grpc sync", "grpc sync+loop", "grpclib", "uvicorn")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _response():  # noqa: ANN202 - protobuf message
    from tritonclient.grpc import service_pb2

    r = service_pb2.ModelInferResponse(model_name="mlp", model_version="1")
    o = r.outputs.add()
    o.name, o.datatype = "y", "FP32"
    o.shape.extend([1, 10])
    r.raw_output_contents.append(bytes(40))
    return r


def _run_loop(main) -> None:  # noqa: ANN001
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def serve(kind: str, port: int) -> None:
    """Run one trivial server (a child process) until killed."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    fixed = _response()
    if kind == "grpc.aio":
        class Aio(service_pb2_grpc.GRPCInferenceServiceServicer):
            async def ModelInfer(self, request, context):  # noqa: N802, ANN001, ANN201
                await asyncio.sleep(0)
                return fixed

        async def main() -> None:
            s = grpc.aio.server()
            service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Aio(), s)
            s.add_insecure_port(f"127.0.0.1:{port}")
            await s.start()
            await s.wait_for_termination()

        _run_loop(main)
        return
    if kind == "grpclib":
        from grpclib.const import Cardinality, Handler
        from grpclib.server import Server

        class G:
            def __mapping__(self):  # noqa: ANN204
                return {"/inference.GRPCInferenceService/ModelInfer": Handler(
                    self.infer, Cardinality.UNARY_UNARY, service_pb2.ModelInferRequest,
                    service_pb2.ModelInferResponse)}

            async def infer(self, stream) -> None:  # noqa: ANN001
                await stream.recv_message()
                await asyncio.sleep(0)
                await stream.send_message(fixed)

        async def gmain() -> None:
            srv = Server([G()])
            await srv.start("127.0.0.1", port)
            await srv.wait_closed()

        _run_loop(gmain)
        return
    if kind == "uvicorn":
        import uvicorn

        head = (b'{"model_name":"mlp","model_version":"1","outputs":[{"name":"y","datatype":"FP32","shape":[1,10],'
                b'"parameters":{"binary_data_size":40}}]}')
        payload = head + bytes(40)
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"inference-header-content-length", str(len(head)).encode()),
                   (b"content-length", str(len(payload)).encode())]

        async def app(scope, receive, send) -> None:  # noqa: ANN001
            if scope["type"] != "http":
                return
            more = True
            while more:
                more = (await receive()).get("more_body", False)
            await asyncio.sleep(0)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def work():  # noqa: ANN202
        return fixed

    class Sync(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):  # noqa: N802, ANN001, ANN201
            if kind == "grpc sync+loop":
                return asyncio.run_coroutine_threadsafe(work(), loop).result()
            return fixed

    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Sync(), s)
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    s.wait_for_termination()


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(proto: str, port: int, n: int, conc: int) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            run()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)

    def run() -> None:
        lib = httpclient if proto == "http" else grpcclient
        c = lib.InferenceServerClient(f"127.0.0.1:{port}")
        if proto == "stream":  # one ModelStreamInfer stream per thread, one request at a time (closed loop)
            i = grpcclient.InferInput("x", [1, 64], "FP32")
            i.set_data_from_numpy(x)
            done: queue.SimpleQueue = queue.SimpleQueue()
            c.start_stream(callback=lambda result, error: done.put(error))
            try:
                for _ in range(n // conc):
                    c.async_stream_infer("mlp", [i])
                    error = done.get(timeout=30)
                    if error is not None:
                        raise error
            finally:
                c.stop_stream()
                c.close()
            return
        i = lib.InferInput("x", [1, 64], "FP32")
        if proto == "http":
            i.set_data_from_numpy(x, binary_data=True)
            out = [httpclient.InferRequestedOutput("y", binary_data=True)]
        else:
            i.set_data_from_numpy(x)
            out = None
        for _ in range(n // conc):
            c.infer("mlp", [i], outputs=out)
        c.close()

    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def _wait_ready(proto: str, port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(Exception):
            _load(proto, port, 1, 1)
            return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--grpclib-path", default="", help="a directory holding grpclib (pip install --target ...)")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.grpclib_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), args.grpclib_path) if p)
        sys.path.append(args.grpclib_path)
    kinds = [k for k in TRIVIAL if k != "grpclib" or importlib.util.find_spec("grpclib") is not None]
    if "grpclib" not in kinds:
        print("grpclib is not importable: its row is skipped (pip install --target DIR grpclib; --grpclib-path DIR)")
    from acl_bundle.sim import builder, models

    procs: list[subprocess.Popen] = []
    cases: dict[str, tuple[str, int, subprocess.Popen]] = {}
    with tempfile.TemporaryDirectory() as d:
        try:
            for k in kinds:
                port = _port()
                p = subprocess.Popen([sys.executable, __file__, "--serve", k, str(port)], env=env)
                procs.append(p)
                cases[k] = ("http" if k == "uvicorn" else "grpc", port, p)
            model, _ = models.mlp((64, 256, 256, 10), seed=0)
            om, _ = builder.save(builder.build_bundle(model, batch_sizes=[1, 2, 4, 8], init=True), Path(d) / "mlp.om")
            hp, gp = _port(), _port()
            p = subprocess.Popen([sys.executable, "-m", "acl_bundle", "serve", str(om), "--sim", "--http-port",
                                  str(hp), "--grpc-port", str(gp), "--no-access-log"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            cases["acl-bundle gRPC"] = ("grpc", gp, p)
            cases["acl-bundle gRPC stream"] = ("stream", gp, p)
            cases["acl-bundle HTTP"] = ("http", hp, p)
            for proto, port, proc in cases.values():
                _wait_ready(proto, port, proc)
            per: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
            for r in range(args.rounds + 1):  # round 0 warms up
                for k in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                    proto, port, proc = cases[k]
                    c0, t0 = _cpu(proc.pid), time.perf_counter()
                    _load(proto, port, args.requests, args.concurrency)
                    if r:
                        per[k].append(((_cpu(proc.pid) - c0) / args.requests,
                                       args.requests / (time.perf_counter() - t0)))
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
    print(f"server CPU per request (median of {args.rounds} interleaved rounds of {args.requests} single-row "
          f"requests, {args.concurrency} tritonclient threads); trivial = fixed answer, no model:")
    for k, v in per.items():
        label = k if k.startswith("acl-bundle") else f"trivial {k}"
        print(f"  {label:24s} {statistics.median(a for a, _ in v) * 1e6:7.1f} us   "
              f"throughput {statistics.median(b for _, b in v):6.0f}/s")
    med = {k: statistics.median(a for a, _ in v) for k, v in per.items()}
    print(f"acl-bundle gRPC / HTTP: {med['acl-bundle gRPC'] / med['acl-bundle HTTP']:.2f}x (unary), "
          f"{med['acl-bundle gRPC stream'] / med['acl-bundle HTTP']:.2f}x (stream); "
          f"trivial grpc.aio / acl-bundle HTTP: {med['grpc.aio'] / med['acl-bundle HTTP']:.2f}x; "
          f"trivial grpc.aio / trivial uvicorn: {med['grpc.aio'] / med['uvicorn']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
