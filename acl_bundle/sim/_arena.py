"""The simulated device address space: one reserved anonymous mapping that nothing else uses.

Device pointers are real addresses (copies really copy, onnxruntime binds them in place),
but they all come from this arena and no host allocation ever does.  So an address tells
which side of the PCIe bus it is on, as on a card where device memory is a separate
address space, and a freed device pointer stays a device address: it can never turn into
host memory that the process reuses, so a stale pointer is caught instead of silently
accepted as a host buffer.

The mapping is reserved once (``MAP_NORESERVE``: address space, not memory), handed out
first by a bump pointer (fresh addresses, so use-after-free stays detectable for as long as
possible) and, only when that is exhausted, first-fit from the coalesced free list.  Freed
whole pages are returned to the OS with ``MADV_DONTNEED``; the mapping itself stays readable
and writable, so late work on a freed block (a user bug) reads zeros instead of crashing.
"""
from __future__ import annotations

import bisect
import contextlib
import ctypes
import mmap
import threading

import numpy as np

ALIGN = 64  # the runtime's 64-B alignment of device allocations
PAGE = mmap.PAGESIZE
_SIZES = (1 << 40, 1 << 38, 1 << 36, 1 << 34, 1 << 32, 1 << 30)


class Arena:
    """Device address space: ``alloc``/``free`` of 64-B aligned ranges inside one mapping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mm: mmap.mmap | None = None
        self.base = 0
        self.end = 0
        self._top = 0
        self._free_starts: list[int] = []  # sorted starts of free ranges below _top
        self._free: dict[int, int] = {}  # start -> size

    def _reserve(self) -> None:
        flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0) | getattr(mmap, "MAP_NORESERVE", 0)
        prot = getattr(mmap, "PROT_READ", 0) | getattr(mmap, "PROT_WRITE", 0)
        last: Exception | None = None
        for size in _SIZES:
            try:
                mm = mmap.mmap(-1, size, flags=flags, prot=prot) if flags else mmap.mmap(-1, size)
            except (OSError, ValueError, OverflowError, TypeError) as e:
                last = e
                continue
            huge = getattr(mmap, "MADV_HUGEPAGE", None)
            if huge is not None:  # numpy asks the same for its large arrays: copies then cost what numpy's do
                with contextlib.suppress(OSError):  # THP off or unsupported: 4 KiB pages, slower copies, same results
                    mm.madvise(huge)
            self._mm = mm
            self.base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            self.end = self.base + size
            self._top = self.base
            return
        raise MemoryError(f"acl_bundle.sim cannot reserve a device address space: {last}")

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.end

    def overlaps(self, addr: int, n: int) -> bool:
        return self._mm is not None and addr < self.end and addr + max(n, 1) > self.base

    def alloc(self, nbytes: int, align: int = ALIGN) -> int | None:
        """Address of ``nbytes`` (rounded up to 64 B) of device address space aligned to ``align``
        (a multiple of 64), or None if full."""
        size = max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
        with self._lock:
            if self._mm is None:
                self._reserve()
            start = (self._top + align - 1) // align * align
            if start + size <= self.end:
                if start > self._top:  # the alignment gap stays free space
                    self._insert(self._top, start - self._top)
                self._top = start + size
                return start
            for i, fstart in enumerate(self._free_starts):
                have = self._free[fstart]
                a = (fstart + align - 1) // align * align
                if a + size <= fstart + have:
                    del self._free_starts[i]
                    del self._free[fstart]
                    if a > fstart:
                        self._insert(fstart, a - fstart)
                    if fstart + have > a + size:
                        self._insert(a + size, fstart + have - a - size)
                    return a
        return None

    def free(self, ptr: int, nbytes: int) -> None:
        """Give back a range from :meth:`alloc` (same ``nbytes``); its whole pages go back to the OS."""
        size = max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
        with self._lock:
            start, size = self._coalesce(ptr, size)
            self._insert(start, size)
            self._release_pages(start, size)

    def release_all(self) -> None:
        """Forget every allocation (simulator reset); addresses handed out so far are not reused first."""
        with self._lock:
            if self._mm is None:
                return
            self._free_starts, self._free = [], {}
            if self._top > self.base:
                self._insert(self.base, self._top - self.base)
                self._release_pages(self.base, self._top - self.base)

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """A uint8 numpy view of ``[ptr, ptr+nbytes)`` (the memory stays owned by the arena)."""
        # numpy's stubs list bytes-like types only; a ctypes array has the buffer protocol too
        return np.frombuffer((ctypes.c_char * max(nbytes, 1)).from_address(ptr), dtype=np.uint8)[:nbytes]  # type: ignore[call-overload]

    # -- free list (lock held) ---------------------------------------------------------
    def _insert(self, start: int, size: int) -> None:
        bisect.insort(self._free_starts, start)
        self._free[start] = size

    def _coalesce(self, start: int, size: int) -> tuple[int, int]:
        i = bisect.bisect_left(self._free_starts, start)
        if i < len(self._free_starts) and self._free_starts[i] == start + size:
            nxt = self._free_starts.pop(i)
            size += self._free.pop(nxt)
        if i > 0:
            prev = self._free_starts[i - 1]
            if prev + self._free[prev] == start:
                del self._free_starts[i - 1]
                start, size = prev, size + self._free.pop(prev)
        return start, size

    def _release_pages(self, start: int, size: int) -> None:
        lo = (start - self.base + PAGE - 1) // PAGE * PAGE
        hi = (start + size - self.base) // PAGE * PAGE
        dontneed = getattr(mmap, "MADV_DONTNEED", None)
        if hi > lo and dontneed is not None and self._mm is not None:
            self._mm.madvise(dontneed, lo, hi - lo)


ARENA = Arena()
