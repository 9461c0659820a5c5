"""HTTP/1.1 connections under hostile clients: bounded request heads, deadlines, a connection limit, the drain.

uvicorn's httptools protocol with, per connection, a phase (idle / receiving the head /
receiving the body / busy) and the time it entered it:

* **Head bound**: request line + header fields over ``max_header_bytes`` (counted while
  they arrive, so at most about one read more is ever buffered) or more than
  ``max_headers`` fields: ``431`` and the connection closes.
* **Deadlines**: a head not complete ``header_timeout`` s after its first byte: ``408``,
  closed.  A body not complete ``body_timeout`` s after its head: the app answers ``408``
  (:func:`~acl_bundle.serve.http_app.read_body`); a body nobody reads is cut off at
  ``body_timeout`` + 2 s.  A connection idle ``keep_alive_timeout`` s (also before its
  first request) is closed.
* **Connection limit** (``max_connections``, kept below the descriptor limit by the
  server): a connection past it first closes the longest-idle keep-alive connection,
  else the oldest one still sending its head (slow senders); if every connection is busy
  it is still taken, up to ``health_reserve`` more, but answers only the health routes
  (others ``503``, closed); past that it is closed at once.
* **Drain** (:meth:`Connections.drain`; the server closes the listener ``DRAIN_IDLE_GRACE``
  s into it or once no connection is left, new connections until then are answered like
  open ones): requests in flight
  finish and their responses say ``Connection: close``; new requests on open connections
  are answered ``503`` by the app; a connection is closed once idle for ``DRAIN_IDLE_GRACE``
  s counted from the later of its last response and the drain's start (not at once: a
  client sending on an idle keep-alive connection just then would be cut off instead of
  answered).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("acl_bundle.serve")

__all__ = ["DRAIN_IDLE_GRACE", "HEALTH_PATHS", "Connections", "HttpLimits"]

HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
DRAIN_IDLE_GRACE = 1.0  # seconds an idle connection stays open into the drain (a request sent then is answered)
_SWEEP = 0.2  # seconds between deadline checks
_BODY_GRACE = 2.0  # the transport-level body cut-off comes this long after the app's own 408

_IDLE, _HEAD, _BODY, _BUSY, _CLOSED = range(5)


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection bounds (see the module docstring); defaults are for a host reachable by anyone."""

    max_header_bytes: int = 16 << 10
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 1000
    health_reserve: int = 16


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the connection answers ``status`` and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _raw_response(status: int, message: str) -> bytes:
    import http
    import json

    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The app for a connection taken past the limit: everything but health is 503."""
    body = b'{"error":"the server is at its connection limit; only the health routes are answered"}'
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})


class Connections:
    """The open HTTP connections of one server: limits, the deadline sweep, eviction and the drain."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.open: dict[_Connection, None] = {}  # insertion-ordered
        self.draining = False
        self._drain_started = 0.0
        self.counts = {"431": 0, "408": 0, "evicted": 0, "overflow": 0, "refused": 0}
        self._sweeper: asyncio.Task[None] | None = None

    def protocol_class(self) -> type[asyncio.Protocol]:
        """The protocol class to hand uvicorn (``Config(http=...)``), bound to this set of connections."""
        return type("AclBundleHttp", (_Connection,), {"pool": self})

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    # ------------------------------------------------------------------ admission
    def admit(self, c: _Connection) -> None:
        self.open[c] = None
        lim = self.limits
        if len(self.open) <= lim.max_connections:
            return
        victim = self._oldest(_IDLE, c) or self._oldest(_HEAD, c)
        if victim is not None:
            self.counts["evicted"] += 1
            victim.close(abort=victim.phase == _HEAD)
            return
        if len(self.open) <= lim.max_connections + lim.health_reserve:
            self.counts["overflow"] += 1
            c.overflow = True
            return
        self.counts["refused"] += 1
        c.close(abort=True)

    def _oldest(self, phase: int, new: _Connection) -> _Connection | None:
        best = None
        for c in self.open:
            if c.phase == phase and c is not new and (best is None or c.since < best.since):
                best = c
        return best

    def forget(self, c: _Connection) -> None:
        self.open.pop(c, None)

    # ------------------------------------------------------------------ deadlines
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        lim = self.limits
        idle_until = now - DRAIN_IDLE_GRACE if self.draining and now - self._drain_started > DRAIN_IDLE_GRACE else None
        for c in list(self.open):
            age = now - c.since
            if c.phase == _HEAD and age > lim.header_timeout:
                self.counts["408"] += 1
                c.refuse(408, f"the request head was not received within {lim.header_timeout:g} s")
            elif c.phase == _BODY and age > lim.body_timeout + _BODY_GRACE:
                self.counts["408"] += 1
                c.close(abort=True)
            elif c.phase == _IDLE and (age > lim.keep_alive_timeout or idle_until is not None and c.since < idle_until):
                c.close()

    # ------------------------------------------------------------------ drain
    async def drain(self, deadline: float) -> bool:
        """Wait (listener already closed) until every connection is closed, at most until ``deadline``.

        True unless a request was still under way at the deadline (its head received)."""
        if not self.draining:
            self.draining, self._drain_started = True, time.monotonic()
        for c in list(self.open):
            c.shutdown()
        while self.open:
            now = time.monotonic()
            if now >= deadline:  # connections still idle or sending a head had no request under way
                return not any(c.phase in (_BODY, _BUSY) for c in self.open)
            self.sweep(now)
            await asyncio.sleep(0.02)
        return True

    def close_all(self) -> None:
        for c in list(self.open):
            c.close(abort=True)


