"""Checkpoint files as weight sources for :meth:`BundleModel.update`, and the trainer-side writer.

Reading::

    weights = load_checkpoint("step-00000012.npz", model, strip_prefix="module.")
    model.update(weights)

``.npz`` files are read with ``allow_pickle=False`` (object arrays are refused);
``.safetensors`` files need the optional extra ``acl-bundle[safetensors]``; TensorFlow
checkpoints (a prefix with ``.index`` + ``.data-*`` files) are read by TensorFlow's own
reader through :mod:`acl_bundle.tf_checkpoint` (``acl-bundle[tf]``), with TF's naming.
Checkpoint names map to the bundle's variable names exactly by default; pass
``strip_prefix`` (e.g. PyTorch's ``"module."``) and/or ``rename`` (a mapping or a
callable, applied after the prefix strip) for other naming schemes.

Checkpoint protocol (what :func:`write_checkpoint` does and what
:class:`~acl_bundle.watcher.CheckpointWatcher` relies on):

1. The data file (``step-00000012.npz``) is written under a hidden temporary name
   (``.step-00000012.npz.<random>.tmp``) in the same directory, flushed and fsynced,
   then atomically renamed to its final name (``os.replace``).
2. A small JSON marker (``step-00000012.ckpt.json``) is written the same way::

       {"format": "acl_bundle.checkpoint", "version": 1, "step": 12,
        "file": "step-00000012.npz", "bytes": 1234, "sha256": "<hex>",
        "variables": ["W1", "b1"], "created": 1700000000.0}

3. The directory is fsynced (POSIX) so both renames survive a crash.

The marker is the commit point: readers only look at ``*.ckpt.json`` markers, so a
data file without one (still being written, or orphaned by a crash) is invisible,
and the SHA-256 catches a data file that was changed or truncated after commit.
A trainer in another language follows the same three steps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._files import write_atomic

log = logging.getLogger("acl_bundle")

__all__ = [
    "CHECKPOINT_FORMAT",
    "MARKER_SUFFIX",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "NameMatch",
    "list_checkpoints",
    "load_checkpoint",
    "match_names",
    "read_checkpoint",
    "read_marker",
    "verify_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "acl_bundle.checkpoint"
CHECKPOINT_VERSION = 1
MARKER_SUFFIX = ".ckpt.json"
SUFFIXES = (".npz", ".safetensors")

Rename = Union[Mapping[str, str], Callable[[str], "str | None"], None]


class CheckpointError(ValueError):
    """A checkpoint file or marker cannot be read, is corrupt, or does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's names do not cover the model's variables (or name unknown ones).

    ``unmatched``: checkpoint names (after renaming) that match no variable;
    ``missing``: variable names the checkpoint lacks.
    """

    def __init__(self, message: str, unmatched: list[str], missing: list[str]) -> None:
        super().__init__(message)
        self.unmatched = unmatched
        self.missing = missing


@dataclass(frozen=True)
class NameMatch:
    """How checkpoint names map onto variables.

    ``mapping``: checkpoint name -> variable name for every matched entry;
    ``unmatched``: checkpoint names (as in the file) that match no variable, with what
    they were renamed to; ``missing``: variables the checkpoint lacks.
    """

    mapping: dict[str, str]
    unmatched: list[tuple[str, str]]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.unmatched and not self.missing


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint as its marker describes it."""

    step: int
    path: Path  # the data file
    marker: Path
    sha256: str
    nbytes: int
    variables: tuple[str, ...]
    created: float


