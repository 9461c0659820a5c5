"""Checkpoint files as weight sources for :meth:`BundleModel.update`, and the trainer-side writer.

Reading::

    weights = load_checkpoint("step-00000012.npz", model, strip_prefix="module.")
    model.update(weights)

``.npz`` files are read without pickle (object arrays are refused); ``.safetensors``
files are parsed here (writing them needs the optional extra ``safetensors``); TensorFlow
checkpoints (a prefix with ``.index`` + ``.data-*`` files) are read by TensorFlow's own
reader through :mod:`acl_bundle.tf_checkpoint` (the ``tf`` extra), with TF's naming.
Both are read header-first and bounded: an array's dtype, shape and declared size
are checked (against the model, when one is given, and against the file's own
sizes) before any data is read, arrays the model does not use are never inflated,
and stored arrays are views of one buffer (peak memory about one copy of the file).
Checkpoint names map to the bundle's variable names exactly by default; pass
``strip_prefix`` (e.g. PyTorch's ``"module."``) and/or ``rename`` (a mapping or a
callable, applied after the prefix strip) for other naming schemes.

Checkpoint protocol (what :func:`write_checkpoint` does and what
:class:`~acl_bundle.watcher.CheckpointWatcher` relies on):

1. The data file (``step-00000012.npz``; with a run id ``step-<run>-00000012.npz``) is
   written under a hidden temporary name (``.step-00000012.npz.<hex>.tmp``) in the same
   directory, flushed and fsynced, then atomically renamed to its final name
   (``os.replace``).
2. A small JSON marker (``step-00000012.ckpt.json``) is written the same way::

       {"format": "acl_bundle.checkpoint", "version": 1, "step": 12,
        "file": "step-00000012.npz", "bytes": 1234, "sha256": "<hex>",
        "variables": ["W1", "b1"], "created": 1700000000.0, "run": "r2"}

   ``step`` is an integer in ``0 .. 2**63-1``; ``run`` (optional, letters, digits,
   ``_.-``, at most 128) names the trainer's run: a new run id starts a new step
   sequence (a restarted trainer), ordered by ``created`` (the writer's clock, at most
   a day ahead of the reader's).
3. The directory is fsynced (POSIX) so both renames survive a crash.

The marker is the commit point: readers only look at ``*.ckpt.json`` markers, so a
data file without one (still being written, or orphaned by a crash) is invisible,
and the SHA-256 catches a data file that was changed or truncated after commit.
Readers open markers and data files only as regular files named directly in the
directory: symlinks are never followed, FIFOs and devices never opened, sizes
checked before reading (markers at most ``MAX_MARKER_BYTES``, JSON at most
``MAX_JSON_DEPTH`` deep with integers of at most 20 digits).
A trainer in another language follows the same three steps.

In an object store (an fsspec URL such as ``s3://bucket/ckpts``) there is no rename:
the data object is PUT under a final name with a random tag
(``step-00000012.<8 hex>.npz``), then the marker with a create-only conditional
write (``If-None-Match: *``), so each step commits once; readers verify size and
SHA-256 the same way (see :mod:`acl_bundle._checkpoint.storage`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import stat
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._archive import Archive, CheckpointError, load_json
from ._files import TEMP_SUFFIX
from ._checkpoint.storage import LocalStore, Store, is_url, open_store

log = logging.getLogger("acl_bundle")

__all__ = [
    "CHECKPOINT_FORMAT",
    "MARKER_SUFFIX",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "NameMatch",
    "clean_checkpoints",
    "list_checkpoints",
    "load_checkpoint",
    "match_names",
    "read_checkpoint",
    "read_marker",
    "select_weights",
    "verify_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "acl_bundle.checkpoint"
CHECKPOINT_VERSION = 1
MARKER_SUFFIX = ".ckpt.json"
SUFFIXES = (".npz", ".safetensors")
MAX_STEP = 2**63 - 1  # fits every trainer's int64
MAX_MARKER_BYTES = 4 << 20
MAX_NAME_CHARS = 1024
MAX_FUTURE_SECONDS = 86400.0  # a marker's "created" may be this far ahead of the reader's clock
DEFAULT_MAX_BYTES = 4 << 30  # data file / decoded bytes when no model bounds them
DEBRIS_GRACE_SECONDS = 3600.0  # crash debris younger than this may belong to a live writer
_RUN_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_TEMP_RE = re.compile(r"^\.(?P<final>.+?(?:\.npz|\.safetensors|\.ckpt\.json))\.[A-Za-z0-9_]{6,32}" + re.escape(TEMP_SUFFIX) + "$")
_SHOWN = 10  # names listed in one message before "... and N more"

Rename = Union[Mapping[str, str], Callable[[str], "str | None"], None]


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
    """A committed checkpoint as its marker describes it (``run`` is "" when the marker has none)."""

    step: int
    path: Path  # the data file
    marker: Path
    sha256: str
    nbytes: int
    variables: tuple[str, ...]
    created: float
    run: str = ""


def _shown(names: list[str]) -> str:
    """A bounded rendering of a name list."""
    if len(names) <= _SHOWN:
        return repr(names)
    return f"{names[:_SHOWN]!r} and {len(names) - _SHOWN} more"


# --------------------------------------------------------------------------- reading
def _limit(max_bytes: int | None, default: int) -> int:
    if max_bytes is None:
        return default
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise TypeError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
    return max_bytes


def _open_archive(path: str | os.PathLike[str], limit: int, storage_options: Mapping[str, Any] | None = None) -> Archive:
    text = os.fspath(path)
    parent, _, name = text.rstrip("/").rpartition("/")
    if not is_url(text):
        if not os.path.lexists(text):
            raise FileNotFoundError(f"checkpoint {text!r} does not exist or is not a file")
        parent, name = str(Path(text).parent), Path(text).name
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"checkpoint {text!r} has suffix {Path(name).suffix!r}; expected one of {list(SUFFIXES)}")
    what = f"checkpoint {text!r}"
    try:
        buf, _ = open_store(parent, storage_options).read(name, what, limit=limit)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {text!r} does not exist or is not a file") from None
    return Archive(buf, suffix, what, limit=limit)


def read_checkpoint(path: str | os.PathLike[str], *, max_bytes: int | None = None,
                    storage_options: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Return every array of a ``.npz`` or ``.safetensors`` file (a path or an fsspec URL) by its name in the file.

    ``max_bytes`` bounds the file and every array decoded from it (default
    ``DEFAULT_MAX_BYTES``, 4 GiB).  Raises FileNotFoundError for a missing file,
    CheckpointError for anything else wrong (naming the file and the member).
    """
    prefix = None if is_url(path) else _tf_prefix(Path(path))
    if prefix is not None:
        from .tf_checkpoint import read_tf_checkpoint

        return read_tf_checkpoint(prefix)
    return _open_archive(path, _limit(max_bytes, DEFAULT_MAX_BYTES), storage_options).arrays()


