"""Server CPU per request: HTTP (binary tensors) against gRPC, access log on and off (issue 27).

Starts ``acl-bundle serve`` processes on loopback (simulator, an MLP 64-256-256-10), one with the
access log (the default) and one with ``--no-access-log``; then, interleaved over ``--rounds``
rounds (A B B A order over the four cases), ``--requests`` single-row requests from
``--concurrency`` tritonclient threads; the server's CPU is its utime + stime from
/proc/<pid>/stat over the round.  Prints the median CPU microseconds per request and the ratios.

Run: ``python scripts/serve_cpu_per_request.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _server(om: Path, *extra: str):
    hp, gp = _port(), _port()
    log = open(om.parent / f"server{hp}.log", "wb")  # noqa: SIM115 - closed in the finally below
    p = subprocess.Popen([sys.executable, "-m", "acl_bundle", "serve", str(om), "--sim", "--http-port", str(hp),
                          "--grpc-port", str(gp), *extra], stdout=log, stderr=subprocess.STDOUT)
    try:
        import tritonclient.http as httpclient

        c = httpclient.InferenceServerClient(f"127.0.0.1:{hp}")
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                if c.is_server_ready():
                    break
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        yield p.pid, hp, gp
    finally:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(30)
        log.close()


def _load(proto: str, hp: int, gp: int, n: int, conc: int) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    def worker(k: int) -> None:
        if proto == "http":
            c = httpclient.InferenceServerClient(f"127.0.0.1:{hp}")
            i = httpclient.InferInput("x", [1, 64], "FP32")
            i.set_data_from_numpy(x, binary_data=True)
            o = [httpclient.InferRequestedOutput("y", binary_data=True)]
        else:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{gp}")
            i = grpcclient.InferInput("x", [1, 64], "FP32")
            i.set_data_from_numpy(x)
            o = None
        for _ in range(k):
            c.infer("mlp", [i], outputs=o)
        c.close()

    ts = [threading.Thread(target=worker, args=(n // conc,)) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    from acl_bundle.sim import builder, models

    with tempfile.TemporaryDirectory() as d:
        model, _ = models.mlp((64, 256, 256, 10), seed=0)
        om, _ = builder.save(builder.build_bundle(model, batch_sizes=[1, 2, 4, 8], init=True), Path(d) / "mlp.om")
        with _server(Path(om)) as on, _server(Path(om), "--no-access-log") as off:
            cases = {"http+log": ("http", on), "grpc+log": ("grpc", on), "http": ("http", off), "grpc": ("grpc", off)}
            per: dict[str, list[float]] = {k: [] for k in cases}
            for r in range(args.rounds + 1):  # round 0 warms up
                order = list(cases) if r % 2 == 0 else list(cases)[::-1]
                for k in order:
                    proto, (pid, hp, gp) = cases[k]
                    c0 = _cpu(pid)
                    _load(proto, hp, gp, args.requests, args.concurrency)
                    if r:
                        per[k].append((_cpu(pid) - c0) / args.requests)
    med = {k: statistics.median(v) * 1e6 for k, v in per.items()}
    print(f"server CPU per request (us, median of {args.rounds} interleaved rounds of {args.requests} requests, "
          f"concurrency {args.concurrency}, batch 1, binary tensors):")
    for k, v in med.items():
        print(f"  {k:9s} {v:8.1f}")
    print(f"gRPC / HTTP: {med['grpc'] / med['http']:.2f}x (log off), "
          f"{med['grpc+log'] / med['http+log']:.2f}x (log on)")
    print(f"access log share: HTTP {1 - med['http'] / med['http+log']:+.0%}, "
          f"gRPC {1 - med['grpc'] / med['grpc+log']:+.0%}")


if __name__ == "__main__":
    main()
