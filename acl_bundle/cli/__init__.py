"""The ``acl-bundle`` command line (also ``python -m acl_bundle``).

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its
parser and sets ``func`` to a ``(args) -> int`` handler; add it to ``_COMMANDS``.
User mistakes raise :class:`UsageError` (or ValueError/OSError from the library)
and come out as a single ``acl-bundle: error: ...`` line on stderr with exit code 2.
Heavy imports (onnx, onnxruntime) happen inside handlers so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

from .._precision import GE_DEFAULT as PRECISION_DEFAULT
from .._precision import MODES as PRECISION_MODES

PROG = "acl-bundle"
EXIT_USAGE = 2
EXIT_INTERNAL = 1
MAX_GEARS = 100  # ATC --dynamic_batch_size: "档位数取值范围为(1,100]" (ATC parameter reference, --dynamic_batch_size)
MAX_BATCH = 1 << 16  # ATC recommends gear values in [1, 2048]; beyond this the buffers are absurd


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


def _batch_sizes(text: str) -> list[int]:
    values = _int_list(text, "--batch-sizes")
    if len(values) > MAX_GEARS:
        raise UsageError(f"--batch-sizes lists {len(values)} batch sizes; ATC allows at most {MAX_GEARS}")
    big = [v for v in values if v > MAX_BATCH]
    if big:
        raise UsageError(f"--batch-sizes {big[0]} is too large: at most {MAX_BATCH} (ATC recommends 1-2048)")
    return values


def _plot_path(text: str, default_name: str) -> str:
    """--plot PNG or --plot DIR (then DIR/default_name); the directory must exist before a long run starts."""
    from pathlib import Path

    p = Path(text)
    if p.is_dir():
        p = p / default_name
    elif not p.suffix:
        p = p.with_suffix(".png")
    if not p.parent.is_dir():
        raise UsageError(f"--plot {text}: directory {p.parent} does not exist")
    return str(p)


def _plot_path_parent(text: str, option: str) -> None:
    from pathlib import Path

    if not Path(text).parent.is_dir():
        raise UsageError(f"{option} {text}: directory {Path(text).parent} does not exist")


def _name_list(text: str, option: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    if any(not n for n in names):
        raise UsageError(f"{option} has an empty name in {text!r}")
    return names


# --- build -------------------------------------------------------------------

_BUILD_EPILOG = """\
With --target sim (the default) the output loads on the
simulator (acl_bundle.sim) only.  --target ascend builds a device bundle with CANN's
GE graph API (the native tool in native/bundle_builder, compiled with CMake on first
use) from an ONNX model or a TensorFlow frozen GraphDef (.pb): same options, plus
--soc-version.  --precision-mode makes the simulator compute as the device would.

examples:
  acl-bundle build mlp.onnx -o mlp.om
  acl-bundle build mlp.onnx -o mlp.om --variables fc0.weight,fc0.bias --batch-sizes 1,8,32
  acl-bundle build mlp.onnx -o mlp_plain.om --plain
  acl-bundle build cnn.onnx -o cnn.om --plain --dynamic-image-size "224,224;448,448"
  acl-bundle build seq.onnx -o seq.om --plain --dynamic-dims "1,16;4,32"
  acl-bundle build add.onnx mul.onnx -o two.om       (a bundle of plain graphs, no variables)
  acl-bundle build frozen.pb --inputs x:0 --outputs y:0 --batch-sizes 1,8     (TensorFlow: pip install -e '.[tf,sim]')
  acl-bundle build saved_model_dir/ -o model.om --variables dense/kernel:0,dense/bias:0
  acl-bundle build mlp.onnx -o mlp.om --precision-mode force_fp16   (compute on the simulator as the device does)
  acl-bundle build frozen.pb --inputs x:0[1,8] --outputs y:0 --target ascend --soc-version Ascend310P3