# --------------------------------------------------------------------------- reading
def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Return every array of a ``.npz`` or ``.safetensors`` file by its name in the file.

    Raises FileNotFoundError for a missing file, CheckpointError for an unreadable,
    corrupt or pickled one (naming the file and the problem), ImportError when
    safetensors is needed but not installed.
    """
    p = Path(path)
    prefix = _tf_prefix(p)
    if prefix is not None:
        from .tf_checkpoint import read_tf_checkpoint

        return read_tf_checkpoint(prefix)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _read_npz(p)
    if suffix == ".safetensors":
        return _read_safetensors(p)
    raise CheckpointError(f"checkpoint {str(p)!r} has suffix {p.suffix!r}; expected one of {list(SUFFIXES)}")


def _tf_prefix(p: Path) -> Path | None:
    """The TF checkpoint ``p`` names (prefix, .index, .data-*, or a directory with TF's state file), else None."""
    from .tf_checkpoint import tf_prefix  # no TensorFlow import for other formats

    return tf_prefix(p)


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read: {e.strerror or e}") from None
    if magic[:2] != b"PK":  # numpy would otherwise try to unpickle it
        raise CheckpointError(f"checkpoint {str(p)!r} is not a valid .npz file: no zip signature")
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CheckpointError(f"checkpoint {str(p)!r} is a single .npy array, not an .npz archive")
        with z:
            return {name: z[name] for name in z.files}
    except CheckpointError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CheckpointError(f"checkpoint {str(p)!r} holds object (pickled) arrays; only plain numeric arrays are read") from None
        raise CheckpointError(f"checkpoint {str(p)!r} is not a valid .npz file: {e}") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is not a valid .npz file: {e or type(e).__name__}") from None


def _safetensors_numpy() -> Any:
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        raise ImportError(
            "reading/writing .safetensors checkpoints needs the safetensors package: pip install 'acl-bundle[safetensors]'"
        ) from None
    return st_numpy


def _read_safetensors(p: Path) -> dict[str, np.ndarray]:
    st = _safetensors_numpy()
    try:
        return dict(st.load_file(str(p)))
    except Exception as e:  # safetensors raises its own SafetensorError (and others) on bad files
        raise CheckpointError(f"checkpoint {str(p)!r} is not a valid .safetensors file: {e}") from None


# --------------------------------------------------------------------------- name mapping
def _variable_specs(variables: Any) -> dict[str, tuple[tuple[int, ...] | None, np.dtype | None]]:
    """Normalise a model, Variable list or name list to {name: (shape, dtype)}."""
    if hasattr(variables, "variables") and not isinstance(variables, (str, bytes)):
        variables = variables.variables
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Iterable):
        raise TypeError(
            f"variables must be a BundleModel, a list of Variable or a list of names, got {type(variables).__name__}"
        )
    specs: dict[str, tuple[tuple[int, ...] | None, np.dtype | None]] = {}
    for v in variables:
        if isinstance(v, str):
            specs[v] = (None, None)
        elif hasattr(v, "name"):
            shape = getattr(v, "shape", None)
            dtype = getattr(v, "dtype", None)
            specs[v.name] = (tuple(shape) if shape is not None else None, np.dtype(dtype) if dtype is not None else None)
        else:
            raise TypeError(f"variables must hold names or Variable objects, got {type(v).__name__}")
    return specs


def _renamer(rename: Rename, strip_prefix: str | None) -> Callable[[str], "str | None"]:
    if strip_prefix is not None and not isinstance(strip_prefix, str):
        raise TypeError(f"strip_prefix must be a str, got {type(strip_prefix).__name__}")
    if rename is None:
        fn: Callable[[str], str | None] = lambda n: n  # noqa: E731
    elif isinstance(rename, Mapping):
        table = dict(rename)
        fn = lambda n: table.get(n, n)  # noqa: E731
    elif callable(rename):
        fn = rename
    else:
        raise TypeError(f"rename must be a mapping, a callable or None, got {type(rename).__name__}")

    def apply(name: str) -> str | None:
        if strip_prefix and name.startswith(strip_prefix):
            name = name[len(strip_prefix):]
        new = fn(name)
        if new is not None and not isinstance(new, str):
            raise TypeError(f"rename returned {type(new).__name__} for {name!r}; expected a str or None (drop)")
        return new

    return apply


