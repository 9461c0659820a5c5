"""acl_bundle: serve Ascend bundle models while their weights keep changing.

::

    from acl_bundle import BundleModel
    with BundleModel("bundle.om") as m:
        m.update({1: new_w})        # by index or by variable name; only these are copied
        y = m.infer(x)              # numpy in, numpy out

``acl_bundle.sim`` is a faithful pyACL simulator for machines without an NPU.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

# PEP 562: the public names are imported on first use, so ``import acl_bundle`` (and the
# ``acl-bundle`` command line, which lives in this package) does not load numpy or the
# model code until something needs them.
_LAZY = {
    "AclCleanupWarning": "._errors", "AclError": "._errors", "BackendNotFoundError": "._errors",
    "InterpreterShutdownError": "._errors", "ModelClosedError": "._errors", "UnknownVariableError": "._errors",
    "load_manifest": "._manifest", "manifest_path": "._manifest", "read_manifest": "._manifest",
    "CheckpointError": ".checkpoint", "CheckpointMismatchError": ".checkpoint",
    "load_checkpoint": ".checkpoint", "write_checkpoint": ".checkpoint",
    "BundleModel": ".model", "StagedUpdate": ".model", "TensorInfo": ".model", "Variable": ".model",
    "WeightVersion": ".model",
    "CheckpointWatcher": ".watcher",
}

if TYPE_CHECKING:
    from ._errors import (
        AclCleanupWarning,
        AclError,
        BackendNotFoundError,
        InterpreterShutdownError,
        ModelClosedError,
        UnknownVariableError,
    )
    from ._manifest import load_manifest, manifest_path, read_manifest
    from .checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint, write_checkpoint
    from .model import BundleModel, StagedUpdate, TensorInfo, Variable, WeightVersion
    from .watcher import CheckpointWatcher

__all__ = [
    "AclCleanupWarning",
    "AclError",
    "BackendNotFoundError",
    "BundleModel",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWatcher",
    "InterpreterShutdownError",
    "ModelClosedError",
    "StagedUpdate",
    "TensorInfo",
    "UnknownVariableError",
    "Variable",
    "WeightVersion",
    "load_checkpoint",
    "load_manifest",
    "manifest_path",
    "read_manifest",
    "write_checkpoint",
]
__version__ = "0.1.0"

logging.getLogger("acl_bundle").addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'acl_bundle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
