"""Read a bundle manifest: the variable shapes that real bundles do not report.

Update-graph inputs have unknown rank on real hardware (reference §5.3), so the
only way to know a variable's shape is a manifest written beside the bundle
(``bundle.om`` -> ``bundle.manifest.json``).  The simulator's builder writes one;
for a real bundle a user can write it by hand.  Readers need only::

    {"variables": [{"name": "fc1.weight", "dtype": "float32", "shape": [8, 16]}, ...]}

in update-graph input order.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np

ManifestArg = Union[None, bool, str, "os.PathLike[str]", Mapping]


class ManifestVariable(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def manifest_path(om_path: str | os.PathLike[str]) -> Path:
    """Return where the manifest of ``om_path`` lives: same folder, ``.manifest.json`` suffix."""
    return Path(om_path).with_suffix(".manifest.json")


def read_manifest(source: Mapping | str | os.PathLike[str]) -> list[ManifestVariable]:
    """Parse a manifest (a mapping or a JSON file) into its variables; ValueError if malformed."""
    if isinstance(source, Mapping):
        data: Any = source
        where = "manifest"
    else:
        where = f"manifest {os.fspath(source)!r}"
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("variables"), list):
        raise ValueError(f"{where} must be a JSON object with a 'variables' list")
    out = []
    for i, v in enumerate(data["variables"]):
        try:
            name = v["name"]
            dtype = np.dtype(v["dtype"])
            shape = tuple(int(d) for d in v["shape"])
            if not isinstance(name, str) or any(d < 0 for d in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{where}: variables[{i}] must have a string 'name', a numpy 'dtype' and a non-negative 'shape' list"
            ) from None
        out.append(ManifestVariable(name, dtype, shape))
    return out