def _tf_prefix(p: Path) -> Path | None:
    """The TF checkpoint ``p`` names (prefix, .index, .data-*, or a directory with TF's state file), else None."""
    from .tf_checkpoint import tf_prefix  # no TensorFlow import for other formats

    return tf_prefix(p)


# --------------------------------------------------------------------------- name mapping
Spec = tuple["tuple[int, ...] | None", "np.dtype | None"]


class _Specs(dict):  # type: ignore[type-arg]
    """{name: (shape, dtype)}, already normalised."""


def _variable_specs(variables: Any) -> _Specs:
    """Normalise a model, Variable list or name list to {name: (shape, dtype)}."""
    if isinstance(variables, _Specs):
        return variables
    if hasattr(variables, "variables") and not isinstance(variables, (str, bytes)):
        variables = variables.variables
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Iterable):
        raise TypeError(
            f"variables must be a BundleModel, a list of Variable or a list of names, got {type(variables).__name__}"
        )
    specs = _Specs()
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


def limit_for(variables: Any) -> int:
    """The default size bound for a checkpoint of ``variables``: twice their bytes + 64 MiB.

    (Room for headers, names and some extra entries; ``DEFAULT_MAX_BYTES`` when a
    variable's size is unknown.)
    """
    total = 0
    for shape, dtype in _variable_specs(variables).values():
        if shape is None or dtype is None:
            return DEFAULT_MAX_BYTES
        total += math.prod(shape) * dtype.itemsize
    return 2 * total + (64 << 20)


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


