"""``acl-bundle inspect``: what a bundle .om holds, loaded through the public :class:`~acl_bundle.BundleModel`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .base import Command, UsageError

_EPILOG = """\
The backend is the one BundleModel and serve use: a simulator bundle (what
'acl-bundle build' writes) loads on the simulator, any other .om on pyACL;
--sim or ACL_BUNDLE_BACKEND=sim|pyacl choose explicitly.  The bundle is loaded
without running any graph and with no staging or infer buffers: nothing is changed.
Variable shapes come from <bundle>.manifest.json when present: real update graphs
report unknown-rank inputs.

examples:
  acl-bundle inspect mlp.om
  acl-bundle inspect mlp.om --json
"""


def describe(path: Path, acl: Any, manifest: str | None, device: int) -> dict[str, Any]:
    """What ``inspect`` shows, as plain data (:func:`acl_bundle.model.describe_bundle`: nothing runs, no buffers)."""
    import numpy as np

    from ..model import describe_bundle

    d = describe_bundle(path, acl=acl, device_id=device, manifest=manifest)

    def tensor(t: Any) -> dict[str, Any]:
        shape = list(t.shape)
        nbytes = None if -1 in shape else int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
        return {"name": t.name, "dtype": t.dtype.name, "shape": shape, "nbytes": nbytes}

    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "bundle_id": d.bundle_id,
        "graphs": [
            {"role": role, "model_id": d.model_ids[role]} for role in ("infer", "init", "update") if role in d.model_ids
        ],
        "has_init": d.has_init,
        "batch_sizes": list(d.batch_sizes),
        "inputs": [tensor(t) for t in d.inputs],
        "outputs": [tensor(t) for t in d.outputs],
        "variables": [
            {
                "index": v.index,
                "name": v.name,
                "dtype": v.dtype.name,
                "shape": list(v.shape) if v.shape is not None else None,
                "nbytes": v.nbytes,
            }
            for v in d.variables
        ],
        "manifest": d.manifest,
    }


class Inspect(Command):
    """Show a bundle's graphs, model ids, inputs, outputs and variables.

    Show what a bundle .om holds: its graphs and their model ids, whether an init
    graph is present, the data inputs and outputs, and every updatable variable
    with its dtype, shape and bytes.
    """

    name = "inspect"
    epilog = _EPILOG

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", help="bundle .om file")
        p.add_argument(
            "--manifest",
            metavar="JSON",
            help="manifest with the variable shapes (default: <bundle>.manifest.json if present)",
        )
        p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
        p.add_argument("--sim", action="store_true", help="load on the simulator, whatever the file")
        p.add_argument("--device", type=int, default=0, metavar="ID", help="device id (default 0)")

    def run(self, args: argparse.Namespace) -> int:
        from .. import _backend
        from .._errors import AclError, BackendNotFoundError

        path = Path(args.bundle)
        if not path.is_file():
            raise UsageError(f"no such bundle file: {path}")
        if args.manifest is not None and not Path(args.manifest).is_file():
            raise UsageError(f"no such manifest file: {args.manifest}")
        if args.device < 0:
            raise UsageError(f"--device must be >= 0, got {args.device}")
        try:
            acl = _backend.resolve_acl(source=path, force_sim=args.sim, interface="cli")
        except BackendNotFoundError as e:
            raise UsageError(str(e)) from None
        backend = "simulator" if _backend.is_simulator(acl) else "pyACL"
        sim_file = _backend.is_sim_file(path)
        try:
            info = describe(path, acl, args.manifest, args.device)
        except AclError as e:
            hint = ""
            if backend == "simulator" and not sim_file:
                hint = " (this is not a simulator file: a device .om needs pyACL on an Ascend host)"
            elif backend == "pyACL" and sim_file:
                hint = " (this is a simulator file: pass --sim, or unset ACL_BUNDLE_BACKEND)"
            raise UsageError(f"cannot load {path} as a bundle ({backend}): {e}{hint}") from None
        except ValueError as e:
            raise UsageError(f"{path}: {e}") from None
        info["backend"] = backend
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print_info(info)
        return 0


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


def _table(rows: list[list[str]], indent: str = "  ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.rjust(w) if c[:1].isdigit() and i == len(r) - 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        print((indent + "  ".join(cells)).rstrip())


def print_info(info: dict[str, Any]) -> None:
    graphs = ", ".join(f"{g['role']} (model id {g['model_id']})" for g in info["graphs"])
    print(f"{info['file']}: bundle model, {info['bytes']:,} bytes, loaded on the {info['backend']}")
    print(f"  bundle id {info['bundle_id']}; {len(info['graphs'])} graphs: {graphs}")
    print(
        "  init graph: "
        + ("present (not run by inspect)" if info["has_init"] else "absent (update every variable before inferring)")
    )
    print(f"  batch sizes: {', '.join(map(str, info['batch_sizes'])) if info['batch_sizes'] else 'static'}")

    def tensors(title: str, items: list[dict[str, Any]]) -> None:
        print(f"{title} ({len(items)}):")
        if items:
            _table(
                [["name", "dtype", "shape", "bytes"]]
                + [
                    [t["name"], t["dtype"], _fmt_shape(t["shape"]), "-" if t["nbytes"] is None else f"{t['nbytes']:,}"]
                    for t in items
                ]
            )

    tensors("inputs", info["inputs"])
    tensors("outputs", info["outputs"])
    total = sum(v["nbytes"] for v in info["variables"])
    src = f"shapes from {info['manifest']}" if info["manifest"] else "no manifest: shapes as the runtime reports them"
    print(f"variables ({len(info['variables'])}, {total:,} bytes; {src}):")
    _table(
        [["#", "name", "dtype", "shape", "bytes"]]
        + [
            [str(v["index"]), v["name"], v["dtype"], _fmt_shape(v["shape"]), f"{v['nbytes']:,}"]
            for v in info["variables"]
        ]
    )