"""


def _add_build(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="build a simulator bundle (or plain) .om from an ONNX or TensorFlow model",
        description=(
            "Build a bundle model file (infer/init/update graphs sharing updatable\n"
            "variables) from an ONNX model, plus <name>.manifest.json describing the\n"
            "variables.  By default every float16/32/64 initializer becomes a variable.\n"
            "Data inputs need static shapes unless one of --batch-sizes, --dynamic-image-size\n"
            "or --dynamic-dims is given (ATC's three dynamic-shape options, same value syntax).\n"
            "Several MODELs make a bundle of those plain graphs, without variables.\n"
            "A TensorFlow frozen GraphDef (.pb) or SavedModel directory is converted with\n"
            "tf2onnx first; names are TF's (x:0, dense/kernel:0), see acl_bundle.sim.tf_builder."
        ),
        epilog=_BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="+", help="input ONNX model file (several: a bundle of plain graphs), or a TensorFlow "
                   "frozen GraphDef (.pb) or SavedModel directory")
    p.add_argument("-o", "--output", metavar="OM", help="output .om path (default: MODEL with suffix .om)")
    p.add_argument("--variables", metavar="A,B,...", help="initializers (TensorFlow: variable names, dense/kernel:0) to make variables, in update-input order (default: all floating-point ones; TF: every variable)")
    p.add_argument("--no-init", action="store_true", help="omit the init graph and initial values (every variable must be updated before inference)")
    p.add_argument("--plain", action="store_true", help="build a plain single-graph model (no variables, no manifest), as ATC would")
    p.add_argument("--batch-sizes", "--dynamic_batch_size", metavar="N,N,...", help="dynamic batch sizes (like ATC --dynamic_batch_size); dim 0 of every input and output becomes the batch")
    p.add_argument("--dynamic-image-size", "--dynamic_image_size", metavar="H,W;H,W", help="image size gears (like ATC --dynamic_image_size); the two non-static dims of each image input are height and width")
    p.add_argument("--dynamic-dims", "--dynamic_dims", metavar="V,..;V,..", help="dims gears (like ATC --dynamic_dims): one value per non-static dim of all data inputs, in input order")
    p.add_argument("--inputs", metavar="X:0[,..]", help="TensorFlow only: input tensors, optionally with a static shape x:0[1,8] (default: every placeholder / the signature's)")
    p.add_argument("--outputs", metavar="Y:0[,..]", help="TensorFlow only: output tensors (required for a .pb; default: the signature's)")
    p.add_argument("--signature", metavar="KEY", help="TensorFlow SavedModel only: signature to build (default serving_default)")
    p.add_argument("--precision-mode", "--precision_mode", metavar="MODE", choices=PRECISION_MODES,
                   help="GE precision mode (ATC --precision_mode: " + ", ".join(PRECISION_MODES) + "); the "
                   "simulator computes as the device would. Default: sim exact float32, ascend GE's default "
                   f"{PRECISION_DEFAULT}")
    p.add_argument("--target", choices=("sim", "ascend"), default="sim",
                   help="sim: a simulator bundle (default); ascend: a device bundle built with CANN's GE graph API")
    p.add_argument("--soc-version", "--soc_version", metavar="SOC",
                   help="--target ascend: the chip (ATC --soc_version, e.g. Ascend310P3)")
    p.add_argument("--input-format", "--input_format", metavar="FMT",
                   help="--target ascend: data input format (ATC --input_format: NCHW, NHWC, ND, ...)")
    p.set_defaults(func=_cmd_build)


def _tensor_list(text: str, option: str) -> list[str]:
    """Comma-separated names whose optional [shape] may itself hold commas."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    if depth != 0 or any(not p for p in parts):
        raise UsageError(f"{option} must be comma-separated tensor names like x:0 or x:0[1,8], got {text!r}")
    return parts


def _build_tf(args: argparse.Namespace, src: Any, batch_sizes: list[int] | None) -> Any:
    import os

    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # deprecation notices from inside tf2onnx
    if args.plain:
        raise UsageError("--plain applies to ONNX models; a TensorFlow model is built as a bundle")
    try:
        from ..sim import tf_builder

        return tf_builder.build_bundle_from_tf(
            src,
            inputs=_tensor_list(args.inputs, "--inputs") if args.inputs else None,
            outputs=_tensor_list(args.outputs, "--outputs") if args.outputs else None,
            variables=_name_list(args.variables, "--variables") if args.variables is not None else None,
            signature=args.signature, init=not args.no_init, batch_sizes=batch_sizes,
            precision_mode=args.precision_mode,
        )
    except ImportError as e:
        raise UsageError(str(e)) from None


