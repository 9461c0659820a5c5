"""Bounded reading of checkpoint files: regular files only, headers before data, one copy in memory.

Everything here treats the file as hostile (the checkpoint directory is writable by
whoever runs the trainer):

* :func:`read_regular` opens only regular files, never through a symlink
  (``O_NOFOLLOW``), never blocking on a FIFO (``O_NONBLOCK``), and checks the size
  against the caller's bounds (``fstat``) before allocating one buffer of exactly
  that size;
* :class:`Archive` parses an ``.npz`` or ``.safetensors`` buffer header-first: each
  member's dtype, shape and declared byte size are known (and checked against the
  member's own sizes) before any data is touched, and arrays are materialised one by
  one on request: stored ``.npz`` members and safetensors tensors are views of the
  buffer (no second copy), compressed members are inflated into an array of exactly
  the declared size and no further;
* :func:`load_json` bounds size, nesting depth and integer digits (``int("9" * 5000)``
  and 100k nested brackets both raise inside ``json``).

Every failure is :class:`CheckpointError` (a ``ValueError``; re-exported by :mod:`acl_bundle.checkpoint`) naming the
file and, where there is one, the member.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
import struct
import tokenize
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

MAX_JSON_DEPTH = 16
MAX_INT_DIGITS = 20  # int64 has 19 digits
MAX_NPY_HEADER = 10_000  # numpy's own default max_header_size
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit
DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than ~1032:1 (zlib technical notes)

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
_SAFETENSORS_DTYPES = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
                       "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


class CheckpointError(ValueError):
    """A checkpoint file or marker cannot be read, is corrupt, or does not fit the model."""


class NotReadyError(CheckpointError):
    """A committed checkpoint whose files are listed but not (all) readable yet: missing, shorter than its marker
    or index says, or changing while read (a copy still running, a store replicating).  The watcher retries it."""


class LimitError(CheckpointError):
    """Reading would inflate more bytes than the caller's limit (the server answers 413 for it)."""


