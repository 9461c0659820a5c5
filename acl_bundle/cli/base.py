"""What every ``acl-bundle`` command is built on: the :class:`Command` base, one-line errors, shared option parsers.

A command is a :class:`Command` subclass in its own module of this package, listed in
:mod:`acl_bundle.cli.registry`.  Its docstring is its help: the first line is the
one-line summary ``acl-bundle --help`` lists, the rest its description.  ``epilog``
holds examples.  Heavy imports (numpy, onnx, the server stack) happen inside
:meth:`Command.run` so ``--help`` stays fast.  A user mistake raises :class:`UsageError`
and comes out as one ``acl-bundle: error: ...`` line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any, ClassVar, NoReturn

PROG = "acl-bundle"

#: extra -> the module whose presence means the extra is installed (checked without importing it).
EXTRA_MODULES = {
    "sim": "onnxruntime",
    "serve": "uvicorn",
    "ray": "ray",
    "tf": "tensorflow",
    "plot": "matplotlib",
    "watch": "watchdog",
    "safetensors": "safetensors",
    "s3": "s3fs",
}


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, like every other user error here."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def missing_extra(extra: str) -> str | None:
    """Why the ``extra`` is unusable (its key module is not installed), or None if it is there."""
    module = EXTRA_MODULES[extra]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"needs the '{extra}' extra ({module} is not installed)"


def require_extra(extra: str, what: str, error: BaseException | None = None) -> UsageError:
    """The one missing-extra error of the command line: ``<what> needs the '<extra>' extra: install ...``.

    ``error`` (the ImportError met, if any) is named when it is not simply the extra's module missing."""
    cause = ""
    if error is not None:
        name = getattr(error, "name", None)
        if name is None or name.split(".")[0] != EXTRA_MODULES.get(extra):
            cause = f" ({type(error).__name__}: {error})"
    return UsageError(f"{what} needs the '{extra}' extra{cause}: {extra_hint(extra)}")


def extra_hint(extra: str) -> str:
    """acl_bundle._errors.extra_hint, imported when needed (it pulls in numpy; --help must not)."""
    from .._errors import extra_hint as hint

    return hint(extra)


def check_extras(what: str, *extras: str) -> None:
    """Raise :func:`require_extra`'s error for the first of ``extras`` that is not installed."""
    for extra in extras:
        if missing_extra(extra) is not None:
            raise require_extra(extra, what)


class Command:
    """One subcommand: subclass, write the docstring (its help), add arguments, implement :meth:`run`."""

    name: ClassVar[str]
    #: optional extras the command cannot run without (``--help`` still works and says so)
    extras: ClassVar[tuple[str, ...]] = ()
    epilog: ClassVar[str | None] = None

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].rstrip(".") if doc else cls.name

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        body = "\n".join(line.removeprefix("    ") for line in doc.splitlines()[1:]).strip()
        return body or cls.summary()

    def missing(self) -> str | None:
        """Why this command cannot run here (a missing extra), or None."""
        for extra in self.extras:
            why = missing_extra(extra)
            if why is not None:
                return why
        return None

    def register(self, sub: Any) -> argparse.ArgumentParser:
        why = self.missing()
        summary = self.summary() + (f" [{why}]" if why else "")
        description = self.description() + (f"\n\nThis command {why}: {extra_hint(self.extras[0])}." if why else "")
        p = sub.add_parser(
            self.name,
            help=summary,
            description=description,
            epilog=self.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.add_arguments(p)
        p.set_defaults(func=self.run, command_obj=self)
        return p

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's options."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


# --- option values shared by several commands ------------------------------------------------


def int_list(text: str, option: str) -> list[int]:
    """Comma-separated positive integers."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"{option} must be comma-separated positive integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise UsageError(f"{option} must be comma-separated positive integers, got {text!r}")
    return values


def name_list(text: str, option: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    if any(not n for n in names):
        raise UsageError(f"{option} has an empty name in {text!r}")
    return names


def output_file(text: str, option: str, default_name: str | None = None, suffix: str | None = None) -> str:
    """An output file path: ``--opt FILE`` (or ``--opt DIR``: DIR/default_name); its directory must exist.

    Checked before a long run starts, the same way for every output option."""
    p = Path(text)
    if default_name is not None and p.is_dir():
        p = p / default_name
    elif suffix is not None and not p.suffix:
        p = p.with_suffix(suffix)
    if p.is_dir():
        raise UsageError(f"{option} {text}: is a directory")
    if not p.parent.is_dir():
        raise UsageError(f"{option} {text}: directory {p.parent} does not exist")
    return str(p)


def output_dir(text: str, option: str) -> str:
    """A directory to write into: created if missing, but its parent must exist (as for output files)."""
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {text}: not a directory")
    if not p.exists() and not p.parent.is_dir():
        raise UsageError(f"{option} {text}: directory {p.parent} does not exist")
    return str(p)


def non_negative(value: float, option: str) -> None:
    if value < 0:
        raise UsageError(f"{option} must be >= 0, got {value}")
