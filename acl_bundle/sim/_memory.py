"""Simulated device and host memory at real addresses, memcpy/memset, and ``acl.util``.

Device memory comes from the arena (:mod:`._arena`, an address space of its own), host
memory from numpy; foreign host addresses are checked against the process map
(:mod:`._procmaps`).
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._constants import (
    ACL_DDR_MEM,
    ACL_DEVICE,
    ACL_MEM_P2P_HUGE1G,
    ACL_MEMCPY_DEFAULT,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_MEMCPY_HOST_TO_HOST,
    NPY_TYPE_TO_NUMPY,
)
from . import _procmaps
from . import _state as S
from ._arena import ARENA
from ._state import LOCK, WORLD, SimulatorMisuse, api, bump, ints, set_err

KIND_NAMES = {
    ACL_MEMCPY_HOST_TO_HOST: "HOST_TO_HOST",
    ACL_MEMCPY_HOST_TO_DEVICE: "HOST_TO_DEVICE",
    ACL_MEMCPY_DEVICE_TO_HOST: "DEVICE_TO_HOST",
    ACL_MEMCPY_DEVICE_TO_DEVICE: "DEVICE_TO_DEVICE",
}
_SIDES = {
    ("host", "host"): ACL_MEMCPY_HOST_TO_HOST,
    ("host", "device"): ACL_MEMCPY_HOST_TO_DEVICE,
    ("device", "host"): ACL_MEMCPY_DEVICE_TO_HOST,
    ("device", "device"): ACL_MEMCPY_DEVICE_TO_DEVICE,
}
BIG_FILL = 64 << 20  # blocks up to this size are filled with 0xCD ("uninitialised")
_U64 = 1 << 64  # pyACL passes sizes as size_t: a negative int arrives as a huge count


@dataclass(eq=False)
class Block:
    """A live allocation, registered host region or checked foreign range; [ptr, ptr+size) is legal."""

    ptr: int
    size: int
    kind: str  # "device" | "host" | "bytes" | "numpy" | "foreign"
    buf: Any = None  # strong owner of the memory (numpy array / bytes), None for numpy regions
    ref: Any = None  # weakref to a registered numpy array
    device: int = -1
    accounted: int = 0
    dvpp: bool = False  # device memory from acl.media.dvpp_malloc

    def owner(self) -> Any:
        """A strong reference keeping the memory alive (None if it died, or is not ours to keep)."""
        if self.ref is not None:
            return self.ref()
        return self.buf


def alloc_aligned(size: int, *, fill: int | None = 0xCD) -> tuple[np.ndarray, int, int]:
    """Host memory (numpy) of ``size`` bytes rounded up to 32 B + 32 B, 64-B aligned: (view, ptr, rounded)."""
    rounded = device_rounding(size)
    raw = np.empty(rounded + 64, dtype=np.uint8)
    base = raw.ctypes.data
    off = (-base) % 64
    view = raw[off : off + rounded]
    if fill is not None and rounded <= BIG_FILL:
        view.fill(fill)
    elif fill == 0:
        view.fill(0)
    return view, base + off, rounded


def device_rounding(size: int) -> int:
    """The bytes a device allocation of ``size`` occupies: rounded up to 32 B plus 32 B (pyACL malloc docs)."""
    return (size + 31) // 32 * 32 + 32


def account(device: int, nbytes: int) -> bool:
    """Reserve ``nbytes`` of device memory (LOCK held); False if it does not fit."""
    used = WORLD.device_used.get(device, 0)
    if used + nbytes > S.CONFIG.device_memory:
        return False
    WORLD.device_used[device] = used + nbytes
    return True


def unaccount(device: int, nbytes: int) -> None:
    WORLD.device_used[device] = WORLD.device_used.get(device, 0) - nbytes


def device_alloc(
    device: int, size: int, *, fill: int | None = 0xCD, align: int = 64
) -> tuple[np.ndarray, int, int] | None:
    """Device memory from the arena, accounted on ``device`` (LOCK held): (view, ptr, accounted) or None."""
    rounded = device_rounding(size)
    if not account(device, rounded):
        return None
    ptr = ARENA.alloc(rounded, align)
    if ptr is None:
        unaccount(device, rounded)
        return None
    view = ARENA.view(ptr, rounded)
    if fill is not None and (rounded <= BIG_FILL or fill == 0):
        view.fill(fill)
    return view, ptr, rounded


def device_release(device: int, ptr: int, accounted: int) -> None:
    """Undo :func:`device_alloc` (LOCK held)."""
    WORLD.device_frees += 1
    unaccount(device, accounted)
    ARENA.free(ptr, accounted)


def new_device_block(device: int, size: int, *, dvpp: bool = False) -> Block | None:
    """Allocate a device block (LOCK held); None when device memory is exhausted.

    ``dvpp``: acl.media.dvpp_malloc memory, 128-B aligned (pyACL dvpp_malloc page)."""
    got = device_alloc(device, size, align=128 if dvpp else 64)
    if got is None:
        return None
    view, ptr, rounded = got
    blk = Block(ptr, size, "device", buf=view, device=device, accounted=rounded, dvpp=dvpp)
    WORLD.device_blocks.add(ptr, blk)
    bump("mallocs")
    return blk


def free_device_block(blk: Block) -> None:
    """Remove a live device block and give its memory back (LOCK held)."""
    WORLD.device_blocks.remove(blk.ptr, blk)
    device_release(blk.device, blk.ptr, blk.accounted)


def side_of(blk: Block) -> str:
    """'host' or 'device' as the runtime sees it (in ACL_DEVICE run mode app memory is device memory)."""
    if blk.kind == "device":
        return "device"
    return "device" if S.CONFIG.run_mode == ACL_DEVICE else "host"


def resolve(addr: Any, n: int, *, write: bool = False) -> tuple[Block | None, str]:
    """Where ``[addr, addr+n)`` lives (LOCK held): (block, "") or (None, why it is not valid memory).

    Device-side addresses (the arena) must lie in ONE live device allocation.  Host-side
    addresses are accepted inside a malloc_host block or a registered region, and
    otherwise when the process map says they are mapped readable (writable for a
    destination) memory: real ACL copies from any host address (arr.ctypes.data ...).
    """
    if not isinstance(addr, int) or addr <= 0 or n < 0:
        return None, f"{addr!r} is not a valid address"
    span = max(n, 1)
    if ARENA.overlaps(addr, span):
        b = WORLD.device_blocks.find(addr, span)
        if b is not None:
            return b, ""
        whole = WORLD.device_blocks.find(addr, 1)
        if whole is not None:
            return None, f"[{addr:#x}, +{n}) runs past the end of its device block {whole.ptr:#x}+{whole.size}"
        return None, f"{addr:#x} is device address space but not inside any live device allocation (freed?)"
    b = WORLD.host_blocks.find(addr, span)
    if b is None:
        b = WORLD.regions.find(addr, span, alive=lambda r: r.owner() is not None)
    if b is not None:
        return b, ""
    dead = WORLD.freed_host.find(addr, 1)
    if dead is not None:
        return (
            None,
            f"{addr:#x} is in malloc_host block {dead.ptr:#x}+{dead.size}, which free_host gave back (use after free)",
        )
    if _procmaps.mapped(addr, span, write=write):
        return Block(addr, span, "foreign"), ""
    need = "readable and writable" if write else "readable"
    return (
        None,
        f"[{addr:#x}, +{n}) is not inside any live allocation, registered region or {need} host memory of this process",
    )


def locate(addr: int, n: int) -> Block | None:
    """The valid memory holding [addr, addr+n), or None (LOCK held)."""
    return resolve(addr, n)[0]


def device_range(addr: int, n: int) -> Block | None:
    """The memory holding [addr, addr+max(n,1)) if the runtime sees it as device memory (LOCK held)."""
    b = locate(addr, max(n, 1))
    if b is None or side_of(b) != "device":
        return None
    return b


def describe(addr: int) -> str:
    """Human description of an address for error messages (LOCK held)."""
    if not isinstance(addr, int):
        return repr(addr)
    if addr <= 0:
        return f"{addr:#x}" if addr else "NULL"
    b = locate(addr, 1)
    if b is None:
        dead = WORLD.freed_host.find(addr, 1)
        if dead is not None:
            return f"{addr:#x} (in malloc_host block {dead.ptr:#x}+{dead.size}, freed already)"
        return f"{addr:#x} (not in any live allocation)"
    if b.kind == "foreign":
        return f"{addr:#x} (host memory the simulator did not allocate)"
    return f"{addr:#x} (in {b.kind} block {b.ptr:#x}+{b.size})"


# ---- acl.rt memory -------------------------------------------------------------------
@api("acl.rt.malloc", "t1", ctx=True, pre=ints("size", "policy"))
def malloc(size: int, policy: int) -> tuple[int, int]:
    """Device memory; size rounded to 32 B + 32 B, 64-B aligned, uninitialised (0xCD)."""
    if size <= 0:
        return 0, set_err(S.E_PARAM, f"malloc: size {size} must be > 0")
    if policy < 0:
        return 0, set_err(S.E_PARAM, f"malloc: invalid policy {policy}")
    return allocate("malloc", size)


def allocate(name: str, size: int, *, dvpp: bool = False) -> tuple[int, int]:
    """``(ptr, 0)`` for a new block of the current context's device, or ``(0, ACL_ERROR_BAD_ALLOC)`` set for
    API ``name`` when device memory is exhausted (acl.rt.malloc and acl.media.dvpp_malloc)."""
    with LOCK:
        dev = S.current_context().device
        blk = new_device_block(dev, size, dvpp=dvpp)
        if blk is None:
            return 0, set_err(S.E_ALLOC, f"{name}: {size} bytes exceed free device memory on device {dev}")
        return blk.ptr, 0


@api("acl.rt.free", "ret", ctx=True, pre=ints("dev_ptr"))
def free(dev_ptr: int) -> int:
    with LOCK:
        blk = WORLD.device_blocks.get(dev_ptr)
        if blk is None:
            return set_err(
                S.E_RT_PARAM, f"free: {describe(dev_ptr)} is not the start of a live device block (double free?)"
            )
        if blk.dvpp:
            return set_err(
                S.E_RT_PARAM,
                f"free: {dev_ptr:#x} came from acl.media.dvpp_malloc; give it back with acl.media.dvpp_free",
            )
        free_device_block(blk)
    return 0


# Freed malloc_host blocks keep their memory (so nothing else of the process can be given
# their addresses) and are refused until malloc_host hands the same block out again; past
# these bounds the oldest are let go (their addresses can then be reused by anyone).
QUARANTINE_BYTES = 256 << 20
QUARANTINE_BLOCKS = 4096


def _quarantine(blk: Block) -> None:
    """Keep a block free_host gave back: its range is refused as freed (LOCK held)."""
    WORLD.freed_host.add(blk.ptr, blk)
    WORLD.freed_host_order[blk.ptr] = blk
    WORLD.freed_host_bytes += blk.accounted
    while WORLD.freed_host_bytes > QUARANTINE_BYTES or len(WORLD.freed_host_order) > QUARANTINE_BLOCKS:
        old = WORLD.freed_host_order.pop(next(iter(WORLD.freed_host_order)))
        _unquarantine(old)


def _unquarantine(blk: Block) -> None:
    WORLD.freed_host.remove(blk.ptr, blk)
    WORLD.freed_host_order.pop(blk.ptr, None)
    WORLD.freed_host_bytes -= blk.accounted


def _reuse_freed_host(rounded: int) -> Block | None:
    """The most recently freed block of this rounded size, out of quarantine (LOCK held)."""
    for blk in reversed(WORLD.freed_host_order.values()):
        if blk.accounted == rounded:
            _unquarantine(blk)
            return blk
    return None


@api("acl.rt.malloc_host", "t1", ctx=True, pre=ints("size"))
def malloc_host(size: int) -> tuple[int, int]:
    """Host memory, 64-B aligned, uninitialised (0xCD); a freed block of the same size is handed out again first."""
    if size <= 0:
        return 0, set_err(S.E_PARAM, f"malloc_host: size {size} must be > 0")
    with LOCK:
        old = _reuse_freed_host(device_rounding(size))
    if old is not None:
        view, ptr, rounded = old.buf, old.ptr, old.accounted
        if rounded <= BIG_FILL:
            view.fill(0xCD)
    else:
        view, ptr, rounded = alloc_aligned(size)
    with LOCK:
        WORLD.host_blocks.add(ptr, Block(ptr, size, "host", buf=view, accounted=rounded))
    bump("host_mallocs")
    return ptr, 0


@api("acl.rt.free_host", "ret", ctx=True, pre=ints("host_ptr"))
def free_host(host_ptr: int) -> int:
    with LOCK:
        blk = WORLD.host_blocks.get(host_ptr)
        if blk is None:
            return set_err(
                S.E_RT_PARAM, f"free_host: {describe(host_ptr)} is not the start of a live malloc_host block"
            )
        WORLD.host_blocks.remove(host_ptr, blk)
        _quarantine(blk)
    return 0


def _check_copy_args(name: str, dst: int, dest_max: int, src: int, count: int, kind: int) -> int | None:
    """The checks ACL and the runtime make before looking at memory: a code, 0 for "nothing to do", or None.

    Order as in hicann/runtime: count 0 succeeds first (memory.cpp:653, :689), NULL pointers
    and kinds other than 0..5 are ACL_ERROR_INVALID_PARAM (memory.cpp:657, MemcpyKindTranslate
    :162-198), then dest_max 0 or count > dest_max is 107000 (api_error.cc:2135-2139, MemcpyAsync
    likewise).  ``kind`` only has to be valid: since CANN 8.0 it is documented as reserved and
    the direction follows from the addresses, so it is not checked against them.
    """
    if count == 0:
        return 0
    if dst == 0 or src == 0:
        return set_err(S.E_PARAM, f"{name}: {'dst' if dst == 0 else 'src'} is NULL")
    if kind not in (*KIND_NAMES, ACL_MEMCPY_DEFAULT, ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE):
        return set_err(S.E_PARAM, f"{name}: invalid memcpy kind {kind} (expected 0..5)")
    if dest_max % _U64 == 0 or count % _U64 > dest_max % _U64:
        return set_err(S.E_RT_PARAM, f"{name}: count {count} exceeds dest_max {dest_max}")
    return None


def _prepare_copy(name: str, dst: int, src: int, count: int) -> tuple[int, Callable[[], None] | None]:
    """Validate both ranges (LOCK held); return (ret, do_copy) copying in the real direction."""
    db, msg = resolve(dst, count, write=True)
    if db is None:
        return set_err(S.E_RT_PARAM, f"{name}: dst {msg}"), None
    sb, msg = resolve(src, count)
    if sb is None:
        return set_err(S.E_RT_PARAM, f"{name}: src {msg}"), None
    direction = KIND_NAMES[_SIDES[(side_of(sb), side_of(db))]]
    keep = (db.owner(), sb.owner())

    def do() -> None:
        _ = keep
        ctypes.memmove(dst, src, count)
        bump("bytes_copied", count, direction)
        bump("memcpy_calls", 1, direction)

    return 0, do


@api("acl.rt.memcpy", "ret", pre=ints("dst", "dest_max", "src", "count", "kind"))
def memcpy(dst: int, dest_max: int, src: int, count: int, kind: int) -> int:
    """Synchronous copy in the direction the addresses give (``kind`` need only be 0..5)."""
    ret = _check_copy_args("memcpy", dst, dest_max, src, count, kind)
    if ret is not None:
        return ret
    if dst == src:  # api_error.cc:2144: same address, nothing to copy
        return 0
    with LOCK:
        if S.current_context() is None:  # api_impl.cc:2750
            return set_err(
                S.E_CTX_NULL, "memcpy: no current context in this thread (call acl.rt.set_device or set_context)"
            )
        ret, do = _prepare_copy("memcpy", dst, src, count)
    if do is not None:
        do()
    return ret


@api("acl.rt.memcpy_async", "ret", pre=ints("dst", "dest_max", "src", "count", "kind", "stream"))
def memcpy_async(dst: int, dest_max: int, src: int, count: int, kind: int, stream: int) -> int:
    """Validated now; the copy runs when the stream is waited for (0: the context's default stream)."""
    from ._rt import check_stream, enqueue

    ret = _check_copy_args("memcpy_async", dst, dest_max, src, count, kind)
    if ret is not None:
        return ret
    with LOCK:
        ret = check_stream("memcpy_async", stream)
        if ret:
            return ret
        ret, do = _prepare_copy("memcpy_async", dst, src, count)
        if ret:
            return ret
        return enqueue(stream, do)


def _memset_checks(name: str, dev_ptr: int, max_count: int, count: int) -> int | None:
    """The checks both memsets share, in the runtime's order: a code, 0 for "nothing to do", or None.

    count 0 succeeds before anything else (hicann/runtime src/acl/aclrt_impl/memory.cpp:674-677,
    :742-745); a NULL pointer is ACL_ERROR_INVALID_PARAM (memory.cpp:678, :746); then the
    runtime needs a current context (api_impl.cc:3205-3206 MemSetSync, :3219-3220 MemsetAsync).
    count > max_count is 107000: the async path checks it itself (api_error.cc:3133-3135), the
    sync one in the driver (drvMemsetD8, npu_driver_mem.cc:772-784: DRV_ERROR_INVALID_VALUE ->
    RT_ERROR_DRV_INPUT -> 107000, errcode_manage.cc:565, :86).
    """
    if count % _U64 == 0:
        return 0
    if dev_ptr == 0:
        return set_err(S.E_PARAM, f"{name}: dev_ptr is NULL")
    if S.current_context() is None:
        return set_err(
            S.E_CTX_NULL, f"{name}: no current context in this thread (call acl.rt.set_device or set_context)"
        )
    if count % _U64 > max_count % _U64:
        return set_err(S.E_RT_PARAM, f"{name}: count {count} exceeds max_count {max_count}")
    return None


def _prepare_memset(name: str, dev_ptr: int, value: int, count: int) -> tuple[int, Callable[[], int] | None]:
    """Validate the range (LOCK held); the work writes the value's low byte (the driver's UINT8 cast)."""
    blk, msg = resolve(dev_ptr, count, write=True)
    if blk is None:
        return set_err(S.E_RT_PARAM, f"{name}: dev_ptr {msg}"), None
    keep = blk.owner()
    byte = value & 0xFF

    def do() -> int:
        _ = keep
        ctypes.memset(dev_ptr, byte, count)
        return 0

    return 0, do


@api("acl.rt.memset", "ret", pre=ints("dev_ptr", "max_count", "value", "count"))
def memset(dev_ptr: int, max_count: int, value: int, count: int) -> int:
    """Synchronous memset of host or device memory by address (aclrtMemset)."""
    with LOCK:
        ret = _memset_checks("memset", dev_ptr, max_count, count)
        if ret is not None:
            return ret
        ret, do = _prepare_memset("memset", dev_ptr, value, count)
    return do() if do is not None else ret


@api("acl.rt.memset_async", "ret", pre=ints("dev_ptr", "max_count", "value", "count", "stream"))
def memset_async(dev_ptr: int, max_count: int, value: int, count: int, stream: int) -> int:
    """aclrtMemsetAsync: validated now, written when the stream runs; another context's stream -> 107003
    (api_impl.cc:3227-3228)."""
    from ._rt import check_stream, enqueue

    with LOCK:
        ret = _memset_checks("memset_async", dev_ptr, max_count, count)
        if ret is not None:
            return ret
        ret = check_stream("memset_async", stream)
        if ret:
            return ret
        ret, do = _prepare_memset("memset_async", dev_ptr, value, count)
        if do is None:
            return ret
        return enqueue(stream, do)


@api("acl.rt.get_mem_info", "t2", ctx=True, pre=ints("attr"))
def get_mem_info(attr: int) -> tuple[int, int, int]:
    """Free and total device memory; every aclrtMemAttr (0..17) reports the same simulated pool."""
    if not ACL_DDR_MEM <= attr <= ACL_MEM_P2P_HUGE1G:  # api_error.cc:3185-3188
        return (
            0,
            0,
            set_err(S.E_MEM_TYPE, f"get_mem_info: invalid attr {attr} (expected {ACL_DDR_MEM}..{ACL_MEM_P2P_HUGE1G})"),
        )
    with LOCK:
        dev = S.current_context().device
        total = S.CONFIG.device_memory
        return max(0, total - WORLD.device_used.get(dev, 0)), total, 0


# ---- acl.util ------------------------------------------------------------------------
_BYTES_LRU: collections.OrderedDict[int, Block] = collections.OrderedDict()
_BYTES_LRU_MAX = 4096


# numpy regions whose array died; purged under LOCK at the next registration (a weakref
# callback may fire in the middle of a locked section, so it only records).
_DEAD: collections.deque = collections.deque()


def _register(blk: Block) -> None:
    with LOCK:
        while _DEAD:
            _unregister(_DEAD.popleft())
        if blk.kind == "bytes":
            old = _BYTES_LRU.pop(blk.ptr, None)
            if old is not None:
                _unregister(old)
            _BYTES_LRU[blk.ptr] = blk
            while len(_BYTES_LRU) > _BYTES_LRU_MAX:
                _, ev = _BYTES_LRU.popitem(last=False)
                _unregister(ev)
        else:  # numpy: once per live array; drop dead registrations at the same start
            for o in list(WORLD.regions.by_start.get(blk.ptr, [])):
                own = o.owner()
                if own is None:
                    WORLD.regions.remove(o.ptr, o)
                elif o.kind == "numpy" and own is blk.ref() and o.size == blk.size:
                    return  # already registered
        WORLD.regions.add(blk.ptr, blk)


def _unregister(blk: Block) -> None:
    with contextlib.suppress(KeyError, ValueError):
        WORLD.regions.remove(blk.ptr, blk)


def clear_regions() -> None:
    _BYTES_LRU.clear()
    _DEAD.clear()


@api("acl.util.bytes_to_ptr", "int0")
def bytes_to_ptr(data: bytes) -> int:
    """Address of the bytes object's own buffer (no copy); memcpy into it mutates it in place."""
    if not isinstance(data, bytes):
        raise ValueError(f"bytes_to_ptr: argument must be bytes, not {type(data).__name__}")
    ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    _register(Block(ptr, len(data), "bytes", buf=data))
    return ptr


def _np_region(arr: np.ndarray, ptr: int) -> Block:
    """A region (``arr`` at ``ptr``) that unregisters itself (lazily) when ``arr`` is garbage-collected."""
    holder: list[Block] = []
    blk = Block(ptr, arr.nbytes, "numpy", ref=weakref.ref(arr, lambda _r: _DEAD.extend(holder)))
    holder.append(blk)
    return blk


@api("acl.util.numpy_to_ptr", "int0")
def numpy_to_ptr(ndarray: np.ndarray) -> int:
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"numpy_to_ptr: expected numpy.ndarray, not {type(ndarray).__name__}")
    if not ndarray.flags.c_contiguous:
        warnings.warn("numpy_to_ptr: array is not C-contiguous; use numpy_contiguous_to_ptr", stacklevel=2)
    ptr = int(ndarray.ctypes.data)  # ~1.4 us each: read once
    _register(_np_region(ndarray, ptr))
    return ptr