def _build_inputs(args: argparse.Namespace) -> tuple[list[Any], bool, Any, Any, Any, Any, Any]:
    """Check the model paths, output path and dynamic-shape options both targets share."""
    from pathlib import Path

    from ..sim import builder
    from ..sim.tf_builder import is_tf_source as tf_builder_source

    srcs = [Path(m) for m in args.model]
    tf_model = len(srcs) == 1 and tf_builder_source(srcs[0])
    for src in srcs:
        if not tf_model and not src.is_file():
            raise UsageError(f"no such ONNX file: {src}" + (" (a directory must be a TensorFlow SavedModel)" if src.is_dir() else ""))
    if not tf_model and (args.inputs or args.outputs or args.signature):
        raise UsageError("--inputs, --outputs and --signature apply to TensorFlow models (.pb, SavedModel directory)")
    src = srcs[0]
    out = Path(args.output) if args.output else src.with_suffix(".om")
    if any(out.resolve() == s.resolve() for s in srcs):
        raise UsageError(f"output {out} would overwrite the input model")
    if out.is_dir():
        raise UsageError(f"output {out} is a directory")
    if not out.parent.is_dir():
        raise UsageError(f"output directory {out.parent} does not exist")
    batch_sizes = _batch_sizes(args.batch_sizes) if args.batch_sizes is not None else None
    hw = builder.parse_gears(args.dynamic_image_size, "--dynamic-image-size", width=2) if args.dynamic_image_size is not None else None
    dims = builder.parse_gears(args.dynamic_dims, "--dynamic-dims") if args.dynamic_dims is not None else None
    if tf_model and (hw is not None or dims is not None):
        raise UsageError("--dynamic-image-size and --dynamic-dims apply to ONNX models; give a TensorFlow model "
                         "--batch-sizes or static shapes (--inputs x:0[1,8])")
    return srcs, tf_model, src, out, batch_sizes, hw, dims


def _build_ascend(args: argparse.Namespace) -> int:
    """--target ascend: the native GE bundle builder (acl_bundle.device_builder), same options."""
    from .. import device_builder
    from ..sim.tf_builder import parse_tensor_spec

    srcs, tf_model, src, out, batch_sizes, hw, dims = _build_inputs(args)
    if len(srcs) > 1 or args.plain:
        raise UsageError("--target ascend builds weight-update bundles of one model; --plain and several models "
                         "are --target sim only")
    if tf_model and src.is_dir():
        raise UsageError(f"--target ascend takes a frozen GraphDef (.pb), not a SavedModel directory ({src}): "
                         "freeze it first (samples/tf_device_bundle.py shows how)")
    if args.signature:
        raise UsageError("--signature applies to SavedModels, which --target ascend does not take")
    if not args.soc_version:
        raise UsageError("--target ascend needs --soc-version, the chip to build for (e.g. Ascend310P3; "
                         "`npu-smi info` shows it)")
    shapes: dict[str, tuple[int, ...]] = {}
    names: list[str] = []
    for spec in _tensor_list(args.inputs, "--inputs") if args.inputs else []:
        name, shape = parse_tensor_spec(spec)
        if not name.endswith(":0"):
            raise UsageError(f"--inputs {spec}: a GE data input is a placeholder's output 0 (name:0)")
        names.append(name[:-2])
        if shape is not None:
            shapes[name[:-2]] = shape
    try:
        _om, _man, text = device_builder.build_device_bundle(
            src, out, soc_version=args.soc_version, precision_mode=args.precision_mode,
            variables=_name_list(args.variables, "--variables") if args.variables is not None else None,
            init=not args.no_init, input_shapes=shapes or None, input_names=names or None,
            outputs=_tensor_list(args.outputs, "--outputs") if args.outputs else None, input_format=args.input_format,
            batch_sizes=batch_sizes, dynamic_image_size=hw, dynamic_dims=dims)
    except device_builder.DeviceBuildUnavailable as e:
        raise UsageError(str(e)) from None
    except device_builder.DeviceBuildError as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_INTERNAL
    print(text, end="")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from ..sim import builder

    if args.target == "ascend":
        return _build_ascend(args)
    if args.soc_version is not None or args.input_format is not None:
        raise UsageError("--soc-version and --input-format apply to --target ascend")
    srcs, tf_model, src, out, batch_sizes, hw, dims = _build_inputs(args)
    dynamic = {"batch_sizes": batch_sizes, "dynamic_image_size": hw, "dynamic_dims": dims}
    mode = {"precision_mode": args.precision_mode}
    try:
        if tf_model:
            mf = _build_tf(args, src, batch_sizes)
        elif len(srcs) > 1:
            if (args.plain or args.variables is not None or args.no_init or args.precision_mode
                    or any(v is not None for v in dynamic.values())):
                raise UsageError("several models make a bundle of plain static graphs: no --plain, --variables, "
                                 "--no-init, --precision-mode or dynamic shapes")
            mf = builder.build_plain_bundle(srcs)
        elif args.plain:
            if args.variables is not None or args.no_init:
                raise UsageError("--plain takes no --variables or --no-init (a plain model has no variables)")
            mf = builder.build_plain(src, **dynamic, **mode)
        else:
            variables = _name_list(args.variables, "--variables") if args.variables is not None else None
            mf = builder.build_bundle(src, variables=variables, init=not args.no_init, **dynamic, **mode)
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("onnx", "onnxruntime", "tensorflow", "tf2onnx"):  # e.g. missing external data
            raise UsageError(f"cannot build from {src}: {e}") from None
        raise
    if mf.batch_sizes:
        from ..sim._state import Config

        budget = Config().device_memory
        big = max(mf.batch_sizes)
        need = sum(t.nbytes(big) for t in (*mf.graphs[0].inputs, *mf.graphs[0].outputs))
        if need > budget:
            raise UsageError(f"--batch-sizes: batch {big} needs {need:,} bytes of input and output buffers per call, "
                             f"more than the simulator's {budget:,} bytes of device memory")
    om_path, man_path = builder.save(mf, out)
    size = om_path.stat().st_size
    graphs = "/".join(g.role for g in mf.graphs)
    print(f"wrote {om_path} ({size:,} bytes): {mf.kind} model, graphs {graphs}")
    if mf.variables:
        var_bytes = sum(v.nbytes() for v in mf.variables)
        print(f"  {len(mf.variables)} variables, {var_bytes:,} bytes" + ("" if mf.initial_values else " (no initial values)"))
    if mf.batch_sizes:
        print(f"  batch sizes {','.join(map(str, mf.batch_sizes))}")
    if mf.dynamic_hw or mf.dynamic_dims:
        label = "image sizes" if mf.dynamic_hw else "dims gears"
        print(f"  {label} {';'.join(','.join(map(str, g)) for g in mf.gears)}")
    if mf.precision_mode:
        print(f"  precision_mode {mf.precision_mode}")
    if man_path is not None:
        print(f"wrote {man_path}")
    return 0