def _prefix_hint(unmatched: list[tuple[str, str]], specs: Mapping[str, Any]) -> str:
    """``strip_prefix='module.'`` when stripping one leading component makes the names match."""
    for _, renamed in unmatched[:1]:
        if "." in renamed:
            prefix = renamed[: renamed.index(".") + 1]
            hits = sum(1 for _, r in unmatched if r.startswith(prefix) and r[len(prefix):] in specs)
            if hits and hits >= len(unmatched) // 2:
                return f"strip_prefix={prefix!r}"
    return ""


def _describe(match: NameMatch, total: int) -> str:
    parts = []
    if match.unmatched:
        shown = [n if n == r else f"{n} (as {r})" for n, r in match.unmatched]
        parts.append(f"{len(shown)} checkpoint name(s) match no variable: {_shown(shown)}")
    if match.missing:
        parts.append(f"{len(match.missing)} of {total} variable(s) missing from the checkpoint: {_shown(match.missing)}")
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
    """Return ``{variable name: array}`` from checkpoint ``arrays`` (see :func:`load_checkpoint`).

    With an archive from :func:`verify_checkpoint` (``lazy=True``) the dtypes and
    shapes are checked from the headers and only the matched arrays are read.
    """
    specs = _variable_specs(variables)
    match = match_names(arrays, specs, rename=rename, strip_prefix=strip_prefix)
    hint = _prefix_hint(match.unmatched, specs)
    if not match.mapping:
        raise CheckpointMismatchError(
            f"{source}: no name matches a variable ({_describe(match, len(specs))}); the variables are {_shown(list(specs))} "
            f"(use {hint or 'rename= or strip_prefix='} for another naming scheme)",
            [n for n, _ in match.unmatched], match.missing,
        )
    bad = (match.missing and not allow_partial) or (match.unmatched and not allow_unmatched)
    if bad:
        hints = []
        if match.missing and not allow_partial:
            hints.append("allow_partial=True to update only the variables present")
        if match.unmatched and not allow_unmatched:
            hints.append(hint or "allow_unmatched=True to ignore extra names, or rename=/strip_prefix=")
        raise CheckpointMismatchError(
            f"{source}: {_describe(match, len(specs))} (pass {' or '.join(hints)})",
            [n for n, _ in match.unmatched], match.missing,
        )
    if match.missing or match.unmatched:
        log.warning("%s: %s", source, _describe(match, len(specs)))
    problems = []
    lazy = isinstance(arrays, Archive)
    for ck_name, var_name in match.mapping.items():
        if lazy:
            member = arrays.members[ck_name]  # type: ignore[attr-defined]
            got_shape, got_dtype = member.shape, member.dtype
        else:
            a = np.asarray(arrays[ck_name])
            got_shape, got_dtype = a.shape, a.dtype
        shape, dtype = specs[var_name]
        what = var_name if ck_name == var_name else f"{var_name} (checkpoint name {ck_name!r})"
        if dtype is not None and got_dtype != dtype:
            problems.append(f"{what}: dtype {got_dtype}, expected {dtype}")
        elif shape is not None and got_shape != shape:
            problems.append(f"{what}: shape {got_shape}, expected {shape}")
    if problems:
        more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems[:_SHOWN]) + more)
    return {var_name: np.asarray(arrays[ck_name]) for ck_name, var_name in match.mapping.items()}


