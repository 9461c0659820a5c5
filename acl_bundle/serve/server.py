"""Run the REST and gRPC front ends on one event loop around one served bundle.

::

    from acl_bundle.serve import ServeConfig, Server
    Server(ServeConfig("bundle.om", update_token_file="token")).run()   # until SIGTERM / SIGINT

    with Server(ServeConfig("bundle.om", http_port=0, grpc_port=0)) as s:   # in a background thread
        print(s.http_port, s.grpc_port)

Lifecycle: the listeners open first (live = true, ready = false); the bundle loads in
a worker thread; the watcher (``watch``) starts; then ready = true (with
``require_weights``, only after the first update or checkpoint).  SIGTERM / SIGINT /
:meth:`Server.stop`: ready = false, the listeners stop taking new connections and
calls, new requests on open HTTP connections are answered 503, in-flight requests
finish (at most ``drain_timeout`` seconds), the watcher stops, the model closes,
:meth:`run` returns 0 -- or :data:`EXIT_DRAIN_TIMEOUT` when requests were still running
at the deadline (they are answered 503 and their connections closed).  HTTP connection
bounds: :mod:`acl_bundle.serve.http_conn`.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from .auth import UpdateAuth
from .grpc_service import create_grpc_server
from .http_app import create_app
from .http_conn import DRAIN_IDLE_GRACE, Connections, HttpLimits
from .metrics import Metrics
from .service import ModelService

log = logging.getLogger("acl_bundle.serve")

__all__ = ["ServeConfig", "Server", "EXIT_DRAIN_TIMEOUT"]

#: Exit status of :meth:`Server.run` when the drain did not finish within ``drain_timeout``.
EXIT_DRAIN_TIMEOUT = 3
#: Descriptors kept free of HTTP connections (gRPC, the bundle, checkpoints, logs, the loop itself).
FD_RESERVE = 128

SERVE_HISTORY = 4  # weight sets a served bundle keeps for rollback over the wire (within BundleModel's history_bytes)


@dataclass
class ServeConfig:
    """Everything ``acl-bundle serve`` takes (see ``acl-bundle serve --help``).

    ``model`` may be a path to a bundle ``.om`` or an open :class:`~acl_bundle.BundleModel`
    (which the server then serves but does not close).  ``grpc_port=None`` disables gRPC.
    """

    model: Any
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int | None = 8001
    grpc_update_port: int | None = None  # a gRPC port for weight pushes up to max_update_bytes (grpc_service.py)
    model_name: str | None = None
    watch: str | None = None
    poll_interval: float = 0.5
    watch_finite_check: bool = True  # the watcher refuses checkpoints holding NaN/Inf (check=finite)
    watch_allow_step_reset: bool = False  # the most recent commit wins even with a lower step
    watch_options: dict[str, Any] | None = None  # more CheckpointWatcher arguments: rename, strip_prefix, protocol, ...
    finite_check: bool = True  # REST / gRPC updates holding NaN/Inf are refused (400 / INVALID_ARGUMENT)
    model_options: dict[str, Any] | None = None  # BundleModel arguments; default history=4 (rollback over the wire)
    update_token_file: str | None = None
    require_weights: bool = False
    dynamic_batching: bool = True
    max_queue_delay: float = 0.0  # seconds
    instances: int = 2
    max_request_bytes: int = 64 << 20
    max_update_bytes: int = 1 << 30
    drain_timeout: float = 10.0
    max_header_bytes: int = HttpLimits.max_header_bytes
    max_headers: int = HttpLimits.max_headers
    header_timeout: float = HttpLimits.header_timeout  # seconds for a request head, from its first byte
    body_timeout: float = HttpLimits.body_timeout  # seconds for a request body, from its head
    keep_alive_timeout: float = HttpLimits.keep_alive_timeout
    max_connections: int = HttpLimits.max_connections  # lowered to fit the descriptor limit
    device_id: int = 0
    acl: Any = None

    def validate(self) -> None:
        problems = []
        for name in ("http_port",) + tuple(
            n for n in ("grpc_port", "grpc_update_port") if getattr(self, n) is not None
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
                problems.append(f"{name} must be 0..65535, got {v!r}")
        if self.grpc_port is not None and self.grpc_port == self.http_port != 0:
            problems.append(f"http_port and grpc_port are both {self.http_port}")
        for name in ("max_request_bytes", "max_update_bytes", "instances", "max_header_bytes", "max_headers",
                     "max_connections"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        positive = ("poll_interval", "header_timeout", "body_timeout", "keep_alive_timeout")
        for name in ("max_queue_delay", "drain_timeout") + positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (name in positive and v == 0):
                kind = "positive" if name in positive else "non-negative"
                problems.append(f"{name} must be a {kind} number of seconds, got {v!r}")
        if self.model_name is not None and (not self.model_name or "/" in self.model_name):
            problems.append(f"model_name must be non-empty without '/', got {self.model_name!r}")
        if isinstance(self.model, (str, os.PathLike)) and not os.path.isfile(self.model):
            problems.append(f"no such bundle file: {os.fspath(self.model)}")
        for name in ("watch_finite_check", "watch_allow_step_reset", "finite_check"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.watch is not None and not os.path.isdir(self.watch):
            problems.append(f"--watch directory {self.watch!r} does not exist")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def name(self) -> str:
        if self.model_name:
            return self.model_name
        if isinstance(self.model, (str, os.PathLike)):
            return os.path.splitext(os.path.basename(os.fspath(self.model)))[0]
        return "model"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the Server owns SIGTERM / SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int, what: str = "HTTP") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as e:
        cause = os.strerror(e.errno) if e.errno else str(e)  # "Address already in use", without Python's addendum
        raise OSError(e.errno, f"cannot listen for {what} on {host}:{port}: {cause}") from None


def _run_loop(main: Any) -> Any:
    """Run ``main`` on uvloop when it is installed (faster loop iterations and thread wake-ups), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:  # e.g. RLIM_INFINITY above the kernel's nr_open
            log.debug("cannot raise RLIMIT_NOFILE from %s to %s: %s", soft, hard, e)


