"""TensorFlow checkpoints as weight sources, and TensorFlow's checkpoint-directory protocol.

Needs the optional extra ``tf`` (``pip install -e '.[tf]'`` in a checkout): checkpoints are read with TensorFlow's
own reader (``tf.train.load_checkpoint``, the C++ ``BundleReader``), which checks
every tensor's CRC32C; nothing here executes code from a checkpoint or loads its
``.meta`` graph.  :func:`acl_bundle.checkpoint.load_checkpoint` and
:func:`~acl_bundle.checkpoint.read_checkpoint` come here when given a TF checkpoint::

    weights = load_checkpoint("ckpts/model.ckpt-1200", model)   # prefix, .index, .data-* or the directory
    model.update(weights)

A TF checkpoint is a *prefix* ``P`` with ``P.index`` (an SSTable of tensor names,
shapes, dtypes, offsets and CRC32Cs) and data shards ``P.data-00000-of-0000N``, as
written by TF1 ``tf.compat.v1.train.Saver`` and TF2 ``tf.train.Checkpoint`` /
``tf.train.CheckpointManager``.

Names (the documented default; ``strip_prefix`` and ``rename`` then apply to the result):

* a TF1 key (``dense/kernel``) is the variable's name as it is;
* a TF2 key (``model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE``, an object path) becomes
  the name the variable had when it was saved (``dense/kernel``; the checkpoint's
  object graph records it), or the object path without ``/.ATTRIBUTES/VARIABLE_VALUE``
  when that name is missing or shared by several variables;
* a name matches a bundle variable exactly or up to TensorFlow's ``:0`` output suffix,
  so ``dense/kernel`` in a checkpoint updates the variable ``dense/kernel:0`` of a bundle
  built from the TF graph (see :mod:`acl_bundle.sim.tf_builder`) and vice versa.

Entries that match no variable are normal in TF checkpoints (optimizer slots, step
counters, the object graph) and are ignored; every variable of the model must still be
found unless ``allow_partial=True``, and each must have the variable's dtype and shape.

Directory protocol (what :class:`~acl_bundle.watcher.CheckpointWatcher` uses for a
directory with a ``checkpoint`` state file): TF writes the data and index of a new
checkpoint first and then rewrites the text-format state file ``checkpoint``
(``model_checkpoint_path: "model.ckpt-1200"``) atomically (temp file + rename:
``update_checkpoint_state_internal`` -> ``file_io.atomic_write_string_to_file`` in
``tensorflow/python/checkpoint/checkpoint_management.py``; ``Saver.save`` and
``CheckpointManager.save`` both call it after the write).  The state file is therefore
the commit point: a checkpoint it does not name is invisible, whatever is on disk.
The step is the number after the last ``-`` of the checkpoint name (``global_step=``
of ``Saver.save``, ``ckpt-N`` of ``CheckpointManager``).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._archive import CheckpointError, NotReadyError
from ._checkpoint.names import (
    CheckpointMismatchError,
    Rename,
    renamer,
    select_weights,
    variable_specs,
)
from ._checkpoint.protocol import MARKER_SUFFIX, CheckpointInfo
from ._checkpoint.storage import LocalStore
from ._checkpoint.tfdir import (
    DATA_RE,
    STATE_FILE,
    first_line,
    list_entries,
    local_name,
    parse_state,
    require_tensorflow,
    shard_names,
)
from ._checkpoint.tfdir import MAX_STATE_BYTES as MAX_STATE_BYTES
from ._checkpoint.tfdir import tf_step as step_of

log = logging.getLogger("acl_bundle")

__all__ = [
    "STATE_FILE",
    "TFCheckpointState",
    "detect_protocol",
    "list_tf_checkpoints",
    "load_tf_checkpoint",
    "read_tf_checkpoint",
    "read_tf_state",
    "require_tensorflow",
    "tf_checkpoint_names",
    "tf_prefix",
]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_TOLD_MAX = 1024  # checkpoints without a step warned about, remembered per process


# --------------------------------------------------------------------------- locating
def tf_prefix(path: str | os.PathLike[str]) -> Path | None:
    """Return the TF checkpoint prefix ``path`` names, or None if it names no TF checkpoint.

    Accepts the prefix (``ckpts/model.ckpt-1200``), its ``.index`` or ``.data-*`` file, or
    a directory with a ``checkpoint`` state file (then: the newest checkpoint it names).
    Does not import TensorFlow unless ``path`` is such a directory.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / STATE_FILE).is_file():
            return None
        state = read_tf_state(p)
        if state.newest is None:
            raise CheckpointError(f"TF checkpoint state file {str(p / STATE_FILE)!r} names no checkpoint")
        return state.newest
    name = p.name
    if name.endswith(".index"):
        p = p.with_name(name[: -len(".index")])
    elif DATA_RE.search(name):
        p = p.with_name(DATA_RE.sub("", name))
    return p if p.with_name(p.name + ".index").is_file() else None


