"""``acl-bundle build``: a bundle (or plain) ``.om`` from an ONNX or TensorFlow model.

Layout, for adding a target: :meth:`Build.add_arguments` holds the options,
:func:`check_inputs` checks what every target shares (model paths, output, dynamic
shapes), and :data:`TARGETS` maps ``--target`` to its function: :func:`build_sim`
(a simulator ``ModelFile``, saved and reported by :func:`report`) and
:func:`build_ascend` (CANN's GE graph API through :mod:`acl_bundle.device_builder`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..device.precision import PRECISION_DEFAULT, PRECISION_MODES
from .base import PROG, Command, UsageError, name_list, require_extra

MAX_GEARS = 100  # ATC --dynamic_batch_size: "档位数取值范围为(1,100]" (ATC parameter reference, --dynamic_batch_size)
MAX_BATCH = 1 << 16  # ATC recommends gear values in [1, 2048]; beyond this the buffers are absurd

#: the library's parameter names -> this command's options (messages from the builders are re-phrased)
OPTION_NAMES = {
    "batch_sizes": "--batch-sizes",
    "dynamic_image_size": "--dynamic-image-size",
    "dynamic_dims": "--dynamic-dims",
    "variables": "--variables",
    "inputs": "--inputs",
    "outputs": "--outputs",
    "signature": "--signature",
    "init": "--no-init",
}

_EPILOG = """\
With --target sim (the default) the output loads on the
simulator (acl_bundle.sim) only; BundleModel, serve and inspect run it there with no
flag.  --target ascend builds a device bundle with CANN's
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


def cli_phrasing(message: str) -> str:
    """A library message with its parameter names replaced by this command's options."""
    for param, option in OPTION_NAMES.items():
        if param == "init":
            continue  # too common a word to rewrite
        message = re.sub(rf"(?<![\w.\-']){param}(?![\w])", option, message)
    return message


def kind_of(path: Path) -> str:
    """What the user gave, in their terms (for messages about a missing or unreadable model)."""
    suffix = path.suffix.lower()
    if suffix == ".pb":
        return "TensorFlow frozen GraphDef (.pb)"
    if suffix == ".meta":
        return "TensorFlow MetaGraph (.meta: give the frozen .pb or the SavedModel directory instead)"
    if suffix == ".onnx":
        return "ONNX model"
    if path.is_dir():
        return "SavedModel directory (no saved_model.pb in it)"
    if suffix in (".h5", ".keras"):
        return f"Keras file ({suffix}: export a SavedModel, model.export(dir), and give that directory)"
    return "model file (ONNX .onnx, TensorFlow .pb or SavedModel directory)"


def batch_sizes_option(text: str) -> list[int]:
    from .base import int_list

    values = int_list(text, "--batch-sizes")
    if len(values) > MAX_GEARS:
        raise UsageError(f"--batch-sizes lists {len(values)} batch sizes; ATC allows at most {MAX_GEARS}")
    big = [v for v in values if v > MAX_BATCH]
    if big:
        raise UsageError(f"--batch-sizes {big[0]} is too large: at most {MAX_BATCH} (ATC recommends 1-2048)")
    return values


def tensor_list(text: str, option: str) -> list[str]:
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


