"""A faithful pyACL simulator: ``from acl_bundle.sim import acl`` or ``sim.install()`` then ``import acl``.

Models run on onnxruntime (optional extra ``sim``: ``pip install -e '.[sim]'`` in a checkout; imported lazily at load).
See :mod:`acl_bundle.sim._module` for the table of error codes, their sources and our choices.
"""
from __future__ import annotations

from ._module import (
    acl,
    configure,
    fault,
    install,
    leaks,
    live_resources,
    record,
    reset,
    stats,
    uninstall,
    variables,
)
from ._state import NotImplementedInSimulator, SimulatorMisuse

__all__ = [
    "acl",
    "install",
    "uninstall",
    "configure",
    "reset",
    "live_resources",
    "leaks",
    "stats",
    "fault",
    "record",
    "variables",
    "SimulatorMisuse",
    "NotImplementedInSimulator",
]
