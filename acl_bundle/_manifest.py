"""Bundle manifests: the variable shapes that real bundles do not report.

Update-graph inputs have unknown rank on real hardware (pyACL documentation), so the only
way to know a variable's shape is a JSON manifest beside the bundle
(``bundle.om`` -> ``bundle.manifest.json``).  The simulator's builder writes one; for a
bundle built by GE, write it by hand.  Readers need only::

    {"format": "acl-bundle-manifest", "version": 1,
     "variables": [{"name": "fc0.weight", "dtype": "float32", "shape": [8, 16]}, ...]}

with ``variables`` in update-graph input order; every other key is kept as written
(the builder's full schema is in :mod:`acl_bundle.sim.builder`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np

from ._constants import NUMPY_TO_ACL

MANIFEST_FORMAT = "acl-bundle-manifest"
MANIFEST_VERSION = 1
ManifestArg = Union[None, bool, str, "os.PathLike[str]", Mapping]
_DTYPES = frozenset(d.name for d in NUMPY_TO_ACL)


class ManifestVariable(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def manifest_path(om_path: str | os.PathLike[str]) -> Path:
    """Return the manifest path for a model file: ``dir/bundle.om`` -> ``dir/bundle.manifest.json``."""
    return Path(om_path).with_suffix(".manifest.json")


def load_manifest(source: Mapping | str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a manifest: a mapping, its own path, or the ``.om`` path beside it.

    Checks ``format``, ``version`` and ``variables[].name/dtype/shape``; raises
    ValueError naming the file and the problem, FileNotFoundError if it is missing.
    """
    if isinstance(source, Mapping):
        p: Any = "<mapping>"
        m: Any = dict(source)
    else:
        p = Path(source)
        if p.suffix.lower() == ".om":  # the bundle's path: its manifest beside it; any other path is read as given
            p = manifest_path(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no manifest at {p} (write one for a bundle built outside acl_bundle; see acl_bundle.sim.builder)"
            ) from None
        except UnicodeDecodeError as e:
            raise _bad(p, f"not UTF-8 ({e})") from None
        except OSError as e:
            raise _bad(p, f"cannot be read ({e.strerror or e})") from None
        try:
            m = json.loads(text)
        except json.JSONDecodeError as e:
            raise _bad(p, f"not JSON ({e})") from None
    if not isinstance(m, dict):
        raise _bad(p, "top level must be a JSON object")
    if m.get("format") != MANIFEST_FORMAT:
        raise _bad(p, f'"format" must be {MANIFEST_FORMAT!r}, got {m.get("format")!r}')
    version = m.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MANIFEST_VERSION:
        raise _bad(p, f'"version" must be an integer from 1 to {MANIFEST_VERSION}, got {version!r}')
    variables = m.get("variables")
    if not isinstance(variables, list) or not variables:
        raise _bad(p, '"variables" must be a non-empty list')
    seen: set[str] = set()
    for i, v in enumerate(variables):
        where = f"variables[{i}]"
        if not isinstance(v, dict):
            raise _bad(p, f"{where} must be an object")
        name, dtype, shape = v.get("name"), v.get("dtype"), v.get("shape")
        if not isinstance(name, str) or not name:
            raise _bad(p, f'{where}."name" must be a non-empty string')
        if name in seen:
            raise _bad(p, f"variable {name!r} appears twice")
        seen.add(name)
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _bad(p, f'{where}."dtype" must be one of {sorted(_DTYPES)}, got {dtype!r}')
        if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise _bad(p, f'{where}."shape" must be a list of non-negative ints, got {shape!r}')
    return m


def read_manifest(source: Mapping | str | os.PathLike[str]) -> list[ManifestVariable]:
    """Return the variables of a manifest (see :func:`load_manifest`), in update-input order."""
    return [
        ManifestVariable(v["name"], np.dtype(v["dtype"]), tuple(v["shape"])) for v in load_manifest(source)["variables"]
    ]


def _bad(path: Any, msg: str) -> ValueError:
    return ValueError(f"bad manifest {path}: {msg}")
