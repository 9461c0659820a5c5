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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._archive import Archive, CheckpointError
from ._checkpoint.names import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from ._checkpoint.names import (
    TF_BOUND_FACTOR,
    CheckpointMismatchError,
    NameMatch,
    match_names,
    select_weights,
    variable_specs,
)
from ._checkpoint.names import Rename as Rename
from ._checkpoint.names import Spec as Spec
from ._checkpoint.names import limit_for as limit_for
from ._checkpoint.protocol import (
    CHECKPOINT_FORMAT,
    MARKER_SUFFIX,
    CheckpointInfo,
    byte_limit,
    list_checkpoints,
    read_marker,
    verify_checkpoint,
)
from ._checkpoint.protocol import CHECKPOINT_VERSION as CHECKPOINT_VERSION
from ._checkpoint.protocol import MAX_FUTURE_SECONDS as MAX_FUTURE_SECONDS
from ._checkpoint.protocol import MAX_MARKER_BYTES as MAX_MARKER_BYTES
from ._checkpoint.protocol import MAX_NAME_CHARS as MAX_NAME_CHARS
from ._checkpoint.protocol import MAX_STEP as MAX_STEP
from ._checkpoint.protocol import SUFFIXES as SUFFIXES
from ._checkpoint.protocol import parse_marker as parse_marker
from ._checkpoint.protocol import warn_bad_markers as warn_bad_markers
from ._checkpoint.storage import is_url, open_store
from ._checkpoint.writer import DEBRIS_GRACE_SECONDS as DEBRIS_GRACE_SECONDS
from ._checkpoint.writer import clean_checkpoints, write_checkpoint

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


def _open_archive(path: str | os.PathLike[str], limit: int,
                  storage_options: Mapping[str, Any] | None = None) -> Archive:
    text = os.fspath(path)
    parent, _, name = text.rstrip("/").rpartition("/")
    if not is_url(text):
        if not os.path.lexists(text):
            raise FileNotFoundError(f"checkpoint {text!r} does not exist or is not a file")
        parent, name = str(Path(text).parent), Path(text).name
    suffix = Path(name).suffix.lower()
    if suffix == ".meta":  # the file type actually given, not "expected .npz" (issue 23)
        raise CheckpointError(f"checkpoint {text!r} is a TensorFlow MetaGraph (.meta: the graph, not its weights); "
                              f"give the checkpoint's prefix ({text[:-5]!r}), its .index file or its directory")
    if suffix not in SUFFIXES:
        raise CheckpointError(f"checkpoint {text!r} is {_file_type(name)}; expected a .npz or .safetensors file or a "
                              "TensorFlow checkpoint (its prefix, e.g. 'ckpts/model.ckpt-1200', with .index and "
                              ".data-* files, or a directory with TF's 'checkpoint' state file)")
    what = f"checkpoint {text!r}"
    try:
        buf, _ = open_store(parent, storage_options).read(name, what, limit=limit)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {text!r} does not exist or is not a file") from None
    return Archive(buf, suffix, what, limit=limit)


_FILE_TYPES = {
    ".pb": "a TensorFlow graph or SavedModel protobuf, not a checkpoint",
    ".pbtxt": "a TensorFlow text protobuf, not a checkpoint",
    ".h5": "a Keras/HDF5 model file (save a tf.train.Checkpoint, or the weights as .npz)",
    ".keras": "a Keras model archive (save a tf.train.Checkpoint, or the weights as .npz)",
    ".onnx": "an ONNX model, not a checkpoint",
    ".om": "an Ascend offline model (the bundle itself), not a checkpoint",
    ".pt": "a PyTorch pickle, which acl_bundle never unpickles (save the state dict with safetensors.torch.save_file)",
    ".pth": "a PyTorch pickle, which acl_bundle never unpickles (save the state dict with safetensors.torch.save_file)",
    ".bin": "a raw or pickled weights file, which acl_bundle does not read (save it as .safetensors or .npz)",
    ".pkl": "a pickle, which acl_bundle never unpickles",
    ".ckpt": "a PyTorch Lightning / pickle checkpoint, which acl_bundle never unpickles (a TF checkpoint is named by "
             "its prefix, with .index and .data-* files beside it)",
}


def _file_type(name: str) -> str:
    """What a file name's suffix says it is, for messages."""
    suffix = Path(name).suffix
    known = _FILE_TYPES.get(suffix.lower())
    if known is not None:
        return known
    return f"a file with suffix {suffix!r}" if suffix else "a name without a suffix"


def _remote_tf(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> Any:
    """``(store, entry)`` when the URL ``path`` names a TF checkpoint (prefix, .index, .data-*, state-file prefix)."""
    text = os.fspath(path)
    if not is_url(text) or text.lower().endswith(SUFFIXES):
        return None
    from ._checkpoint.tfdir import remote_entry

    return remote_entry(str(text), storage_options)


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
    remote = _remote_tf(path, storage_options)
    if remote is not None:  # its files copied to a private temporary directory for TF's reader
        from ._checkpoint.tfdir import fetched
        from .tf_checkpoint import read_tf_prefix

        store, entry = remote
        with fetched(store, entry, limit=byte_limit(max_bytes, DEFAULT_MAX_BYTES)) as local:
            return read_tf_prefix(local, label=store.name_url(entry.info.path.name))
    return _open_archive(path, byte_limit(max_bytes, DEFAULT_MAX_BYTES), storage_options).arrays()


def _tf_prefix(p: Path) -> Path | None:
    """The TF checkpoint ``p`` names (prefix, .index, .data-*, or a directory with TF's state file), else None."""
    from .tf_checkpoint import tf_prefix  # no TensorFlow import for other formats

    return tf_prefix(p)


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
    (:func:`acl_bundle.tf_checkpoint.load_tf_checkpoint`); on an object store (its prefix,
    ``.index`` or a prefix holding TF's ``checkpoint`` state file) its index and data shards
    are copied into a private temporary directory first, bounded by ``max_bytes`` (default:
    four times :func:`limit_for`, room for optimizer slots) before the first byte.
    """
    prefix = None if is_url(path) else _tf_prefix(Path(path))
    if prefix is not None:
        from .tf_checkpoint import load_tf_checkpoint

        return load_tf_checkpoint(prefix, variables, rename=rename, strip_prefix=strip_prefix,
                                  allow_partial=allow_partial)
    specs = variable_specs(variables)
    remote = _remote_tf(path, storage_options)
    if remote is not None:  # its files copied to a private temporary directory for TF's reader
        from ._checkpoint.tfdir import fetched
        from .tf_checkpoint import load_tf_prefix

        store, entry = remote
        with fetched(store, entry, limit=byte_limit(max_bytes, TF_BOUND_FACTOR * limit_for(specs))) as local:
            return load_tf_prefix(local, specs, rename=rename, strip_prefix=strip_prefix, allow_partial=allow_partial,
                                  label=store.name_url(entry.info.path.name))
    archive = _open_archive(path, byte_limit(max_bytes, limit_for(specs)), storage_options)
    return select_weights(archive, specs, rename=rename, strip_prefix=strip_prefix,
                          allow_partial=allow_partial, allow_unmatched=allow_unmatched,
                          source=f"checkpoint {os.fspath(path)!r}")