class _Connection(HttpToolsProtocol):
    pool: Connections  # set on the subclass Connections.protocol_class makes

    phase = _IDLE
    since = 0.0
    overflow = False
    _head_bytes = 0
    _headers = 0

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive = self.pool.limits.keep_alive_timeout  # type: ignore[assignment]
        self.since = time.monotonic()
        self.pool.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = _CLOSED
        self.pool.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.phase == _CLOSED:
            return
        if self.phase == _IDLE:  # the first byte of a request: its head's deadline and byte count start
            self.phase, self.since, self._head_bytes, self._headers = _HEAD, time.monotonic(), 0, 0
        counted = self.phase == _HEAD
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades (websockets) are served: the request goes on as plain HTTP
        except httptools.HttpParserError as e:
            refused = e.__context__ if isinstance(e.__context__, _Refused) else None
            if refused is not None:
                self.pool.counts[str(refused.status)] = self.pool.counts.get(str(refused.status), 0) + 1
                self.refuse(refused.status, refused.message)
            else:
                self.refuse(400, f"malformed HTTP request: {e}")
            return
        if self.phase == _HEAD and counted:
            self._head_bytes += len(data)
            if self._head_bytes > self.pool.limits.max_header_bytes:
                self.pool.counts["431"] += 1
                self.refuse(431, f"the request head is over {self.pool.limits.max_header_bytes} bytes")

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: a request under way ends with ``Connection: close``; idle ones are swept."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        if self.phase != _HEAD:  # a pipelined request: its bytes are counted from the next read on
            self.phase, self.since, self._head_bytes, self._headers = _HEAD, time.monotonic(), 0, 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        lim = self.pool.limits
        if self._headers > lim.max_headers:
            raise _Refused(431, f"the request has more than {lim.max_headers} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        lim = self.pool.limits
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) + 16
        if size > lim.max_header_bytes:
            raise _Refused(431, f"the request head is over {lim.max_header_bytes} bytes")
        self.phase, self.since = _BODY, time.monotonic()
        if self.overflow and httptools.parse_url(self.url).path.decode("latin-1") not in HEALTH_PATHS:
            app, self.app = self.app, _overloaded
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.phase == _BODY:  # idle already when the app answered before reading the body (a 413, a 404)
            done = self.cycle is not None and self.cycle.response_complete and not self.pipeline
            self.phase, self.since = (_IDLE, time.monotonic()) if done else (_BUSY, self.since)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.phase == _BUSY and not self.pipeline:
            self.phase, self.since = _IDLE, time.monotonic()
        super().on_response_complete()

    # ------------------------------------------------------------------ closing
    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` without the app and close (a head that is too big, too slow or malformed)."""
        if self.phase == _CLOSED or self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no response of the app's under way
            self.transport.write(_raw_response(status, message))
        self.close()

    def close(self, abort: bool = False) -> None:
        if self.phase == _CLOSED:
            return
        self.phase = _CLOSED
        self.pool.forget(self)
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
