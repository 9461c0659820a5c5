"""Reading a bundle: load it, find its graphs and describe them (shared by the model and ``describe_bundle``)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _backend
from .._errors import check, unwrap
from .._manifest import ManifestArg, ManifestVariable, manifest_path, read_manifest
from .buffers import Ledger
from .context import ModelContext, current_context
from .description import Description, TensorInfo, Variable

log = logging.getLogger("acl_bundle")


def read_bundle(acl: Any, ledger: Ledger, load: Callable[[Any], int], roles: Mapping[str, int] | None,
                manifest_vars: list[ManifestVariable] | None, pad_batch: bool = True
                ) -> tuple[int, list[int], list[int], Description]:
    """Load a bundle and read its description: (bundle id, model ids, model descs, Description).

    Every handle goes on ``ledger``.  Shared by :class:`BundleModel` and :func:`describe_bundle`.
    """
    bundle_id = load(acl)
    ledger.push("acl.mdl.bundle_unload", lambda: acl.mdl.bundle_unload(bundle_id))
    n = unwrap(acl, "acl.mdl.bundle_get_model_num", acl.mdl.bundle_get_model_num(bundle_id))
    if n not in (2, 3):
        raise ValueError(f"a bundle must hold 2 (infer, update) or 3 (infer, init, update) graphs; this one holds {n}")
    ids = [unwrap(acl, "acl.mdl.bundle_get_model_id", acl.mdl.bundle_get_model_id(bundle_id, i)) for i in range(n)]
    descs = [ledger.create("acl.mdl.create_desc", acl.mdl.create_desc, acl.mdl.destroy_desc) for _ in ids]
    for desc, mid in zip(descs, ids):
        check(acl, "acl.mdl.get_desc", acl.mdl.get_desc(desc, mid))
    return bundle_id, ids, descs, Description.read(acl, descs, roles, manifest_vars, pad_batch)


@dataclass(frozen=True)
class BundleDescription:
    """What a bundle file holds, read by :func:`describe_bundle` (``acl-bundle inspect``)."""

    bundle_id: int
    model_ids: dict[str, int]  # role ("infer", "init", "update") -> model id
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    variables: tuple[Variable, ...]
    batch_sizes: tuple[int, ...]
    manifest: str | None  # the manifest the variable shapes came from

    @property
    def has_init(self) -> bool:
        return "init" in self.model_ids


def describe_bundle(path: str | os.PathLike[str], *, acl: Any = None, device_id: int = 0,
                    manifest: ManifestArg = None) -> BundleDescription:
    """Load ``path`` only to read its description, then release it; nothing runs, nothing is changed.

    Unlike opening a :class:`BundleModel` this allocates no staging, update or infer
    buffers and runs no graph: only the bundle load itself takes device memory.  The
    backend rule and ``manifest`` are those of :class:`BundleModel`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bundle file {path!r} does not exist or is not a file")
    if manifest is None:
        auto = manifest_path(path)
        manifest = auto if auto.is_file() else False
    mvars = None if manifest is False else read_manifest(manifest)  # type: ignore[arg-type]
    acl = _backend.resolve_acl(acl, source=path)
    ledger = Ledger(acl)
    prev = current_context(acl)
    try:
        ModelContext(acl, device_id, ledger)
        bundle_id, ids, _descs, d = read_bundle(
            acl, ledger, lambda a: unwrap(a, "acl.mdl.bundle_load_from_file", a.mdl.bundle_load_from_file(path)),
            None, mvars)
    finally:
        for p in ledger.release(restore=prev):
            log.warning("describe_bundle teardown: %s", p)
    roles = {"infer": d.infer, "init": d.init, "update": d.update}
    return BundleDescription(bundle_id, {r: ids[i] for r, i in roles.items() if i is not None}, d.inputs, d.outputs,
                             d.variables, d.batch_sizes,
                             None if manifest is False or not isinstance(manifest, (str, os.PathLike))
                             else os.fspath(manifest))
