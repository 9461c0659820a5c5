"""The ``acl-bundle`` command line (also ``python -m acl_bundle``).

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its
parser and sets ``func`` to a ``(args) -> int`` handler; add it to ``_COMMANDS``.
User mistakes raise :class:`UsageError` (or ValueError/OSError from the library)
and come out as a single ``acl-bundle: error: ...`` line on stderr with exit code 2.
Heavy imports (onnx, onnxruntime) happen inside handlers so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NoReturn, Sequence

PROG = "acl-bundle"
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, like every other user error here."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        raise UsageError(message + hint)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _int_list(text: str, option: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"{option} must be comma-separated positive integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise UsageError(f"{option} must be comma-separated positive integers, got {text!r}")
    return values


def _name_list(text: str, option: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    if any(not n for n in names):
        raise UsageError(f"{option} has an empty name in {text!r}")
    return names


# --- build -------------------------------------------------------------------

_BUILD_EPILOG = """\
The output loads on the acl_bundle simulator (acl_bundle.sim) only, not on an
Ascend device; build device bundles with the GE graph API
(aclgrphConvertToWeightRefreshableGraphs + aclgrphBundleBuildModel).

examples:
  acl-bundle build mlp.onnx -o mlp.om
  acl-bundle build mlp.onnx -o mlp.om --variables fc0.weight,fc0.bias --batch-sizes 1,8,32
  acl-bundle build mlp.onnx -o mlp_plain.om --plain
"""


def _add_build(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="build a simulator bundle (or plain) .om from an ONNX model",
        description=(
            "Build a bundle model file (infer/init/update graphs sharing updatable\n"
            "variables) from an ONNX model, plus <name>.manifest.json describing the\n"
            "variables.  By default every float16/32/64 initializer becomes a variable.\n"
            "Data inputs need static shapes unless --batch-sizes is given."
        ),
        epilog=_BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="input ONNX model file")
    p.add_argument("-o", "--output", metavar="OM", help="output .om path (default: MODEL with suffix .om)")
    p.add_argument("--variables", metavar="A,B,...", help="initializers to make variables, in update-input order (default: all floating-point ones)")
    p.add_argument("--no-init", action="store_true", help="omit the init graph and initial values (every variable must be updated before inference)")
    p.add_argument("--plain", action="store_true", help="build a plain single-graph model (no variables, no manifest), as ATC would")
    p.add_argument("--batch-sizes", metavar="N,N,...", help="dynamic batch sizes (like ATC --dynamic_batch_size); dim 0 of every input and output becomes the batch")
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .sim import builder

    src = Path(args.model)
    if not src.is_file():
        raise UsageError(f"no such ONNX file: {src}")
    out = Path(args.output) if args.output else src.with_suffix(".om")
    if out.resolve() == src.resolve():
        raise UsageError(f"output {out} would overwrite the input model")
    if out.is_dir():
        raise UsageError(f"output {out} is a directory")
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes is not None else None
    if args.plain:
        if args.variables is not None or args.no_init:
            raise UsageError("--plain takes no --variables or --no-init (a plain model has no variables)")
        mf = builder.build_plain(src, batch_sizes=batch_sizes)
    else:
        variables = _name_list(args.variables, "--variables") if args.variables is not None else None
        mf = builder.build_bundle(src, variables=variables, init=not args.no_init, batch_sizes=batch_sizes)
    om_path, man_path = builder.save(mf, out)
    size = om_path.stat().st_size
    graphs = "/".join(g.role for g in mf.graphs)
    print(f"wrote {om_path} ({size:,} bytes): {mf.kind} model, graphs {graphs}")
    if mf.variables:
        var_bytes = sum(v.nbytes() for v in mf.variables)
        print(f"  {len(mf.variables)} variables, {var_bytes:,} bytes" + ("" if mf.initial_values else " (no initial values)"))
    if mf.batch_sizes:
        print(f"  batch sizes {','.join(map(str, mf.batch_sizes))}")
    if man_path is not None:
        print(f"wrote {man_path}")
    return 0


# --- main --------------------------------------------------------------------

_COMMANDS: list[Callable[[Any], None]] = [_add_build]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``acl-bundle`` parser with every subcommand registered."""
    parser = _Parser(
        prog=PROG,
        description="Tools for Ascend bundle models (updatable-weight .om files) and their simulator.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 user error)."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (UsageError, ValueError, OSError) as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
