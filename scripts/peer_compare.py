"""acl-bundle against the Python servers of the same protocol (Seldon MLServer, KServe), when they are installed.

The same model everywhere: an ONNX MLP 64-256-256-10, batch 1 (acl-bundle serves it as a simulator bundle with
dynamic batch sizes 1-8, its defaults otherwise: dynamic batching on, access log on; the peers run the ONNX file
with onnxruntime in a tiny custom runtime written here, one intra-op and one inter-op thread as the simulator's own
session, their defaults otherwise).  Each server is a process on loopback; tritonclient drives all of them, from
this interpreter, over HTTP (binary tensors both ways; ``http-json``: JSON bodies) and gRPC (unary; ``grpc-stream``:
``ModelStreamInfer``, one stream per client, one request in flight, set against a peer's unary gRPC where the peer
has no streaming); closed-loop client threads at each ``--concurrency`` for ``--seconds`` per window, windows in
rotated order over ``--rounds`` rounds after one unrecorded warm-up window per case.  Before any timing, one answer
of each server over each protocol is compared with numpy and with onnxruntime; during the windows every answer is
checked against numpy.  A protocol a server refuses (MLServer 1.7 has no binary tensor extension over HTTP;
KServe 0.21 has no ``ModelStreamInfer``; MLServer 1.7's, made for generation, answered the custom runtime here with
the error "mlp") is reported and not measured.

Prints, per (server, protocol, concurrency), the median over rounds of throughput, p50 latency and the server's
CPU per request (utime + stime of its process tree from /proc, so MLServer's inference worker counts) and the
client's (this process), then acl-bundle / peer and acl-bundle / best-peer ratios.

MLServer runs once per ``--mlserver-parallel-workers`` value: by default twice, with its own default (1: inference
in a worker process, each request handed over a pipe) and with 0 (inference in the server process), which is
faster here; the best peer is the fastest of all.

MLServer and KServe are not dependencies of acl-bundle.  Each peer runs under its own interpreter:
``--mlserver-python`` / ``--kserve-python`` name a venv's python that has it (and onnxruntime); by default this
interpreter is used when the peer is importable here, else the peer is skipped with a note.

Run: ``python scripts/peer_compare.py --mlserver-python /work/peers/mlserver/bin/python
--kserve-python /work/peers/kserve/bin/python [--concurrency 1,8] [--rounds 4] [--seconds 3]``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # acl_bundle from this tree, as the acl-bundle server it starts
PEERS = ("mlserver", "kserve")
Key = tuple[str, str, int]  # (server, protocol, concurrency)
Stats = tuple[float, float, float, float]  # (requests/s, p50 ms, server CPU µs / request, client CPU µs / request)
PROTOCOLS = ("http", "http-json", "grpc", "grpc-stream")  # http: binary tensors; grpc-stream: ModelStreamInfer

MLSERVER_RUNTIME = '''
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxMLP(MLModel):
    async def load(self) -> bool:
        so = ort.SessionOptions()  # as the simulator's session: one thread, no spinning pool on 2 shared cores
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(self.settings.parameters.uri, so)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.sess.run(None, {"x": x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", y)])
'''

KSERVE_SERVER = '''
import sys
import uuid
import kserve
import onnxruntime as ort
from kserve import InferOutput, InferResponse


class OnnxMLP(kserve.Model):
    def __init__(self, path):
        super().__init__("mlp")
        so = ort.SessionOptions()  # as the simulator's session: one thread, no spinning pool on 2 shared cores
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so)
        self.ready = True

    def predict(self, payload, headers=None):
        x = payload.inputs[0].as_numpy()
        y = self.sess.run(None, {"x": x})[0]
        out = InferOutput(name="y", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
        return InferResponse(model_name="mlp", infer_outputs=[out], response_id=payload.id or str(uuid.uuid4()),
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)


if __name__ == "__main__":
    path, http_port, grpc_port = sys.argv[1:4]
    del sys.argv[1:]  # kserve parses sys.argv for its own flags
    kserve.ModelServer(http_port=int(http_port), grpc_port=int(grpc_port)).start([OnnxMLP(path)])
'''


@dataclass(frozen=True)
class Peer:
    name: str
    python: str
    version: str


def _probe(python: str, module: str) -> str | None:
    """``module``'s version under ``python`` (and onnxruntime's), or None when either is not importable there."""
    code = (f"import {module}, onnxruntime, importlib.metadata as m; "
            f"print(m.version('{module}'), onnxruntime.__version__)")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return None
    mod, ort = r.stdout.split()
    return f"{module} {mod}, onnxruntime {ort}"


def resolve_peers(names: Sequence[str], pythons: Mapping[str, str | None]) -> tuple[list[Peer], list[str]]:
    """Which peers run and under which interpreter; notes for those skipped."""
    peers, notes = [], []
    for name in names:
        given = pythons.get(name)
        if given is None and importlib.util.find_spec(name) is None:
            notes.append(f"{name}: not importable here and no --{name}-python given: skipped "
                         f"(python3 -m venv /some/venv && /some/venv/bin/pip install {name} onnxruntime)")
            continue
        python = given or sys.executable
        version = _probe(python, name)
        if version is None:
            if given:
                raise SystemExit(f"--{name}-python {given}: cannot import {name} and onnxruntime there")
            notes.append(f"{name}: importable but onnxruntime is not: skipped")
            continue
        peers.append(Peer(name, python, version))
    return peers, notes


def _tree_cpu(pid: int) -> float:
    """CPU seconds (utime + stime) of ``pid`` and all its live descendants."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (ppid, cpu)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (pp, _) in stats.items() if pp == p]
    return total