@api("acl.util.numpy_contiguous_to_ptr", "t1")
def numpy_contiguous_to_ptr(ndarray: np.ndarray) -> tuple[int, np.ndarray]:
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"numpy_contiguous_to_ptr: expected numpy.ndarray, not {type(ndarray).__name__}")
    out = np.ascontiguousarray(ndarray)
    ptr = int(out.ctypes.data)
    _register(_np_region(out, ptr))
    return ptr, out


def _host_view(name: str, ptr: int, nbytes: int) -> tuple[Block, Any]:
    with LOCK:
        blk, msg = resolve(ptr, nbytes)
        if blk is None:
            raise SimulatorMisuse(f"{name}: {msg} (a real process would crash)")
        if blk.kind == "device" and S.CONFIG.run_mode != ACL_DEVICE:
            raise SimulatorMisuse(
                f"{name}: {ptr:#x} is device memory; the host cannot dereference it in ACL_HOST run mode"
            )
        return blk, blk.owner()


@api("acl.util.ptr_to_bytes", "str", pre=ints("ptr", "size"))
def ptr_to_bytes(ptr: int, size: int) -> bytes:
    if size < 0:
        raise ValueError(f"ptr_to_bytes: negative size {size}")
    if size == 0:
        return b""
    _blk, keep = _host_view("ptr_to_bytes", ptr, size)
    out = ctypes.string_at(ptr, size)
    del keep
    return out


@api("acl.util.ptr_to_numpy", "none")
def ptr_to_numpy(ptr: int, shape: tuple, npy_type: int) -> np.ndarray:
    """A writable view (no copy) onto known host memory."""
    S.check_int(("ptr", ptr), ("npy_type", npy_type))
    if not isinstance(shape, tuple):
        raise TypeError("ptr_to_numpy: shape must be a tuple")
    dt = NPY_TYPE_TO_NUMPY.get(npy_type)
    if dt is None:
        raise ValueError(f"ptr_to_numpy: unsupported npy type {npy_type}")
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    _blk, keep = _host_view("ptr_to_numpy", ptr, n)
    carr = (ctypes.c_char * max(n, 1)).from_address(ptr)
    carr._keep = keep  # type: ignore[attr-defined]
    return np.frombuffer(carr, dtype=dt, count=n // dt.itemsize).reshape(shape)  # type: ignore[call-overload]  # ctypes buffer
