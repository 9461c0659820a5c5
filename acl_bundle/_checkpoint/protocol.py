"""The checkpoint protocol's reader side: markers, listing, verification (see :mod:`acl_bundle.checkpoint`)."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .._archive import Archive, CheckpointError, NotReadyError, load_json
from .names import DEFAULT_MAX_BYTES, show_names
from .storage import LocalStore, Store, open_store

log = logging.getLogger("acl_bundle")

CHECKPOINT_FORMAT = "acl_bundle.checkpoint"
CHECKPOINT_VERSION = 1
MARKER_SUFFIX = ".ckpt.json"
SUFFIXES = (".npz", ".safetensors")
MAX_STEP = 2**63 - 1  # fits every trainer's int64
MAX_MARKER_BYTES = 4 << 20
MAX_NAME_CHARS = 1024
MAX_FUTURE_SECONDS = 86400.0  # a marker's "created" may be this far ahead of the reader's clock
RUN_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


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


def byte_limit(max_bytes: int | None, default: int) -> int:
    if max_bytes is None:
        return default
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise TypeError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
    return max_bytes


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
        problems.append("'file' must be a plain file name in the same directory, ending .npz or .safetensors, "
                        f"got {file!r:.80}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        problems.append("'sha256' must be 64 lowercase hex digits")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes <= MAX_STEP:
        problems.append(f"'bytes' must be a non-negative int, got {nbytes!r:.40}")
    if (not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names)
            or len(set(names)) != len(names)):
        problems.append("'variables' must be a list of distinct, non-empty names")
    if not isinstance(run, str) or (run and not RUN_RE.match(run)):
        problems.append(f"'run' must be 1-128 letters, digits, '_', '-', '.', got {run!r:.40}")
    if created is None:
        created = mtime  # hand-written markers: the commit time is the file's
    elif (isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created)
          or created < 0 or created > time.time() + MAX_FUTURE_SECONDS):
        problems.append(f"'created' must be a time in seconds no later than a day from now, got {created!r:.40}")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    return CheckpointInfo(step, p.parent / file, p, digest, nbytes, tuple(names), float(created), run)  # type: ignore[arg-type]


def scan_markers(store: Store | Path) -> tuple[list[CheckpointInfo], list[tuple[str, str]]]:
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



_warned: OrderedDict[tuple[str, str], None] = OrderedDict()
_warned_lock = threading.Lock()


def warn_bad_markers(directory: PurePath, bad: list[tuple[str, str]], *, shown: int = 5, remember: int = 4096) -> None:
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
    good, bad = scan_markers(store)
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
    limit = byte_limit(max_bytes, DEFAULT_MAX_BYTES)
    suffix = info.path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"checkpoint step {info.step}: data file {info.path.name!r} has suffix "
                              f"{info.path.suffix!r}; expected one of {list(SUFFIXES)}")
    try:
        buf, _ = store.read(info.path.name, where, limit=limit, expect=info.nbytes, stop=stop)
    except FileNotFoundError:
        raise NotReadyError(f"checkpoint step {info.step}: data file {shown!r} named by its marker is missing "
                            "(not copied or replicated yet?)") from None
    if hashlib.sha256(buf).hexdigest() != info.sha256:
        raise CheckpointError(f"{where} fails its SHA-256 check (corrupt or changed after commit)")
    archive = Archive(buf, suffix, where, limit=limit)  # the bytes just verified, not the file again
    if sorted(archive) != sorted(info.variables):
        raise CheckpointError(f"{where} holds {show_names(sorted(archive))}, "
                              f"its marker lists {show_names(sorted(info.variables))}")
    return archive if lazy else archive.arrays()