def _own_cpu() -> float:
    """CPU seconds of this process (all threads: the load generator)."""
    t = os.times()
    return t.user + t.system


def _command(kind: str, python: str, d: Path, onnx_path: Path, om_path: Path, hp: int, gp: int,
             mlserver_workers: int | None, extra: Sequence[str] = ()) -> list[str]:
    if kind == "acl-bundle":
        return [sys.executable, "-m", "acl_bundle", "serve", str(om_path), "--sim", "--model-name", "mlp",
                "--http-port", str(hp), "--grpc-port", str(gp), *extra]
    if kind == "mlserver":
        from acl_bundle.bench.serve import free_port

        (d / "peer_runtime.py").write_text(MLSERVER_RUNTIME)
        settings: dict[str, object] = {"http_port": hp, "grpc_port": gp, "metrics_port": free_port()}
        if mlserver_workers is not None:
            settings["parallel_workers"] = mlserver_workers
        (d / "settings.json").write_text(json.dumps(settings))
        (d / "model-settings.json").write_text(json.dumps({
            "name": "mlp", "implementation": "peer_runtime.OnnxMLP", "parameters": {"uri": str(onnx_path)}}))
        return [python, "-c", "import sys; from mlserver.cli import main; sys.argv[0] = 'mlserver'; main()",
                "start", str(d)]
    (d / "kserve_server.py").write_text(KSERVE_SERVER)
    return [python, str(d / "kserve_server.py"), str(onnx_path), str(hp), str(gp)]


@dataclass(frozen=True)
class Server:
    label: str  # as printed
    kind: str  # "acl-bundle" or a peer's name
    python: str
    mlserver_workers: int | None = None  # MLServer's parallel_workers, None: its default
    extra: tuple[str, ...] = ()  # acl-bundle serve options of a variant


def servers_to_run(peers: Sequence[Peer], mlserver_workers: Sequence[int | None],
                   variants: Mapping[str, Sequence[str]] | None = None) -> list[Server]:
    """acl-bundle, its ``variants`` (label: extra ``serve`` options), then every peer; MLServer once per
    ``parallel_workers`` setting (None: its default)."""
    out = [Server("acl-bundle", "acl-bundle", sys.executable)]
    out += [Server(f"acl-bundle:{k}", "acl-bundle", sys.executable, extra=tuple(v))
            for k, v in (variants or {}).items()]
    for p in peers:
        if p.name == "mlserver":
            out += [Server("mlserver" if n is None else f"mlserver-pw{n}", p.name, p.python, n)
                    for n in mlserver_workers]
        else:
            out.append(Server(p.name, p.name, p.python))
    return out


@contextlib.contextmanager
def _start(server: Server, work: Path, onnx_path: Path, om_path: Path) -> Iterator[tuple[int, int, int]]:
    """Start one server; yield (pid, http port, grpc port) once its model is ready."""
    from acl_bundle.bench.serve import free_port, loopback_server

    hp, gp = free_port(), free_port()
    d = work / server.label
    d.mkdir()
    kind = server.kind
    args = _command(kind, server.python, d, onnx_path, om_path, hp, gp, server.mlserver_workers, server.extra)
    env = dict(os.environ)
    if kind == "acl-bundle":  # the server imports this tree
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    else:
        env.pop("PYTHONPATH", None)  # the peer's venv only
    with loopback_server(args, d / "server.log", hp, "/v2/models/mlp/ready", cwd=d, env=env, timeout=120) as proc:
        yield proc.pid, hp, gp


