"""Device bundles: run the native GE bundle builder (``native/bundle_builder``), building it on first use.

``acl-bundle build --target ascend`` calls :func:`build_device_bundle`.  The tool is a C++ program
against CANN's GE graph API (parse, ``aclgrphConvertToWeightRefreshableGraphs``,
``aclgrphBundleBuildModel``, ``aclgrphBundleSaveModel``); it writes the ``.om`` and the same manifest
the simulator builder writes.  On first use it is configured with CMake and compiled into a cache
folder (``$ACL_BUNDLE_CACHE``, else ``$XDG_CACHE_HOME/acl_bundle``, else ``~/.cache/acl_bundle``), one
build per CANN installation and source version; ``ACL_BUNDLE_NATIVE_TOOL`` names a tool built by hand
instead.  Without CANN (or CMake, or a C++ compiler) :class:`DeviceBuildUnavailable` says in one
sentence what is missing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._manifest import load_manifest, manifest_path
from .precision import check_precision_mode as check_mode

log = logging.getLogger("acl_bundle")

__all__ = ["DeviceBuildError", "DeviceBuildUnavailable", "build_device_bundle", "find_cann", "native_tool"]

TOOL_NAME = "acl_bundle_builder"
SOURCE_DIR = Path(__file__).resolve().parents[2] / "native" / "bundle_builder"
CANN_DEFAULTS = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")
_GE_HEADER = Path("include/ge/ge_ir_build.h")
BUILD_TIMEOUT = 1800.0  # compiling the tool; a GE model build has no limit unless the caller gives one


class DeviceBuildUnavailable(RuntimeError):
    """The native builder cannot run here; the message says what is missing."""


class DeviceBuildError(RuntimeError):
    """The native builder ran and failed; the message is its own (the GE call, status and GE's message)."""


def find_cann(environ: Mapping[str, str] | None = None) -> Path:
    """The CANN toolkit folder: ``ASCEND_HOME_PATH``, ``ASCEND_TOOLKIT_HOME`` or a default install folder.

    The variables are what CANN's ``set_env.sh`` exports and what the CANN samples read; the folder
    must hold ``include/ge/ge_ir_build.h``.  Raises :class:`DeviceBuildUnavailable`.
    """
    env = os.environ if environ is None else environ
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        value = env.get(var, "").strip()
        if value:
            if not (Path(value) / _GE_HEADER).is_file():
                raise DeviceBuildUnavailable(
                    f"{var}={value} has no {_GE_HEADER}: it is not a CANN toolkit with the GE graph API")
            return Path(value)
    for d in CANN_DEFAULTS:
        if (Path(d) / _GE_HEADER).is_file():
            return Path(d)
    raise DeviceBuildUnavailable(
        "--target ascend needs the CANN toolkit, which is not installed here: set ASCEND_HOME_PATH "
        f"(source <CANN>/set_env.sh), or install it at {' or '.join(CANN_DEFAULTS)}")


def _cache_root(environ: Mapping[str, str]) -> Path:
    if environ.get("ACL_BUNDLE_CACHE"):
        return Path(environ["ACL_BUNDLE_CACHE"])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "acl_bundle"


def _source_digest(source: Path, cann: Path) -> str:
    h = hashlib.sha256(str(cann.resolve()).encode())
    for p in sorted(source.rglob("*")):
        if p.is_file() and p.suffix in (".cpp", ".h", ".txt"):
            h.update(p.relative_to(source).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def native_tool(environ: Mapping[str, str] | None = None, source: Path = SOURCE_DIR) -> Path:
    """Path of the built tool, configuring and compiling it with CMake on first use.

    Raises :class:`DeviceBuildUnavailable` (no CANN, CMake, compiler or sources) or
    :class:`DeviceBuildError` (CMake failed; the message ends with CMake's last error lines).
    """
    env = dict(os.environ if environ is None else environ)
    given = env.get("ACL_BUNDLE_NATIVE_TOOL", "").strip()
    if given:
        if not (Path(given).is_file() and os.access(given, os.X_OK)):
            raise DeviceBuildUnavailable(f"ACL_BUNDLE_NATIVE_TOOL={given} is not an executable file")
        return Path(given)
    cann = find_cann(env)
    if not (source / "CMakeLists.txt").is_file():
        raise DeviceBuildUnavailable(f"the native builder's sources are not at {source}: install acl_bundle from a "
                                     "checkout (pip install -e .) so native/bundle_builder is beside the package")
    cmake = shutil.which("cmake", path=env.get("PATH"))
    if cmake is None:
        raise DeviceBuildUnavailable(
            "--target ascend builds its native tool with CMake, which is not on PATH (install cmake >= 3.16)")
    if not any(shutil.which(c, path=env.get("PATH")) for c in (env.get("CXX", ""), "c++", "g++", "clang++") if c):
        raise DeviceBuildUnavailable(
            "--target ascend compiles its native tool with a C++17 compiler, and none is on PATH (install g++)")
    build = _cache_root(env) / f"bundle_builder-{_source_digest(source, cann)}"
    tool = build / TOOL_NAME
    if tool.is_file():
        return tool
    build.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only, as CANN is

    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same tool: wait for it
        if tool.is_file():
            return tool
        log.warning("building the native bundle builder against %s into %s (first use)", cann, build)
        configure = [cmake, "-S", str(source), "-B", str(build), f"-DASCEND_HOME={cann}", "-DCMAKE_BUILD_TYPE=Release"]
        for step in (configure,
                     [cmake, "--build", str(build), "--parallel", "2"]):
            r = subprocess.run(step, check=False, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT)
            if r.returncode != 0:
                tail = " ".join(line.strip() for line in (r.stderr or r.stdout).splitlines() if line.strip())[-600:]
                raise DeviceBuildError(f"building the native bundle builder failed ({Path(step[0]).name} exited "
                                       f"{r.returncode}; build folder {build}): {tail}")
    if not tool.is_file():
        raise DeviceBuildError(f"CMake finished but {tool} is missing")
    return tool


def _gears(gears: Sequence[Sequence[int]]) -> str:
    return ";".join(",".join(str(int(v)) for v in g) for g in gears)


def build_device_bundle(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    soc_version: str,
    variables: Sequence[str] | None = None,
    init: bool = True,
    precision_mode: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    input_names: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    input_format: str | None = None,
    batch_sizes: Sequence[int] | None = None,
    dynamic_image_size: Sequence[Sequence[int]] | None = None,
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[Path, Path, str]:
    """Build a device bundle from an ONNX file or a TF frozen GraphDef (``.pb``); return (om, manifest, tool output).

    The options mean what they mean for :func:`acl_bundle.sim.builder.build_bundle` and
    :func:`acl_bundle.sim.tf_builder.build_bundle_from_tf`: ``variables`` in the model's names
    (default: every float initializer / every frozen TF variable, in file order), ``input_shapes``
    {node: shape} (ATC ``--input_shape``; TF node names without ``:0``), ``input_names`` the TF data
    inputs' order, ``outputs`` TF output tensors (``y:0``), one dynamic-shape kind.  ``precision_mode``
    None builds with GE's default (force_fp16).  The manifest is validated before returning.
    """
    check_mode(precision_mode)
    if not soc_version or not str(soc_version).strip():
        raise ValueError("--target ascend needs --soc-version (the chip, e.g. Ascend310P3; `npu-smi info` shows it)")
    model, out = Path(model), Path(output)
    if out.suffix.lower() != ".om":
        raise ValueError(f"a device bundle's path must end with .om, got {out}")
    tool = native_tool(environ)
    argv = [str(tool), "--model", str(model), "--output", str(out), "--soc-version", str(soc_version).strip(),
            "--framework", "tensorflow" if model.suffix.lower() == ".pb" else "onnx"]
    if variables is not None:
        argv += ["--variables", ",".join(variables)]
    if not init:
        argv.append("--no-init")
    opts = {
        "--precision-mode": precision_mode,
        "--input-shape": ";".join(f"{n}:{','.join(str(int(d)) for d in s)}" for n, s in input_shapes.items())
        if input_shapes else None,
        "--input-data-names": ";".join(input_names) if input_names else None,
        "--out-nodes": ";".join(outputs) if outputs else None,
        "--input-format": input_format,
        "--dynamic-batch-size": ",".join(str(int(b)) for b in batch_sizes) if batch_sizes else None,
        "--dynamic-image-size": _gears(dynamic_image_size) if dynamic_image_size else None,
        "--dynamic-dims": _gears(dynamic_dims) if dynamic_dims else None,
    }
    for flag, value in opts.items():
        if value:
            argv += [flag, value]
    log.debug("running %s", " ".join(argv))
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ if environ is None else environ))
    if r.returncode != 0:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        msg = next((line for line in lines if "error:" in line), lines[-1] if lines else f"exit code {r.returncode}")
        raise DeviceBuildError(msg.split("error: ", 1)[-1])
    man = manifest_path(out)
    if not out.is_file():
        raise DeviceBuildError(f"the native builder reported success but wrote no {out}")
    load_manifest(man)  # the tool's manifest must be what the wrapper reads
    return out, man, r.stdout
