"""TensorFlow's checkpoint-directory protocol over a :class:`~acl_bundle._checkpoint.storage.Store`.

The same rules for a local directory and an object-store prefix (see :mod:`acl_bundle.tf_checkpoint`): TF's
``checkpoint`` state file is the commit point; a checkpoint it names counts once its ``.index`` and every data
shard ``.data-NNNNN-of-MMMMM`` are listed; its identity is the listing keys of the state file, the index and
every shard, so completing or fixing any of them makes it new.  A remote checkpoint is read by copying its index
and shards into a private temporary directory (bounded before the first byte) for TensorFlow's own reader.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .._archive import CheckpointError, NotReadyError
from .protocol import CheckpointInfo
from .storage import FsspecStore, Key, Store

STATE_FILE = "checkpoint"  # TF's default ``latest_filename``
MAX_STATE_BYTES = 1 << 20  # a state file names a few checkpoints; anything bigger is not one
DATA_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
STEP_RE = re.compile(r"-(\d+)$")


def require_tensorflow() -> Any:
    """Return the tensorflow module; ImportError naming the ``tf`` extra if it is not installed."""
    try:
        import tensorflow as tf
    except ImportError:
        from .._errors import extra_hint

        raise ImportError(f"reading TensorFlow checkpoints needs TensorFlow: {extra_hint('tf')}") from None
    return tf


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def parse_state(raw: bytes | bytearray, where: str) -> tuple[str | None, tuple[str, ...]]:
    """``(newest, all listed)`` checkpoint paths of a state file's bytes, as recorded (TF's CheckpointState proto)."""
    if len(raw) > MAX_STATE_BYTES:
        raise CheckpointError(f"{where} is larger than {MAX_STATE_BYTES} bytes")
    require_tensorflow()
    from google.protobuf import text_format
    from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState

    try:
        proto = text_format.Parse(bytes(raw).decode("utf-8"), CheckpointState())
    except (UnicodeDecodeError, text_format.ParseError) as e:
        raise CheckpointError(f"{where} is not a CheckpointState: {first_line(e)}") from None
    newest = proto.model_checkpoint_path or None
    paths = list(proto.all_model_checkpoint_paths)
    if newest is not None and newest not in paths:
        paths.append(newest)
    return newest, tuple(paths)


def local_name(recorded: str) -> str:
    """Where a path recorded in the state file is, relative to the directory: an absolute one (TF1 ``Saver``
    records absolute paths) is the trainer host's, so it is looked up by its base name here."""
    p = PurePosixPath(recorded)
    return p.name if p.is_absolute() else recorded


def tf_step(name: str) -> int | None:
    """The step in a checkpoint name (``model.ckpt-1200`` -> 1200), or None."""
    m = STEP_RE.search(name)
    return int(m.group(1)) if m else None


def shard_names(names: Iterator[str] | list[str], prefix: str, where: str) -> list[str]:
    """The data shards of ``prefix`` among ``names``, in order; CheckpointError if one is missing or they disagree."""
    shards: dict[int, str] = {}
    counts = set()
    for n in names:
        m = DATA_RE.search(n)
        if m and n[: m.start()] == prefix:
            shards[int(m.group(1))] = n
            counts.add(int(m.group(2)))
    if not shards:
        raise CheckpointError(f"{where} has no data file ({prefix}.data-00000-of-NNNNN)")
    if len(counts) != 1:
        raise CheckpointError(f"{where} has data files of different shard counts {sorted(counts)}")
    total = counts.pop()
    missing = [i for i in range(total) if i not in shards]
    if missing or total == 0:
        raise CheckpointError(f"{where} lacks data shard(s) {missing} of {total}")
    return [shards[i] for i in range(total)]


@dataclass(frozen=True)
class TFEntry:
    """A checkpoint the state file names, all of whose files are listed."""

    info: CheckpointInfo  # path: the prefix; marker: its .index
    files: tuple[str, ...]  # the index, then the shards
    identity: Key  # listing keys of the state file, the index and every shard


