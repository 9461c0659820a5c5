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

from ._errors import AclCleanupWarning, AclError, BackendNotFoundError, ModelClosedError, UnknownVariableError
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
