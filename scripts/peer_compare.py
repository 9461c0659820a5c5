"""acl-bundle against the Python servers of the same protocol (Seldon MLServer, KServe), when they are installed.

The same model everywhere: an ONNX MLP 64-256-256-10, batch 1 (acl-bundle serves it as a simulator bundle with
dynamic batch sizes 1-8; the peers run it with onnxruntime in a tiny custom runtime written here).  Each server is a
process on loopback; tritonclient drives all of them over HTTP (binary tensors) and gRPC; closed-loop clients at each
``--concurrency`` for ``--seconds`` per window, windows in rotated order over ``--rounds`` rounds.  Prints throughput
and p50 per (server, protocol, concurrency) and acl-bundle / peer ratios.  MLServer and KServe are not dependencies
of acl-bundle: a peer that is not importable is skipped with a note.

Run: ``python scripts/peer_compare.py [--peers mlserver,kserve] [--concurrency 1,8]``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
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

MLSERVER_RUNTIME = '''
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxMLP(MLModel):
    async def load(self) -> bool:
        self.sess = ort.InferenceSession(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.sess.run(None, {"x": x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
'''

KSERVE_SERVER = '''
import sys
import kserve
import onnxruntime as ort
from kserve import InferOutput, InferResponse


class OnnxMLP(kserve.Model):
    def __init__(self, path):
        super().__init__("mlp")
        self.sess = ort.InferenceSession(path)
        self.ready = True

    def predict(self, payload, headers=None):
        x = payload.inputs[0].as_numpy()
        y = self.sess.run(None, {"x": x})[0]
        out = InferOutput(name="y", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y)
        return InferResponse(model_name="mlp", infer_outputs=[out], response_id=payload.id)


if __name__ == "__main__":
    kserve.ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3])).start([OnnxMLP(sys.argv[1])])
'''


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(http_port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if c.is_model_ready("mlp"):
                return
        time.sleep(0.2)
    raise RuntimeError("server not ready")


@contextlib.contextmanager
def _start(kind: str, work: Path, onnx_path: Path, om_path: Path):
    hp, gp = _port(), _port()
    d = work / kind
    d.mkdir()
    log = open(d / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    if kind == "acl-bundle":
        args = [sys.executable, "-m", "acl_bundle", "serve", str(om_path), "--sim", "--model-name", "mlp",
                "--http-port", str(hp), "--grpc-port", str(gp)]
    elif kind == "mlserver":
        (d / "peer_runtime.py").write_text(MLSERVER_RUNTIME)
        (d / "settings.json").write_text(json.dumps({"http_port": hp, "grpc_port": gp, "metrics_port": _port()}))
        (d / "model-settings.json").write_text(json.dumps({
            "name": "mlp", "implementation": "peer_runtime.OnnxMLP", "parameters": {"uri": str(onnx_path)}}))
        args = ["mlserver", "start", str(d)]
    else:
        (d / "kserve_server.py").write_text(KSERVE_SERVER)
        args = [sys.executable, str(d / "kserve_server.py"), str(onnx_path), str(hp), str(gp)]
    proc = subprocess.Popen(args, cwd=d, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(hp, proc)
        yield hp, gp
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _window(proto: str, hp: int, gp: int, conc: int, seconds: float, x: np.ndarray,
            want: np.ndarray) -> tuple[float, float]:
    """Closed-loop clients for ``seconds``: (requests/s, p50 ms); every answer checked against numpy."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    lat: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def worker() -> None:
        if proto == "http":
            c = httpclient.InferenceServerClient(f"127.0.0.1:{hp}")
            i = httpclient.InferInput("x", list(x.shape), "FP32")
            i.set_data_from_numpy(x, binary_data=True)
            outs = [httpclient.InferRequestedOutput("y", binary_data=True)]
        else:
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{gp}")
            i = grpcclient.InferInput("x", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            outs = None
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            y = c.infer("mlp", [i], outputs=outs).as_numpy("y")
            mine.append(time.perf_counter() - t0)
            if not np.allclose(y, want, rtol=1e-4, atol=1e-4):
                errors.append("wrong result")
        lat.extend(mine)
        c.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise AssertionError(f"{len(errors)} wrong results")
    return len(lat) / (time.perf_counter() - t0), 1e3 * statistics.median(lat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", default="mlserver,kserve")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    from acl_bundle.sim import builder, models

    peers = []
    for p in args.peers.split(","):
        if p and importlib.util.find_spec(p) is None:
            print(f"{p}: not installed, skipped (pip install {p} in a separate venv to compare)")
        elif p:
            peers.append(p)
    concs = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="acl_bundle_peers_") as tmp:
        work = Path(tmp)
        onnx_model, w = models.mlp((64, 256, 256, 10), seed=0, batch=1)
        onnx_path = work / "mlp.onnx"
        onnx_path.write_bytes(onnx_model.SerializeToString())
        model, _ = models.mlp((64, 256, 256, 10), seed=0)
        om_path, _ = builder.save(builder.build_bundle(model, batch_sizes=[1, 2, 4, 8], init=True), work / "mlp.om")
        x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
        want = models.mlp_reference(x, w)
        servers = ["acl-bundle", *peers]
        results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        with contextlib.ExitStack() as stack:
            ports = {s: stack.enter_context(_start(s, work, onnx_path, Path(om_path))) for s in servers}
            cases = [(s, proto, c) for proto in ("http", "grpc") for c in concs for s in servers]
            for r in range(args.rounds):
                k = r % len(cases)
                for case in cases[k:] + cases[:k]:  # rotated order each round
                    s, proto, c = case
                    results.setdefault(case, []).append(_window(proto, *ports[s], c, args.seconds, x, want))
    print(f"\n{'server':12s} {'proto':5s} {'conc':>4s} {'req/s':>9s} {'p50 ms':>8s}   (median of {args.rounds} "
          f"interleaved {args.seconds:.0f} s windows)")
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in results.items()}
    for (s, proto, c), (rps, p50) in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        print(f"{s:12s} {proto:5s} {c:4d} {rps:9.0f} {p50:8.2f}")
    for peer in peers:
        print(f"\nacl-bundle / {peer}:")
        for proto in ("http", "grpc"):
            for c in concs:
                a, b = med[("acl-bundle", proto, c)], med[(peer, proto, c)]
                print(f"  {proto:5s} conc {c:3d}: throughput {a[0] / b[0]:5.2f}x  p50 {a[1] / b[1]:5.2f}x")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