def match_names(
    names: Iterable[str],
    variables: Any,
    *,
    rename: Rename = None,
    strip_prefix: str | None = None,
) -> NameMatch:
    """Map checkpoint ``names`` onto ``variables`` (a model, Variables or names).

    ``strip_prefix`` is removed first from names that start with it; ``rename`` then
    maps the result (a mapping: names it lacks stay as they are; a callable: may return
    None to drop the entry on purpose).  Raises CheckpointError if two checkpoint
    names land on one variable.
    """
    specs = _variable_specs(variables)
    apply = _renamer(rename, strip_prefix)
    mapping: dict[str, str] = {}
    unmatched: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for name in names:
        new = apply(name)
        if new is None:
            continue
        if new not in specs:
            unmatched.append((name, new))
            continue
        if new in taken:
            raise CheckpointError(f"checkpoint names {taken[new]!r} and {name!r} both map to variable {new!r}")
        taken[new] = name
        mapping[name] = new
    missing = [v for v in specs if v not in taken]
    return NameMatch(mapping, unmatched, missing)


def _describe(match: NameMatch, total: int) -> str:
    parts = []
    if match.unmatched:
        shown = [n if n == r else f"{n} (as {r})" for n, r in match.unmatched]
        parts.append(f"{len(shown)} checkpoint name(s) match no variable: {shown}")
    if match.missing:
        parts.append(f"{len(match.missing)} of {total} variable(s) missing from the checkpoint: {match.missing}")
    return "; ".join(parts)


def select_weights(
    arrays: Mapping[str, np.ndarray],
    variables: Any,
    *,
    rename: Rename = None,
    strip_prefix: str | None = None,
    allow_partial: bool = False,
    allow_unmatched: bool = False,
    source: str = "checkpoint",
) -> dict[str, np.ndarray]:
    """Return ``{variable name: array}`` from checkpoint ``arrays`` (see :func:`load_checkpoint`)."""
    specs = _variable_specs(variables)
    match = match_names(arrays, specs, rename=rename, strip_prefix=strip_prefix)
    if not match.mapping:
        raise CheckpointMismatchError(
            f"{source}: no name matches a variable ({_describe(match, len(specs))}); the variables are {list(specs)} "
            "(use rename= or strip_prefix= for another naming scheme)",
            [n for n, _ in match.unmatched], match.missing,
        )
    bad = (match.missing and not allow_partial) or (match.unmatched and not allow_unmatched)
    if bad:
        hints = []
        if match.missing and not allow_partial:
            hints.append("allow_partial=True to update only the variables present")
        if match.unmatched and not allow_unmatched:
            hints.append("allow_unmatched=True to ignore extra names, or rename=/strip_prefix=")
        raise CheckpointMismatchError(
            f"{source}: {_describe(match, len(specs))} (pass {' or '.join(hints)})",
            [n for n, _ in match.unmatched], match.missing,
        )
    if match.missing or match.unmatched:
        log.warning("%s: %s", source, _describe(match, len(specs)))
    out: dict[str, np.ndarray] = {}
    problems = []
    for ck_name, var_name in match.mapping.items():
        a = np.asarray(arrays[ck_name])
        shape, dtype = specs[var_name]
        what = var_name if ck_name == var_name else f"{var_name} (checkpoint name {ck_name!r})"
        if dtype is not None and a.dtype != dtype:
            problems.append(f"{what}: dtype {a.dtype}, expected {dtype}")
        elif shape is not None and a.shape != shape:
            problems.append(f"{what}: shape {a.shape}, expected {shape}")
        out[var_name] = a
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    return out