# --- inspect -----------------------------------------------------------------

_INSPECT_EPILOG = """\
Loads the bundle without running its init graph (nothing is changed) on pyACL when
it is installed, otherwise on the simulator (--sim forces the simulator).  Variable
shapes come from <bundle>.manifest.json when present: real update graphs report
unknown-rank inputs.

examples:
  acl-bundle inspect mlp.om
  acl-bundle inspect mlp.om --json
"""


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a bundle's graphs, model ids, inputs, outputs and variables",
        description="Show what a bundle .om holds: its graphs and their model ids, whether an init\n"
                    "graph is present, the data inputs and outputs, and every updatable variable\n"
                    "with its dtype, shape and bytes.",
        epilog=_INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle .om file")
    p.add_argument("--manifest", metavar="JSON", help="manifest with the variable shapes (default: <bundle>.manifest.json if present)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--sim", action="store_true", help="load on the simulator even if pyACL is installed")
    p.add_argument("--device", type=int, default=0, metavar="ID", help="device id (default 0)")
    p.set_defaults(func=_cmd_inspect)


def _is_sim_file(path: Any) -> bool:
    from ..sim.format import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _inspect_backend(path: Any, force_sim: bool) -> tuple[Any, str]:
    """The simulator for --sim or a simulator file (unless ACL_BUNDLE_BACKEND=pyacl); else the resolver's choice.

    A device .om never falls back to the simulator: without pyACL it is an error.
    """
    from .. import _backend
    from .._errors import BackendNotFoundError

    choice = os.environ.get("ACL_BUNDLE_BACKEND", "").strip().lower()
    if force_sim or (_is_sim_file(path) and choice != "pyacl"):
        from .. import sim

        return sim.acl, "simulator"
    try:
        acl = _backend.resolve_acl()
    except BackendNotFoundError as e:
        why = ("is a simulator bundle but ACL_BUNDLE_BACKEND=pyacl forbids the simulator" if _is_sim_file(path)
               else "is not a simulator bundle, so it needs pyACL")
        raise UsageError(f"{path} {why}: {e}") from None
    from .. import sim as _sim

    return acl, "simulator" if acl is _sim.acl else "pyACL"


