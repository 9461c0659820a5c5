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

import glob
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._archive import CheckpointError
from ._checkpoint.names import CheckpointMismatchError, Rename, renamer, select_weights, variable_specs
from ._checkpoint.protocol import MARKER_SUFFIX, CheckpointInfo

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

STATE_FILE = "checkpoint"  # TF's default ``latest_filename``
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
MAX_STATE_BYTES = 1 << 20  # a state file names a few checkpoints; anything bigger is not one
_DATA_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_STEP_RE = re.compile(r"-(\d+)$")


def require_tensorflow() -> Any:
    """Return the tensorflow module; ImportError naming the ``tf`` extra if it is not installed."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            "reading TensorFlow checkpoints needs TensorFlow: pip install -e '.[tf]' in a checkout of acl_bundle"
        ) from None
    return tf


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
    elif _DATA_RE.search(name):
        p = p.with_name(_DATA_RE.sub("", name))
    return p if p.with_name(p.name + ".index").is_file() else None


def _data_files(prefix: Path) -> list[Path]:
    """The data shards of ``prefix`` in order; CheckpointError if one of them is missing."""
    shards: dict[int, Path] = {}
    counts = set()
    for f in prefix.parent.glob(f"{glob.escape(prefix.name)}.data-?????-of-?????"):
        m = _DATA_RE.search(f.name)
        if m and f.name[: m.start()] == prefix.name:
            shards[int(m.group(1))] = f
            counts.add(int(m.group(2)))
    if not shards:
        raise CheckpointError(f"TF checkpoint {str(prefix)!r} has no data file ({prefix.name}.data-00000-of-NNNNN)")
    if len(counts) != 1:
        raise CheckpointError(
            f"TF checkpoint {str(prefix)!r} has data files of different shard counts {sorted(counts)}"
        )
    n = counts.pop()
    missing = [i for i in range(n) if i not in shards]
    if missing or n == 0:
        raise CheckpointError(f"TF checkpoint {str(prefix)!r} lacks data shard(s) {missing} of {n}")
    return [shards[i] for i in range(n)]


# --------------------------------------------------------------------------- reading
class _Reader:
    """TF's CheckpointReader with the size bound and error wrapping this package needs."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.where = f"TF checkpoint {str(prefix)!r}"
        if not prefix.with_name(prefix.name + ".index").is_file():
            raise FileNotFoundError(f"{self.where}: no index file {prefix.name}.index")
        self.data_bytes = sum(f.stat().st_size for f in _data_files(prefix))
        tf = require_tensorflow()
        try:
            self._r = tf.train.load_checkpoint(str(prefix))
            self.shapes = {k: tuple(int(d) for d in s) for k, s in self._r.get_variable_to_shape_map().items()}
            self.dtypes = self._r.get_variable_to_dtype_map()
        except Exception as e:  # noqa: BLE001 - TF raises OpError subclasses and plain RuntimeErrors
            raise CheckpointError(
                f"{self.where} cannot be read (corrupt or truncated index?): {_first_line(e)}"
            ) from None
        # Numeric tensors are stored as their raw bytes, so complete data files hold at least their sum.
        # A shorter total is a truncated checkpoint (even where no tensor we read is cut) or an index
        # claiming shapes it does not have; checked before TF allocates anything from those shapes.
        need = sum(self._nbytes(k) for k in self.numeric_keys())
        if self.data_bytes < need:
            raise CheckpointError(f"{self.where}: its data files hold {self.data_bytes} bytes but its index lists "
                                  f"{need} bytes of tensors (truncated?)")

    def _nbytes(self, key: str) -> int:
        shape = self.shapes[key]
        itemsize = np.dtype(self.dtypes[key].as_numpy_dtype).itemsize
        return int(np.prod(shape, dtype=np.int64)) * itemsize if shape else itemsize

    def numeric_keys(self) -> list[str]:
        """Every numeric tensor (not the object graph or other string entries)."""
        return sorted(
            k
            for k, dt in self.dtypes.items()
            if k != OBJECT_GRAPH_KEY
            and getattr(dt, "is_numpy_compatible", False)
            and dt.as_numpy_dtype is not object
            and np.dtype(dt.as_numpy_dtype).kind in "biufc"
        )

    def get(self, key: str) -> np.ndarray:
        shape = self.shapes[key]  # bounded at open: the index's tensors fit in the data files
        try:
            value = self._r.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - DataLossError (CRC32C), IndexError (short read), ...
            raise CheckpointError(f"{self.where}: tensor {key!r} fails to read (corrupt or truncated data file?): "
                                  f"{_first_line(e)}") from None
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
            log.warning(
                "%s: cannot parse its object graph (%s); using object paths as names", self.where, _first_line(e)
            )
            return {}
        return {a.checkpoint_key: a.full_name for node in graph.nodes for a in node.attributes if a.full_name}


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


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
    """Return ``{checkpoint key: default name}`` for every numeric entry of a TF checkpoint (see the module
    docstring)."""
    reader = _Reader(_require_prefix(path))
    keys = reader.numeric_keys()
    return _default_names(keys, reader.object_names())