def load_checkpoint(
    path: str | os.PathLike[str],
    variables: Any,
    *,
    rename: Rename = None,
    strip_prefix: str | None = None,
    allow_partial: bool = False,
    allow_unmatched: bool = False,
) -> dict[str, np.ndarray]:
    """Read a checkpoint and return ``{variable name: array}`` ready for ``model.update``.

    ``variables``: a :class:`~acl_bundle.BundleModel`, its ``.variables`` or a list of
    names.  Names map exactly by default; see :func:`match_names` for ``rename`` and
    ``strip_prefix``.  Raises :class:`CheckpointMismatchError` listing the checkpoint
    names that match no variable and the variables the checkpoint lacks, unless
    ``allow_unmatched`` / ``allow_partial`` say those are fine (then a warning is
    logged), and :class:`CheckpointError` when a matched array has the wrong dtype or
    shape (when the variables carry them).  A TensorFlow checkpoint maps names by
    TF's default (:func:`acl_bundle.tf_checkpoint.load_tf_checkpoint`).
    """
    prefix = _tf_prefix(Path(path))
    if prefix is not None:
        from .tf_checkpoint import load_tf_checkpoint

        return load_tf_checkpoint(prefix, variables, rename=rename, strip_prefix=strip_prefix, allow_partial=allow_partial)
    arrays = read_checkpoint(path)
    return select_weights(arrays, variables, rename=rename, strip_prefix=strip_prefix,
                          allow_partial=allow_partial, allow_unmatched=allow_unmatched,
                          source=f"checkpoint {os.fspath(path)!r}")


# --------------------------------------------------------------------------- protocol: writer
_STEP_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_weights(weights: Any) -> dict[str, np.ndarray]:
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError(f"weights must be a non-empty mapping of name -> numpy array, got {type(weights).__name__}")
    out = {}
    problems = []
    for k, v in weights.items():
        if not isinstance(k, str) or not k:
            problems.append(f"name {k!r} is not a non-empty str")
            continue
        try:
            a = np.asarray(v)
        except (TypeError, ValueError) as e:  # ragged nested lists and the like
            problems.append(f"{k!r} is not array-like ({e})")
            continue
        if a.dtype.hasobject or a.dtype.kind not in "biufc":
            problems.append(f"{k!r} has dtype {a.dtype}, expected a numeric dtype")
            continue
        out[k] = np.ascontiguousarray(a)
    if problems:
        raise TypeError("cannot write checkpoint: " + "; ".join(problems))
    return out