def load_checkpoint(
    path: str | os.PathLike[str],
    variables: Any,
    *,
    rename: Rename = None,
    strip_prefix: str | None = None,
    allow_partial: bool = False,
    allow_unmatched: bool = False,
    max_bytes: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Read a checkpoint and return ``{variable name: array}`` ready for ``model.update``.

    ``path``: a local file or an fsspec URL (``s3://bucket/ckpts/step-00000012.npz``,
    with ``storage_options`` for the filesystem, e.g. ``{"endpoint_url": ...}``).

    ``variables``: a :class:`~acl_bundle.BundleModel`, its ``.variables`` or a list of
    names.  Names map exactly by default; see :func:`match_names` for ``rename`` and
    ``strip_prefix``.  Raises :class:`CheckpointMismatchError` listing the checkpoint
    names that match no variable and the variables the checkpoint lacks, unless
    ``allow_unmatched`` / ``allow_partial`` say those are fine (then a warning is
    logged), and :class:`CheckpointError` when a matched array has the wrong dtype or
    shape (when the variables carry them; checked before its data is read).
    ``max_bytes`` bounds the file (default: :func:`limit_for` the variables).  A
    TensorFlow checkpoint maps names by TF's default
    (:func:`acl_bundle.tf_checkpoint.load_tf_checkpoint`).
    """
    prefix = None if is_url(path) else _tf_prefix(Path(path))
    if prefix is not None:
        from .tf_checkpoint import load_tf_checkpoint

        return load_tf_checkpoint(prefix, variables, rename=rename, strip_prefix=strip_prefix, allow_partial=allow_partial)
    specs = _variable_specs(variables)
    archive = _open_archive(path, _limit(max_bytes, limit_for(specs)), storage_options)
    return select_weights(archive, specs, rename=rename, strip_prefix=strip_prefix,
                          allow_partial=allow_partial, allow_unmatched=allow_unmatched,
                          source=f"checkpoint {os.fspath(path)!r}")


# --------------------------------------------------------------------------- protocol: writer
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
        if not isinstance(k, str) or not k or "\0" in k or len(k) > MAX_NAME_CHARS:
            problems.append(f"name {k!r:.80} is not a non-empty str of at most {MAX_NAME_CHARS} characters without NUL")
            continue
        try:
            a = np.asarray(v)
        except (TypeError, ValueError) as e:  # ragged nested lists and the like
            problems.append(f"{k!r} is not array-like ({e})")
            continue
        if a.dtype.hasobject or a.dtype.kind not in "biufc":
            problems.append(f"{k!r} has dtype {a.dtype}, expected a numeric dtype")
            continue
        out[k] = a
    if problems:
        raise TypeError("cannot write checkpoint: " + "; ".join(problems[:_SHOWN]))
    return out


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """What ``numpy.savez`` writes, without its keyword arguments (names like 'file' or 'allow_pickle' are fine)."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def _write_error(e: OSError, step: int, name: str, where: str) -> OSError:
    return type(e)(e.errno, f"cannot write checkpoint step {step}: {name} in {where!r}: {e.strerror or e}")


def write_checkpoint(
    directory: str | os.PathLike[str],
    weights: Mapping[str, np.ndarray],
    step: int,
    *,
    format: str = "npz",
    prefix: str = "step",
    keep: int | None = None,
    run: str | None = None,
    grace: float = DEBRIS_GRACE_SECONDS,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Commit ``weights`` as checkpoint ``step`` in ``directory`` (the protocol in the module docstring).

    ``directory`` may be an fsspec URL (``s3://bucket/ckpts``; ``storage_options``
    configure the filesystem): the data object is PUT under a final, unique name, then
    the marker with a create-only conditional write (``If-None-Match: *``), so a step
    commits once even with racing writers; nothing is ever renamed.

    Writes ``<prefix>-<step:08d>.<format>`` (``<prefix>-<run>-<step:08d>`` with a
    ``run`` id) then its marker, each via temp file + fsync + atomic rename; files get
    the mode the umask gives.  ``format`` is "npz" or "safetensors".  ``run``: the
    trainer's run id (a restarted trainer passes a new one; see the watcher).
    ``keep``: afterwards delete all but the newest ``keep`` commits of this ``prefix``
    by commit time (marker first, so a reader never sees a marker without its data;
    the checkpoint just written is never deleted) and crash debris older than
    ``grace`` seconds (:func:`clean_checkpoints`).  Raises ValueError for a bad
    step/format/prefix/run or an already committed step; OSError naming the step and
    file when writing fails (nothing of this checkpoint is left behind).
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be a non-negative int, got {step!r:.60} (at most 2**63-1)")
    step = int(step)
    if format not in ("npz", "safetensors"):
        raise ValueError(f"format must be 'npz' or 'safetensors', got {format!r}")
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix) or prefix.startswith(".") or len(prefix) > 128:
        raise ValueError(f"prefix must be letters, digits, '_', '-', '.' (at most 128) and not start with '.', got {prefix!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be None or an int >= 1, got {keep!r}")
    if run is not None and (not isinstance(run, str) or not _RUN_RE.match(run)):
        raise ValueError(f"run must be None or 1-128 letters, digits, '_', '-', '.' not starting with '.', got {run!r:.60}")
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
        raise ValueError(f"grace must be a non-negative number of seconds, got {grace!r}")
    arrays = _check_weights(weights)
    store = open_store(directory, storage_options, suffixes=(MARKER_SUFFIX,) + SUFFIXES)
    if not store.remote and not store.root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(store.root)!r} does not exist")
    base = f"{prefix}-{step:08d}" if run is None else f"{prefix}-{run}-{step:08d}"
    # In an object store a second writer of the same step must not overwrite the data
    # object the first one committed: remote data objects get a unique name.
    data_name = f"{base}.{secrets.token_hex(4)}.{format}" if store.remote else f"{base}.{format}"
    marker_name = f"{base}{MARKER_SUFFIX}"
    data_path, marker_path = store.path(data_name), store.path(marker_name)
    where = store.url
    if store.remote:
        store.list()
    if store.key(marker_name) is not None:
        raise ValueError(f"checkpoint step {step} is already committed in {where!r} ({marker_name}); steps must be new")

    try:
        if format == "npz":
            digest, nbytes = store.put(data_name, lambda f: _write_npz(f, arrays))
        else:
            st = _safetensors_numpy()
            blob = st.save({k: np.ascontiguousarray(a) for k, a in arrays.items()})
            digest, nbytes = store.put(data_name, lambda f: f.write(blob))
            del blob
    except OSError as e:
        raise _write_error(e, step, data_name, where) from e
    try:
        info = CheckpointInfo(step, data_path, marker_path, digest, nbytes, tuple(arrays), time.time(), run or "")  # type: ignore[arg-type]
        marker: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step, "file": data_name,
            "bytes": nbytes, "sha256": digest, "variables": list(arrays), "created": info.created,
        }
        if run is not None:
            marker["run"] = run
        text = (json.dumps(marker, indent=1) + "\n").encode()
        store.put(marker_name, lambda f: f.write(text), exclusive=True)  # the commit point
        if not store.remote:
            _fsync_dir(store.root)
    except BaseException as e:
        try:
            store.delete(data_name)  # leave nothing visible of a checkpoint that did not commit
        except Exception:
            pass
        if isinstance(e, FileExistsError):
            raise ValueError(f"checkpoint step {step} is already committed in {where!r} ({marker_name}): another "
                             "writer committed it first (the conditional write refused this one); steps must be new") from None
        if isinstance(e, OSError):
            raise _write_error(e, step, marker_name, where) from e
        raise
    log.debug("committed checkpoint step %d: %s (%d bytes)", step, data_path.name, nbytes)
    if keep is not None:
        good, _ = _scan(store)
        others = [c for c in good if c.marker.name != marker_name and c.marker.name.startswith(prefix + "-")]
        others.sort(key=lambda c: (c.created, c.step, c.marker.name), reverse=True)
        still = {c.path.name for c in others[: keep - 1]} | {data_name}
        for old in others[keep - 1:]:
            store.delete(old.marker.name)
            if old.path.name not in still:
                store.delete(old.path.name)
        if store.remote:
            _clean_remote(store, grace, good)
        else:
            clean_checkpoints(store.root, grace=grace, _markers=good)
    return info