def _data_files(prefix: Path, where: str | None = None) -> list[Path]:
    """The data shards of ``prefix`` in order; CheckpointError if one of them is missing."""
    names = [n for n in os.listdir(prefix.parent) if n.startswith(prefix.name + ".data-")]
    return [prefix.with_name(n) for n in shard_names(names, prefix.name, where or f"TF checkpoint {str(prefix)!r}")]


# --------------------------------------------------------------------------- reading
class _Reader:
    """TF's CheckpointReader with the size bound and error wrapping this package needs."""

    def __init__(self, prefix: Path, label: str | None = None) -> None:
        self.prefix = prefix
        self.where = f"TF checkpoint {label or str(prefix)!r}"
        if not prefix.with_name(prefix.name + ".index").is_file():
            raise FileNotFoundError(f"{self.where}: no index file {prefix.name}.index")
        self.data_bytes = sum(f.stat().st_size for f in _data_files(prefix, self.where))
        tf = require_tensorflow()
        try:
            self._r = tf.train.load_checkpoint(str(prefix))
            self.shapes = {k: tuple(int(d) for d in s) for k, s in self._r.get_variable_to_shape_map().items()}
            self.dtypes = self._r.get_variable_to_dtype_map()
        except Exception as e:  # noqa: BLE001 - TF raises OpError subclasses and plain RuntimeErrors
            raise CheckpointError(f"{self.where} cannot be read (corrupt or truncated index?): "
                                  f"{first_line(e)}") from None
        # Numeric tensors are stored as their raw bytes, so complete data files hold at least their sum.
        # A shorter total is a truncated checkpoint (even where no tensor we read is cut) or an index
        # claiming shapes it does not have; checked before TF allocates anything from those shapes.
        need = sum(self._nbytes(k) for k in self.numeric_keys())
        if self.data_bytes < need:  # a shard still being copied, or truncated: the watcher retries it
            raise NotReadyError(f"{self.where}: its data files hold {self.data_bytes} bytes but its index lists "
                                f"{need} bytes of tensors (truncated, or still being copied?)")

    def _nbytes(self, key: str) -> int:
        shape = self.shapes[key]
        itemsize = np.dtype(self.dtypes[key].as_numpy_dtype).itemsize
        return int(np.prod(shape, dtype=np.int64)) * itemsize if shape else itemsize

    def numeric_keys(self) -> list[str]:
        """Every numeric tensor (not the object graph or other string entries)."""
        return sorted(k for k, dt in self.dtypes.items()
                      if k != OBJECT_GRAPH_KEY and getattr(dt, "is_numpy_compatible", False)
                      and dt.as_numpy_dtype is not object
                      and np.dtype(dt.as_numpy_dtype).kind in "biufc")

    def get(self, key: str) -> np.ndarray:
        shape = self.shapes[key]  # bounded at open: the index's tensors fit in the data files
        try:
            value = self._r.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - DataLossError (CRC32C), IndexError (short read), ...
            raise CheckpointError(f"{self.where}: tensor {key!r} fails to read (corrupt or truncated data file?): "
                                  f"{first_line(e)}") from None
        a = np.asarray(value)
        if a.shape != shape:
            raise CheckpointError(f"{self.where}: tensor {key!r} has shape {a.shape}, its index says {shape}")
        return a

    def object_names(self) -> dict[str, str]:
        """checkpoint key -> the variable's name at save time, from a TF2 checkpoint's object graph."""
        if OBJECT_GRAPH_KEY not in self.shapes:
            return {}
        try:
            from tensorflow.core.protobuf import trackable_object_graph_pb2

            raw = self._r.get_tensor(OBJECT_GRAPH_KEY)
            graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(bytes(raw))
        except Exception as e:  # noqa: BLE001 - an unreadable object graph only costs the friendly names
            log.warning("%s: cannot parse its object graph (%s); using object paths as names", self.where,
                        first_line(e))
            return {}
        return {a.checkpoint_key: a.full_name for node in graph.nodes for a in node.attributes if a.full_name}