def _describe_bundle(path: Any, acl: Any, manifest: str | None, device: int) -> tuple[int, list[int], Any, Any]:
    """Load the bundle just to read its description, then release it: (bundle id, model ids, Description, manifest).

    Unlike opening a BundleModel this allocates no staging or infer buffers (a
    BundleModel's staging alone costs the variables' size again in device memory) and
    runs no init graph; only the bundle load itself takes device memory.
    """
    from pathlib import Path

    from .._model.buffers import Ledger
    from .._model.context import ModelContext
    from .._manifest import manifest_path, read_manifest
    from .._errors import unwrap
    from ..model import read_bundle

    man = Path(manifest) if manifest else manifest_path(path)
    if not man.is_file():
        man = None  # type: ignore[assignment]
    mvars = read_manifest(man) if man is not None else None
    ledger = Ledger(acl)
    try:
        ModelContext(acl, device, ledger)
        def load(acl: Any) -> int:
            return unwrap(acl, "acl.mdl.bundle_load_from_file", acl.mdl.bundle_load_from_file(str(path)))

        bundle_id, ids, _descs, d = read_bundle(acl, ledger, load, None, mvars)
    finally:
        for p in ledger.release():
            logging.getLogger("acl_bundle").warning("inspect teardown: %s", p)
    return bundle_id, ids, d, man


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