def _safetensors_numpy() -> Any:
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        from ._errors import extra_hint

        raise ImportError(f"writing .safetensors checkpoints needs the safetensors package: {extra_hint('safetensors')}") from None
    return st_numpy


def clean_checkpoints(
    directory: str | os.PathLike[str],
    *,
    grace: float = DEBRIS_GRACE_SECONDS,
    storage_options: Mapping[str, Any] | None = None,
    _markers: list[CheckpointInfo] | None = None,
) -> list[str]:
    """Remove crash debris older than ``grace`` seconds; return the names removed.

    Debris: the writer's hidden temp files (``.<name>.<tag>.tmp``) and data files
    (``*.npz``, ``*.safetensors``) that no marker names.  Anything younger than
    ``grace`` (by mtime) is left alone: a live writer may still be writing it, and a
    data file whose marker is being written right now is protected by that marker's
    temp file.  Only regular files are removed; symlinks and other names are never
    touched.  For an fsspec URL: data objects no marker names whose LastModified is
    older than ``grace`` (there are no temp files in an object store).
    """
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
        raise ValueError(f"grace must be a non-negative number of seconds, got {grace!r}")
    if is_url(directory):
        store = open_store(directory, storage_options, suffixes=(MARKER_SUFFIX,) + SUFFIXES)
        return _clean_remote(store, grace, _scan(store)[0] if _markers is None else _markers)
    d = Path(directory)
    good = _scan(d)[0] if _markers is None else _markers
    referenced = {c.path.name for c in good}
    now = time.time()
    entries = []
    with os.scandir(d) as it:
        for e in it:
            entries.append(e)
    names = {e.name for e in entries}
    committing = set()
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m and m.group("final").endswith(MARKER_SUFFIX):
            committing.add(m.group("final")[: -len(MARKER_SUFFIX)])
    removed = []
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime <= grace:
            continue
        name = e.name
        if _TEMP_RE.match(name):
            debris = True
        elif not name.startswith(".") and name.endswith(SUFFIXES):
            stem = name[: name.rindex(".")]
            debris = (f"{stem}{MARKER_SUFFIX}" not in names and name not in referenced and stem not in committing)
        else:
            debris = False
        if debris:
            try:
                os.unlink(d / name)
                removed.append(name)
            except FileNotFoundError:
                pass
            except OSError as err:
                log.warning("cannot remove checkpoint debris %s in %s: %s", name, d, err.strerror or err)
    if removed:
        log.info("removed %d crash debris file(s) older than %.0f s from %s: %s", len(removed), grace, d, _shown(removed))
    return removed