def _default_names(keys: list[str], object_names: Mapping[str, str]) -> dict[str, str]:
    """checkpoint key -> default name (module docstring: TF1 keys as they are, TF2 keys by saved name)."""
    saved = {k: object_names[k] for k in keys if k.endswith(VALUE_SUFFIX) and k in object_names}
    counts: dict[str, int] = {}
    for n in saved.values():
        counts[n] = counts.get(n, 0) + 1
    out = {}
    for k in keys:
        if k in saved and counts[saved[k]] == 1:
            out[k] = saved[k]
        elif k.endswith(VALUE_SUFFIX):
            out[k] = k[: -len(VALUE_SUFFIX)]
        else:
            out[k] = k
    return out


def tf_checkpoint_names(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{checkpoint key: default name}`` for every numeric entry of a TF checkpoint (see the module docstring)."""
    reader = _Reader(_require_prefix(path))
    keys = reader.numeric_keys()
    return _default_names(keys, reader.object_names())


def _require_prefix(path: str | os.PathLike[str]) -> Path:
    prefix = tf_prefix(path)
    if prefix is None:
        raise FileNotFoundError(f"{os.fspath(path)!r} is not a TF checkpoint: no {Path(path).name}.index "
                                "(give the prefix, e.g. 'ckpts/model.ckpt-1200', or a directory with a "
                                f"'{STATE_FILE}' file)")
    return prefix


def read_tf_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Return every numeric tensor of a TF checkpoint by its key in the checkpoint.

    CheckpointError for a corrupt or truncated checkpoint (TF's CRC32C or short read),
    FileNotFoundError if ``path`` is not a TF checkpoint, ImportError without TensorFlow.
    """
    return read_tf_prefix(_require_prefix(path))


def read_tf_prefix(prefix: Path, label: str | None = None) -> dict[str, np.ndarray]:
    """:func:`read_tf_checkpoint` of a local ``prefix``; ``label`` names it in messages."""
    reader = _Reader(prefix, label)
    return {k: reader.get(k) for k in reader.numeric_keys()}


class _LazyTensors(Mapping):
    """The checkpoint's tensors by key, read on first access (only matched entries are read)."""

    def __init__(self, reader: _Reader, keys: list[str]) -> None:
        self._reader = reader
        self._keys = keys

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._reader.shapes:
            raise KeyError(key)
        return self._reader.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _resolve(name: str, specs: Mapping[str, Any]) -> str | None:
    """The variable ``name`` matches: exactly, else up to TF's ``:0`` output suffix."""
    if name in specs:
        return name
    if name.endswith(":0") and name[:-2] in specs:
        return name[:-2]
    if name + ":0" in specs:
        return name + ":0"
    return None


def load_tf_checkpoint(
    path: str | os.PathLike[str],
    variables: Any,
    *,
    rename: Rename = None,
    strip_prefix: str | None = None,
    allow_partial: bool = False,
    allow_unmatched: bool = True,
) -> dict[str, np.ndarray]:
    """Read a TF checkpoint and return ``{variable name: array}`` ready for ``model.update``.

    Names map by the default of the module docstring, then ``strip_prefix`` and
    ``rename`` (as in :func:`acl_bundle.checkpoint.match_names`); entries that match no
    variable (optimizer slots, counters) are ignored (``allow_unmatched`` is accepted
    for symmetry with the other formats and has no effect).  Every variable must be
    found unless ``allow_partial``.  All matched tensors are read (and CRC-checked by
    TF) before this returns, so a bad checkpoint never yields a partial update.
    Raises CheckpointMismatchError / CheckpointError / FileNotFoundError.
    """
    del allow_unmatched  # TF checkpoints always hold entries the bundle does not serve
    return load_tf_prefix(_require_prefix(path), variables, rename=rename, strip_prefix=strip_prefix,
                          allow_partial=allow_partial)


def load_tf_prefix(prefix: Path, variables: Any, *, rename: Rename = None, strip_prefix: str | None = None,
                   allow_partial: bool = False, label: str | None = None) -> dict[str, np.ndarray]:
    """:func:`load_tf_checkpoint` of a local ``prefix``; ``label`` names it in messages (e.g. the URL it came from)."""
    specs = variable_specs(variables)
    reader = _Reader(prefix, label)
    keys = reader.numeric_keys()
    defaults = _default_names(keys, reader.object_names())
    user = renamer(rename, strip_prefix)
    where = reader.where
    chosen: dict[str, str] = {}  # key -> variable
    by_var: dict[str, str] = {}
    for k in keys:
        new = user(defaults[k])
        var = _resolve(new, specs) if new is not None else None
        if var is None:
            continue
        if var in by_var:
            raise CheckpointError(f"{where}: entries {by_var[var]!r} and {k!r} both map to variable {var!r}; "
                                  "use rename= to choose one")
        by_var[var] = k
        chosen[k] = var
    missing = [v for v in specs if v not in by_var]
    if not chosen or (missing and not allow_partial):
        shown = sorted({defaults[k] for k in keys})
        more = f" (first 20 of {len(shown)})" if len(shown) > 20 else ""
        head = "no entry matches a variable" if not chosen else f"{len(missing)} of {len(specs)} variable(s) missing"
        hint = "" if not chosen else "; pass allow_partial=True to update only the variables found"
        raise CheckpointMismatchError(
            f"{where}: {head}: {missing}; the checkpoint's names{more} are {shown[:20]} "
            f"(use rename= or strip_prefix= to map them{hint})", [], missing)
    log.debug("%s: %d entries matched, %d ignored (no such variable)", where, len(chosen), len(keys) - len(chosen))
    tensors = _LazyTensors(reader, list(chosen))
    return select_weights(tensors, variables, rename=chosen, allow_partial=True, allow_unmatched=False, source=where)


# --------------------------------------------------------------------------- directory protocol
@dataclass(frozen=True)
class TFCheckpointState:
    """TF's ``checkpoint`` state file: the newest checkpoint and all it lists (prefixes in the directory)."""

    newest: Path | None
    paths: tuple[Path, ...]


def read_tf_state(directory: str | os.PathLike[str]) -> TFCheckpointState:
    """Parse ``directory/checkpoint`` (bounded to 1 MiB) with TF's CheckpointState proto.

    FileNotFoundError if there is none; CheckpointError if it is not a valid state file.  A recorded absolute
    path (TF1 ``Saver``) is the trainer host's: it is looked up by its base name in ``directory``.
    """
    d = Path(directory)
    state = d / STATE_FILE
    with open(state, "rb") as f:
        raw = f.read(MAX_STATE_BYTES + 1)
    newest, paths = parse_state(raw, f"TF checkpoint state file {str(state)!r}")
    return TFCheckpointState(d / local_name(newest) if newest else None, tuple(d / local_name(p) for p in paths))


def tf_step(prefix: Path) -> int | None:
    """The step in a checkpoint name (``model.ckpt-1200`` -> 1200), or None."""
    return step_of(prefix.name)


_told_no_step: OrderedDict[str, None] = OrderedDict()
_told_lock = threading.Lock()


def warn_no_step(where: str) -> None:
    """Warn once per process (bounded memory) that the TF checkpoint ``where`` has no step in its name."""
    with _told_lock:
        if where in _told_no_step:
            return
        _told_no_step[where] = None
        if len(_told_no_step) > _TOLD_MAX:
            _told_no_step.popitem(last=False)
    log.warning("TF checkpoint %s has no step in its name (save with global_step= or use "
                "tf.train.CheckpointManager); the watcher cannot order it and ignores it", where)


def list_tf_checkpoints(directory: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """The checkpoints TF's state file names whose files are all present, newest step first.

    For each, ``path`` is the prefix and ``marker`` its ``.index`` file.  A named
    checkpoint whose index or data shards are missing (deleted by ``max_to_keep``, or
    not copied yet) is left out until they appear; one without a step in its name is
    left out with a warning (once).  A malformed state file is a CheckpointError.
    """
    d = Path(directory)
    try:
        state = read_tf_state(d)
    except FileNotFoundError:
        return []
    store = LocalStore(d)
    entries = list_entries(store, store.list(), tuple(p.name for p in state.paths), lambda n: warn_no_step(str(d / n)))
    return [e.info for e in entries]


def detect_protocol(directory: str | os.PathLike[str]) -> str | None:
    """``"tf"`` if ``directory`` has TF's ``checkpoint`` state file, ``"acl_bundle"`` if it has
    ``*.ckpt.json`` markers, None if neither (yet); CheckpointError if both."""
    d = Path(directory)
    tf_state = (d / STATE_FILE).is_file()
    ours = any(p.name.endswith(MARKER_SUFFIX) and not p.name.startswith(".") for p in d.iterdir())
    if tf_state and ours:
        raise CheckpointError(f"{str(d)!r} holds both TF checkpoints (a '{STATE_FILE}' state file) and acl_bundle "
                              f"checkpoints (*{MARKER_SUFFIX} markers); choose one with protocol='tf' or 'acl_bundle'")
    return "tf" if tf_state else ("acl_bundle" if ours else None)