def _cmd_inspect(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from .._errors import AclError

    path = Path(args.bundle)
    if not path.is_file():
        raise UsageError(f"no such bundle file: {path}")
    if args.manifest is not None and not Path(args.manifest).is_file():
        raise UsageError(f"no such manifest file: {args.manifest}")
    if args.device < 0:
        raise UsageError(f"--device must be >= 0, got {args.device}")
    acl, backend = _inspect_backend(path, args.sim)
    try:
        bundle_id, ids, d, man = _describe_bundle(path, acl, args.manifest, args.device)
    except AclError as e:
        hint = ""
        if backend == "simulator" and not _is_sim_file(path):
            hint = " (this is not a simulator file: a device .om needs pyACL on an Ascend host)"
        elif backend == "pyACL" and _is_sim_file(path):
            hint = " (this is a simulator file: pass --sim)"
        raise UsageError(f"cannot load {path} as a bundle ({backend}): {e}{hint}") from None
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None
    roles = {"infer": d.infer, "init": d.init, "update": d.update}

    def nbytes(t: Any) -> int | None:
        return None if -1 in t.shape else int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize

    info = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "backend": backend,
        "bundle_id": bundle_id,
        "graphs": [{"role": role, "model_id": ids[roles[role]]}
                   for role in ("infer", "init", "update") if roles[role] is not None],
        "has_init": d.init is not None,
        "batch_sizes": list(d.batch_sizes),
        "inputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape), "nbytes": nbytes(t)} for t in d.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape), "nbytes": nbytes(t)} for t in d.outputs],
        "variables": [{"index": v.index, "name": v.name, "dtype": v.dtype.name,
                       "shape": list(v.shape) if v.shape is not None else None, "nbytes": v.nbytes}
                      for v in d.variables],
        "manifest": str(man) if man is not None else None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    _print_inspect(info)
    return 0


def _table(rows: list[list[str]], indent: str = "  ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.rjust(w) if c[:1].isdigit() and i == len(r) - 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        print((indent + "  ".join(cells)).rstrip())


def _print_inspect(info: dict[str, Any]) -> None:
    graphs = ", ".join(f"{g['role']} (model id {g['model_id']})" for g in info["graphs"])
    print(f"{info['file']}: bundle model, {info['bytes']:,} bytes, loaded on the {info['backend']}")
    print(f"  bundle id {info['bundle_id']}; {len(info['graphs'])} graphs: {graphs}")
    print(f"  init graph: {'present (not run by inspect)' if info['has_init'] else 'absent (update every variable before inferring)'}")
    print(f"  batch sizes: {', '.join(map(str, info['batch_sizes'])) if info['batch_sizes'] else 'static'}")

    def tensors(title: str, items: list[dict[str, Any]]) -> None:
        print(f"{title} ({len(items)}):")
        if items:
            _table([["name", "dtype", "shape", "bytes"]] + [
                [t["name"], t["dtype"], _fmt_shape(t["shape"]), "-" if t["nbytes"] is None else f"{t['nbytes']:,}"]
                for t in items])

    tensors("inputs", info["inputs"])
    tensors("outputs", info["outputs"])
    total = sum(v["nbytes"] for v in info["variables"])
    src = f"shapes from {info['manifest']}" if info["manifest"] else "no manifest: shapes as the runtime reports them"
    print(f"variables ({len(info['variables'])}, {total:,} bytes; {src}):")
    _table([["#", "name", "dtype", "shape", "bytes"]] + [
        [str(v["index"]), v["name"], v["dtype"], _fmt_shape(v["shape"]), f"{v['nbytes']:,}"] for v in info["variables"]])


# --- demo --------------------------------------------------------------------

_DEMO_EPILOG = """\
A trainer thread learns online on a drifting data stream and commits checkpoints;
the serving loop hot-applies them to a live bundle (CheckpointWatcher) and scores it
beside a frozen copy of the initial model.  Runs on the simulator (numpy, onnx,
onnxruntime), in a few seconds.  Exit code 1 if the live model does not beat the
frozen one after the drift.

examples:
  acl-bundle demo
  acl-bundle demo --plot demo.png          (needs matplotlib: pip install -e '.[plot]' in a checkout)
  acl-bundle demo --ticks 120 --seed 3 --fast
"""


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="online learning end to end: trainer -> checkpoints -> live bundle vs frozen copy",
        description="Run the online-learning demo on the simulator and show, live, the accuracy of\n"
                    "the hot-updated model beside a frozen copy, the update latency and the weight version.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ticks", type=int, default=60, metavar="N", help="stream length in ticks (default 60, min 20); the drift spans ticks N/6 .. 3N/4")
    p.add_argument("--seed", type=int, default=0, help="random seed; a seed reproduces the accuracies exactly (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=2, metavar="K", help="trainer commits a checkpoint every K ticks (default 2)")
    p.add_argument("--plot", metavar="PNG", help="also draw both accuracy curves and the update latencies to PNG")
    p.add_argument("--dir", metavar="DIR", help="keep the bundle and checkpoints in DIR (default: a temp dir, removed)")
    p.add_argument("--fast", action="store_true", help="no pause between ticks (the default paces the table to be watchable)")
    p.add_argument("--precision-mode", metavar="MODE", choices=PRECISION_MODES,
                   help="build the bundle with this GE precision mode (e.g. force_fp16, GE's default on a device) and "
                   "report how far the served outputs drift from float32")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .. import demo

    if args.ticks < 20:
        raise UsageError(f"--ticks must be at least 20, got {args.ticks}")
    if args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    plot = None
    if args.plot is not None:
        plot = _plot_path(args.plot, "acl-bundle-demo.png")
        try:
            demo._check_matplotlib()
        except ImportError as e:
            raise UsageError(str(e)) from None
    cfg = demo.DemoConfig(
        ticks=args.ticks, seed=args.seed, checkpoint_every=args.checkpoint_every,
        drift_start=args.ticks // 6, drift_end=(3 * args.ticks) // 4,
        pace=0.0 if args.fast else demo.DemoConfig.pace,
        print_every=max(1, args.ticks // 12), precision_mode=args.precision_mode,
    )
    result = demo.run_demo(cfg, plot=plot, workdir=args.dir)
    if not result.live_after_drift > result.frozen_after_drift:
        print(f"{PROG}: demo: the live model did not beat the frozen one after the drift", file=sys.stderr)
        return 1
    return 0


# --- bench -------------------------------------------------------------------

_BENCH_EPILOG = """\
Every figure is a ratio of two things measured in the same run, interleaved
over several rounds (medians), on the simulator.  Exit code 0 even when a goal
is missed: the table says PASS/FAIL per goal.

examples:
  acl-bundle bench                      # all scenarios, default sizes (a few minutes)
  acl-bundle bench --quick              # small sizes, a few seconds (CI smoke test)
  acl-bundle bench --only 1,3 --json bench.json --plot bench.png
"""


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the wrapper against raw pyACL and the physical limits (simulator)",
        description=(
            "Run the benchmarks: 1 wrapper overhead, 2 update proportional to change,\n"
            "3 update bandwidth, 4 update vs physical bound (numpy.copyto), 5 serving\n"
            "under updates, 6 allocation discipline, 7 staging memory.  Prints a table\n"
            "with each goal and PASS/FAIL (UNRELIABLE when the rounds disagree)."
        ),
        epilog=_BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (smoke test)")
    p.add_argument("--only", metavar="N,N,...", help="run only these scenarios (1-8)")
    p.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    p.add_argument("--plot", metavar="PNG", help="write a bar chart of ratios vs goals (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    import time

    from .. import bench

    only = _int_list(args.only, "--only") if args.only is not None else None
    if only is not None and any(n not in bench.SCENARIOS for n in only):
        raise UsageError(f"--only takes scenario numbers among {sorted(bench.SCENARIOS)}, got {args.only!r}")
    plot = None
    if args.plot:
        if only is not None and not set(only) - {6}:
            raise UsageError("--plot draws the ratio goals of scenarios 1-5; scenario 6 only counts calls (add one of 1-5 to --only)")
        plot = _plot_path(args.plot, "acl-bundle-bench.png")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from .._errors import extra_hint

            raise UsageError(f"--plot needs matplotlib: {extra_hint('plot')}") from None
    if args.json:
        _plot_path_parent(args.json, "--json")
    tty = sys.stderr.isatty()
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if args.no_progress:
            return
        line = f"[{time.perf_counter() - t0:5.1f}s] {msg}"
        if tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    results = bench.run_bench(bench.BenchConfig(quick=args.quick, only=only), progress=progress)
    if tty and not args.no_progress:
        sys.stderr.write("\r\033[K")
    print(bench.format_table(results))
    if args.json:
        bench.write_json(results, args.json)
        print(f"wrote {args.json}")
    if plot:
        bench.write_plot(results, plot)
        print(f"wrote {plot}")
    return 0


# --- serve -------------------------------------------------------------------

_SERVE_EPILOG = """\
Speaks the Open Inference Protocol (KServe v2, as Triton does) over REST and gRPC;
weight updates (model-repository load with file: parameters, or PUT
/v2/models/NAME/weights) need --update-token-file and 'Authorization: Bearer TOKEN'.
Needs the serve extra: pip install -e '.[serve]' in a checkout.  SIGTERM drains and exits 0.

examples:
  acl-bundle serve mlp.om
  acl-bundle serve mlp.om --update-token-file token --watch ckpts/ --max-queue-delay-us 500
"""


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a bundle over REST and gRPC (KServe v2 / Triton protocol) with live weight updates",
        description="Serve a bundle: health, metadata, infer (JSON and binary tensors), weight updates\n"
                    "without reload, dynamic batching, Prometheus metrics at /metrics.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle .om file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this host only)")
    p.add_argument("--http-port", type=int, default=8000, metavar="N", help="REST port (default 8000; 0 = any free)")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="N", help="gRPC port (default 8001; 0 = any free)")
    p.add_argument("--no-grpc", action="store_true", help="serve REST only")
    p.add_argument("--grpc-update-port", type=int, default=None, metavar="N",
                   help="a second gRPC port for weight pushes up to --max-update-bytes (the main gRPC port receives "
                        "at most --max-request-bytes)")
    p.add_argument("--model-name", metavar="NAME", help="name to serve the model under (default: the file name without .om)")
    p.add_argument("--watch", metavar="DIR", help="apply each new checkpoint committed in DIR (CheckpointWatcher)")
    p.add_argument("--poll-interval", type=float, default=0.5, metavar="S", help="--watch poll interval (default 0.5 s)")
    p.add_argument("--no-finite-check", dest="finite_check", action="store_false",
                   help="--watch: apply checkpoints holding NaN/Inf too (default: refuse them, keep the served weights)")
    p.add_argument("--allow-step-reset", action="store_true",
                   help="--watch: the most recently committed checkpoint wins even with a lower step (trainer restarted at 0)")
    p.add_argument("--update-token-file", metavar="FILE", help="file holding the bearer token that enables weight updates (default: updates off)")
    p.add_argument("--require-weights", action="store_true", help="not ready until the first update or checkpoint is applied")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request as its own infer call")
    p.add_argument("--max-queue-delay-us", type=int, default=0, metavar="US", help="how long a request may wait for others to batch with (default 0: batch what is queued)")
    p.add_argument("--instances", type=int, default=2, metavar="N", help="infer calls (batches) running at once (default 2)")
    p.add_argument("--max-request-bytes", type=int, default=64 << 20, metavar="N", help="largest infer request body (default 64 MiB)")
    p.add_argument("--max-update-bytes", type=int, default=1 << 30, metavar="N", help="largest weight update body (default 1 GiB)")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="S",
                   help="on SIGTERM/SIGINT, wait this long for in-flight requests; those still running then are "
                        "answered 503 and the exit status is 3 (default 10 s)")
    p.add_argument("--max-header-bytes", type=int, default=16 << 10, metavar="N", help="largest HTTP request head (request line + headers; 431 past it; default 16 KiB)")
    p.add_argument("--max-headers", type=int, default=100, metavar="N", help="most HTTP header fields in a request (431 past it; default 100)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S", help="an HTTP request head must arrive within S s of its first byte (408; default 10 s)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S", help="an HTTP request body must arrive within S s of its head (408; default 60 s)")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="S", help="close an HTTP connection idle this long (default 5 s)")
    p.add_argument("--max-connections", type=int, default=1000, metavar="N",
                   help="open HTTP connections (default 1000, lowered to fit the descriptor limit); past it the "
                        "longest-idle connection is closed")
    p.add_argument("--device", type=int, default=0, metavar="ID", help="device id (default 0)")
    p.add_argument("--sim", action="store_true", help="run on the simulator even if pyACL is installed")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text or one JSON object each")
    p.add_argument("--no-access-log", dest="access_log", action="store_false", help="no log line per request")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.cli import serve_command

    if args.max_queue_delay_us < 0:
        raise UsageError(f"--max-queue-delay-us must be >= 0, got {args.max_queue_delay_us}")
    return serve_command(args)


