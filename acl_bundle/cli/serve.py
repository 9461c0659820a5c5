"""``acl-bundle serve``: one bundle over REST and gRPC, with guarded live weight updates."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .base import Command, UsageError, require_extra

_EPILOG = """\
Speaks the Open Inference Protocol (KServe v2, as Triton does) over REST and gRPC.
Weight updates need --update-token-file and 'Authorization: Bearer TOKEN':
  PUT  /v2/models/NAME/weights                 body = one .npz/.safetensors
  POST /v2/repository/models/NAME/load         'file:<name>' parameters (REST and gRPC)
  POST /v2/models/NAME/weights/rollback        body {} = previous version, {"to": V} = version V
  gRPC rollback: RepositoryModelLoad with the parameter rollback (string "previous" or a version)
Every update route refuses weights holding NaN/Inf (400 / INVALID_ARGUMENT, nothing
changed), as --watch does; --no-finite-check turns that off everywhere.  The last
--history weight sets are kept for rollback.  The backend follows the file: a
simulator bundle runs on the simulator, a device bundle on pyACL (--sim forces the
simulator).  Needs the serve extra: pip install -e '.[serve]' in a checkout.
SIGTERM/SIGINT drains and exits 0.

examples:
  acl-bundle serve mlp.om
  acl-bundle serve mlp.om --update-token-file token --watch ckpts/ --max-queue-delay-us 500
  acl-bundle serve mlp.om --watch ckpts/ --strip-prefix module. --rename old.w=fc0.weight
"""

#: Python keyword arguments named in library messages -> this command's options
OPTION_NAMES = [
    ("allow_step_reset=True", "--allow-step-reset"),
    ("allow_unmatched=True", "--allow-unmatched"),
    ("allow_partial=True", "--allow-partial"),
    ("rename=", "--rename"),
    ("strip_prefix=", "--strip-prefix"),
    ("protocol=", "--protocol"),
    ("check=None", "--no-finite-check"),
]
#: Options handed to ServeConfig as they are (the field is the option's name): (option, type, default, metavar, help)
SERVING_LIMITS: list[tuple[str, type, Any, str, str]] = [
    ("--instances", int, 2, "N", "infer calls (batches) running at once (default 2)"),
    ("--max-request-bytes", int, 64 << 20, "N", "largest infer request, REST body or gRPC message (default 64 MiB)"),
    ("--drain-timeout", float, 10.0, "S", "on SIGTERM/SIGINT, wait this long for in-flight requests; those still "
     "running then are answered 503 and the exit status is 3 (default 10 s)"),
]
HTTP_LIMITS: list[tuple[str, type, Any, str, str]] = [
    ("--max-header-bytes", int, 16 << 10, "N",
     "largest HTTP request head (request line + headers; 431 past it; default 16 KiB)"),
    ("--max-headers", int, 100, "N", "most HTTP header fields in a request (431 past it; default 100)"),
    ("--header-timeout", float, 10.0, "S",
     "an HTTP request head must arrive within S s of its first byte (408; default 10 s)"),
    ("--body-timeout", float, 60.0, "S", "an HTTP request body must arrive within S s of its head (408; default 60 s)"),
    ("--keep-alive-timeout", float, 5.0, "S", "close an HTTP connection idle this long (default 5 s)"),
    ("--max-connections", int, 1000, "N", "open HTTP connections (default 1000, lowered to fit the descriptor "
     "limit); past it the longest-idle connection is closed"),
]


def _field(option: str) -> str:
    return option[2:].replace("-", "_")


#: ServeConfig fields named in its errors -> options (only for those errors: the words are common)
CONFIG_NAMES = [
    ("http_port", "--http-port"),
    ("grpc_update_port", "--grpc-update-port"),
    ("grpc_port", "--grpc-port"),
    ("max_update_bytes", "--max-update-bytes"),
    ("max_queue_delay", "--max-queue-delay-us"),
    *((_field(o), o) for o, *_ in SERVING_LIMITS + HTTP_LIMITS),
    ("poll_interval", "--poll-interval"),
    ("model_name", "--model-name"),
    ("history_bytes", "--history-bytes"),
    ("history", "--history"),
]


def cli_phrasing(message: str, names: list[tuple[str, str]] = OPTION_NAMES) -> str:
    """A library message with its keyword-argument names replaced by this command's options."""
    import re

    def sub(option: str) -> Any:
        # "strip_prefix='module.'" -> "--strip-prefix 'module.'"; "allow_step_reset=True)" -> "--allow-step-reset)"
        return lambda m: option + (" " + m.group(1) if m.group(1) and m.group(1) not in ",.;:)/" else m.group(1))

    for param, option in names:
        message = re.sub(
            rf"(?<![\w\-.]){re.escape(param)}(?![\w])(\S?)"
            if param[-1].isalnum() and "=" not in param
            else rf"(?<![\w\-.]){re.escape(param)}(\S?)",
            sub(option),
            message,
        )
    return message