def file_kind(mode: int) -> str:
    """What a stat mode is, for messages ("a named pipe", ...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What identifies a version of a file: inode, size, mtime, and mode/owner/ctime (chmod and chown change it)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid)


def read_regular(
    path: str | os.PathLike[str],
    what: str,
    *,
    limit: int,
    expect: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[bytearray, os.stat_result]:
    """Read a whole regular file into one buffer; ``(buffer, fstat)``.

    ``what`` names the file in errors.  Refused before anything is allocated: a
    symlink, anything but a regular file, more than ``limit`` bytes, a size other than
    ``expect``.  ``FileNotFoundError`` passes through (the caller decides whether a
    missing file is an error); every other ``OSError`` becomes :class:`CheckpointError`.
    ``stop()`` is checked between 1 MiB reads (the read is abandoned, CheckpointError).
    """
    try:
        st = os.lstat(path)
        _check_stat(st, what, limit, expect)  # never open a FIFO or device, even non-blocking
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CheckpointError(f"{what} is a symbolic link; links are not followed") from None
        raise CheckpointError(f"{what} cannot be opened: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        _check_stat(st, what, limit, expect)  # the entry may have been swapped after lstat
        size = st.st_size
        buf = bytearray(size)
        view = memoryview(buf)
        pos = 0
        while pos < size:
            if stop is not None and stop():
                raise CheckpointError(f"{what}: reading abandoned (stopping)")
            n = (
                os.readv(fd, [view[pos : pos + (1 << 20)]])
                if hasattr(os, "readv")
                else _readinto(fd, view[pos : pos + (1 << 20)])
            )
            if n == 0:
                raise NotReadyError(
                    f"{what} shrank to {pos} bytes while being read (expected {size}; still being written?)"
                )
            pos += n
        if os.read(fd, 1):
            raise NotReadyError(f"{what} grew past {size} bytes while being read (still being written?)")
        return buf, st
    except OSError as e:
        raise CheckpointError(f"{what} cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _readinto(fd: int, view: memoryview) -> int:  # pragma: no cover - platforms without readv
    data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def _check_stat(st: os.stat_result, what: str, limit: int, expect: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{what} is {file_kind(st.st_mode)}, not a regular file")
    if expect is not None and st.st_size != expect:
        kind = NotReadyError if st.st_size < expect else CheckpointError
        raise kind(f"{what} has {st.st_size} bytes, its marker says {expect} (truncated or still being written?)")
    if st.st_size > limit:
        raise CheckpointError(f"{what} has {st.st_size} bytes, more than the limit of {limit} (max_bytes=)")


# --------------------------------------------------------------------------- JSON
def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` outside strings (vectorised: no Python loop per byte)."""
    if not raw:
        return 0
    a = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    step = (a == ord("[")).astype(np.int32) + (a == ord("{"))
    step -= (a == ord("]")).astype(np.int32) + (a == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(raw: bytes | bytearray | memoryview, what: str) -> Any:
    """Parse bounded JSON (depth <= MAX_JSON_DEPTH, integers <= MAX_INT_DIGITS digits, no NaN/Infinity)."""
    raw = bytes(raw)
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{what} nests JSON {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_bounded_int, parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{what} is not UTF-8: {e}") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{what} is not readable JSON: {e}") from None


# --------------------------------------------------------------------------- archives
@dataclass(frozen=True)
class Member:
    """One array of an archive, as its header declares it."""

    name: str  # the array's name (npz: member name without ".npy")
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    nbytes: int
    offset: int  # of the array data in the buffer; -1 = compressed (inflate on demand)
    zinfo: zipfile.ZipInfo | None = None


class _BufferFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying it (zipfile needs a file)."""

    def __init__(self, buf: bytes | bytearray) -> None:
        self._view = memoryview(buf)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._view))[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos


class Archive(Mapping[str, np.ndarray]):
    """The arrays of an ``.npz``/``.safetensors`` buffer, by name; headers parsed now, data on access.

    ``members[name]`` describes an array without reading it; ``archive[name]``
    materialises it (a view of the buffer when the file stores it raw).  Stored data
    is bounded by the buffer; ``limit`` bounds the total bytes inflated from
    compressed members (checked before each is inflated).
    """

    def __init__(self, buf: bytes | bytearray, kind: str, what: str, *, limit: int) -> None:
        self._buf = buf
        self._what = what
        self._limit = limit
        self._inflated = 0
        self._zip: zipfile.ZipFile | None = None
        if kind == ".npz":
            self.members = self._parse_npz()
        elif kind == ".safetensors":
            self.members = self._parse_safetensors()
        else:
            raise CheckpointError(f"{what}: unknown checkpoint kind {kind!r}")

    # Mapping
    def __getitem__(self, name: str) -> np.ndarray:
        return self.array(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def _where(self, m: str) -> str:
        return f"{self._what}: member {m!r}"

    def _declared(self, where: str, dtype: np.dtype, shape: Any) -> tuple[tuple[int, ...], int]:
        if not isinstance(shape, (tuple, list)) or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape
        ):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative ints")
        if len(shape) > 64:
            raise CheckpointError(f"{where}: {len(shape)} dimensions (at most 64)")
        count = 1
        for d in shape:
            count *= d  # Python ints: no overflow
        return tuple(shape), count * dtype.itemsize

    # ------------------------------------------------------------------ npz
    def _parse_npz(self) -> dict[str, Member]:
        buf, what = self._buf, self._what
        if buf[:2] != b"PK":  # numpy would otherwise try to unpickle it
            raise CheckpointError(f"{what} is not a valid .npz file: no zip signature")
        try:
            self._zip = zipfile.ZipFile(_BufferFile(buf))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
            raise CheckpointError(f"{what} is not a valid .npz file: {e or type(e).__name__}") from None
        members: dict[str, Member] = {}
        for zi in infos:
            where = self._where(zi.filename)
            if not zi.filename.endswith(".npy"):
                raise CheckpointError(f"{where} is not a .npy array")
            name = zi.filename[:-4]
            if name in members:
                raise CheckpointError(f"{where} appears twice")
            if zi.flag_bits & 0x1:
                raise CheckpointError(f"{where} is encrypted")
            if zi.compress_type == zipfile.ZIP_STORED:
                members[name] = self._stored_member(zi, name, where)
            elif zi.compress_type == zipfile.ZIP_DEFLATED:
                members[name] = self._deflated_member(zi, name, where)
            else:
                raise CheckpointError(
                    f"{where} uses zip compression method {zi.compress_type}; only stored and deflated are read"
                )
        return members

    def _npy_header(self, fp: Any, where: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
        fmt = np.lib.format
        try:
            start = fp.tell()
            version = fmt.read_magic(fp)
            reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy format version {version}")
            try:
                shape, fortran, dtype = reader(fp, max_header_size=MAX_NPY_HEADER)
            except TypeError:  # numpy < 1.24 has no max_header_size
                shape, fortran, dtype = reader(fp)
            header_len = fp.tell() - start
        except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile) as e:
            # TokenError: numpy reads a cut-off header dict with tokenize (lib/format.py _filter_header)
            raise CheckpointError(f"{where} has no valid .npy header: {e}") from None
        if dtype.hasobject:
            raise CheckpointError(
                f"{where} holds object (pickled) arrays of Python objects; only plain numeric arrays are read"
            )
        return dtype, shape, bool(fortran), header_len

    def _stored_member(self, zi: zipfile.ZipInfo, name: str, where: str) -> Member:
        buf = self._buf
        off = zi.header_offset
        if off < 0 or off + 30 > len(buf) or buf[off:off + 4] != b"PK\x03\x04":
            raise CheckpointError(f"{where}: local zip header missing")
        n_name, n_extra = struct.unpack_from("<HH", buf, off + 26)
        start = off + 30 + n_name + n_extra
        end = start + zi.compress_size
        if zi.compress_size != zi.file_size or end > len(buf):
            raise CheckpointError(f"{where}: stored member runs past the end of the file")
        fp = _BufferFile(buf)
        fp.seek(start)
        dtype, shape, fortran, hlen = self._npy_header(fp, where)
        shape, nbytes = self._declared(where, dtype, shape)
        if hlen + nbytes != zi.file_size:
            raise CheckpointError(f"{where} declares {nbytes} bytes of data but holds {zi.file_size - hlen}")
        return Member(name, dtype, shape, fortran, nbytes, start + hlen)

    def _deflated_member(self, zi: zipfile.ZipInfo, name: str, where: str) -> Member:
        if zi.file_size > zi.compress_size * DEFLATE_MAX_RATIO + 1024:
            raise CheckpointError(f"{where} claims {zi.file_size} bytes from {zi.compress_size} compressed "
                               "(more than deflate can produce)")
        assert self._zip is not None
        try:
            with self._zip.open(zi) as fp:
                dtype, shape, fortran, hlen = self._npy_header(fp, where)
        except CheckpointError:
            raise
        except Exception as e:  # zlib.error, BadZipFile (CRC) and the like
            raise CheckpointError(f"{where} cannot be inflated: {e}") from None
        shape, nbytes = self._declared(where, dtype, shape)
        if hlen + nbytes != zi.file_size:
            raise CheckpointError(
                f"{where} declares {nbytes} bytes of data but the zip directory says {zi.file_size - hlen}"
            )
        return Member(name, dtype, shape, fortran, nbytes, -1, zi)

    # ------------------------------------------------------------------ safetensors
    def _parse_safetensors(self) -> dict[str, Member]:
        # Parsed here, not with the safetensors package: its loaders copy every tensor
        # out of the buffer (twice the memory) and have no header-first bound checks.
        # Format: u64 LE header length, JSON header, then the raw tensor bytes
        # (https://github.com/huggingface/safetensors#format).
        buf, what = self._buf, self._what
        if len(buf) < 8:
            raise CheckpointError(f"{what} is not a valid .safetensors file: {len(buf)} bytes, no header")
        (n,) = struct.unpack_from("<Q", buf, 0)
        if n < 2 or n > min(MAX_SAFETENSORS_HEADER, len(buf) - 8):
            raise CheckpointError(f"{what} is not a valid .safetensors file: header length {n} does not fit the file")
        try:
            header = load_json(memoryview(buf)[8:8 + n], f"{what} header")
        except CheckpointError as e:
            raise CheckpointError(f"{what} is not a valid .safetensors file: {e}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{what} is not a valid .safetensors file: the header is not a JSON object")
        base = 8 + n
        data_len = len(buf) - base
        spans = []
        members: dict[str, Member] = {}
        for name, d in header.items():
            if name == "__metadata__":
                continue
            where = self._where(name)
            if not isinstance(d, dict):
                raise CheckpointError(f"{where}: entry is not an object")
            code, offs = d.get("dtype"), d.get("data_offsets")
            if code not in _SAFETENSORS_DTYPES:
                raise CheckpointError(
                    f"{where}: dtype {code!r} has no numpy equivalent; expected one of {sorted(_SAFETENSORS_DTYPES)}"
                )
            dtype = np.dtype(_SAFETENSORS_DTYPES[code])
            shape, nbytes = self._declared(where, dtype, d.get("shape"))
            if (not isinstance(offs, list) or len(offs) != 2
                    or any(isinstance(o, bool) or not isinstance(o, int) for o in offs)
                    or not 0 <= offs[0] <= offs[1] <= data_len):
                raise CheckpointError(f"{where}: data_offsets {offs!r} do not lie within the {data_len} data bytes")
            if offs[1] - offs[0] != nbytes:
                raise CheckpointError(
                    f"{where} declares {nbytes} bytes ({code} {list(shape)}) but spans {offs[1] - offs[0]}"
                )
            spans.append((offs[0], offs[1], name))
            members[name] = Member(name, dtype, shape, False, nbytes, base + offs[0])
        spans.sort()
        pos = 0
        for begin, end, name in spans:  # no holes, no overlaps (as safetensors itself requires)
            if begin != pos:
                raise CheckpointError(
                    f"{self._where(name)}: data does not follow the previous tensor (offset {begin}, expected {pos})"
                )
            pos = end
        if pos != data_len:
            raise CheckpointError(
                f"{what} is not a valid .safetensors file: {data_len - pos} trailing bytes after the tensors"
            )
        return members

    # ------------------------------------------------------------------ data
    def array(self, name: str) -> np.ndarray:
        """Materialise one array (a view of the buffer when stored raw)."""
        m = self.members[name]
        where = self._where(m.zinfo.filename if m.zinfo else name)
        count = m.nbytes // m.dtype.itemsize if m.dtype.itemsize else 0
        order: Literal["C", "F"] = "F" if m.fortran else "C"
        if m.offset >= 0:
            if m.nbytes == 0:
                return np.empty(m.shape, m.dtype, order=order)
            flat = np.frombuffer(self._buf, dtype=m.dtype, count=count, offset=m.offset)
            return flat.reshape(m.shape, order=order)
        if self._inflated + m.nbytes > self._limit:
            raise LimitError(f"{where} declares {count} elements of {m.dtype} ({m.nbytes} bytes); inflating it "
                                  f"would exceed the limit of {self._limit} bytes (max_bytes=)")
        self._inflated += m.nbytes
        out = np.empty(count, dtype=m.dtype)
        raw = out.view(np.uint8)
        assert self._zip is not None and m.zinfo is not None
        try:
            with self._zip.open(m.zinfo) as fp:
                fp.read(m.zinfo.file_size - m.nbytes)  # the .npy header, parsed already
                pos = 0
                while pos < m.nbytes:
                    chunk = fp.read(min(1 << 20, m.nbytes - pos))
                    if not chunk:
                        raise CheckpointError(f"{where} ends after {pos} of {m.nbytes} data bytes")
                    raw[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
                    pos += len(chunk)
                if fp.read(1):
                    raise CheckpointError(f"{where} inflates past its declared {m.nbytes} data bytes")
        except CheckpointError:
            raise
        except Exception as e:  # zlib.error, BadZipFile (bad CRC)
            raise CheckpointError(f"{where} cannot be inflated: {e}") from None
        return out.reshape(m.shape, order=order)

    def arrays(self, names: Any = None) -> dict[str, np.ndarray]:
        """``{name: array}`` for ``names`` (default: all), in file order."""
        wanted = self.members if names is None else names
        return {n: self.array(n) for n in wanted}


def sniff_kind(buf: bytes | bytearray) -> str | None:
    """``".npz"`` (zip) or ``".safetensors"`` (u64 header length, then ``{``) from the first bytes; None if neither."""
    if buf[:4] == b"PK\x03\x04":
        return ".npz"
    if len(buf) >= 9 and buf[8:9] == b"{":
        return ".safetensors"
    return None


def read_buffer(buf: bytes | bytearray, kind: str, what: str, *, limit: int) -> dict[str, np.ndarray]:
    """Every array of an in-memory ``.npz``/``.safetensors`` (a body received over the network).

    The caller bounds ``buf`` itself; ``limit`` bounds the bytes inflated from compressed
    members, checked for all of them from their headers before the first is inflated
    (:class:`LimitError`).  Raw-stored arrays are views of ``buf`` (read-only if it is ``bytes``).
    """
    archive = Archive(buf, kind, what, limit=limit)
    inflated = sum(m.nbytes for m in archive.members.values() if m.offset < 0)
    if inflated > limit:
        raise LimitError(f"{what} inflates to {inflated} bytes, more than the limit of {limit}")
    return archive.arrays()