def write_checkpoint(
    directory: str | os.PathLike[str],
    weights: Mapping[str, np.ndarray],
    step: int,
    *,
    format: str = "npz",
    prefix: str = "step",
    keep: int | None = None,
) -> CheckpointInfo:
    """Commit ``weights`` as checkpoint ``step`` in ``directory`` (the protocol in the module docstring).

    Writes ``<prefix>-<step:08d>.<format>`` then its marker ``<prefix>-<step:08d>.ckpt.json``,
    each via temp file + fsync + atomic rename.  ``format`` is "npz" or "safetensors".
    ``keep``: afterwards delete all but the newest ``keep`` committed checkpoints
    (marker first, so a reader never sees a marker without its data).  Raises
    ValueError for a bad step/format/prefix or an already committed step.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    step = int(step)
    if format not in ("npz", "safetensors"):
        raise ValueError(f"format must be 'npz' or 'safetensors', got {format!r}")
    if not isinstance(prefix, str) or not _STEP_RE.match(prefix) or prefix.startswith("."):
        raise ValueError(f"prefix must be letters, digits, '_', '-', '.' and not start with '.', got {prefix!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be None or an int >= 1, got {keep!r}")
    arrays = _check_weights(weights)
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(d)!r} does not exist")
    base = f"{prefix}-{step:08d}"
    data_path = d / f"{base}.{format}"
    marker_path = d / f"{base}{MARKER_SUFFIX}"
    if marker_path.exists():
        raise ValueError(f"checkpoint step {step} is already committed in {str(d)!r} ({marker_path.name}); steps must be new")

    if format == "npz":
        write_atomic(data_path, lambda f: np.savez(f, **arrays))
    else:
        st = _safetensors_numpy()
        blob = st.save(arrays)
        write_atomic(data_path, lambda f: f.write(blob))
    digest, nbytes = _sha256(data_path)
    info = CheckpointInfo(step, data_path, marker_path, digest, nbytes, tuple(arrays), time.time())
    marker = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step, "file": data_path.name,
        "bytes": nbytes, "sha256": digest, "variables": list(arrays), "created": info.created,
    }
    text = (json.dumps(marker, indent=1) + "\n").encode()
    write_atomic(marker_path, lambda f: f.write(text))  # the commit point
    _fsync_dir(d)
    log.debug("committed checkpoint step %d: %s (%d bytes)", step, data_path.name, nbytes)
    if keep is not None:
        for old in list_checkpoints(d)[:-keep]:
            for p in (old.marker, old.path):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
    return info


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


# --------------------------------------------------------------------------- protocol: reader
def read_marker(marker: str | os.PathLike[str]) -> CheckpointInfo:
    """Parse a ``*.ckpt.json`` marker; CheckpointError naming the file and the problem if malformed."""
    p = Path(marker)
    where = f"checkpoint marker {str(p)!r}"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: 'format' must be {CHECKPOINT_FORMAT!r}")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{where}: 'version' must be {CHECKPOINT_VERSION}, got {data.get('version')!r}")
    step, file, digest, nbytes, names = (data.get(k) for k in ("step", "file", "sha256", "bytes", "variables"))
    problems = []
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        problems.append(f"'step' must be a non-negative int, got {step!r}")
    if not isinstance(file, str) or not file or "/" in file or "\\" in file or file.startswith("."):
        problems.append(f"'file' must be a plain file name in the same directory, got {file!r}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        problems.append("'sha256' must be 64 lowercase hex digits")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        problems.append(f"'bytes' must be a non-negative int, got {nbytes!r}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("'variables' must be a list of names")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    created = data.get("created")
    return CheckpointInfo(step, p.parent / file, p, digest, nbytes, tuple(names),
                          float(created) if isinstance(created, (int, float)) else 0.0)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Return the committed checkpoints of ``directory`` with a valid marker, oldest step first.

    Malformed markers are skipped with a warning; data files without a marker are not listed.
    """
    out = []
    for m in Path(directory).glob(f"*{MARKER_SUFFIX}"):
        if m.name.startswith("."):
            continue
        try:
            out.append(read_marker(m))
        except FileNotFoundError:
            continue  # deleted meanwhile
        except CheckpointError as e:
            log.warning("%s", e)
    return sorted(out, key=lambda c: (c.step, c.marker.name))


def verify_checkpoint(info: CheckpointInfo) -> dict[str, np.ndarray]:
    """Read ``info``'s data file, check size, SHA-256 and names against the marker; return its arrays."""
    try:
        data = info.path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint step {info.step}: data file {str(info.path)!r} named by its marker is missing") from None
    if len(data) != info.nbytes:
        raise CheckpointError(
            f"checkpoint step {info.step}: {str(info.path)!r} has {len(data)} bytes, its marker says {info.nbytes} "
            "(truncated or still being written?)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise CheckpointError(f"checkpoint step {info.step}: {str(info.path)!r} fails its SHA-256 check (corrupt or changed after commit)")
    # Parse the bytes just verified, not the file again (it could change in between).
    import io

    if info.path.suffix.lower() == ".npz":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {n: z[n] for n in z.files}
        except Exception as e:
            raise CheckpointError(f"checkpoint step {info.step}: {str(info.path)!r} is not a valid .npz file: {e}") from None
    elif info.path.suffix.lower() == ".safetensors":
        st = _safetensors_numpy()
        try:
            arrays = dict(st.load(data))
        except Exception as e:
            raise CheckpointError(f"checkpoint step {info.step}: {str(info.path)!r} is not a valid .safetensors file: {e}") from None
    else:
        raise CheckpointError(f"checkpoint step {info.step}: data file {info.path.name!r} has suffix "
                              f"{info.path.suffix!r}; expected one of {list(SUFFIXES)}")
    if sorted(arrays) != sorted(info.variables):
        raise CheckpointError(f"checkpoint step {info.step}: {str(info.path)!r} holds {sorted(arrays)}, "
                              f"its marker lists {sorted(info.variables)}")
    return arrays
