"""System shared memory (Triton's ``system_shared_memory`` extension): inputs read from, outputs written into,
regions a co-located client registered, so tensors skip the copy through the socket.

A client creates a POSIX shared memory object (``shm_open``; ``tritonclient.utils.shared_memory``)
and registers ``(name, key, offset, byte_size)``; the server maps the object and checks
the region fits it.  An input with parameters ``shared_memory_region`` /
``shared_memory_byte_size`` (/ ``shared_memory_offset``) is read from the region; a
requested output with them is written into it and answered without data.  Every access
checks the region is registered, the offsets lie inside it, and the object still holds
the region (``fstat``: an object truncated after registering is refused, never read past
its end).  At most ``MAX_REGIONS`` regions; register and unregister need the update token
when the server has one.  CUDA shared memory is answered as unsupported (no GPU here).
"""
from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .protocol import InputTensor, ServeError

__all__ = ["MAX_REGIONS", "OutputTarget", "SharedMemoryRegistry", "cuda_unsupported"]

MAX_REGIONS = 64
SHM_DIR = "/dev/shm"
_KEY = re.compile(r"/?[A-Za-z0-9_.\-]{1,254}")


def cuda_unsupported() -> ServeError:
    return ServeError(501, "CUDA shared memory is not supported by this server (no GPU); "
                           "use system shared memory (/v2/systemsharedmemory)")


@dataclass
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    map: mmap.mmap


@dataclass(frozen=True)
class OutputTarget:
    region: str
    offset: int
    byte_size: int


def _int(v: Any, what: str, *, positive: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (1 if positive else 0):
        raise ServeError(400, f"{what} must be a {'positive' if positive else 'non-negative'} integer, got {v!r}"[:200])
    return int(v)


class SharedMemoryRegistry:
    """The registered regions of one server (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: dict[str, _Region] = {}

    # ------------------------------------------------------------------ registration
    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        if not isinstance(name, str) or not name or len(name) > 256:
            raise ServeError(400, f"the region name must be a non-empty string, got {name!r}"[:200])
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.strip("/.") == "":
            raise ServeError(400, f"shared memory key {key!r} is not a POSIX shared memory name "
                                  "('/name': letters, digits, '_', '-', '.')"[:300])
        offset = _int(offset, "offset")
        byte_size = _int(byte_size, "byte_size", positive=True)
        with self._lock:
            if name in self._regions:
                raise ServeError(400, f"shared memory region {name!r} is already registered; unregister it first")
            if len(self._regions) >= MAX_REGIONS:
                raise ServeError(400, f"{MAX_REGIONS} shared memory regions are registered (the limit); "
                                      "unregister some first")
            path = os.path.join(SHM_DIR, key.lstrip("/"))
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise ServeError(400, f"cannot open shared memory key {key!r}: {e.strerror}") from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise ServeError(400, f"region {name!r}: offset {offset} + byte_size {byte_size} is past the end "
                                          f"of shared memory {key!r} ({size} bytes)")
                m = mmap.mmap(fd, offset + byte_size)
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = _Region(name, key, offset, byte_size, fd, m)

    def unregister(self, name: str | None = None) -> None:
        """Unregister ``name`` (None or "": every region); an unknown name is a 400."""
        with self._lock:
            if name:
                if name not in self._regions:
                    raise ServeError(400, f"no shared memory region named {name!r} is registered")
                regions = [self._regions.pop(name)]
            else:
                regions = list(self._regions.values())
                self._regions.clear()
        for r in regions:
            r.map.close()
            os.close(r.fd)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if name:
                if name not in self._regions:
                    raise ServeError(400, f"no shared memory region named {name!r} is registered")
                rs = [self._regions[name]]
            else:
                rs = list(self._regions.values())
            return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in rs]

    def close(self) -> None:
        self.unregister(None)

    # ------------------------------------------------------------------ tensors
    def _span(self, region: Any, offset: Any, byte_size: Any, what: str) -> tuple[_Region, int, int]:
        r = self._regions.get(region) if isinstance(region, str) else None
        if r is None:
            raise ServeError(400, f"{what}: shared memory region {region!r} is not registered"[:200])
        off = _int(0 if offset is None else offset, f"{what}: shared_memory_offset")
        n = _int(byte_size, f"{what}: shared_memory_byte_size")
        if off + n > r.byte_size:
            raise ServeError(400, f"{what}: shared_memory_offset {off} + shared_memory_byte_size {n} is outside "
                                  f"region {region!r} ({r.byte_size} bytes)")
        if os.fstat(r.fd).st_size < r.offset + off + n:  # truncated since it was registered: do not touch it
            raise ServeError(400, f"{what}: shared memory {r.key!r} of region {region!r} no longer holds the region "
                                  "(truncated or replaced)")
        return r, r.offset + off, n

    def read_input(self, name: Any, datatype: Any, shape: Any, params: Mapping[str, Any]) -> InputTensor:
        """An input whose data is in a region (the caller saw ``shared_memory_region`` in its parameters)."""
        what = f"input {name!r}"
        with self._lock:
            r, start, n = self._span(params.get("shared_memory_region"), params.get("shared_memory_offset"),
                                     params.get("shared_memory_byte_size"), what)
            data = bytes(r.map[start:start + n])  # copied: the client may rewrite the region meanwhile
        return InputTensor(name, datatype, shape, data, True)

    def output_target(self, name: str, params: Mapping[str, Any]) -> OutputTarget:
        """Where a requested output goes; checked before the infer runs."""
        with self._lock:
            r, _, n = self._span(params.get("shared_memory_region"), params.get("shared_memory_offset"),
                                 params.get("shared_memory_byte_size"), f"output {name!r}")
        return OutputTarget(r.name, int(params.get("shared_memory_offset") or 0), n)

    def write_output(self, target: OutputTarget, name: str, a: np.ndarray) -> dict[str, Any]:
        """Write output ``a`` into its region; return the response's parameters for it."""
        raw = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).view(np.uint8).reshape(-1)
        with self._lock:
            r, start, n = self._span(target.region, target.offset, target.byte_size, f"output {name!r}")
            if raw.nbytes > n:
                raise ServeError(400, f"output {name!r} has {raw.nbytes} bytes, more than its shared_memory_byte_size "
                                      f"{n}")
            r.map[start:start + raw.nbytes] = raw.tobytes()
        return {"shared_memory_region": target.region, "shared_memory_byte_size": int(raw.nbytes)}
