"""Weight files received over the network: parse them safely into one ``{name: array}`` update.

Formats: ``.npz`` (numpy, read with ``allow_pickle=False`` after checking every member's
declared size against the bytes actually received, so a crafted header cannot make
the server allocate more than it was sent) and ``.safetensors`` (the ``safetensors`` extra;
the library checks every offset against the buffer).  Several files form one update:
a name given twice is refused.  Pickle is never read.
"""
from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .protocol import ServeError

__all__ = ["parse_weight_file", "merge_weight_files", "SUFFIXES"]

SUFFIXES = (".npz", ".safetensors")
_ZIP_MAGIC = b"PK\x03\x04"


def sniff_format(data: bytes) -> str:
    """'.npz' or '.safetensors' from the first bytes (for bodies sent without a file name)."""
    if data[:4] == _ZIP_MAGIC:
        return ".npz"
    if len(data) >= 9 and data[8:9] == b"{":
        return ".safetensors"
    raise ServeError(400, "the body is neither an .npz (zip) nor a .safetensors file")


def parse_weight_file(name: str, data: bytes, *, max_bytes: int) -> dict[str, np.ndarray]:
    """Parse one weight file; ``name`` picks the format by suffix (or '' to sniff it)."""
    lower = name.lower()
    suffix = next((s for s in SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        if name:
            raise ServeError(400, f"file {name!r}: unsupported weight file type; expected one of {list(SUFFIXES)}")
        suffix = sniff_format(data)
    what = f"file {name!r}" if name else "the body"
    if suffix == ".npz":
        return _read_npz(data, what, max_bytes)
    return _read_safetensors(data, what)


def _read_npz(data: bytes, what: str, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ServeError(400, f"{what} is not a valid .npz file: {e}") from None
    out: dict[str, np.ndarray] = {}
    total = 0
    with zf:
        for info in zf.infolist():
            total += info.file_size
            if total > max_bytes:
                raise ServeError(413, f"{what} unpacks to more than the limit of {max_bytes} bytes")
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise ServeError(400, f"{what}: member {info.filename!r} is not a .npy array")
            key = info.filename[:-4]
            try:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    if dtype.hasobject:
                        raise ServeError(400, f"{what}: array {key!r} holds Python objects (pickle); refused")
                    need = math.prod(shape) * dtype.itemsize
                    if need > info.file_size:
                        raise ServeError(400, f"{what}: array {key!r} declares {need} bytes but its member has "
                                              f"{info.file_size}")
                    raw = f.read(need + 1)
                    if len(raw) != need:
                        raise ServeError(400, f"{what}: array {key!r} has {len(raw)} data bytes, its header "
                                              f"says {need}")
            except ServeError:
                raise
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                raise ServeError(400, f"{what}: array {key!r} is not a valid .npy member: {e}") from None
            a = np.frombuffer(raw, dtype=dtype)
            a = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("="))
            out[key] = np.ascontiguousarray(a)
    return out


def _read_safetensors(data: bytes, what: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load
    except ImportError:
        raise ServeError(400, f"{what}: .safetensors needs the safetensors package on the server "
                              "(its 'safetensors' extra: pip install -e '.[safetensors]' in a checkout of acl_bundle)") from None
    try:
        return dict(load(data))
    except Exception as e:  # the Rust parser raises its own error type
        raise ServeError(400, f"{what} is not a valid .safetensors file: {e}") from None


def merge_weight_files(files: Mapping[str, bytes], *, max_bytes: int) -> dict[str, np.ndarray]:
    """Parse several files into one mapping; a variable named by two files is an error."""
    merged: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name, data in files.items():
        for key, arr in parse_weight_file(name, data, max_bytes=max_bytes).items():
            if key in merged:
                raise ServeError(400, f"variable {key!r} is in both {origin[key]!r} and {name!r}")
            merged[key] = arr
            origin[key] = name
    if not merged:
        raise ServeError(400, "the update holds no arrays")
    return merged


def update_error(e: Exception) -> ServeError:
    """The 400 for a weight mapping that BundleModel.update refused (its message names the problem)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return ServeError(400, f"update refused, nothing changed: {msg}")


def describe(weights: Mapping[str, Any]) -> tuple[list[str], int]:
    return list(weights), int(sum(np.asarray(v).nbytes for v in weights.values()))
