"""Where checkpoints live: a local directory or an fsspec URL (``s3://``, ``gs://``, ``hdfs://``, ...).

The checkpoint protocol and the watcher talk to one small seam, so every rule about
markers, sizes, steps and checks is written once:

* ``list()`` -- ``{name: key}`` of the location's plain entries, where ``key``
  identifies one version of an entry (local: the lstat key of :func:`stat_key`;
  remote: size, ETag and LastModified from the listing -- no request per entry);
* ``key(name)`` -- that key for one entry (local: one lstat; remote: from the last
  listing, no request);
* ``read(name, what, limit=, expect=, stop=)`` -- the whole entry in one buffer of
  exactly its size, refused before anything is allocated when the size is over
  ``limit`` or differs from ``expect`` (local: :func:`read_regular`: regular files
  only, never through a symlink; remote: ranged GETs of ``CHUNK`` bytes copied into
  the buffer, so memory is one copy plus one chunk);
* ``put(name, data, exclusive=)`` and ``delete(name)``.

Remote failures that are not about the checkpoint itself (5xx, timeouts, connection
resets, throttling, an expired credential) are :class:`TransientError`: the watcher
retries them with backoff instead of marking the checkpoint bad.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Protocol

from .._archive import CheckpointError, NotReadyError, read_regular, stat_key
from .._files import write_atomic

Key = tuple[Any, ...]
CHUNK = 8 << 20  # bytes per ranged GET when reading a remote object
_RECENT_NS = 2_000_000_000  # a directory changed this recently is listed on every call (timestamp granularity)
_RELIST_NS = 60_000_000_000  # and every directory is listed at least this often


class TransientError(OSError):
    """A remote store failed for a reason that may go away (network, 5xx, throttling): retry later."""


def is_url(location: object) -> bool:
    """True for ``proto://...`` strings (handled by fsspec); local paths otherwise."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


class LocalStore:
    """A local checkpoint directory."""

    remote = False

    def __init__(self, directory: str | os.PathLike[str], *, suffixes: tuple[str, ...] = ()) -> None:
        self.root = Path(directory)
        self.url = str(self.root)
        self._suffixes = suffixes
        self._dir_key: tuple[int, int, int] | None = None  # (dev, inode, mtime_ns) when last listed
        self._names: list[str] = []
        self._listed_at = 0

    def path(self, name: str) -> Path:
        return self.root / name

    def name_url(self, name: str) -> str:
        return str(self.root / name)

    def names(self) -> list[str]:
        """Entry names ending in one of ``suffixes``, by name only (``os.scandir``, no stat per entry).

        Listed again only when the directory changed: adding, removing or renaming an
        entry moves its mtime, so while (inode, mtime) stay the same the names do too.
        The listing is redone anyway while the mtime is within ``_RECENT_NS`` of now (a
        second change in the same timestamp tick would not move it) and every ``_RELIST_NS``.
        """
        st = os.stat(self.root)
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        now = time.time_ns()
        if key == self._dir_key and abs(now - st.st_mtime_ns) > _RECENT_NS and now - self._listed_at < _RELIST_NS:
            return self._names
        with os.scandir(self.root) as it:
            names = [e.name for e in it if (not self._suffixes or e.name.endswith(self._suffixes))
                     and not e.name.startswith(".")]
        self._dir_key, self._names, self._listed_at = key, names, now
        return names

    def list(self) -> dict[str, Key]:
        """``{name: lstat key}`` of the entries ``names()`` finds (one lstat each)."""
        out = {}
        for name in self.names():
            k = self.key(name)
            if k is not None:
                out[name] = k
        return out

    def key(self, name: str) -> Key | None:
        try:
            return stat_key(os.lstat(self.root / name))
        except OSError:
            return None

    @staticmethod
    def key_time(key: Key) -> float:
        """The entry's modification time (seconds) from its key."""
        return key[3] / 1e9

    @staticmethod
    def key_size(key: Key) -> int:
        """The entry's size in bytes from its key."""
        return int(key[2])

    def read(self, name: str, what: str, *, limit: int, expect: int | None = None,
             stop: Callable[[], bool] | None = None) -> tuple[bytearray, float]:
        """``(buffer, mtime)``; see :func:`read_regular` (FileNotFoundError passes through)."""
        buf, st = read_regular(self.root / name, what, limit=limit, expect=expect, stop=stop)
        return buf, st.st_mtime

    def put(self, name: str, write: Callable[[Any], object], *, exclusive: bool = False) -> tuple[str, int]:
        """Write via temp file + fsync + rename; ``(sha256 hex, bytes)`` of what was written.

        (``exclusive`` is checked by the caller beforehand: a local directory has no
        create-only rename.)
        """
        path = self.root / name
        write_atomic(path, write)
        h = hashlib.sha256()
        n = 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
        return h.hexdigest(), n

    def delete(self, name: str) -> bool:
        try:
            (self.root / name).unlink()
            return True
        except FileNotFoundError:
            return False


