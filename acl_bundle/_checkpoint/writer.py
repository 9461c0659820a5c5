"""The checkpoint protocol's writer side: :func:`write_checkpoint` and crash-debris cleaning (see
:mod:`acl_bundle.checkpoint`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import TEMP_SUFFIX
from .names import SHOWN, show_names
from .protocol import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    MARKER_SUFFIX,
    MAX_NAME_CHARS,
    MAX_STEP,
    RUN_RE,
    SUFFIXES,
    CheckpointInfo,
    scan_markers,
)
from .storage import Store, is_url, open_store

log = logging.getLogger("acl_bundle")

DEBRIS_GRACE_SECONDS = 3600.0  # crash debris younger than this may belong to a live writer
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_TEMP_RE = re.compile(
    r"^\.(?P<final>.+?(?:\.npz|\.safetensors|\.ckpt\.json))\.[A-Za-z0-9_]{6,32}" + re.escape(TEMP_SUFFIX) + "$"
)


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
        raise TypeError("cannot write checkpoint: " + "; ".join(problems[:SHOWN]))
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
        raise ValueError(
            f"prefix must be letters, digits, '_', '-', '.' (at most 128) and not start with '.', got {prefix!r}"
        )
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be None or an int >= 1, got {keep!r}")
    if run is not None and (not isinstance(run, str) or not RUN_RE.match(run)):
        raise ValueError(
            f"run must be None or 1-128 letters, digits, '_', '-', '.' not starting with '.', got {run!r:.60}"
        )
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
        raise ValueError(f"grace must be a non-negative number of seconds, got {grace!r}")
    arrays = _check_weights(weights)
    store = open_store(directory, storage_options, suffixes=(MARKER_SUFFIX,) + SUFFIXES)
    if not store.remote and not Path(store.root).is_dir():
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
            _fsync_dir(Path(store.root))
    except BaseException as e:
        with contextlib.suppress(Exception):
            store.delete(data_name)  # leave nothing visible of a checkpoint that did not commit
        if isinstance(e, FileExistsError):
            raise ValueError(
                f"checkpoint step {step} is already committed in {where!r} ({marker_name}): another "
                "writer committed it first (the conditional write refused this one); steps must be new"
            ) from None
        if isinstance(e, OSError):
            raise _write_error(e, step, marker_name, where) from e
        raise
    log.debug("committed checkpoint step %d: %s (%d bytes)", step, data_path.name, nbytes)
    if keep is not None:
        good, _ = scan_markers(store)
        others = [c for c in good if c.marker.name != marker_name and c.marker.name.startswith(prefix + "-")]
        others.sort(key=lambda c: (_commit_time(store, c), c.step, c.marker.name), reverse=True)
        still = {c.path.name for c in others[: keep - 1]} | {data_name}
        for old in others[keep - 1:]:
            store.delete(old.marker.name)
            if old.path.name not in still:
                store.delete(old.path.name)
        if store.remote:
            clean_remote(store, grace, good)
        else:
            clean_checkpoints(store.root, grace=grace, _markers=good)
    return info


def _commit_time(store: Store, info: CheckpointInfo) -> float:
    """When ``info`` was committed by the store's clock (marker mtime, LastModified), not the writer's ``created``."""
    key = store.key(info.marker.name)
    return store.key_time(key) if key is not None else info.created


def _safetensors_numpy() -> Any:
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        from ._errors import extra_hint

        raise ImportError(
            f"writing .safetensors checkpoints needs the safetensors package: {extra_hint('safetensors')}"
        ) from None
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
        return clean_remote(store, grace, scan_markers(store)[0] if _markers is None else _markers)
    d = Path(directory)
    good = scan_markers(d)[0] if _markers is None else _markers
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
        log.info(
            "removed %d crash debris file(s) older than %.0f s from %s: %s", len(removed), grace, d, show_names(removed)
        )
    return removed



def clean_remote(store: Store, grace: float, good: list[CheckpointInfo]) -> list[str]:
    """Remote crash debris: data objects no marker names, older than ``grace`` (by LastModified)."""
    referenced = {c.path.name for c in good}
    now = time.time()
    removed = []
    for name, key in store.list().items():
        if name.endswith(SUFFIXES) and name not in referenced and now - store.key_time(key) > grace \
                and store.delete(name):
            removed.append(name)
    if removed:
        log.info("removed %d orphaned checkpoint object(s) older than %.0f s from %s: %s", len(removed), grace,
                 store.url, show_names(removed))
    return removed