def list_entries(store: Store, listing: Mapping[str, Key], recorded: tuple[str, ...],
                 no_step: Callable[[str], None]) -> list[TFEntry]:
    """The complete checkpoints among the state file's ``recorded`` paths, newest step first.

    ``no_step(name)`` is told of a checkpoint without a step in its name (it cannot be ordered).
    """
    out = []
    for name in dict.fromkeys(local_name(r) for r in recorded):
        if tf_step(name) is None:
            no_step(name)
            continue
        try:
            out.append(entry_for(store, listing, name))
        except CheckpointError:
            continue  # deleted by max_to_keep, or not copied yet: invisible until all its files are listed
    return sorted(out, key=lambda e: e.info.step, reverse=True)


def entry_for(store: Store, listing: Mapping[str, Key], name: str) -> TFEntry:
    """The checkpoint ``name`` (a prefix) from a listing; CheckpointError if its index or a shard is not listed."""
    where = f"TF checkpoint {store.name_url(name)!r}"
    index = f"{name}.index"
    ikey = listing.get(index)
    if ikey is None:
        raise CheckpointError(f"{where} has no index file {index}")
    shards = shard_names(list(listing), name, where)
    keys = tuple(listing[s] for s in shards)
    nbytes = store.key_size(ikey) + sum(store.key_size(k) for k in keys)
    root = Path(str(store.root))
    info = CheckpointInfo(tf_step(name) or 0, root / name, root / index, "", nbytes, (), store.key_time(ikey))
    return TFEntry(info, (index, *shards), (listing.get(STATE_FILE), ikey, *keys))


def remote_entry(url: str, storage_options: Mapping[str, Any] | None) -> tuple[FsspecStore, TFEntry] | None:
    """The TF checkpoint an object-store URL names (its prefix, ``.index`` or ``.data-*`` object, or a prefix
    holding TF's state file: its newest checkpoint), or None when it names none."""
    parent, _, name = url.rstrip("/").rpartition("/")
    if name.endswith(".index"):
        name = name[: -len(".index")]
    elif DATA_RE.search(name):
        name = DATA_RE.sub("", name)
    store = FsspecStore(parent, storage_options)
    listing = store.list()
    if f"{name}.index" in listing:
        return store, entry_for(store, listing, name)
    inner = FsspecStore(url.rstrip("/"), storage_options)
    listing = inner.list()
    if STATE_FILE not in listing:
        return None
    where = f"TF checkpoint state file {inner.name_url(STATE_FILE)!r}"
    raw, _ = inner.read(STATE_FILE, where, limit=MAX_STATE_BYTES)
    newest, _ = parse_state(raw, where)
    if newest is None:
        raise CheckpointError(f"{where} names no checkpoint")
    return inner, entry_for(inner, listing, local_name(newest))


@contextlib.contextmanager
def fetched(store: FsspecStore, entry: TFEntry, *, limit: int,
            stop: Callable[[], bool] | None = None) -> Iterator[Path]:
    """The local prefix of ``entry``'s files copied into a private temporary directory, removed afterwards.

    The listed sizes are checked against ``limit`` before anything is fetched; an object listed but answering 404,
    or shorter than listed, is :class:`NotReadyError` (retried by the watcher).
    """
    prefix = entry.info.path.name
    where = f"TF checkpoint {store.name_url(prefix)!r}"
    sizes = {}
    for name in entry.files:
        key = store.key(name)
        if key is None:
            raise NotReadyError(f"{where}: {name} is no longer listed")
        sizes[name] = store.key_size(key)
    total = sum(sizes.values())
    if total > limit:
        raise CheckpointError(f"{where} has {total} bytes in its index and data shards, more than the limit of "
                              f"{limit} (max_bytes=)")
    tmp = Path(tempfile.mkdtemp(prefix="acl_bundle-tf-"))  # mode 0700: private to this user
    try:
        for name, size in sizes.items():
            try:
                store.download(name, tmp / name, f"{where}: {name}", expect=size, stop=stop)
            except FileNotFoundError:
                raise NotReadyError(f"{where}: {name} is listed but not readable yet (404)") from None
        yield tmp / prefix
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