class FsspecStore:
    """A prefix in an fsspec filesystem (S3 through s3fs, GCS through gcsfs, HDFS through pyarrow, ...)."""

    remote = True

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *,
                 suffixes: tuple[str, ...] = ()) -> None:
        try:
            import fsspec
        except ImportError:
            from .._errors import extra_hint

            raise ImportError(f"checkpoints at {url!r} need fsspec (and s3fs for s3://): {extra_hint('s3')}") from None
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise TypeError(f"storage_options must be a mapping or None, got {type(storage_options).__name__}")
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except ImportError as e:
            from .._errors import extra_hint

            raise ImportError(f"checkpoints at {url!r}: {e} ({extra_hint('s3')} for s3://)") from None
        except ValueError as e:
            raise ValueError(f"cannot use checkpoint location {url!r}: {e}") from None
        self.root = PurePosixPath(root.rstrip("/") or "/")
        self.url = url.rstrip("/")
        self._suffixes = suffixes
        self._listing: dict[str, Key] = {}

    def path(self, name: str) -> PurePosixPath:
        return self.root / name

    def name_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def names(self) -> list[str]:
        return list(self.list())

    def list(self) -> dict[str, Key]:
        """One LIST of the prefix (one request per 1,000 entries on S3): ``{name: (size, etag, mtime)}``."""
        try:
            entries = self.fs.ls(str(self.root), detail=True, refresh=True)
        except FileNotFoundError:
            entries = []
        except Exception as e:
            raise TransientError(f"cannot list {self.url}: {_why(e)}") from e
        out: dict[str, Key] = {}
        for entry in entries:
            if entry.get("type", "file") != "file":
                continue
            name = str(entry.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
            if not name or name.startswith(".") or (self._suffixes and not name.endswith(self._suffixes)):
                continue
            size = entry.get("size")
            etag = entry.get("ETag") or entry.get("etag") or entry.get("md5Hash") or entry.get("generation") or ""
            out[name] = (size if isinstance(size, int) else -1, str(etag), _mtime(entry))
        self._listing = out
        return out

    def key(self, name: str) -> Key | None:
        return self._listing.get(name)

    @staticmethod
    def key_time(key: Key) -> float:
        return float(key[2])

    @staticmethod
    def key_size(key: Key) -> int:
        return int(key[0])

    def read(self, name: str, what: str, *, limit: int, expect: int | None = None,
             stop: Callable[[], bool] | None = None) -> tuple[bytearray, float]:
        """``(buffer, mtime)``: the object in ``CHUNK``-byte ranged GETs into one buffer of its listed size.

        The size comes from the last listing (one HEAD when the object is not in it) and
        is checked against ``expect`` and ``limit`` before the buffer is allocated.  An
        object replaced while being read is caught by the caller's SHA-256 (markers:
        by their JSON checks); a shorter one here.
        """
        path = str(self.root / name)
        key = self._listing.get(name)
        if key is None or key[0] < 0:
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                raise
            except Exception as e:
                raise TransientError(f"{what} cannot be looked up: {_why(e)}") from e
            if info.get("type", "file") != "file":
                raise CheckpointError(f"{what} is a directory, not an object")
            key = (int(info.get("size") or 0), str(info.get("ETag") or ""), _mtime(info))
        size = key[0]
        if expect is not None and size != expect:
            kind = NotReadyError if size < expect else CheckpointError
            raise kind(f"{what} has {size} bytes, its marker says {expect} (truncated or still being written?)")
        if size > limit:
            raise CheckpointError(f"{what} has {size} bytes, more than the limit of {limit} (max_bytes=)")
        buf = bytearray(size)
        for pos, chunk in self._ranges(path, what, size, stop,
                                       lambda pos: f"{what} shrank to {pos} bytes while being read (expected {size})"):
            buf[pos:pos + len(chunk)] = chunk
            del chunk  # one chunk in flight at a time
        return buf, float(key[2])

    def _ranges(self, path: str, what: str, size: int, stop: Callable[[], bool] | None,
                short: Callable[[int], str]) -> Iterator[tuple[int, bytes]]:
        """``(offset, bytes)`` of ``path``'s first ``size`` bytes, in ``CHUNK``-byte ranged GETs, in order.

        ``stop()`` true abandons the read (CheckpointError); a store error is a TransientError,
        404 a FileNotFoundError; an empty range before ``size`` a NotReadyError worded by ``short(offset)``.
        """
        pos = 0
        while pos < size:
            if stop is not None and stop():
                raise CheckpointError(f"{what}: reading abandoned (stopping)")
            end = min(size, pos + CHUNK)
            try:
                chunk = self.fs.cat_file(path, start=pos, end=end)
            except FileNotFoundError:
                raise
            except Exception as e:
                raise TransientError(f"{what} cannot be read at byte {pos}: {_why(e)}") from e
            if not chunk:
                raise NotReadyError(short(pos))
            if len(chunk) > end - pos:
                raise CheckpointError(f"{what}: the store returned {len(chunk)} bytes for a {end - pos}-byte range")
            n = len(chunk)
            yield pos, chunk
            del chunk  # not held while the next range is fetched
            pos += n

    def download(self, name: str, dest: Path, what: str, *, expect: int,
                 stop: Callable[[], bool] | None = None) -> None:
        """Copy the object to the new local file ``dest`` in ``CHUNK``-byte ranged GETs (``expect``: its listed size).

        FileNotFoundError when the store answers 404; NotReadyError when it holds fewer bytes than listed.
        """
        path = str(self.root / name)
        with open(dest, "xb") as f:
            for _, chunk in self._ranges(path, what, expect, stop,
                                         lambda pos: f"{what} has {pos} bytes, the listing said {expect} "
                                                     "(still being replaced?)"):
                f.write(chunk)
                del chunk  # one chunk in flight at a time

    def put(self, name: str, write: Callable[[Any], object], *, exclusive: bool = False) -> tuple[str, int]:
        """One PUT of the bytes ``write(fileobj)`` produces (``exclusive``: ``If-None-Match: *``).

        FileExistsError when ``exclusive`` and the object exists.  A store whose
        fsspec driver has no create-only mode gets an exists-check before the PUT
        (a narrower race, see the README).
        """
        import io

        bio = io.BytesIO()
        write(bio)
        data = bio.getvalue()  # botocore takes bytes, not a memoryview
        bio.close()
        digest, nbytes = hashlib.sha256(data).hexdigest(), len(data)
        path = str(self.root / name)
        try:
            if exclusive:
                try:
                    self.fs.pipe_file(path, data, mode="create")
                except (NotImplementedError, TypeError):
                    if self.fs.exists(path):
                        raise FileExistsError(path) from None
                    self.fs.pipe_file(path, data)
            else:
                self.fs.pipe_file(path, data)
        except FileExistsError:
            raise
        except OSError as e:
            if exclusive and "PreconditionFailed" in str(e):  # drivers that do not map the 412
                raise FileExistsError(path) from e
            raise
        return digest, nbytes

    def delete(self, name: str) -> bool:
        try:
            self.fs.rm_file(str(self.root / name))
            return True
        except FileNotFoundError:
            return False


class Store(Protocol):
    """The seam the protocol and the watcher talk to (the module docstring); :class:`LocalStore` and
    :class:`FsspecStore` implement it."""

    remote: bool
    url: str

    @property
    def root(self) -> PurePath: ...
    def path(self, name: str) -> PurePath: ...
    def name_url(self, name: str) -> str: ...
    def names(self) -> list[str]: ...
    def list(self) -> dict[str, Key]: ...
    def key(self, name: str) -> Key | None: ...
    def key_time(self, key: Key) -> float: ...
    def key_size(self, key: Key) -> int: ...
    def read(self, name: str, what: str, *, limit: int, expect: int | None = None,
             stop: Callable[[], bool] | None = None) -> tuple[bytearray, float]: ...
    def put(self, name: str, write: Callable[[Any], object], *, exclusive: bool = False) -> tuple[str, int]: ...
    def delete(self, name: str) -> bool: ...


def open_store(location: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None,
               *, suffixes: tuple[str, ...] = ()) -> Store:
    """A :class:`FsspecStore` for a URL, else a :class:`LocalStore` (``storage_options`` only for URLs)."""
    if is_url(location):
        return FsspecStore(str(location), storage_options, suffixes=suffixes)
    if storage_options:
        raise ValueError(f"storage_options are for fsspec URLs (s3://..., gs://...), "
                         f"not the local path {str(location)!r}")
    loc = str(location)
    return LocalStore(loc[len("file://"):] if loc.startswith("file://") else location, suffixes=suffixes)


def _mtime(entry: Mapping[str, Any]) -> float:
    t = entry.get("LastModified") or entry.get("mtime") or entry.get("updated") or entry.get("modification_time")
    stamp = getattr(t, "timestamp", None)
    if callable(stamp):
        return float(stamp())
    if isinstance(t, (int, float)):
        return float(t)
    if isinstance(t, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]