class Build(Command):
    """Build a simulator bundle (or plain) .om from an ONNX or TensorFlow model.

    Build a bundle model file (infer/init/update graphs sharing updatable
    variables) from an ONNX model, plus <name>.manifest.json describing the
    variables.  By default every float16/32/64 initializer becomes a variable.
    Data inputs need static shapes unless one of --batch-sizes, --dynamic-image-size
    or --dynamic-dims is given (ATC's three dynamic-shape options, same value syntax).
    Several MODELs make a bundle of those plain graphs, without variables.
    A TensorFlow frozen GraphDef (.pb) or SavedModel directory is converted with
    tf2onnx first; names are TF's (x:0, dense/kernel:0), see acl_bundle.sim.tf_builder.
    """

    name = "build"
    extras = ("sim",)
    epilog = _EPILOG

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "model",
            nargs="+",
            help="input ONNX model file (several: a bundle of plain graphs), or a "
            "TensorFlow frozen GraphDef (.pb) or SavedModel directory",
        )
        p.add_argument("-o", "--output", metavar="OM", help="output .om path (default: MODEL with suffix .om)")
        p.add_argument(
            "--variables",
            metavar="A,B,...",
            help="initializers (TensorFlow: variable names, dense/kernel:0) "
            "to make variables, in update-input order (default: all floating-point ones; TF: every variable)",
        )
        p.add_argument(
            "--no-init",
            action="store_true",
            help="omit the init graph and initial values (every variable must be updated before inference)",
        )
        p.add_argument(
            "--plain",
            action="store_true",
            help="build a plain single-graph model (no variables, no manifest), as ATC would",
        )
        p.add_argument(
            "--batch-sizes",
            "--dynamic_batch_size",
            metavar="N,N,...",
            help="dynamic batch sizes (like ATC "
            "--dynamic_batch_size); dim 0 of every input and output becomes the batch",
        )
        p.add_argument(
            "--dynamic-image-size",
            "--dynamic_image_size",
            metavar="H,W;H,W",
            help="image size gears (like "
            "ATC --dynamic_image_size); the two non-static dims of each image input are height and width",
        )
        p.add_argument(
            "--dynamic-dims",
            "--dynamic_dims",
            metavar="V,..;V,..",
            help="dims gears (like ATC "
            "--dynamic_dims): one value per non-static dim of all data inputs, in input order",
        )
        p.add_argument(
            "--inputs",
            metavar="X:0[,..]",
            help="TensorFlow only: input tensors, optionally with a static "
            "shape x:0[1,8] (default: every placeholder / the signature's)",
        )
        p.add_argument(
            "--outputs",
            metavar="Y:0[,..]",
            help="TensorFlow only: output tensors (required for a .pb; default: the signature's)",
        )
        p.add_argument(
            "--signature",
            metavar="KEY",
            help="TensorFlow SavedModel only: signature to build (default serving_default)",
        )
        p.add_argument(
            "--precision-mode",
            "--precision_mode",
            metavar="MODE",
            choices=PRECISION_MODES,
            help="GE precision mode (ATC --precision_mode: " + ", ".join(PRECISION_MODES) + "); the simulator "
            f"computes as the device would. Default: sim exact float32, ascend GE's default {PRECISION_DEFAULT}",
        )
        p.add_argument(
            "--target",
            choices=tuple(TARGETS),
            default="sim",
            help="sim: a simulator bundle (default); ascend: a device bundle built with CANN's GE graph API",
        )
        p.add_argument(
            "--soc-version",
            "--soc_version",
            metavar="SOC",
            help="--target ascend: the chip (ATC --soc_version, e.g. Ascend310P3)",
        )
        p.add_argument(
            "--input-format",
            "--input_format",
            metavar="FMT",
            help="--target ascend: data input format (ATC --input_format: NCHW, NHWC, ND, ...)",
        )

    def run(self, args: argparse.Namespace) -> int:
        try:
            import onnx  # noqa: F401  (every target reads ONNX or converts to it)
        except ImportError as e:
            raise require_extra("sim", "acl-bundle build", e) from None
        return TARGETS[args.target](args)


class BuildInputs(NamedTuple):
    """What every target shares, checked: the model paths, the output and the dynamic-shape options."""

    srcs: list[Path]
    tf_model: bool
    src: Path
    out: Path
    batch_sizes: list[int] | None
    hw: Any
    dims: Any


