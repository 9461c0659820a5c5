"""A real S3-compatible server for the tests: moto's server mode as a subprocess on a loopback port,
plus a small fault-injecting HTTP proxy in front of it (5xx, connection resets, hangs)."""
from __future__ import annotations

import http.client
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r'"(GET|PUT|HEAD|DELETE|POST) (\S+) HTTP/1\.[01]')
_SKIP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class MotoServer:
    """``moto.server`` in its own process; its request log (werkzeug's access log) is the request counter."""

    def __init__(self, workdir: Path) -> None:
        self.log_path = workdir / "moto.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (the server's log, closed by stop())
        cmd = [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", "0"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", self.log_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # by its PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def requests(self, bucket: str) -> list[tuple[str, str]]:
        """(method, path) of every request the server logged for ``bucket``, in order."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _LINE.search(_ANSI.sub("", line))
            if m and (m.group(2) == f"/{bucket}" or m.group(2).startswith((f"/{bucket}/", f"/{bucket}?"))):
                out.append((m.group(1), m.group(2)))
        return out

    def sync_log(self, bucket: str) -> int:
        """Make one marker request and wait until the log shows it (all earlier requests are logged).

        Returns the count."""
        tag = f"/{bucket}/__sync__{uuid.uuid4().hex}"
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("HEAD", tag)
        c.getresponse().read()
        c.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reqs = self.requests(bucket)
            if any(p == tag for _, p in reqs):
                return len(reqs)
            time.sleep(0.02)
        raise AssertionError("moto's log never showed the sync request")


class FaultProxy:
    """An HTTP proxy on loopback forwarding to ``upstream``.

    ``fail(mode, n, match)`` breaks the next ``n`` matching requests.

    Modes: "500" (an S3 InternalError reply), "503" (SlowDown), "404" (NoSuchKey: an object listed but not
    readable yet, as on a store still replicating), "reset" (the connection is
    reset without a reply), "hang" (no reply for ``hang_seconds``, then closed).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.lock = threading.Lock()
        self.rules: list[list] = []  # [mode, remaining, match]
        self.injected = 0
        self.hang_seconds = 2.0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                mode = proxy._take(self.command, self.path)
                if mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode == "hang":
                    time.sleep(proxy.hang_seconds)
                    self.close_connection = True
                    return
                if mode in ("500", "503", "404"):
                    code = {"500": "InternalError", "503": "SlowDown", "404": "NoSuchKey"}[mode]
                    data = f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>".encode()
                    self.send_response(int(mode))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                c = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                try:
                    c.request(self.command, self.path, body=body or None,
                              headers={k: v for k, v in self.headers.items() if k.lower() not in _SKIP})
                    r = c.getresponse()
                    data = r.read()
                finally:
                    c.close()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in _SKIP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def fail(self, mode: str, count: int, match: str = "") -> None:
        """Break the next ``count`` requests whose "METHOD path" contains ``match``."""
        with self.lock:
            self.rules.append([mode, count, match])

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def _take(self, method: str, path: str) -> str | None:
        with self.lock:
            for rule in self.rules:
                if rule[1] > 0 and rule[2] in f"{method} {path}":
                    rule[1] -= 1
                    self.injected += 1
                    return rule[0]
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def options(endpoint: str, *, timeout: float = 5.0) -> dict:
    """s3fs storage_options for a loopback endpoint (botocore's own retries off: the watcher's retry is tested)."""
    return {
        "endpoint_url": endpoint, "key": "testing", "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": timeout,
                          "read_timeout": timeout},
    }


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"b{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=name)
    return name
