"""malloc/free/memcpy/memset and acl.util."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from acl_bundle import _constants as C
from acl_bundle import sim

acl = sim.acl
H2D, D2H, D2D, H2H = (C.ACL_MEMCPY_HOST_TO_DEVICE, C.ACL_MEMCPY_DEVICE_TO_HOST,
                      C.ACL_MEMCPY_DEVICE_TO_DEVICE, C.ACL_MEMCPY_HOST_TO_HOST)


def test_malloc_alignment_and_accounting(dev):
    p, ret = acl.rt.malloc(100, 2)
    assert ret == 0 and p % 64 == 0
    assert sim.live_resources()["device_blocks"] == {p: 100}
    free, total, ret = acl.rt.get_mem_info(0)
    assert ret == 0 and total == 8 << 30 and total - free == 160  # 100 -> 128 + 32
    assert acl.rt.free(p) == 0
    assert acl.rt.free(p) == 107000  # double free
    assert acl.rt.malloc(0, 2) == (0, 100000)
    assert acl.rt.malloc(-5, 2) == (0, 100000)
    assert sim.stats()["mallocs"] == 1
    with pytest.raises(TypeError):
        acl.rt.malloc("10", 2)


def test_malloc_beyond_device_memory(dev):
    sim.configure(device_memory=1 << 20)
    try:
        assert acl.rt.malloc(2 << 20, 2) == (0, 207001)
        assert "exceed" in acl.get_recent_err_msg()
        p, ret = acl.rt.malloc(512 << 10, 2)
        assert ret == 0
        assert acl.rt.get_mem_info(0)[1] == 1 << 20
        assert acl.rt.malloc(512 << 10, 2)[1] == 207001  # padding pushes it over
        assert acl.rt.free(p) == 0
    finally:
        sim.configure(device_memory=8 << 30)


def test_host_malloc(dev):
    p, ret = acl.rt.malloc_host(64)
    assert ret == 0
    assert sim.live_resources()["host_blocks"] == {p: 64}
    assert acl.rt.free(p) == 107000  # not a device block
    assert acl.rt.free_host(p) == 0
    assert acl.rt.free_host(p) == 107000
    assert sim.stats()["host_mallocs"] == 1


def test_memcpy_round_trip_and_stats(dev):
    p, _ = acl.rt.malloc(64, 2)
    a = np.arange(16, dtype=np.float32)
    assert acl.rt.memcpy(p, 64, acl.util.numpy_to_ptr(a), 64, H2D) == 0
    q, _ = acl.rt.malloc(64, 2)
    assert acl.rt.memcpy(q, 64, p, 64, D2D) == 0
    out = bytes(64)
    assert acl.rt.memcpy(acl.util.bytes_to_ptr(out), 64, q, 64, D2H) == 0
    assert np.array_equal(np.frombuffer(out, np.float32), a)  # bytes mutated in place
    b = np.zeros(16, np.float32)
    assert acl.rt.memcpy(acl.util.numpy_to_ptr(b), 64, q, 64, C.ACL_MEMCPY_DEFAULT) == 0
    assert np.array_equal(a, b)
    s = sim.stats()
    assert s["bytes_copied"] == {"HOST_TO_DEVICE": 64, "DEVICE_TO_HOST": 128, "DEVICE_TO_DEVICE": 64, "HOST_TO_HOST": 0}
    assert s["memcpy_calls"]["DEVICE_TO_HOST"] == 2
    acl.rt.free(p)
    acl.rt.free(q)


def test_memcpy_count_checks(dev):
    """count 0 first, then NULL/kind (100000), then count > dest_max (107000).

    memory.cpp:653-663, api_error.cc:2135-2139."""
    p, _ = acl.rt.malloc(256, 2)
    src = np.zeros(400, np.uint8)
    sp = acl.util.numpy_to_ptr(src)
    assert acl.rt.memcpy(p, 256, sp, 400, H2D) == 107000
    assert acl.get_recent_err_msg().startswith("memcpy: count 400 exceeds dest_max 256")
    assert acl.rt.memcpy(p, 256, sp, -1, H2D) == 107000  # size_t: -1 is a huge count
    assert acl.rt.memcpy(p, 0, sp, 16, H2D) == 107000  # dest_max 0
    assert acl.rt.memcpy(p, 256, sp, 16, 9) == 100000  # not an aclrtMemcpyKind
    assert acl.rt.memcpy(0, 256, sp, 16, H2D) == 100000 and acl.rt.memcpy(p, 256, 0, 16, H2D) == 100000
    # count 0 succeeds before anything is looked at: bad kind, NULL, bad address, no context
    assert acl.rt.memcpy(p, 256, sp, 0, 9) == 0
    assert acl.rt.memcpy(0, 0, 12345, 0, H2D) == 0
    assert acl.rt.memcpy_async(0, 0, 0, 0, 77, 999) == 0
    assert sim.stats()["bytes_copied"]["HOST_TO_DEVICE"] == 0
    acl.rt.free(p)


def test_memcpy_count_zero_before_the_context_check():
    assert acl.rt.memcpy(12345, 8, 12345, 0, H2D) == 0  # no context in this thread, not even set_device
    assert acl.rt.memcpy(12345, 8, 54321, 8, H2D) == 107002


def test_memcpy_ranges_must_be_in_one_allocation(dev):
    blocks = [acl.rt.malloc(64, 2)[0] for _ in range(3)]
    a, b = sorted(blocks)[:2]
    host = np.zeros(256, np.uint8)
    hp = acl.util.numpy_to_ptr(host)
    assert acl.rt.memcpy(a, 256, hp, 65, H2D) == 107000  # past the end
    assert "past the end" in acl.get_recent_err_msg()
    assert acl.rt.memcpy(a + 32, 256, hp, 64, H2D) == 107000  # straddles into padding / next block
    n = b - a + 16
    assert acl.rt.memcpy(a, n, hp, n, H2D) == 107000  # straddles two blocks
    assert "dst" in acl.get_recent_err_msg()
    assert acl.rt.memcpy(hp, 256, a, 128, D2H) == 107000  # src past the end
    assert acl.rt.memcpy(12345, 64, hp, 16, H2D) == 107000  # unmapped address
    assert "not inside any live allocation" in acl.get_recent_err_msg()
    for p in blocks:
        acl.rt.free(p)
    assert acl.rt.memcpy(a, 64, hp, 16, H2D) == 107000  # freed block: still device address space
    assert "not inside any live device allocation" in acl.get_recent_err_msg()
    assert acl.rt.memcpy(hp, 64, a, 16, D2H) == 107000
    assert not host.any()


def test_memcpy_kind_is_ignored_the_addresses_give_the_direction(dev):
    """pyACL 8.0+: kind is reserved, the direction comes from the addresses; 0..5 are accepted."""
    p, _ = acl.rt.malloc(64, 2)
    host = np.arange(64, dtype=np.uint8)
    back = np.zeros(64, np.uint8)
    hp, bp = acl.util.numpy_to_ptr(host), acl.util.numpy_to_ptr(back)
    assert acl.rt.memcpy(p, 64, hp, 64, D2H) == 0  # "wrong" kind: copies host -> device anyway
    assert acl.rt.memcpy(bp, 64, p, 64, C.ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE) == 0  # kind 5: device -> host
    assert np.array_equal(back, host)
    assert acl.rt.memcpy(bp, 64, hp, 64, D2D) == 0
    s = sim.stats()
    assert s["bytes_copied"] == {"HOST_TO_DEVICE": 64, "DEVICE_TO_HOST": 64, "DEVICE_TO_DEVICE": 0, "HOST_TO_HOST": 64}
    assert acl.rt.memcpy(hp, 64, hp, 64, D2D) == 0 and sim.stats()["memcpy_calls"]["HOST_TO_HOST"] == 1  # dst == src
    acl.rt.free(p)


def test_memcpy_from_foreign_host_memory(dev):
    """arr.ctypes.data (never registered) is accepted, being mapped read-write memory of the process."""
    p, _ = acl.rt.malloc(64, 2)
    a = np.arange(16, dtype=np.float32)
    out = np.zeros(16, np.float32)
    assert acl.rt.memcpy(p, 64, a.ctypes.data, 64, H2D) == 0
    assert acl.rt.memcpy(out.ctypes.data, 64, p, 64, D2H) == 0
    assert np.array_equal(out, a)
    assert sim.stats()["bytes_copied"]["DEVICE_TO_HOST"] == 64
    acl.rt.free(p)


def test_foreign_destination_must_be_writable(dev):
    """A read-only mapping is a valid source but not a destination: checked in /proc/self/maps."""
    import mmap

    p, _ = acl.rt.malloc(64, 2)
    ro = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ)
    try:
        addr = np.frombuffer(ro, np.uint8).ctypes.data
        assert acl.rt.memcpy(p, 64, addr, 64, H2D) == 0  # readable
        assert acl.rt.memcpy(addr, 64, p, 64, D2H) == 107000  # not writable: no crash, an error
        assert "writable" in acl.get_recent_err_msg()
        assert acl.rt.memcpy(addr + mmap.PAGESIZE - 8, 64, p, 16, D2H) == 107000
    finally:
        ro.close()
    acl.rt.free(p)


def test_foreign_range_must_be_mapped_to_its_end(dev):
    import mmap

    p, _ = acl.rt.malloc(2 * mmap.PAGESIZE, 2)
    m = mmap.mmap(-1, 3 * mmap.PAGESIZE)
    base = np.frombuffer(m, np.uint8).ctypes.data
    m.close()  # now unmapped
    m2 = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        assert acl.rt.memcpy(p, 2 * mmap.PAGESIZE, base, 64, H2D) == 107000  # unmapped
        a2 = np.frombuffer(m2, np.uint8).ctypes.data
        assert acl.rt.memcpy(p, 2 * mmap.PAGESIZE, a2, mmap.PAGESIZE, H2D) == 0
    finally:
        m2.close()
    acl.rt.free(p)


def test_device_run_mode_app_memory_is_device(dev):
    sim.configure(run_mode=C.ACL_DEVICE)
    try:
        assert acl.rt.get_run_mode() == (C.ACL_DEVICE, 0)
        p, _ = acl.rt.malloc(64, 2)
        a = np.arange(64, dtype=np.uint8)
        ap = acl.util.numpy_to_ptr(a)
        assert acl.rt.memcpy(p, 64, ap, 64, H2D) == 0  # the kind is not checked ...
        assert acl.rt.memcpy(p, 64, ap, 64, D2D) == 0
        assert sim.stats()["bytes_copied"]["DEVICE_TO_DEVICE"] == 128  # ... app memory is device memory
        view = acl.util.ptr_to_numpy(p, (64,), 2)  # fine on device memory in device mode
        assert np.array_equal(view, a)
        acl.rt.free(p)
    finally:
        sim.configure(run_mode=C.ACL_HOST)


def test_memset(dev):
    p, _ = acl.rt.malloc(32, 2)
    assert acl.rt.memset(p, 32, 7, 32) == 0
    out = np.zeros(32, np.uint8)
    acl.rt.memcpy(acl.util.numpy_to_ptr(out), 32, p, 32, D2H)
    assert (out == 7).all()
    assert acl.rt.memset(p, 16, 0, 32) == 107000  # count > max_count: the driver refuses it
    assert acl.rt.memset(p, 64, 0, 64) == 107000  # past the block
    assert acl.rt.memset(0, 0, 0, 0) == 0  # count 0 first (memory.cpp:674)
    assert acl.rt.memset(0, 8, 0, 8) == 100000  # NULL (memory.cpp:678)
    assert acl.rt.memset(p, 32, 0x1FF, 4) == 0  # the driver writes the value's low byte
    acl.rt.memcpy(acl.util.numpy_to_ptr(out), 32, p, 32, D2H)
    assert list(out[:5]) == [0xFF, 0xFF, 0xFF, 0xFF, 7]
    acl.rt.free(p)


def test_memset_of_host_memory_and_without_a_context(dev):
    h, _ = acl.rt.malloc_host(64)
    assert acl.rt.memset(h, 64, 3, 64) == 0
    assert acl.util.ptr_to_bytes(h, 64) == b"\x03" * 64
    arr = np.zeros(16, np.uint8)
    assert acl.rt.memset(acl.util.numpy_to_ptr(arr), 16, 9, 16) == 0 and (arr == 9).all()
    acl.rt.free_host(h)
    import threading
    got = []
    t = threading.Thread(target=lambda: got.append((acl.rt.memset(acl.util.numpy_to_ptr(arr), 16, 1, 16),
                                                    acl.rt.memset(0, 0, 1, 0))))
    t.start()
    t.join()
    assert got == [(107002, 0)] and (arr == 9).all()  # no context in that thread; count 0 needs none


def test_memset_async_runs_with_its_stream(dev):
    st, _ = acl.rt.create_stream()
    p, _ = acl.rt.malloc(32, 2)
    h, _ = acl.rt.malloc_host(32)
    assert acl.rt.memset(p, 32, 1, 32) == 0
    assert acl.rt.memset_async(p, 32, 5, 16, st) == 0
    assert acl.rt.memset_async(h, 32, 6, 32, st) == 0  # host memory by address, as the docs allow
    out = np.zeros(32, np.uint8)
    acl.rt.memcpy(acl.util.numpy_to_ptr(out), 32, p, 32, D2H)
    assert (out == 1).all()  # not synchronised yet: the stream has not run
    assert acl.rt.synchronize_stream(st) == 0
    acl.rt.memcpy(acl.util.numpy_to_ptr(out), 32, p, 32, D2H)
    assert (out[:16] == 5).all() and (out[16:] == 1).all()
    assert acl.util.ptr_to_bytes(h, 32) == b"\x06" * 32
    assert acl.rt.memset_async(p, 8, 0, 16, st) == 107000  # count > max_count (api_error.cc:3133)
    assert acl.rt.memset_async(0, 8, 0, 8, st) == 100000
    assert acl.rt.memset_async(p, 8, 0, 0, 12345) == 0  # count 0 before the stream is looked at
    assert acl.rt.memset_async(p, 8, 0, 8, 12345) == 107000
    ctx, _ = acl.rt.create_context(0)
    assert acl.rt.memset_async(p, 8, 0, 8, st) == 107003  # another context's stream
    assert acl.rt.destroy_context(ctx) == 0
    default_ctx = list(sim.live_resources()["devices"])
    assert default_ctx == [0]
    assert acl.rt.set_device(0) == 0  # back to the default context (a second reference)
    assert acl.rt.reset_device(0) == 0
    acl.rt.destroy_stream(st)
    acl.rt.free(p)
    acl.rt.free_host(h)


def test_freed_host_memory_is_refused_until_malloc_host_reuses_it(dev):
    h, _ = acl.rt.malloc_host(100)
    p, _ = acl.rt.malloc(100, 2)
    src = np.arange(100, dtype=np.uint8)
    assert acl.rt.memcpy(h, 100, acl.util.numpy_to_ptr(src), 100, H2H) == 0
    assert acl.rt.free_host(h) == 0
    # every use of the stale address is refused, though its memory is still mapped
    assert acl.rt.memcpy(p, 100, h, 100, H2D) == 107000
    assert "use after free" in acl.get_recent_err_msg()
    assert acl.rt.memcpy(h + 8, 16, p, 16, D2H) == 107000
    assert acl.rt.memset(h, 100, 0, 100) == 107000
    st, _ = acl.rt.create_stream()
    assert acl.rt.memcpy_async(p, 100, h, 100, H2D, st) == 107000
    assert acl.rt.free_host(h) == 107000  # double free
    with pytest.raises(sim.SimulatorMisuse, match="use after free"):
        acl.util.ptr_to_bytes(h, 4)
    assert sim.leaks().get("host_blocks") is None
    # malloc_host of the same size hands the block out again: the address is valid once more
    h2, _ = acl.rt.malloc_host(100)
    assert h2 == h
    assert acl.util.ptr_to_bytes(h2, 4) == b"\xcd" * 4  # uninitialised again
    assert acl.rt.memcpy(p, 100, h2, 100, H2D) == 0
    assert acl.rt.free_host(h2) == 0
    acl.rt.destroy_stream(st)
    acl.rt.free(p)


def test_memcpy_async_runs_at_sync(dev):
    st, _ = acl.rt.create_stream()
    p, _ = acl.rt.malloc(16, 2)
    a = np.arange(16, dtype=np.uint8)
    out = np.zeros(16, np.uint8)
    assert acl.rt.memcpy_async(p, 16, acl.util.numpy_to_ptr(a), 16, H2D, st) == 0
    assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(out), 16, p, 16, D2H, st) == 0
    assert not out.any()
    assert acl.rt.synchronize_stream(st) == 0
    assert np.array_equal(out, a)
    assert acl.rt.memcpy_async(p, 8, acl.util.numpy_to_ptr(a), 16, H2D, st) == 107000
    assert acl.rt.memcpy_async(p, 16, acl.util.numpy_to_ptr(a), 16, H2D, 999) == 107000
    out[:] = 0
    assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(out), 16, p, 16, D2H, st) == 0
    assert acl.rt.destroy_stream(st) == 0  # pending work runs first
    assert np.array_equal(out, a)
    acl.rt.free(p)


def test_bytes_to_ptr_points_into_the_object():
    b = b"hello world"
    p = acl.util.bytes_to_ptr(b)
    assert acl.util.ptr_to_bytes(p, len(b)) == b
    with pytest.raises(ValueError):
        acl.util.bytes_to_ptr(bytearray(b"x"))
    with pytest.raises(ValueError):
        acl.util.bytes_to_ptr("str")
    assert "bytes_to_ptr" in dir(acl.util)


def test_numpy_helpers_round_trip():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = acl.util.numpy_to_ptr(a)
    assert p == a.ctypes.data
    v = acl.util.ptr_to_numpy(p, (3, 4), 11)
    assert np.array_equal(v, a)
    v[0, 0] = 42  # a view, not a copy
    assert a[0, 0] == 42
    with pytest.warns(UserWarning):
        acl.util.numpy_to_ptr(a[:, ::2])
    p2, c = acl.util.numpy_contiguous_to_ptr(a[:, ::2])
    assert c.flags.c_contiguous and p2 == c.ctypes.data
    assert np.array_equal(acl.util.ptr_to_numpy(p2, (3, 2), 11), a[:, ::2])


def test_numpy_region_dropped_on_gc(dev):
    """The registration of a numpy_to_ptr array ends with the array (white box: the region table)."""
    from acl_bundle.sim import _memory, _state

    a = np.zeros(64, np.uint8)
    ap = acl.util.numpy_to_ptr(a)
    assert _state.WORLD.regions.find(ap, 64, alive=lambda r: r.owner() is not None) is not None
    del a
    gc.collect()
    assert _state.WORLD.regions.find(ap, 64, alive=lambda r: r.owner() is not None) is None
    keep = np.zeros(8, np.uint8)
    acl.util.numpy_to_ptr(keep)  # the next registration purges the dead one
    assert all(blk.ptr != ap for blk in _memory._DEAD) and ap not in _state.WORLD.regions.by_start


def test_ptr_to_numpy_on_device_memory_is_misuse(dev):
    p, _ = acl.rt.malloc(16, 2)
    with pytest.raises(sim.SimulatorMisuse):
        acl.util.ptr_to_numpy(p, (4,), 11)
    with pytest.raises(sim.SimulatorMisuse):
        acl.util.ptr_to_bytes(p, 4)
    with pytest.raises(sim.SimulatorMisuse):
        acl.util.ptr_to_bytes(123, 4)  # unmapped
    acl.rt.free(p)
    with pytest.raises(sim.SimulatorMisuse):
        acl.util.ptr_to_bytes(p, 4)  # a freed device address is still no host memory
    a = np.arange(4, dtype=np.float32)
    assert acl.util.ptr_to_bytes(a.ctypes.data, 16) == a.tobytes()  # mapped host memory
    assert np.array_equal(acl.util.ptr_to_numpy(a.ctypes.data, (4,), 11), a)


def test_malloc_host_usable_with_ptr_to_numpy(dev):
    p, _ = acl.rt.malloc_host(16)
    v = acl.util.ptr_to_numpy(p, (4,), 11)
    v[:] = [1, 2, 3, 4]
    d, _ = acl.rt.malloc(16, 2)
    assert acl.rt.memcpy(d, 16, p, 16, H2D) == 0
    acl.rt.free(d)
    acl.rt.free_host(p)


def test_malloc_host_size_and_free_of_interior_pointer(dev):
    assert acl.rt.malloc_host(0) == (0, 100000)
    assert acl.rt.malloc_host(-1) == (0, 100000)
    assert sim.live_resources()["host_blocks"] == {}
    p, _ = acl.rt.malloc(64, 2)
    assert acl.rt.free(p + 32) == 107000  # not the start of a block
    assert sim.live_resources()["device_blocks"] == {p: 64}
    h, _ = acl.rt.malloc_host(64)
    assert acl.rt.free_host(h + 32) == 107000
    assert acl.rt.free(p) == 0 and acl.rt.free_host(h) == 0


def test_get_mem_info_takes_every_mem_attr(dev):
    """aclrtMemAttr has 18 values (ACL_DDR_MEM .. ACL_MEM_P2P_HUGE1G); others are 107016 (api_error.cc:3185)."""
    p, _ = acl.rt.malloc(100, 2)
    for attr in range(18):
        free, total, ret = acl.rt.get_mem_info(attr)
        assert ret == 0 and total == 8 << 30 and total - free == 160, attr
    assert acl.rt.get_mem_info(18) == (0, 0, 107016)
    assert acl.rt.get_mem_info(-1) == (0, 0, 107016)
    acl.rt.free(p)