def check_inputs(args: argparse.Namespace) -> BuildInputs:
    from ..sim import builder
    from ..sim.tf_builder import is_tf_source

    srcs = [Path(m) for m in args.model]
    tf_model = len(srcs) == 1 and is_tf_source(srcs[0])
    for src in srcs if not tf_model else ():
        if src.is_dir():
            raise UsageError(f"{src} is a directory but not a {kind_of(src)}")
        if not src.is_file():
            raise UsageError(f"no such {kind_of(src)}: {src}")
        if src.suffix.lower() in (".meta", ".h5", ".keras"):
            raise UsageError(f"{src} is a {kind_of(src)}")
        if src.suffix.lower() == ".pb":
            raise UsageError(f"{src}: a {kind_of(src)} is built alone, not in a bundle of several models")
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
    batch_sizes = batch_sizes_option(args.batch_sizes) if args.batch_sizes is not None else None
    hw = (
        builder.parse_gears(args.dynamic_image_size, "--dynamic-image-size", width=2)
        if args.dynamic_image_size is not None
        else None
    )
    dims = builder.parse_gears(args.dynamic_dims, "--dynamic-dims") if args.dynamic_dims is not None else None
    if tf_model and (hw is not None or dims is not None):
        raise UsageError(
            "--dynamic-image-size and --dynamic-dims apply to ONNX models; give a TensorFlow model "
            "--batch-sizes or static shapes (--inputs x:0[1,8])"
        )
    return BuildInputs(srcs, tf_model, src, out, batch_sizes, hw, dims)


def build_sim(args: argparse.Namespace) -> int:
    """--target sim: a simulator bundle (or plain model), saved with its manifest."""
    from ..sim import builder

    if args.soc_version is not None or args.input_format is not None:
        raise UsageError("--soc-version and --input-format apply to --target ascend")
    inp = check_inputs(args)
    srcs, src = inp.srcs, inp.src
    dynamic: dict[str, Any] = {"batch_sizes": inp.batch_sizes, "dynamic_image_size": inp.hw, "dynamic_dims": inp.dims}
    mode = {"precision_mode": args.precision_mode}
    try:
        if inp.tf_model:
            mf = _build_tf(args, src, inp.batch_sizes)
        elif len(srcs) > 1:
            if (
                args.plain
                or args.variables is not None
                or args.no_init
                or args.precision_mode
                or any(v is not None for v in dynamic.values())
            ):
                raise UsageError(
                    "several models make a bundle of plain static graphs: no --plain, --variables, --no-init, "
                    "--precision-mode or dynamic shapes"
                )
            mf = builder.build_plain_bundle(srcs)
        elif args.plain:
            if args.variables is not None or args.no_init:
                raise UsageError("--plain takes no --variables or --no-init (a plain model has no variables)")
            mf = builder.build_plain(src, **dynamic, **mode)
        else:
            variables = name_list(args.variables, "--variables") if args.variables is not None else None
            mf = builder.build_bundle(src, variables=variables, init=not args.no_init, **dynamic, **mode)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(cli_phrasing(str(e))) from None
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("onnx", "onnxruntime", "tensorflow", "tf2onnx", "google"):
            raise UsageError(f"cannot build from {src}: {cli_phrasing(str(e))}") from None  # e.g. missing external data
        raise
    if mf.batch_sizes:
        from ..sim._state import Config

        budget = Config().device_memory
        big = max(mf.batch_sizes)
        need = sum(t.nbytes(big) for t in (*mf.graphs[0].inputs, *mf.graphs[0].outputs))
        if need > budget:
            raise UsageError(
                f"--batch-sizes: batch {big} needs {need:,} bytes of input and output buffers per call, "
                f"more than the simulator's {budget:,} bytes of device memory"
            )
    om_path, man_path = builder.save(mf, inp.out)
    report(mf, om_path, man_path)
    return 0