class CliPhrasing(logging.Filter):
    """Re-phrase library log records for command-line users (``strip_prefix=`` -> ``--strip-prefix``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        phrased = cli_phrasing(msg)
        if phrased != msg:
            record.msg, record.args = phrased, ()
        return True


def _rename(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"--rename takes CHECKPOINT_NAME=VARIABLE_NAME, got {text!r}")
    return old, new


class Serve(Command):
    """Serve a bundle over REST and gRPC (KServe v2 / Triton protocol) with live weight updates.

    Serve a bundle: health, metadata, infer (JSON and binary tensors), weight updates
    without reload (guarded, with rollback), dynamic batching, Prometheus metrics at /metrics.
    """

    name = "serve"
    extras = ("serve",)
    epilog = _EPILOG

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", help="bundle .om file")
        p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this host only)")
        p.add_argument(
            "--http-port", type=int, default=8000, metavar="N", help="REST port (default 8000; 0 = any free)"
        )
        p.add_argument(
            "--grpc-port", type=int, default=8001, metavar="N", help="gRPC port (default 8001; 0 = any free)"
        )
        p.add_argument("--no-grpc", action="store_true", help="serve REST only")
        p.add_argument("--grpc-update-port", type=int, default=None, metavar="N",
                       help="a second gRPC port for weight pushes up to --max-update-bytes (the main gRPC port "
                       "receives at most --max-request-bytes)")
        p.add_argument(
            "--model-name", metavar="NAME", help="name to serve the model under (default: the file name without .om)"
        )
        g = p.add_argument_group("weight updates (REST, gRPC and --watch)")
        g.add_argument(
            "--update-token-file",
            metavar="FILE",
            help="file holding the bearer token that enables weight updates and rollback over the wire (default: off)",
        )
        g.add_argument(
            "--no-finite-check",
            dest="finite_check",
            action="store_false",
            help="apply weights holding NaN/Inf too, on every route (default: refuse them, nothing changes)",
        )
        g.add_argument(
            "--history",
            type=int,
            default=4,
            metavar="N",
            help="weight sets kept for rollback (default 4; 0 = no rollback)",
        )
        g.add_argument(
            "--history-bytes",
            type=int,
            default=None,
            metavar="N",
            help="host bytes the history may hold (default: BundleModel's, 512 MiB)",
        )
        g.add_argument(
            "--max-update-bytes",
            type=int,
            default=1 << 30,
            metavar="N",
            help="largest weight update, REST body or gRPC message (default 1 GiB)",
        )
        g.add_argument(
            "--require-weights", action="store_true", help="not ready until the first update or checkpoint is applied"
        )
        w = p.add_argument_group("checkpoint watching (CheckpointWatcher options)")
        w.add_argument("--watch", metavar="DIR", help="apply each new checkpoint committed in DIR")
        w.add_argument(
            "--poll-interval", type=float, default=0.5, metavar="S", help="--watch poll interval (default 0.5 s)"
        )
        w.add_argument(
            "--allow-step-reset",
            action="store_true",
            help="the most recently committed checkpoint wins even with a lower step (trainer restarted at 0)",
        )
        w.add_argument("--strip-prefix", metavar="P", help="strip P from checkpoint names (e.g. module.)")
        w.add_argument(
            "--rename",
            action="append",
            type=_rename,
            metavar="CKPT=VAR",
            help="map a checkpoint name to a variable name (repeatable)",
        )
        w.add_argument(
            "--protocol",
            choices=("auto", "acl_bundle", "tf"),
            default="auto",
            help="checkpoint protocol: acl_bundle markers, TensorFlow's 'checkpoint' file, or auto (default)",
        )
        w.add_argument("--allow-partial", action="store_true", help="apply checkpoints holding only some variables")
        w.add_argument("--allow-unmatched", action="store_true", help="ignore checkpoint names no variable matches")
        s = p.add_argument_group("serving")
        s.add_argument("--no-dynamic-batching", action="store_true", help="run every request as its own infer call")
        s.add_argument(
            "--max-queue-delay-us",
            type=int,
            default=0,
            metavar="US",
            help="how long a request may wait for others to batch with (default 0: batch what is queued)",
        )
        h = p.add_argument_group("HTTP connections")
        for group, table in ((s, SERVING_LIMITS), (h, HTTP_LIMITS)):
            for option, kind, default, metavar, text in table:
                group.add_argument(option, type=kind, default=default, metavar=metavar, help=text)
        s.add_argument("--device", type=int, default=0, metavar="ID", help="device id (default 0)")
        s.add_argument("--sim", action="store_true", help="run on the simulator, whatever the file")
        s.add_argument(
            "--log-format", choices=("text", "json"), default="text", help="log lines as text or one JSON object each"
        )
        s.add_argument("--no-access-log", dest="access_log", action="store_false", help="no log line per request")

    def run(self, args: argparse.Namespace) -> int:
        if args.max_queue_delay_us < 0:
            raise UsageError(f"--max-queue-delay-us must be >= 0, got {args.max_queue_delay_us}")
        if args.history < 0 or (args.history_bytes is not None and args.history_bytes < 0):
            raise UsageError("--history and --history-bytes must be >= 0")
        watch_only = [
            o
            for o, v in (
                ("--strip-prefix", args.strip_prefix),
                ("--rename", args.rename),
                ("--allow-partial", args.allow_partial),
                ("--allow-unmatched", args.allow_unmatched),
                ("--allow-step-reset", args.allow_step_reset),
                ("--protocol", args.protocol != "auto"),
            )
            if v
        ]
        if watch_only and args.watch is None:
            raise UsageError(f"{', '.join(watch_only)} apply to --watch; give --watch DIR")
        try:
            from ..serve.server import ServeConfig, Server
        except ImportError as e:
            raise require_extra("serve", "acl-bundle serve", e) from None
        from .. import _backend
        from .._errors import BackendNotFoundError

        if not os.path.isfile(args.bundle):  # before the backend rule reads it
            raise UsageError(f"no such bundle file: {args.bundle}")
        try:
            acl = _backend.resolve_acl(source=args.bundle, force_sim=args.sim, interface="cli")
        except BackendNotFoundError as e:
            raise UsageError(str(e)) from None
        watch_options = {
            "strip_prefix": args.strip_prefix,
            "rename": dict(args.rename) if args.rename else None,
            "protocol": args.protocol,
            "allow_partial": args.allow_partial,
            "allow_unmatched": args.allow_unmatched,
        }
        history = {"history": args.history} | (
            {"history_bytes": args.history_bytes} if args.history_bytes is not None else {}
        )
        cfg = ServeConfig(
            args.bundle,
            host=args.host,
            http_port=args.http_port,
            grpc_port=None if args.no_grpc else args.grpc_port,
            grpc_update_port=None if args.no_grpc else args.grpc_update_port,
            model_name=args.model_name,
            watch=args.watch,
            poll_interval=args.poll_interval,
            watch_finite_check=args.finite_check,
            watch_allow_step_reset=args.allow_step_reset,
            watch_options=watch_options,
            finite_check=args.finite_check,
            model_options=history,
            update_token_file=args.update_token_file,
            require_weights=args.require_weights,
            dynamic_batching=not args.no_dynamic_batching,
            max_queue_delay=args.max_queue_delay_us / 1e6,
            max_update_bytes=args.max_update_bytes,
            **{_field(o): getattr(args, _field(o)) for o, *_ in SERVING_LIMITS + HTTP_LIMITS},
            device_id=args.device,
            acl=acl,
        )
        try:
            server = Server(cfg)
        except ValueError as e:
            raise UsageError(cli_phrasing(str(e), CONFIG_NAMES)) from None
        _setup_logging(args)
        return server.run()


def _setup_logging(args: argparse.Namespace) -> None:
    """The server's log on stderr (text or JSON lines), phrased for the command line; it replaces the
    command line's own warning lines (each record once)."""
    from ..serve.logs import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CliPhrasing())
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("acl_bundle")
    for h in list(root.handlers):
        if getattr(h, "cli_lines", False):
            root.removeHandler(h)  # main() removes it again at exit: harmless
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("acl_bundle.serve.access").setLevel(logging.INFO if args.access_log else logging.WARNING)
    uv = logging.getLogger("uvicorn")
    uv.addHandler(handler)
    uv.setLevel(logging.WARNING)
