"""malloc/free/memcpy/memset and acl.util."""
from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

from acl_bundle import sim

acl = sim.acl
H2D, D2H, D2D, H2H = (acl.ACL_MEMCPY_HOST_TO_DEVICE, acl.ACL_MEMCPY_DEVICE_TO_HOST,
                      acl.ACL_MEMCPY_DEVICE_TO_DEVICE, acl.ACL_MEMCPY_HOST_TO_HOST)


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
    assert acl.rt.memcpy(acl.util.numpy_to_ptr(b), 64, q, 64, acl.ACL_MEMCPY_DEFAULT) == 0
    assert np.array_equal(a, b)
    s = sim.stats()
    assert s["bytes_copied"] == {"HOST_TO_DEVICE": 64, "DEVICE_TO_HOST": 128, "DEVICE_TO_DEVICE": 64, "HOST_TO_HOST": 0}
    assert s["memcpy_calls"]["DEVICE_TO_HOST"] == 2
    acl.rt.free(p)
    acl.rt.free(q)


def test_memcpy_count_checks(dev):
    p, _ = acl.rt.malloc(256, 2)
    src = np.zeros(400, np.uint8)
    assert acl.rt.memcpy(p, 256, acl.util.numpy_to_ptr(src), 400, H2D) == 100000
    assert acl.get_recent_err_msg().startswith("memcpy: count 400 exceeds dest_max 256")
    assert acl.rt.memcpy(p, 256, acl.util.numpy_to_ptr(src), -1, H2D) == 100000
    assert acl.rt.memcpy(p, 256, acl.util.numpy_to_ptr(src), 0, H2D) == 0
    assert acl.rt.memcpy(p, 256, acl.util.numpy_to_ptr(src), 16, 9) == 100000
    assert sim.stats()["bytes_copied"]["HOST_TO_DEVICE"] == 0
    acl.rt.free(p)


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
    assert acl.rt.memcpy(a, 64, hp + 250, 16, H2D) == 107000  # host range past its region
    assert acl.rt.memcpy(12345, 64, hp, 16, H2D) == 107000  # unknown address
    for p in blocks:
        acl.rt.free(p)
    assert acl.rt.memcpy(a, 64, hp, 16, H2D) == 107000  # freed block
    assert "not inside any live allocation" in acl.get_recent_err_msg()


def test_memcpy_wrong_kind(dev):
    p, _ = acl.rt.malloc(64, 2)
    host = np.zeros(64, np.uint8)
    hp = acl.util.numpy_to_ptr(host)
    assert acl.rt.memcpy(p, 64, hp, 64, D2H) == 107000
    assert "HOST_TO_DEVICE" in acl.get_recent_err_msg()
    assert acl.rt.memcpy(hp, 64, p, 64, H2D) == 107000
    assert acl.rt.memcpy(p, 64, hp, 64, D2D) == 107000
    assert acl.rt.memcpy(hp, 64, hp, 64, H2H) == 0
    acl.rt.free(p)


def test_device_run_mode_app_memory_is_device(dev):
    sim.configure(run_mode=acl.ACL_DEVICE)
    try:
        assert acl.rt.get_run_mode() == (acl.ACL_DEVICE, 0)
        p, _ = acl.rt.malloc(64, 2)
        a = np.arange(64, dtype=np.uint8)
        ap = acl.util.numpy_to_ptr(a)
        assert acl.rt.memcpy(p, 64, ap, 64, H2D) == 107000
        assert acl.rt.memcpy(p, 64, ap, 64, D2D) == 0
        view = acl.util.ptr_to_numpy(p, (64,), 2)  # fine on device memory in device mode
        assert np.array_equal(view, a)
        acl.rt.free(p)
    finally:
        sim.configure(run_mode=acl.ACL_HOST)


def test_memset(dev):
    p, _ = acl.rt.malloc(32, 2)
    assert acl.rt.memset(p, 32, 7, 32) == 0
    out = np.zeros(32, np.uint8)
    acl.rt.memcpy(acl.util.numpy_to_ptr(out), 32, p, 32, D2H)
    assert (out == 7).all()
    assert acl.rt.memset(p, 16, 0, 32) == 100000
    assert acl.rt.memset(p, 64, 0, 64) == 107000
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
    assert acl.rt.memcpy_async(p, 8, acl.util.numpy_to_ptr(a), 16, H2D, st) == 100000
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
    p, _ = acl.rt.malloc(64, 2)
    a = np.zeros(64, np.uint8)
    ap = acl.util.numpy_to_ptr(a)
    del a
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert acl.rt.memcpy(ap, 64, p, 64, D2H) == 107000
    acl.rt.free(p)


def test_ptr_to_numpy_on_device_memory_is_misuse(dev):
    p, _ = acl.rt.malloc(16, 2)
    with pytest.raises(sim.SimulatorMisuse):
        acl.util.ptr_to_numpy(p, (4,), 11)
    with pytest.raises(sim.SimulatorMisuse):
        acl.util.ptr_to_bytes(p, 4)
    with pytest.raises(sim.SimulatorMisuse):
        acl.util.ptr_to_bytes(123, 4)
    acl.rt.free(p)


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