def _client(proto: str, hp: int, gp: int, x: np.ndarray) -> tuple[Any, Callable[[], np.ndarray]]:
    """(client, call) for one tritonclient over ``proto`` ("http": binary tensors both ways); call() answers y."""
    if proto.startswith("http"):
        import tritonclient.http as httpclient

        binary = proto == "http"
        c = httpclient.InferenceServerClient(f"127.0.0.1:{hp}")
        i = httpclient.InferInput("x", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
        # a JSON body says so (KServe reads a body without this header as binary and asks for its header length)
        hdrs = None if binary else {"Content-Type": "application/json"}
        return c, lambda: c.infer("mlp", [i], outputs=outs, headers=hdrs).as_numpy("y")
    import tritonclient.grpc as grpcclient

    g = grpcclient.InferenceServerClient(f"127.0.0.1:{gp}")
    gi = grpcclient.InferInput("x", list(x.shape), "FP32")
    gi.set_data_from_numpy(x)
    if proto == "grpc":
        return g, lambda: g.infer("mlp", [gi]).as_numpy("y")
    # grpc-stream: one ModelStreamInfer stream per client, one request in flight (closed loop)
    answers: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()

    def streamed() -> np.ndarray:
        g.async_stream_infer("mlp", [gi])
        result, error = answers.get(timeout=30)
        if error is not None:
            raise error
        return result.as_numpy("y")

    class _Stream:
        def close(self) -> None:
            g.stop_stream()
            g.close()

    g.start_stream(callback=lambda result, error: answers.put((result, error)))
    return _Stream(), streamed


def check_answer(y: np.ndarray, references: Mapping[str, np.ndarray], tol: float = 1e-4) -> dict[str, float]:
    """Max abs difference of ``y`` from each reference; AssertionError when one is off by more than ``tol``."""
    diffs = {}
    for name, ref in references.items():
        if y.shape != ref.shape:
            raise AssertionError(f"shape {y.shape}, {name} says {ref.shape}")
        diffs[name] = float(np.max(np.abs(y.astype(np.float64) - ref)))
        if not np.allclose(y, ref, rtol=tol, atol=tol):
            raise AssertionError(f"answer differs from {name} by up to {diffs[name]:.3g}")
    return diffs


def _one_answer(proto: str, hp: int, gp: int, x: np.ndarray) -> np.ndarray:
    c, call = _client(proto, hp, gp, x)
    try:
        return call()
    finally:
        c.close()


def _window(proto: str, pid: int, hp: int, gp: int, conc: int, seconds: float, x: np.ndarray,
            want: np.ndarray) -> Stats:
    """Closed-loop clients for ``seconds``: (requests/s, p50 ms, server and client CPU µs per request)."""
    lat: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(conc + 1)
    stop = [0.0]

    def worker() -> None:
        c: Any = None
        mine: list[float] = []
        try:
            c, call = _client(proto, hp, gp, x)
            start.wait()
            while time.monotonic() < stop[0]:
                t0 = time.perf_counter()
                y = call()
                mine.append(time.perf_counter() - t0)
                if y is None or not np.allclose(y, want, rtol=1e-4, atol=1e-4):
                    errors.append("wrong result")
        except Exception as e:  # noqa: BLE001 - reported below, the window fails
            errors.append(repr(e))
            start.abort()
        finally:
            lat.extend(mine)
            if c is not None:
                c.close()

    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    stop[0] = time.monotonic() + seconds
    cpu0, own0, t0 = _tree_cpu(pid), _own_cpu(), time.perf_counter()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    for t in ts:
        t.join()
    elapsed, cpu, own = time.perf_counter() - t0, _tree_cpu(pid) - cpu0, _own_cpu() - own0
    if errors:
        raise AssertionError(f"{len(errors)} failed requests, first: {errors[0]}")
    n = len(lat)
    return n / elapsed, 1e3 * statistics.median(lat), 1e6 * cpu / n, 1e6 * own / n


def medians(results: Mapping[Key, Sequence[Stats]]) -> dict[Key, Stats]:
    """Median over rounds of each figure, separately."""
    def m(v: Sequence[Stats], i: int) -> float:
        return statistics.median(s[i] for s in v)

    return {k: (m(v, 0), m(v, 1), m(v, 2), m(v, 3)) for k, v in results.items()}


@dataclass(frozen=True)
class Ratio:
    """acl-bundle / ``best_peer`` for one (protocol, concurrency), of the medians."""
    protocol: str
    concurrency: int
    best_peer: str
    throughput: float
    p50: float
    cpu_per_request: float
    round_range: tuple[float, float] | None = None  # lowest, highest throughput ratio of one round

    def line(self, name_peer: bool) -> str:
        rounds = "" if self.round_range is None else "rounds {:.2f}-{:.2f}".format(*self.round_range)
        note = ", ".join(x for x in (rounds, self.best_peer if name_peer else "") if x)
        return (f"  {self.protocol:11s} conc {self.concurrency:3d}: throughput {self.throughput:5.2f}x ({note})  "
                f"p50 {self.p50:5.2f}x  server CPU/request {self.cpu_per_request:5.2f}x")


def ratio_rows(med: Mapping[Key, Stats], peers: Sequence[str], protocols: Sequence[str], concs: Sequence[int],
               results: Mapping[Key, Sequence[Stats]] | None = None, ours: str = "acl-bundle") -> list[Ratio]:
    """Per (protocol, concurrency): the best peer by throughput and ``ours`` / that peer's figures; with the
    per-round ``results``, also the lowest and highest throughput ratio of a round (``round_range``)."""
    rows: list[Ratio] = []
    for proto in protocols:
        for c in concs:
            have = [p for p in peers if (p, proto, c) in med]
            if (ours, proto, c) not in med or not have:
                continue
            best = max(have, key=lambda p: med[(p, proto, c)][0])
            a, b = med[(ours, proto, c)], med[(best, proto, c)]
            span = None
            if results is not None:
                per_round = [x[0] / y[0] for x, y in zip(results[(ours, proto, c)], results[(best, proto, c)])]
                span = (min(per_round), max(per_round))
            rows.append(Ratio(proto, c, best, a[0] / b[0], a[1] / b[1], a[2] / b[2], span))
    return rows


def format_report(results: Mapping[Key, Sequence[Stats]], peers: Sequence[str], protocols: Sequence[str],
                  concs: Sequence[int], rounds: int, seconds: float, ours: Sequence[str] = ("acl-bundle",)) -> str:
    med = medians(results)
    w = max(12, *(len(s) for s in [*ours, *peers]))
    lines = [f"{'server':{w}s} {'proto':11s} {'conc':>4s} {'req/s':>8s} {'p50 ms':>7s} {'server CPU':>10s} "
             f"{'client CPU':>10s}"
             f"   (medians of {rounds} interleaved {seconds:g} s windows; CPU in us per request)"]
    for (s, proto, c), (rps, p50, cpu, own) in sorted(
            med.items(), key=lambda kv: (protocols.index(kv[0][1]), kv[0][2], kv[0][0] not in ours, kv[0][0])):
        lines.append(f"{s:{w}s} {proto:11s} {c:4d} {rps:8.0f} {p50:7.2f} {cpu:10.0f} {own:10.0f}")
    for me in ours:
        for peer in peers:
            lines.append(f"\n{me} / {peer}:")
            lines += [r.line(False) for r in ratio_rows(med, [peer], protocols, concs, results, me)]
        if len(peers) > 1:
            lines.append(f"\n{me} / best peer (by throughput):")
            lines += [r.line(True) for r in ratio_rows(med, peers, protocols, concs, results, me)]
        if "grpc-stream" in protocols and "grpc" in protocols:  # the peers have no ModelStreamInfer: their unary
            sub = {(p, "grpc-stream", c): results[(p, "grpc", c)] for p in peers for c in concs
                   if (p, "grpc", c) in results and (p, "grpc-stream", c) not in results}
            both = {**results, **sub}
            rows = ratio_rows(medians(both), peers, ["grpc-stream"], concs, both, me)
            if rows and sub:
                lines.append(f"\n{me} grpc-stream / best peer's unary grpc (where a peer has no ModelStreamInfer):")
                lines += [r.line(True) for r in rows]
    return "\n".join(lines)


def _versions() -> str:
    import grpc
    import onnxruntime
    import tritonclient

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    tc = getattr(tritonclient, "__version__", None)
    if tc is None:
        import importlib.metadata

        tc = importlib.metadata.version("tritonclient")
    return (f"acl-bundle {rev.stdout.strip() or '?'} (Python {platform.python_version()}, grpcio {grpc.__version__}, "
            f"onnxruntime {onnxruntime.__version__}); client tritonclient {tc}; {os.cpu_count()} CPUs")


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of mlserver,kserve")
    for p in PEERS:
        ap.add_argument(f"--{p}-python", help=f"an interpreter that can import {p} and onnxruntime")
    ap.add_argument("--mlserver-parallel-workers", default="default,0",
                    help="MLServer's parallel_workers, one MLServer per comma-separated value (default: MLServer's "
                         "own, 1 = inference in a worker process; 0 = in the server process)")
    ap.add_argument("--acl-bundle-variant", action="append", default=[], metavar="NAME=OPTIONS",
                    help="also run acl-bundle with these serve options, e.g. 'nobatch=--no-dynamic-batching' "
                         "(repeatable; for information, beside the defaults)")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS),
                    help="http (binary tensors), http-json, grpc, grpc-stream (ModelStreamInfer)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    from acl_bundle.sim import builder, models

    names = [p for p in args.peers.split(",") if p]
    unknown = set(names) - set(PEERS)
    if unknown:
        ap.error(f"--peers: unknown {sorted(unknown)}, expected a subset of {list(PEERS)}")
    protocols = [p for p in args.protocols.split(",") if p]
    if set(protocols) - set(PROTOCOLS):
        ap.error(f"--protocols: expected a subset of {list(PROTOCOLS)}")
    concs = [int(c) for c in args.concurrency.split(",")]
    try:
        workers = [None if w == "default" else int(w) for w in args.mlserver_parallel_workers.split(",")]
    except ValueError:
        ap.error("--mlserver-parallel-workers: comma-separated whole numbers or 'default'")
    variants = {}
    for v in args.acl_bundle_variant:
        name, sep, opts = v.partition("=")
        if not sep or not name:
            ap.error(f"--acl-bundle-variant {v!r}: expected NAME=OPTIONS")
        variants[name] = opts.split()
    peers, notes = resolve_peers(names, {p: getattr(args, f"{p}_python") for p in PEERS})
    for n in notes:
        print(n)
    print(_versions())
    for peer in peers:
        print(f"{peer.name}: {peer.version} under {peer.python}")
    print(f"before: {_load()}", flush=True)
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="acl_bundle_peers_") as tmp:
        work = Path(tmp)
        onnx_model, w = models.mlp((64, 256, 256, 10), seed=0, batch=1)
        onnx_path = work / "mlp.onnx"
        onnx_path.write_bytes(onnx_model.SerializeToString())
        model, _ = models.mlp((64, 256, 256, 10), seed=0)
        om_path, _ = builder.save(builder.build_bundle(model, batch_sizes=[1, 2, 4, 8], init=True), work / "mlp.om")
        x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
        want = models.mlp_reference(x, w)
        refs = {"numpy": want.astype(np.float64),
                "onnxruntime": ort.InferenceSession(str(onnx_path)).run(None, {"x": x})[0].astype(np.float64)}
        specs = servers_to_run(peers, workers, variants)
        servers = [sv.label for sv in specs]
        ours = [sv.label for sv in specs if sv.kind == "acl-bundle"]
        results: dict[Key, list[Stats]] = {}
        with contextlib.ExitStack() as stack:
            procs = {sv.label: stack.enter_context(_start(sv, work, onnx_path, Path(om_path))) for sv in specs}
            from tritonclient.utils import InferenceServerException

            refused = set()
            for s in servers:
                for proto in protocols:
                    try:
                        y = _one_answer(proto, *procs[s][1:], x)
                    except InferenceServerException as e:  # e.g. MLServer has no binary tensor extension
                        refused.add((s, proto))
                        print(f"check {s:18s} {proto:11s}: refused, not measured: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
                        continue
                    diffs = check_answer(y, refs)
                    print(f"check {s:18s} {proto:11s}: max |diff| " +
                          ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
            if any((me, proto) in refused for me in ours for proto in protocols):
                raise SystemExit("acl-bundle refused a protocol: nothing to compare")
            cases = [(s, proto, c) for proto in protocols for c in concs for s in servers if (s, proto) not in refused]
            for case in cases:  # warm-up, not recorded
                _window(case[1], *procs[case[0]], case[2], min(0.5, args.seconds), x, want)
            for r in range(args.rounds):
                k = (r * len(cases)) // args.rounds  # rotated order each round
                for case in cases[k:] + cases[:k]:
                    s, proto, c = case
                    results.setdefault(case, []).append(_window(proto, *procs[s], c, args.seconds, x, want))
                print(f"round {r + 1}/{args.rounds} done, {_load()}", flush=True)
    print()
    peer_labels = [s for s in servers if s not in ours]
    print(format_report(results, peer_labels, protocols, concs, args.rounds, args.seconds, ours))
    print(f"\nafter: {_load()}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
