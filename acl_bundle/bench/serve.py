"""``acl-bundle serve-bench``: the server measured on loopback against in-process ``infer``.

Starts ``acl-bundle serve`` processes on the simulator (free loopback ports) and measures,
interleaved over several rounds, each round visiting every side in rotated order:

1. added latency of one request: in-process ``BundleModel.infer`` (b=1, the small
   model) vs the same call through the server over HTTP (tritonclient, binary tensors;
   and a minimal keep-alive ``http.client`` request, which shows what the client
   library itself costs) and over gRPC (tritonclient).  Reported: p50 and p99 of each
   side, the added p50 / p99 and the p50 ratio; goal: <= 0.5 ms added at p50.
2. dynamic batching on vs off: 16 concurrent single-row clients (tritonclient.grpc.aio)
   on a dynamic-batch bundle (a 31-layer narrow MLP, batch sizes 1-16), one server with batching on
   (``--max-queue-delay-us``) and one with it off, alternating A/B/B/A windows; goal: >= 2x throughput, and p99
   latency with batching <= the queue delay + one batch's compute (the in-process
   infer time of the largest batch, measured in the same run).

Each server runs with its default options otherwise (access log on, to a file).
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._files import package_root

__all__ = ["ServeBenchConfig", "run", "format_table", "free_port", "loopback_server"]

Progress = Callable[[str], None]


@dataclass
class ServeBenchConfig:
    quick: bool = False
    rounds: int = 6
    latency_calls: int = 300  # sequential calls per block
    small_model: tuple[int, ...] = (64, 128, 10)
    # 31 narrow layers: the cost is per-layer launch overhead, nearly the same for 1 row
    # or 16 (as an NPU launch is), so batching pays when the transport lets it
    batch_model: tuple[int, ...] = (64,) + (128,) * 30 + (10,)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    clients: int = 16
    window: float = 2.0  # seconds per throughput window
    queue_delay_us: int = 1000

    def __post_init__(self) -> None:
        if self.quick:
            self.rounds, self.latency_calls, self.window = 2, 40, 0.4


def free_port() -> int:
    """A loopback TCP port free at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_server(args: Sequence[str], log: Path, http_port: int, ready_path: str = "/v2/health/ready", *,
                    cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
                    timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` as a server process (output to ``log``) until ``GET ready_path`` on ``http_port`` answers 200;
    yield the process; stop it on exit (SIGTERM, then SIGKILL after 30 s), by its PID.

    Shared by ``acl-bundle serve-bench`` and ``scripts/peer_compare.py`` (which starts other servers with it).
    """
    with open(log, "wb") as f:
        proc = subprocess.Popen(list(args), stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                env=None if env is None else dict(env))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                c.request("GET", ready_path)
                if c.getresponse().status == 200:
                    c.close()
                    break
                c.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready in {timeout} s: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def _server(om: Path, log: Path, *extra: str) -> Iterator[tuple[int, int]]:
    hp, gp = free_port(), free_port()
    args = [sys.executable, "-m", "acl_bundle", "serve", str(om), "--sim", "--http-port", str(hp),
            "--grpc-port", str(gp), *extra]
    # the child imports this tree, whatever the caller's folder
    with loopback_server(args, log, hp, cwd=package_root()):
        yield hp, gp


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _build(path: Path, sizes: tuple[int, ...], batch_sizes: tuple[int, ...]) -> Path:
    from ..sim import builder, models

    model, _ = models.mlp(sizes)
    om, _ = builder.save(builder.build_bundle(model, batch_sizes=list(batch_sizes)), path)
    return Path(om)


# --------------------------------------------------------------------------- 1. latency
def _latency(cfg: ServeBenchConfig, work: Path, progress: Progress) -> list[dict[str, Any]]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from .. import BundleModel, sim

    om = _build(work / "small.om", cfg.small_model, (1, 2, 4, 8))
    n = cfg.latency_calls
    dim = cfg.small_model[0]
    rng = np.random.default_rng(0)
    samples: dict[str, list[float]] = {"in-process": [], "http": [], "http-min": [], "grpc": []}
    with _server(om, work / "small.log") as (hp, gp), BundleModel(om, acl=sim.acl) as model:
        hc = httpclient.InferenceServerClient(f"127.0.0.1:{hp}")
        gc_ = grpcclient.InferenceServerClient(f"127.0.0.1:{gp}")
        raw = http.client.HTTPConnection("127.0.0.1", hp)

        def fresh() -> list[np.ndarray]:  # a new array per call (see acl_bundle.bench on numpy_to_ptr)
            return [rng.standard_normal((1, dim)).astype(np.float32) for _ in range(n)]

        def inproc(xs: list[np.ndarray]) -> list[float]:
            out = []
            for x in xs:
                t = time.perf_counter()
                model.infer(x)
                out.append(time.perf_counter() - t)
            return out

        def via(mod: Any, client: Any) -> Callable[[list[np.ndarray]], list[float]]:
            def go(xs: list[np.ndarray]) -> list[float]:
                out = []
                for x in xs:
                    inp = mod.InferInput("x", [1, dim], "FP32")
                    inp.set_data_from_numpy(x)
                    t = time.perf_counter()
                    r = client.infer("small", [inp])
                    r.as_numpy("y")
                    out.append(time.perf_counter() - t)
                return out
            return go

        head = json.dumps({"inputs": [{"name": "x", "shape": [1, dim], "datatype": "FP32",
                                       "parameters": {"binary_data_size": dim * 4}}],
                           "parameters": {"binary_data_output": True}}).encode()
        hdrs = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}

        def minimal(xs: list[np.ndarray]) -> list[float]:
            out = []
            for x in xs:
                t = time.perf_counter()
                raw.request("POST", "/v2/models/small/infer", head + x.tobytes(), hdrs)
                r = raw.getresponse()
                body = r.read()
                k = int(r.getheader("Inference-Header-Content-Length", "0"))
                np.frombuffer(body[k:], np.float32)
                out.append(time.perf_counter() - t)
                if r.status != 200:
                    raise RuntimeError(body[:300])
            return out

        sides = {"in-process": inproc, "http": via(httpclient, hc), "http-min": minimal, "grpc": via(grpcclient, gc_)}
        for fn in sides.values():  # warm-up
            fn(fresh()[:20])
        order = list(sides)
        for r in range(cfg.rounds):
            progress(f"latency round {r + 1}/{cfg.rounds}")
            rot = order[r % len(order):] + order[:r % len(order)]
            for name in rot:
                samples[name] += sides[name](fresh())
        hc.close()
        gc_.close()
        raw.close()
    base50, base99 = _pct(samples["in-process"], 50), _pct(samples["in-process"], 99)
    rows = [{"measurement": "in-process infer, small model b=1", "p50_ms": base50 * 1e3, "p99_ms": base99 * 1e3}]
    labels = {"http": "HTTP round trip (tritonclient, binary)", "http-min": "HTTP round trip (http.client, binary)",
              "grpc": "gRPC round trip (tritonclient)"}
    for key, label in labels.items():
        p50, p99 = _pct(samples[key], 50), _pct(samples[key], 99)
        added = (p50 - base50) * 1e3
        rows.append({"measurement": label, "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "added_p50_ms": added,
                     "added_p99_ms": (p99 - base99) * 1e3, "ratio": p50 / base50, "goal": "<= 0.5 ms added",
                     "result": "PASS" if added <= 0.5 else "FAIL"})
    return rows


# --------------------------------------------------------------------------- 2. batching
async def _load_window(url: str, clients: int, dim: int, seconds: float) -> tuple[int, list[float]]:
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(url)
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    x = np.random.default_rng(1).standard_normal((1, dim)).astype(np.float32)

    async def one() -> None:
        while time.perf_counter() < stop:
            inp = aioclient.InferInput("x", [1, dim], "FP32")
            inp.set_data_from_numpy(x)
            t = time.perf_counter()
            await client.infer("batch", [inp])
            lat.append(time.perf_counter() - t)

    try:
        await asyncio.gather(*(one() for _ in range(clients)))
    finally:
        await client.close()
    return len(lat), lat


def _batching(cfg: ServeBenchConfig, work: Path, progress: Progress) -> list[dict[str, Any]]:
    from .. import BundleModel, sim

    om = _build(work / "batch.om", cfg.batch_model, cfg.batch_sizes)
    dim, big = cfg.batch_model[0], max(cfg.batch_sizes)
    with BundleModel(om, acl=sim.acl) as m:  # one batch's compute, in-process
        xs = [np.random.default_rng(i).standard_normal((big, dim)).astype(np.float32) for i in range(60)]
        m.infer(xs[0])
        ts = []
        for x in xs:
            t = time.perf_counter()
            m.infer(x)
            ts.append(time.perf_counter() - t)
        compute = statistics.median(ts)
    tput: dict[str, list[float]] = {"on": [], "off": []}
    lats: dict[str, list[float]] = {"on": [], "off": []}
    with _server(om, work / "on.log", "--max-queue-delay-us", str(cfg.queue_delay_us)) as (_, g_on), \
            _server(om, work / "off.log", "--no-dynamic-batching") as (_, g_off):
        urls = {"on": f"127.0.0.1:{g_on}", "off": f"127.0.0.1:{g_off}"}
        for side in ("on", "off"):  # warm-up
            asyncio.run(_load_window(urls[side], cfg.clients, dim, 0.3))
        for r in range(cfg.rounds):
            progress(f"batching round {r + 1}/{cfg.rounds}")
            for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
                count, lat = asyncio.run(_load_window(urls[side], cfg.clients, dim, cfg.window))
                tput[side].append(count / cfg.window)
                lats[side] += lat
    on, off = statistics.median(tput["on"]), statistics.median(tput["off"])
    p99_on = _pct(lats["on"], 99)
    bound = cfg.queue_delay_us / 1e6 + compute
    return [
        {"measurement": f"throughput, {cfg.clients} clients x 1 row, batching off", "value": off, "unit": "req/s",
         "p50_ms": _pct(lats["off"], 50) * 1e3, "p99_ms": _pct(lats["off"], 99) * 1e3},
        {"measurement": f"throughput, batching on ({cfg.queue_delay_us} us delay)", "value": on, "unit": "req/s",
         "p50_ms": _pct(lats["on"], 50) * 1e3, "p99_ms": p99_on * 1e3},
        {"measurement": "throughput on / off", "ratio": on / off, "goal": ">= 2x",
         "result": "PASS" if on / off >= 2 else "FAIL"},
        {"measurement": f"p99 on vs delay + compute(b={big}) = {bound * 1e3:.2f} ms", "ratio": p99_on / bound,
         "goal": "<= 1x", "result": "PASS" if p99_on <= bound else "FAIL"},
    ]


def run(cfg: ServeBenchConfig, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Run both measurements; return a JSON-able dict (machine, config, rows)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="acl_bundle_serve_bench_") as d:
        work = Path(d)
        rows = _latency(cfg, work, progress) + _batching(cfg, work, progress)
    return {
        "format": "acl-bundle-serve-bench",
        "version": 1,
        "quick": cfg.quick,
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
                   f"Python {platform.python_version()}",
        "seconds": round(time.perf_counter() - t0, 1),
        "config": dict(vars(cfg)),
        "rows": rows,
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [f"acl-bundle serve-bench{' (quick)' if results['quick'] else ''}, simulator, {results['machine']}, "
             f"{results['seconds']} s"]
    head = ["measurement", "p50 ms", "p99 ms", "added p50", "added p99", "ratio", "goal", "result"]
    body = []
    for r in results["rows"]:
        def f(key: str, fmt: str = "{:.3f}", r: dict[str, Any] = r) -> str:
            return fmt.format(r[key]) if key in r else ""
        name = r["measurement"] + (f": {r['value']:.0f} {r['unit']}" if "value" in r else "")
        body.append([name, f("p50_ms"), f("p99_ms"), f("added_p50_ms"), f("added_p99_ms"), f("ratio", "{:.2f}x"),
                     r.get("goal", ""), r.get("result", "")])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    out = lines + ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))),
                   "  ".join("-" * w for w in widths)]
    for row in body:
        out.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        )
    return "\n".join(out)
