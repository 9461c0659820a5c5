"""Weight files received over the network: parse them safely into one ``{name: array}`` update.

Formats: ``.npz`` and ``.safetensors``, parsed by the project's one bounded reader
(:mod:`acl_bundle._archive`, the checkpoints' reader): headers first, every declared
size checked against the bytes received before any data is touched, inflated bytes
bounded by ``max_bytes`` for all members before the first is inflated, arrays as views
of the received body, no pickle.  Several files form one update: a name given twice is
refused.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._archive import CheckpointError, LimitError, read_buffer, sniff_kind
from .protocol import ServeError

__all__ = ["parse_weight_file", "merge_weight_files", "SUFFIXES"]

SUFFIXES = (".npz", ".safetensors")


def parse_weight_file(name: str, data: bytes, *, max_bytes: int) -> dict[str, np.ndarray]:
    """Parse one weight file; ``name`` picks the format by suffix (or '' to sniff it)."""
    lower = name.lower()
    suffix = next((s for s in SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        if name:
            raise ServeError(400, f"file {name!r}: unsupported weight file type; expected one of {list(SUFFIXES)}")
        suffix = sniff_kind(data)
        if suffix is None:
            raise ServeError(400, "the body is neither an .npz (zip) nor a .safetensors file")
    what = f"file {name!r}" if name else "the body"
    try:
        arrays = read_buffer(data, suffix, what, limit=max_bytes)
    except LimitError as e:
        raise ServeError(413, str(e)) from None
    except CheckpointError as e:
        raise ServeError(400, str(e)) from None
    # a big-endian .npz (written on such a machine) is taken as the same values in native order
    return {k: a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder == ">" else a for k, a in arrays.items()}


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