def http_limits(cfg: ServeConfig) -> HttpLimits:
    """The HTTP connection bounds of ``cfg``, ``max_connections`` lowered to fit the descriptor limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    reserve = HttpLimits.health_reserve
    fit = cfg.max_connections if soft == resource.RLIM_INFINITY else max(1, soft - FD_RESERVE - reserve)
    if fit < cfg.max_connections:
        log.warning("max_connections %d lowered to %d to fit the descriptor limit of %d (RLIMIT_NOFILE; %d kept "
                    "for gRPC, files and the health reserve)", cfg.max_connections, fit, soft, FD_RESERVE + reserve)
    return HttpLimits(max_header_bytes=cfg.max_header_bytes, max_headers=cfg.max_headers,
                      header_timeout=cfg.header_timeout, body_timeout=cfg.body_timeout,
                      keep_alive_timeout=cfg.keep_alive_timeout, max_connections=min(cfg.max_connections, fit))


def _version() -> str:
    from .. import __version__

    return __version__


class Server:
    """One served bundle behind REST (uvicorn + Starlette) and gRPC (grpc.aio)."""

    def __init__(self, config: ServeConfig) -> None:
        config.validate()
        self.config = config
        self.auth = UpdateAuth.from_file(config.update_token_file)
        self.metrics = Metrics()
        self.service = ModelService(
            config.name, self.metrics, self.auth, dynamic_batching=config.dynamic_batching,
            max_queue_delay=config.max_queue_delay, instances=config.instances,
            require_weights=config.require_weights, max_update_bytes=config.max_update_bytes,
            finite_check=config.finite_check)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.grpc_update_port: int | None = None
        self.exit_code: int | None = None
        self.failure: Exception | None = None  # why start-up failed
        self._live = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._owns_model = isinstance(config.model, (str, os.PathLike))

    # ------------------------------------------------------------------ public
    def run(self) -> int:
        """Serve until SIGTERM / SIGINT (main thread) or :meth:`stop`; return the exit code (0 = clean).

        Raises this process's soft descriptor limit (RLIMIT_NOFILE) to its hard limit first.
        A failure to start (a port in use, a bundle that does not load) is raised, after the cleanup."""
        _raise_fd_limit()
        code = _run_loop(self._main(signals=threading.current_thread() is threading.main_thread()))
        if self.failure is not None:
            raise self.failure
        return code

    def start(self, timeout: float = 60.0) -> Server:
        """Serve in a background thread; return once the model is loaded (or raise if it failed to start)."""
        def target() -> None:
            try:
                self.exit_code = _run_loop(self._main(signals=False))
            except BaseException:
                self.exit_code = 1
                log.exception("server thread failed")
            finally:
                self._started.set()

        self._thread = threading.Thread(target=target, name="acl_bundle-serve", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self.exit_code is not None:
            why = f": {type(self.failure).__name__}: {self.failure}" if self.failure is not None else ""
            raise RuntimeError(f"the server did not start (exit code {self.exit_code}){why}")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop (any thread); waits for a background server started with :meth:`start`."""
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None and not loop.is_closed():
            loop.call_soon_threadsafe(ev.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop
    async def _main(self, signals: bool) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        version = _version()
        app = create_app(self.service, max_request_bytes=cfg.max_request_bytes, server_version=version,
                         live=lambda: self._live, body_timeout=cfg.body_timeout)
        conns = Connections(http_limits(cfg))
        uv = _Uvicorn(uvicorn.Config(app, host=cfg.host, port=cfg.http_port, log_config=None, access_log=False,
                                     lifespan="off", http=conns.protocol_class(), ws="none",
                                     timeout_keep_alive=cfg.keep_alive_timeout,  # type: ignore[arg-type]
                                     timeout_graceful_shutdown=int(cfg.drain_timeout) + 5, server_header=False))
        grpc_server = grpc_updates = None
        uv_task: asyncio.Task[None] | None = None
        code = 0
        try:
            if cfg.grpc_port is not None:
                if cfg.grpc_port:  # a busy port is one clear error (gRPC's own bind error loses the OS's reason)
                    _listen(cfg.host, cfg.grpc_port, "gRPC").close()
                host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
                grpc_server, self.grpc_port = create_grpc_server(
                    self.service, f"{host}:{cfg.grpc_port}", server_version=version, live=lambda: self._live,
                    max_request_bytes=cfg.max_request_bytes)
                await grpc_server.start()
            if cfg.grpc_update_port is not None:
                grpc_updates, self.grpc_update_port = create_grpc_server(
                    self.service, f"{host}:{cfg.grpc_update_port}", server_version=version,
                    live=lambda: self._live, max_request_bytes=cfg.max_request_bytes, updates_only=True)
                await grpc_updates.start()
            sock = _listen(cfg.host, cfg.http_port)  # bound here so a busy port is a clear error, not uvicorn's exit
            self.http_port = sock.getsockname()[1]
            conns.start()
            uv_task = loop.create_task(uv.serve(sockets=[sock]))
            while not uv.started:
                if uv_task.done():
                    uv_task.result()
                    raise OSError(f"cannot serve HTTP on {cfg.host}:{cfg.http_port}")
                await asyncio.sleep(0.01)
            self._live = True
            log.info("serving %r: HTTP on %s:%s, gRPC on %s; updates %s", self.service.name, cfg.host, self.http_port,
                     f"{cfg.host}:{self.grpc_port}" if grpc_server else "off",
                     "enabled (bearer token)" if self.auth.enabled else "disabled")
            model = await self._load()
            self.service.attach(model)  # attached even when stopping: the shutdown below closes it
            if cfg.watch is not None and not self._stop.is_set():
                await loop.run_in_executor(None, functools.partial(
                    self.service.start_watcher, cfg.watch, cfg.poll_interval, finite_check=cfg.watch_finite_check,
                    allow_step_reset=cfg.watch_allow_step_reset, options=cfg.watch_options))
            if not self._stop.is_set():  # a signal during the load: never "ready" after "draining"
                log.info("model %r %s (batch sizes %s, dynamic batching %s)", self.service.name,
                         "ready" if self.service.model_ready else "loaded, waiting for weights",
                         list(model.batch_sizes) or "static", "on" if self.service.batcher.enabled else "off")  # type: ignore[union-attr]
            self._started.set()
            await self._stop.wait()
        except Exception as e:
            if self._started.is_set():
                log.error("serve failed: %s: %s", type(e).__name__, e)
            else:
                self.failure = e  # start-up failed: run() raises it (the CLI prints it once, as its one error line)
            code = 1
        finally:
            if not await self._shutdown(uv, uv_task, conns, grpc_server, grpc_updates) and code == 0:
                code = EXIT_DRAIN_TIMEOUT
            if signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return code

    def _on_signal(self, sig: int) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(sig).name)
            os._exit(1)
        if self.service.model is None:
            log.info("%s during start-up: stopping once the bundle load in progress returns (an ACL load cannot be "
                     "cut short)", signal.Signals(sig).name)
        else:
            log.info("%s: draining", signal.Signals(sig).name)
        self._stop.set()

    async def _load(self) -> Any:
        cfg = self.config
        if not self._owns_model:
            return cfg.model
        from ..model import BundleModel

        log.info("loading %s", cfg.model)
        options = {"history": SERVE_HISTORY, **(cfg.model_options or {})}
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: BundleModel(cfg.model, device_id=cfg.device_id, acl=cfg.acl, max_concurrency=cfg.instances,
                                      **options))

    async def _shutdown(self, uv: _Uvicorn, uv_task: asyncio.Task[None] | None, conns: Connections,
                        grpc_server: Any, grpc_updates: Any = None) -> bool:
        """Drain and close; True if every request in flight finished within ``drain_timeout``."""
        cfg = self.config
        self.service.begin_shutdown()
        waits = []
        grpcs = [g for g in (grpc_server, grpc_updates) if g is not None]
        for g in grpcs:  # GrpcFrontEnd.stop: new calls UNAVAILABLE, in-flight ones finish, then stop
            waits.append(g.stop(cfg.drain_timeout))
        http_drained = self._drain_http(uv, uv_task, conns, time.monotonic() + cfg.drain_timeout)
        try:
            results = await asyncio.wait_for(asyncio.gather(http_drained, *waits, return_exceptions=True),
                                             cfg.drain_timeout + 5)
            drained = results[0] is True and all(getattr(g, "drained", True) for g in grpcs)
        except asyncio.TimeoutError:
            log.warning("listeners did not stop within %.1f s", cfg.drain_timeout + 5)
            drained = False
        await conns.stop()
        self._live = False
        await self.service.drain()
        model = self.service.model
        if model is not None and self._owns_model:
            await asyncio.get_running_loop().run_in_executor(None, model.close)
        if self._started.is_set():  # a failed start-up is the one error line the caller prints
            log.info("stopped" if drained else f"stopped; the drain did not finish within {cfg.drain_timeout:g} s")
        return drained

    async def _drain_http(self, uv: _Uvicorn, uv_task: asyncio.Task[None] | None, conns: Connections,
                          deadline: float) -> bool:
        """Stop accepting; let open connections finish (new requests on them get 503); True if all did in time."""
        # New connections are answered 503 for the first DRAIN_IDLE_GRACE, then the listener closes: a connection
        # still in the kernel's accept queue when it closes is reset (measured: 1-7 requests cut off per SIGTERM
        # under 48 looping clients when closing at once, none with the grace).
        first = asyncio.ensure_future(conns.drain(deadline))
        await asyncio.wait([first], timeout=max(0.0, min(DRAIN_IDLE_GRACE, deadline - time.monotonic())))
        for listener in uv.servers:
            listener.close()
        uv.should_exit = True
        drained = await first and await conns.drain(deadline)  # and those accepted in the grace
        if not drained:
            tasks = list(uv.server_state.tasks)
            log.warning("drain timeout (%g s): %d HTTP request(s) still running are answered 503",
                        self.config.drain_timeout, len(tasks))
            for t in tasks:
                t.cancel()
            await asyncio.sleep(0.2)  # the 503s are written
            conns.close_all()
        if uv_task is not None:
            await uv_task
        return drained