def _add_serve_bench(sub: Any) -> None:
    p = sub.add_parser(
        "serve-bench",
        help="benchmark the server on loopback: REST and gRPC round trips vs in-process infer, batching on vs off",
        description="Start acl-bundle serve processes on loopback (simulator) and measure, interleaved:\n"
                    "HTTP and gRPC round trip vs in-process infer (added latency), and dynamic batching\n"
                    "on vs off at 16 concurrent single-row clients.",
    )
    p.add_argument("--quick", action="store_true", help="few requests (smoke test)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_serve_bench)


def _cmd_serve_bench(args: argparse.Namespace) -> int:
    from ..serve.cli import bench_command

    return bench_command(args)


# --- fleet-bench -------------------------------------------------------------

def _add_fleet_bench(sub: Any) -> None:
    p = sub.add_parser(
        "fleet-bench",
        help="benchmark a Ray fleet's publish against one replica's update, and commit skew (needs ray)",
        description="Start a local Ray cluster (unless one is running), a fleet on the simulator, and time\n"
                    "publish vs a single replica's update of the same bytes, interleaved.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--sizes", default="4,64", metavar="MIB,MIB", help="full-update sizes in MiB (default 4,64)")
    p.add_argument("--rounds", type=int, default=20)
    p.set_defaults(func=_cmd_fleet_bench)


def _cmd_fleet_bench(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("fleet-bench needs Ray: pip install -e '.[ray,sim]' in a checkout of acl_bundle") from None
    from ..bench import fleet as fleet_bench

    if args.replicas < 1 or args.rounds < 1:
        raise UsageError("--replicas and --rounds must be >= 1")
    rows = fleet_bench.run_fleet_bench(replicas=args.replicas, sizes_mib=tuple(_int_list(args.sizes, "--sizes")),
                                       rounds=args.rounds)
    print(fleet_bench.format_fleet_table(rows))
    return 0


# --- main --------------------------------------------------------------------

_COMMANDS: list[Callable[[Any], None]] = [_add_build, _add_inspect, _add_demo, _add_bench, _add_serve, _add_serve_bench, _add_fleet_bench]


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


class _WarningLine(logging.Handler):
    """The library's WARNING records (it only logs) as ``acl-bundle: warning: ...`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{PROG}: warning: {_one_line(record.getMessage())}", file=sys.stderr)
        except Exception:  # a broken stderr must not turn a warning into a crash
            pass


def _quiet_stdout() -> None:
    """After EPIPE (``acl-bundle inspect | head``): point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (tests capture it)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 internal error, 2 user error).

    Tracebacks are shown only with ``ACL_BUNDLE_DEBUG=1``.
    """
    from .. import __version__

    lib_log = logging.getLogger("acl_bundle")
    handler = _WarningLine(logging.WARNING)
    lib_log.addHandler(handler)
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
        print(f"{PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if os.environ.get("ACL_BUNDLE_DEBUG"):
            raise
        print(f"{PROG}: error: unexpected {type(e).__name__}: {_one_line(str(e))} "
              "(set ACL_BUNDLE_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        lib_log.removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
