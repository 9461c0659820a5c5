"""``acl-bundle serve`` and ``acl-bundle serve-bench``: turn parsed arguments into a server run."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

__all__ = ["serve_command", "bench_command", "JsonFormatter"]

_FIELDS = ("protocol", "method", "path", "status", "duration_ms", "client", "endpoint")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the access-log fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 6), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for k in _FIELDS:
            if hasattr(record, k):
                out[k] = getattr(record, k)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("acl_bundle")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("acl_bundle.serve.access").setLevel(logging.INFO if args.access_log else logging.WARNING)
    uv = logging.getLogger("uvicorn")
    uv.addHandler(handler)
    uv.setLevel(logging.WARNING)


def serve_command(args: argparse.Namespace) -> int:
    try:
        from .server import ServeConfig, Server
    except ImportError as e:
        from .._errors import extra_hint

        raise ValueError(f"acl-bundle serve needs the serve extra: {extra_hint('serve')} ({e})") from None
    acl = None
    if args.sim:
        from .. import sim

        acl = sim.acl
    cfg = ServeConfig(
        args.bundle, host=args.host, http_port=args.http_port, grpc_port=None if args.no_grpc else args.grpc_port,
        grpc_update_port=None if args.no_grpc else args.grpc_update_port,
        model_name=args.model_name, watch=args.watch, poll_interval=args.poll_interval,
        watch_finite_check=args.finite_check, watch_allow_step_reset=args.allow_step_reset,
        update_token_file=args.update_token_file, require_weights=args.require_weights,
        dynamic_batching=not args.no_dynamic_batching, max_queue_delay=args.max_queue_delay_us / 1e6,
        instances=args.instances, max_request_bytes=args.max_request_bytes, max_update_bytes=args.max_update_bytes,
        drain_timeout=args.drain_timeout, max_header_bytes=args.max_header_bytes, max_headers=args.max_headers,
        header_timeout=args.header_timeout, body_timeout=args.body_timeout, keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections, device_id=args.device, acl=acl)
    server = Server(cfg)  # ValueError for bad options / token file: one line, exit 2
    _setup_logging(args)
    return server.run()


def bench_command(args: argparse.Namespace) -> int:
    from ..bench import serve as bench

    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not args.no_progress:
            sys.stderr.write(f"[{time.perf_counter() - t0:5.1f}s] {msg}\n")
            sys.stderr.flush()

    results = bench.run(bench.ServeBenchConfig(quick=args.quick), progress=progress)
    print(bench.format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return 0