# --------------------------------------------------------------------------- protocol: reader
def read_marker(marker: str | os.PathLike[str], *, store: Store | None = None) -> CheckpointInfo:
    """Parse a ``*.ckpt.json`` marker; CheckpointError naming the file and the problem if malformed.

    The marker must be a regular file (not a symlink) of at most ``MAX_MARKER_BYTES``;
    FileNotFoundError if it is gone.  With ``store`` (a remote location) ``marker`` is
    the marker's name there.
    """
    p = Path(marker) if store is None else store.path(Path(marker).name)
    if store is None:
        store = LocalStore(p.parent)
    where = f"checkpoint marker {store.name_url(p.name) if store.remote else str(p)!r}"
    raw, mtime = store.read(p.name, where, limit=MAX_MARKER_BYTES)
    return parse_marker(raw, where, p, mtime)


def parse_marker(raw: bytes | bytearray, where: str, p: Any, mtime: float) -> CheckpointInfo:
    """The checks of :func:`read_marker` on marker bytes ``raw`` (``p``: its path; ``mtime``: its commit time)."""
    data = load_json(raw, where)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: 'format' must be {CHECKPOINT_FORMAT!r}")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{where}: 'version' must be {CHECKPOINT_VERSION}, got {data.get('version')!r:.40}")
    step, file, digest, nbytes, names = (data.get(k) for k in ("step", "file", "sha256", "bytes", "variables"))
    run, created = data.get("run", ""), data.get("created")
    problems = []
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        problems.append(f"'step' must be a non-negative int, got {step!r:.40} (at most 2**63-1)")
    if (not isinstance(file, str) or not file or len(file) > 255 or any(c in file for c in "/\\\0")
            or file.startswith(".") or not file.lower().endswith(SUFFIXES)):
        problems.append(f"'file' must be a plain file name in the same directory, ending .npz or .safetensors, got {file!r:.80}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        problems.append("'sha256' must be 64 lowercase hex digits")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes <= MAX_STEP:
        problems.append(f"'bytes' must be a non-negative int, got {nbytes!r:.40}")
    if (not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names)
            or len(set(names)) != len(names)):
        problems.append("'variables' must be a list of distinct, non-empty names")
    if not isinstance(run, str) or (run and not _RUN_RE.match(run)):
        problems.append(f"'run' must be 1-128 letters, digits, '_', '-', '.', got {run!r:.40}")
    if created is None:
        created = mtime  # hand-written markers: the commit time is the file's
    elif (isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created)
          or created < 0 or created > time.time() + MAX_FUTURE_SECONDS):
        problems.append(f"'created' must be a time in seconds no later than a day from now, got {created!r:.40}")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    return CheckpointInfo(step, p.parent / file, p, digest, nbytes, tuple(names), float(created), run)  # type: ignore[arg-type]


def _scan(store: Store | Path) -> tuple[list[CheckpointInfo], list[tuple[str, str]]]:
    """(valid markers, [(name, problem)]) without logging."""
    if isinstance(store, (str, os.PathLike)):
        store = LocalStore(store, suffixes=(MARKER_SUFFIX,))
    good, bad = [], []
    for name in [n for n in store.list() if n.endswith(MARKER_SUFFIX)]:
        try:
            good.append(read_marker(name, store=store) if store.remote else read_marker(store.path(name)))
        except FileNotFoundError:
            continue  # deleted meanwhile
        except CheckpointError as e:
            bad.append((name, str(e)))
    return good, bad