def build_ascend(args: argparse.Namespace) -> int:
    """--target ascend: the native GE bundle builder (acl_bundle.device_builder), same options."""
    from .. import device as device_builder
    from ..sim.tf_builder import parse_tensor_spec

    srcs, tf_model, src, out, batch_sizes, hw, dims = check_inputs(args)
    if len(srcs) > 1 or args.plain:
        raise UsageError(
            "--target ascend builds weight-update bundles of one model; "
            "--plain and several models are --target sim only"
        )
    if tf_model and src.is_dir():
        raise UsageError(
            f"--target ascend takes a frozen GraphDef (.pb), not a SavedModel directory ({src}): freeze it "
            "first (samples/tf_device_bundle.py shows how)"
        )
    if args.signature:
        raise UsageError("--signature applies to SavedModels, which --target ascend does not take")
    if not args.soc_version:
        raise UsageError(
            "--target ascend needs --soc-version, the chip to build for (e.g. Ascend310P3; `npu-smi info` shows it)"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    names: list[str] = []
    for spec in tensor_list(args.inputs, "--inputs") if args.inputs else []:
        name, shape = parse_tensor_spec(spec)
        if not name.endswith(":0"):
            raise UsageError(f"--inputs {spec}: a GE data input is a placeholder's output 0 (name:0)")
        names.append(name[:-2])
        if shape is not None:
            shapes[name[:-2]] = shape
    try:
        _om, _man, text = device_builder.build_device_bundle(
            src,
            out,
            soc_version=args.soc_version,
            precision_mode=args.precision_mode,
            variables=name_list(args.variables, "--variables") if args.variables is not None else None,
            init=not args.no_init,
            input_shapes=shapes or None,
            input_names=names or None,
            outputs=tensor_list(args.outputs, "--outputs") if args.outputs else None,
            input_format=args.input_format,
            batch_sizes=batch_sizes,
            dynamic_image_size=hw,
            dynamic_dims=dims,
        )
    except device_builder.DeviceBuildUnavailable as e:
        raise UsageError(str(e)) from None
    except device_builder.DeviceBuildError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(text, end="")
    return 0


#: --target -> the function that builds for it
TARGETS: dict[str, Callable[[argparse.Namespace], int]] = {"sim": build_sim, "ascend": build_ascend}


#: TensorFlow's start-up lines, printed by its C++ runtime before absl's logging is set up (so
#: TF_CPP_MIN_LOG_LEVEL does not hide them) and once per native library: twice per import.
_TF_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} .*\] (oneDNN custom operations are on|This TensorFlow binary is optimized)"
    r"|To enable the following instructions:)"
)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines dropped; anything else it prints comes through, once."""
    if "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            seen: set[str] = set()
            for line in capture.read().decode(errors="replace").splitlines():
                if line and not _TF_NOISE.match(line) and line not in seen:
                    seen.add(line)
                    print(line, file=sys.stderr)


def _build_tf(args: argparse.Namespace, src: Path, batch_sizes: list[int] | None) -> Any:
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # deprecation notices from inside tf2onnx
    if args.plain:
        raise UsageError("--plain applies to ONNX models; a TensorFlow model is built as a bundle")
    try:
        import_tensorflow_quietly()
        from ..sim import tf_builder

        return tf_builder.build_bundle_from_tf(
            src,
            inputs=tensor_list(args.inputs, "--inputs") if args.inputs else None,
            outputs=tensor_list(args.outputs, "--outputs") if args.outputs else None,
            variables=name_list(args.variables, "--variables") if args.variables is not None else None,
            signature=args.signature,
            init=not args.no_init,
            batch_sizes=batch_sizes,
            precision_mode=args.precision_mode,
        )
    except ImportError as e:
        raise require_extra("tf", f"building {src} (TensorFlow)", e) from None


def report(mf: Any, om_path: Path, man_path: Path | None) -> None:
    """Print what was written (stdout: the command's result)."""
    size = om_path.stat().st_size
    graphs = "/".join(g.role for g in mf.graphs)
    print(f"wrote {om_path} ({size:,} bytes): {mf.kind} model, graphs {graphs}")
    if mf.variables:
        var_bytes = sum(v.nbytes() for v in mf.variables)
        print(
            f"  {len(mf.variables)} variables, {var_bytes:,} bytes"
            + ("" if mf.initial_values else " (no initial values)")
        )
    if mf.batch_sizes:
        print(f"  batch sizes {','.join(map(str, mf.batch_sizes))}")
    if mf.dynamic_hw or mf.dynamic_dims:
        label = "image sizes" if mf.dynamic_hw else "dims gears"
        print(f"  {label} {';'.join(','.join(map(str, g)) for g in mf.gears)}")
    if mf.precision_mode:
        print(f"  precision_mode {mf.precision_mode}")
    if man_path is not None:
        print(f"wrote {man_path}")
