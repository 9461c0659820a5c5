"""The ``acl-bundle`` command line (also ``python -m acl_bundle``).

One module per command (``build``, ``inspect``, ``demo``, ``bench``, ``serve``,
``serve_bench``, ``fleet_bench``), each a :class:`~acl_bundle.cli.base.Command` whose
docstring is its help, listed in :mod:`acl_bundle.cli.registry`.  User mistakes raise
:class:`UsageError` (or ValueError/OSError/ImportError from the library) and come out
as one ``acl-bundle: error: ...`` line on stderr, exit code 2; library warnings as
``acl-bundle: warning: ...`` lines, phrased for the command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .base import PROG, Parser, UsageError
from .registry import load_commands

__all__ = ["PROG", "UsageError", "build_parser", "main"]

EXIT_USAGE = 2
EXIT_INTERNAL = 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def build_parser() -> Parser:
    """Return the ``acl-bundle`` parser with every registered command."""
    parser = Parser(
        prog=PROG, description="Tools for Ascend bundle models (updatable-weight .om files) and their simulator."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in load_commands():
        command.register(sub)
    return parser


class _Lines(logging.Handler):
    """The library's WARNING and ERROR records as ``acl-bundle: warning|error: ...`` lines on stderr."""

    cli_lines = True  # the serve command swaps this for its own log handler

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        from .serve import CliPhrasing

        self.addFilter(CliPhrasing())

    def emit(self, record: logging.LogRecord) -> None:
        label = "error" if record.levelno >= logging.ERROR else "warning"
        with contextlib.suppress(Exception):  # a broken stderr must not turn a warning into a crash
            print(f"{PROG}: {label}: {_one_line(record.getMessage())}", file=sys.stderr)


def _warning_line(seen: set[str]) -> Callable[..., None]:
    """``warnings.showwarning`` for the command line: ``acl-bundle: warning: ...``, one line, each text once."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        text = _one_line(str(message))
        if text not in seen:
            seen.add(text)
            with contextlib.suppress(Exception):
                print(f"{PROG}: warning: {text}", file=sys.stderr)

    return show


def _quiet_stdout() -> None:
    """After EPIPE (``acl-bundle inspect | head``): point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (tests capture it)
        pass


def _error_text(e: BaseException) -> str:
    """An exception as the one line users see; an OSError keeps its cause (strerror, file)."""
    text = str(e)
    if isinstance(e, OSError) and e.errno is not None and e.strerror:  # "[Errno 98] ..." -> the reason and the file
        text = e.strerror + (f": {e.filename}" if e.filename is not None else "")
    return _one_line(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 internal error, 2 user error).

    Tracebacks are shown only with ``ACL_BUNDLE_DEBUG=1``.
    """
    import warnings

    from .. import __version__

    lib_log = logging.getLogger("acl_bundle")
    handler = _Lines()
    lib_log.addHandler(handler)
    before = set(lib_log.handlers)
    shown = warnings.showwarning
    warnings.showwarning = _warning_line(set())
    try:
        parser = build_parser()
        parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
        args = parser.parse_args(argv)
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below, not at interpreter exit
        return code
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:  # the reader went away (| head): nothing to report
        _quiet_stdout()
        return 141  # as if killed by SIGPIPE, like other command-line tools
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, OSError, ImportError) as e:
        if os.environ.get("ACL_BUNDLE_DEBUG"):
            raise
        from .serve import cli_phrasing

        print(f"{PROG}: error: {cli_phrasing(_error_text(e))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if os.environ.get("ACL_BUNDLE_DEBUG"):
            raise
        from .._errors import AclError

        if isinstance(e, AclError):  # the runtime refused (a bundle that does not load ...): its code and message
            print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
            return EXIT_INTERNAL
        print(
            f"{PROG}: error: unexpected {type(e).__name__}: {_one_line(str(e))} "
            "(set ACL_BUNDLE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = shown
        lib_log.removeHandler(handler)
        for h in set(lib_log.handlers) - before:  # what a command added (serve's log handler)
            lib_log.removeHandler(h)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