def _clean_remote(store: Store, grace: float, good: list[CheckpointInfo]) -> list[str]:
    """Remote crash debris: data objects no marker names, older than ``grace`` (by LastModified)."""
    referenced = {c.path.name for c in good}
    now = time.time()
    removed = []
    for name, key in store.list().items():
        if name.endswith(SUFFIXES) and name not in referenced and now - store.key_time(key) > grace:
            if store.delete(name):
                removed.append(name)
    if removed:
        log.info("removed %d orphaned checkpoint object(s) older than %.0f s from %s: %s", len(removed), grace,
                 store.url, _shown(removed))
    return removed


_warned: OrderedDict[tuple[str, str], None] = OrderedDict()
_warned_lock = threading.Lock()


def warn_bad_markers(directory: Path, bad: list[tuple[str, str]], *, shown: int = 5, remember: int = 4096) -> None:
    """Log each bad marker once per process (at most ``shown`` lines per call, then a count)."""
    new = []
    with _warned_lock:
        for name, why in bad:
            key = (str(directory / name), why)
            if key in _warned:
                _warned.move_to_end(key)
                continue
            _warned[key] = None
            if len(_warned) > remember:
                _warned.popitem(last=False)
            new.append(why)
    for why in new[:shown]:
        log.warning("skipping %s", why)
    if len(new) > shown:
        log.warning("skipping %d more malformed checkpoint markers in %s", len(new) - shown, directory)


def list_checkpoints(directory: str | os.PathLike[str], *,
                     storage_options: Mapping[str, Any] | None = None) -> list[CheckpointInfo]:
    """Return the committed checkpoints of ``directory`` with a valid marker, oldest step first.

    ``directory`` may be an fsspec URL (``s3://bucket/ckpts``; one LIST, then one GET
    per marker).  Malformed markers are skipped with one warning each per process;
    data files without a marker are not listed.
    """
    store = open_store(directory, storage_options, suffixes=(MARKER_SUFFIX,))
    good, bad = _scan(store)
    warn_bad_markers(store.root, bad)
    return sorted(good, key=lambda c: (c.step, c.marker.name))


def verify_checkpoint(
    info: CheckpointInfo,
    *,
    max_bytes: int | None = None,
    lazy: bool = False,
    stop: Callable[[], bool] | None = None,
    store: Store | None = None,
) -> Mapping[str, np.ndarray]:
    """Read ``info``'s data file, check size, SHA-256 and names against the marker; return its arrays.

    The size is checked (against the marker and ``max_bytes``, default
    ``DEFAULT_MAX_BYTES``) before the file is read into one buffer.  ``lazy=True``
    returns a mapping whose arrays are read on access (headers already checked; see
    :func:`select_weights`), else a dict of every array.  ``stop()`` abandons a long
    read.  ``store``: where ``info`` was listed (default: the local directory of its
    marker).  Every problem is a CheckpointError naming the step and the file.
    """
    if store is None:
        store = LocalStore(info.path.parent)
    shown = store.name_url(info.path.name) if store.remote else str(info.path)
    where = f"checkpoint step {info.step}: {shown!r}"
    limit = _limit(max_bytes, DEFAULT_MAX_BYTES)
    suffix = info.path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"checkpoint step {info.step}: data file {info.path.name!r} has suffix "
                              f"{info.path.suffix!r}; expected one of {list(SUFFIXES)}")
    try:
        buf, _ = store.read(info.path.name, where, limit=limit, expect=info.nbytes, stop=stop)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint step {info.step}: data file {shown!r} named by its marker is missing") from None
    if hashlib.sha256(buf).hexdigest() != info.sha256:
        raise CheckpointError(f"{where} fails its SHA-256 check (corrupt or changed after commit)")
    archive = Archive(buf, suffix, where, limit=limit)  # the bytes just verified, not the file again
    if sorted(archive) != sorted(info.variables):
        raise CheckpointError(f"{where} holds {_shown(sorted(archive))}, its marker lists {_shown(sorted(info.variables))}")
    return archive if lazy else archive.arrays()
