"""Server CPU per trivial ``ModelInfer`` under grpcio's server flavours, same tritonclient load (issue 27).

Three server processes answer a fixed ModelInferResponse: ``aio`` (grpc.aio, as acl-bundle serves), ``sync``
(grpcio's synchronous server on an 8-thread pool) and ``sync+loop`` (the synchronous server handing each call to an
asyncio loop thread and waiting, as serving through the batcher would need).  8 tritonclient threads send
``--requests`` single-row requests per window, the three in A B C C B A order over ``--rounds`` rounds; the
server's CPU is utime + stime from /proc/<pid>/stat.  Run: ``python scripts/grpc_server_alternatives.py``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures

import numpy as np

KINDS = ("aio", "sync", "sync+loop")


def _response():  # noqa: ANN202 - protobuf message
    from tritonclient.grpc import service_pb2

    r = service_pb2.ModelInferResponse(model_name="mlp", model_version="1")
    o = r.outputs.add()
    o.name, o.datatype = "y", "FP32"
    o.shape.extend([1, 10])
    r.raw_output_contents.append(bytes(40))
    return r


def serve(kind: str, port: int) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    fixed = _response()
    if kind == "aio":
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

        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
        else:
            uvloop.run(main())
        return
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def work():  # noqa: ANN202
        return fixed

    class Sync(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):  # noqa: N802, ANN001, ANN201
            if kind == "sync+loop":
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


def _load(port: int, n: int, conc: int) -> None:
    import tritonclient.grpc as grpcclient

    x = np.zeros((1, 64), np.float32)

    def worker() -> None:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        i = grpcclient.InferInput("x", [1, 64], "FP32")
        i.set_data_from_numpy(x)
        for _ in range(n // conc):
            c.infer("mlp", [i])
        c.close()

    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    procs = {}
    for i, k in enumerate(KINDS):
        port = 50600 + i
        procs[k] = (subprocess.Popen([sys.executable, __file__, "--serve", k, str(port)]), port)
    try:
        time.sleep(3)
        per: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
        for r in range(args.rounds + 1):  # round 0 warms up
            for k in (KINDS if r % 2 == 0 else KINDS[::-1]):
                p, port = procs[k]
                c0, t0 = _cpu(p.pid), time.perf_counter()
                _load(port, args.requests, 8)
                if r:
                    per[k].append(((_cpu(p.pid) - c0) / args.requests, args.requests / (time.perf_counter() - t0)))
        for k, v in per.items():
            print(f"{k:10s} server CPU/request {statistics.median(a for a, _ in v) * 1e6:7.1f} us   "
                  f"throughput {statistics.median(b for _, b in v):7.0f}/s")
    finally:
        for p, _ in procs.values():
            p.kill()
            p.wait(10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
