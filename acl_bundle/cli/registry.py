"""The ``acl-bundle`` commands, in help order (after Polygraphy's ``tools/registry.py``).

Add a command: write ``acl_bundle/cli/<module>.py`` with a :class:`~acl_bundle.cli.base.Command`
subclass and list it in :data:`COMMANDS`.  A command module that fails to import is
still listed, as a command that says why it cannot run.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from .base import Command, UsageError

#: (module of acl_bundle.cli, class, command name) in the order ``acl-bundle --help`` lists them
COMMANDS: list[tuple[str, str, str]] = [
    ("build", "Build", "build"),
    ("inspect", "Inspect", "inspect"),
    ("demo", "Demo", "demo"),
    ("bench", "Bench", "bench"),
    ("serve", "Serve", "serve"),
    ("serve_bench", "ServeBench", "serve-bench"),
    ("fleet_bench", "FleetBench", "fleet-bench"),
]


class MissingCommand(Command):
    """A command whose module could not be imported: listed, and running it says why."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name  # type: ignore[misc]
        self.error = error

    def register(self, sub: Any) -> argparse.ArgumentParser:
        why = f"unavailable: {type(self.error).__name__}: {self.error}"
        p = sub.add_parser(self.name, help=f"[{why}]", description=why, add_help=True)
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=self.run, command_obj=self)
        return p

    def run(self, args: argparse.Namespace) -> int:
        raise UsageError(f"{self.name} is unavailable: {type(self.error).__name__}: {self.error}")


def load_commands() -> list[Command]:
    """One instance of every registered command (a :class:`MissingCommand` where its module failed)."""
    out: list[Command] = []
    for module, cls, name in COMMANDS:
        try:
            out.append(getattr(importlib.import_module(f"{__package__}.{module}"), cls)())
        except Exception as e:  # an ImportError, or a bug in the module: list it and say why
            out.append(MissingCommand(name, e))
    return out
