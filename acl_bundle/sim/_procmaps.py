"""Is a foreign host address really readable (writable) memory of this process?

Real ACL copies from and to any host address (``arr.ctypes.data``, a tensor's
``data_ptr()``); the simulator accepts the same, but only after checking, against the
kernel's own record of the process's mappings (``/proc/self/maps``), that the whole range
is mapped with the needed permissions: a pointer is never trusted, so a bad one is an
error code, not a crash of the simulated process.  The map is read afresh on every check
(mappings come and go with every large allocation), and only for addresses the simulator
did not hand out itself (registered ``numpy_to_ptr``/``bytes_to_ptr`` memory is found
without it); reading the map costs far more than that lookup, so hot loops should keep
registering their arrays.
"""
from __future__ import annotations

import re

MAPS = "/proc/self/maps"
_LINE = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) (\S{4})", re.MULTILINE)


def available() -> bool:
    """Whether this platform exposes the process map (Linux); elsewhere foreign addresses are refused."""
    try:
        with open(MAPS, "rb"):
            return True
    except OSError:
        return False


def mapped(addr: int, n: int, *, write: bool) -> bool:
    """True when ``[addr, addr+n)`` lies in contiguous mappings that are readable (and writable)."""
    if addr <= 0 or n < 0:
        return False
    try:
        with open(MAPS, "rb") as f:
            text = f.read()
    except OSError:
        return False
    end = addr + max(n, 1)
    pos = addr
    for m in _LINE.finditer(text):  # the kernel lists mappings in address order
        lo, hi = int(m.group(1), 16), int(m.group(2), 16)
        if hi <= pos:
            continue
        if lo > pos:
            return False  # a hole before (or inside) the range
        perms = m.group(3)
        if perms[0:1] != b"r" or (write and perms[1:2] != b"w"):
            return False
        pos = hi
        if pos >= end:
            return True
    return False