def _require_prefix(path: str | os.PathLike[str]) -> Path:
    prefix = tf_prefix(path)
    if prefix is None:
        raise FileNotFoundError(
            f"{os.fspath(path)!r} is not a TF checkpoint: no {Path(path).name}.index "
            f"(give the prefix, e.g. 'ckpts/model.ckpt-1200', or a directory with a '{STATE_FILE}' file)"
        )
    return prefix


def read_tf_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Return every numeric tensor of a TF checkpoint by its key in the checkpoint.

    CheckpointError for a corrupt or truncated checkpoint (TF's CRC32C or short read),
    FileNotFoundError if ``path`` is not a TF checkpoint, ImportError without TensorFlow.
    """
    reader = _Reader(_require_prefix(path))
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
    prefix = _require_prefix(path)
    specs = variable_specs(variables)
    reader = _Reader(prefix)
    keys = reader.numeric_keys()
    defaults = _default_names(keys, reader.object_names())
    user = renamer(rename, strip_prefix)
    where = f"TF checkpoint {str(prefix)!r}"
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


def _in_directory(directory: Path, recorded: str) -> Path:
    """Where a path recorded in the state file is: relative to the directory; an absolute one
    (TF1 ``Saver`` records absolute paths) is the trainer host's, so it is looked up by base name here."""
    p = Path(recorded)
    return directory / p.name if p.is_absolute() else directory / p


def read_tf_state(directory: str | os.PathLike[str]) -> TFCheckpointState:
    """Parse ``directory/checkpoint`` (bounded to 1 MiB) with TF's CheckpointState proto.

    FileNotFoundError if there is none; CheckpointError if it is not a valid state file.
    """
    d = Path(directory)
    state = d / STATE_FILE
    with open(state, "rb") as f:
        raw = f.read(MAX_STATE_BYTES + 1)
    if len(raw) > MAX_STATE_BYTES:
        raise CheckpointError(f"TF checkpoint state file {str(state)!r} is larger than {MAX_STATE_BYTES} bytes")
    require_tensorflow()
    from google.protobuf import text_format
    from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState

    try:
        proto = text_format.Parse(raw.decode("utf-8"), CheckpointState())
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise CheckpointError(
            f"TF checkpoint state file {str(state)!r} is not a CheckpointState: {_first_line(e)}"
        ) from None
    newest = _in_directory(d, proto.model_checkpoint_path) if proto.model_checkpoint_path else None
    paths = [_in_directory(d, p) for p in proto.all_model_checkpoint_paths]
    if newest is not None and newest not in paths:
        paths.append(newest)
    return TFCheckpointState(newest, tuple(paths))


def tf_step(prefix: Path) -> int | None:
    """The step in a checkpoint name (``model.ckpt-1200`` -> 1200), or None."""
    m = _STEP_RE.search(prefix.name)
    return int(m.group(1)) if m else None


_told_no_step: set[Path] = set()


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
    out = []
    for prefix in state.paths:
        step = tf_step(prefix)
        if step is None:
            if prefix not in _told_no_step:
                _told_no_step.add(prefix)
                log.warning("TF checkpoint %s has no step in its name (save with global_step= or use "
                            "tf.train.CheckpointManager); the watcher cannot order it and ignores it", prefix)
            continue
        index = prefix.with_name(prefix.name + ".index")
        try:
            st = index.stat()
            nbytes = st.st_size + sum(f.stat().st_size for f in _data_files(prefix))
        except (OSError, CheckpointError):
            log.debug("TF checkpoint %s is named by the state file but not complete on disk (yet)", prefix)
            continue
        out.append(CheckpointInfo(step, prefix, index, "", nbytes, (), st.st_mtime))
    return sorted(out, key=lambda c: c.step, reverse=True)


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
