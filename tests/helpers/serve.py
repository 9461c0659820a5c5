"""A real ``acl-bundle serve`` process on free loopback ports, stopped by PID (SIGTERM, then checked for exit 0).

Importable as ``helpers.serve`` by any test; tests/serve/conftest.py makes the ``server`` fixture from it.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acl_bundle.sim import builder, models

TOKEN = "test-token-0123456789abcdefXYZ"
SIZES = (8, 16, 4)
BATCH_SIZES = (1, 2, 4, 8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    name: str
    weights: dict  # the bundle's initial weights (version 0)
    log_path: Path
    token: str = TOKEN

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, bytes, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read(), dict(r.getheaders())
        finally:
            conn.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(f"server pid {self.proc.pid} did not exit within {timeout}s of SIGTERM") from None


def build_bundle(directory: Path, name: str = "mlp", *, sizes=SIZES, batch_sizes=BATCH_SIZES, init=True, seed=0):
    model, weights = models.mlp(sizes, seed=seed)
    mf = builder.build_bundle(model, batch_sizes=list(batch_sizes) if batch_sizes else None, init=init)
    om, _ = builder.save(mf, directory / f"{name}.om")
    return Path(om), weights


def wait_ready(srv: ServerProc, timeout: float = 60, ready: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not srv.alive():
            raise AssertionError(f"server exited with {srv.proc.returncode}:\n{srv.log()}")
        with contextlib.suppress(OSError):
            status, _, _ = srv.request("GET", "/v2/health/ready" if ready else "/v2/health/live", timeout=2)
            if status == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"server not {'ready' if ready else 'live'} after {timeout}s:\n{srv.log()}")


@contextlib.contextmanager
def serve_process(tmp: Path, *extra: str, name: str = "mlp", token: bool = True, bundle_kwargs: dict | None = None,
                  wait: str | None = "ready", check_exit: bool = True, preexec_fn=None, sim: bool = True):
    """Start ``acl-bundle serve`` on a fresh bundle; yield a ServerProc; SIGTERM it and check exit code 0.

    ``sim=False``: no ``--sim`` (the bundle's format chooses the simulator)."""
    om, weights = build_bundle(tmp, name, **(bundle_kwargs or {}))
    args = [sys.executable, "-m", "acl_bundle", "serve", str(om), *(["--sim"] if sim else []),
            "--http-port", str(free_port()), "--grpc-port", str(free_port())]
    if token:
        tf = tmp / "token"
        tf.write_text(TOKEN + "\n")
        tf.chmod(0o600)
        args += ["--update-token-file", str(tf)]
    args += list(extra)
    log_path = tmp / f"server-{name}.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, cwd=tmp, preexec_fn=preexec_fn)
    srv = ServerProc(proc, int(args[args.index("--http-port") + 1]), int(args[args.index("--grpc-port") + 1]),
                     name, weights, log_path)
    try:
        if wait:
            wait_ready(srv, ready=wait == "ready")
        yield srv
    finally:
        code = srv.stop()
        if check_exit:
            assert code == 0, f"server exited with {code}:\n{srv.log()}"


def new_weights(weights: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in weights.items()}


def npz_bytes(weights: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **weights)
    return buf.getvalue()


def sigterm_under_load(srv: ServerProc, clients: list[Callable[[], None]], stop: threading.Event,
                       load_s: float) -> tuple[int, float]:
    """Run each client in a thread, let them load the server ``load_s`` seconds, then SIGTERM it.

    Waits for the server's exit (30 s), sets ``stop``, joins the clients (each must end within 30 s);
    returns (the server's exit code, the monotonic time of the signal).
    """
    threads = [threading.Thread(target=c) for c in clients]
    for t in threads:
        t.start()
    time.sleep(load_s)
    t_sig = time.monotonic()
    os.kill(srv.proc.pid, signal.SIGTERM)
    code = srv.proc.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a client thread did not end after the server exited"
    return code, t_sig
