"""Simulator harness: faults, record, reset, live_resources/leaks, install/uninstall, stats."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from acl_bundle import sim

acl = sim.acl


def test_fault_nth_call_no_side_effects(dev):
    with sim.fault("acl.rt.malloc", 207001, on_call=2) as f:
        p1, r1 = acl.rt.malloc(64, 2)
        p2, r2 = acl.rt.malloc(64, 2)
        p3, r3 = acl.rt.malloc(64, 2)
    assert (r1, r3) == (0, 0) and (p2, r2) == (0, 207001)
    assert f.fired == 1
    assert len(sim.live_resources()["device_blocks"]) == 2  # the failed call allocated nothing
    assert "injected" in acl.get_recent_err_msg()
    acl.rt.free(p1)
    acl.rt.free(p3)


def test_fault_forms_and_times(dev):
    with sim.fault("acl.create_tensor_desc", 100000, times=None) as f:
        assert acl.create_tensor_desc(0, [1], 2) == 0
        assert acl.create_tensor_desc(0, [1], 2) == 0
    assert f.fired == 2
    with sim.fault("acl.mdl.create_dataset", 1):
        assert acl.mdl.create_dataset() == 0
    with sim.fault("acl.mdl.get_input_dims", 100000):
        assert acl.mdl.get_input_dims(1, 0) == ({}, 100000)
    with sim.fault("acl.rt.get_mem_info", 507000):
        assert acl.rt.get_mem_info(0) == (0, 0, 507000)
    with sim.fault("acl.rt.free", 507000, on_call=1, times=2) as f:
        assert acl.rt.free(1) == 507000
        assert acl.rt.free(1) == 507000
        assert acl.rt.free(1) == 107000  # third call is real
    assert f.fired == 2
    # counting starts when the context is entered
    acl.mdl.destroy_dataset(0)
    with sim.fault("acl.mdl.destroy_dataset", 1, on_call=1) as f:
        assert acl.mdl.destroy_dataset(0) == 1
    with pytest.raises(ValueError):
        sim.fault("acl.no_such_function", 1)
    assert sim.stats()["calls"]["acl.create_tensor_desc"] == 2
    assert sim.live_resources()["tensor_descs"] == []


def test_several_faults_and_exit_clears(dev):
    with sim.fault("acl.rt.malloc", 1) as f1, sim.fault("acl.mdl.create_desc", 2):
        assert acl.rt.malloc(8, 2) == (0, 1)
        assert acl.mdl.create_desc() == 0
    assert f1.fired == 1
    d = acl.mdl.create_desc()
    assert d
    acl.mdl.destroy_desc(d)


def test_record_all_threads(dev):
    with sim.record() as calls:
        acl.mdl.create_dataset()
        t = threading.Thread(target=lambda: acl.rt.get_run_mode())
        t.start()
        t.join()
    acl.rt.get_device_count()
    assert calls == ["acl.mdl.create_dataset", "acl.rt.get_run_mode"]
    sim.reset()  # also cleans up the dataset


def test_fault_sweep_pattern(dev):
    """Trace a sequence, then fail each call in turn: the sequence must report it."""

    def seq() -> int:
        ds = acl.mdl.create_dataset()
        if not ds:
            return 1
        p, ret = acl.rt.malloc(32, 2)
        if ret:
            acl.mdl.destroy_dataset(ds)
            return ret
        ret = acl.rt.free(p) or acl.mdl.destroy_dataset(ds)
        return ret

    with sim.record() as trace:
        assert seq() == 0
    for k, name in enumerate(trace):
        nth = trace[: k + 1].count(name)
        with sim.fault(name, 500000, on_call=nth) as f:
            assert seq() != 0
        assert f.fired == 1
        sim_leaks = sim.leaks()
        if name != "acl.rt.free" and name != "acl.mdl.destroy_dataset":
            assert set(sim_leaks) == {"initialized", "devices"}
        sim.reset()
        assert acl.init() == 0 and acl.rt.set_device(0) == 0


def test_reset_restores_pristine_state(dev):
    p, _ = acl.rt.malloc(16, 2)
    acl.mdl.create_dataset()
    f = sim.fault("acl.rt.malloc", 1, times=None)
    f.__enter__()
    sim.reset()
    assert sim.leaks() == {}
    assert sim.stats()["calls"] == {}
    assert acl.init() == 0
    assert acl.rt.set_device(0) == 0
    p2, ret = acl.rt.malloc(16, 2)  # fault cleared
    assert ret == 0
    acl.rt.free(p2)
    assert acl.rt.free(p) == 107000  # old block is gone
    f.__exit__(None, None, None)


def test_live_resources_and_leaks(dev):
    lr = sim.live_resources()
    assert lr["initialized"] and lr["devices"] == {0: 1} and lr["contexts"] == []
    assert set(sim.leaks()) == {"initialized", "devices"}
    ds = acl.mdl.create_dataset()
    db = acl.create_data_buffer(0, 0)
    d = acl.mdl.create_desc()
    st, _ = acl.rt.create_stream()
    lk = sim.leaks()
    assert lk["datasets"] == [ds] and lk["data_buffers"] == [db] and lk["model_descs"] == [d] and lk["streams"] == [st]
    acl.mdl.destroy_dataset(ds)
    acl.destroy_data_buffer(db)
    acl.mdl.destroy_desc(d)
    acl.rt.destroy_stream(st)
    assert set(sim.leaks()) == {"initialized", "devices"}


def test_install_uninstall():
    sentinel = object()
    saved = sys.modules.get("acl", None)
    sys.modules["acl"] = sentinel  # type: ignore[assignment]
    try:
        sim.install()
        sim.install()  # idempotent
        import acl as imported
        import acl.rt as imported_rt

        assert imported is sim.acl and imported_rt is sim.acl.rt
        from acl import util

        assert util is sim.acl.util
        sim.uninstall()
        sim.uninstall()
        assert sys.modules["acl"] is sentinel
        assert "acl.rt" not in sys.modules
    finally:
        sim.uninstall()
        if saved is None:
            sys.modules.pop("acl", None)
        else:
            sys.modules["acl"] = saved


def test_not_implemented_names():
    with pytest.raises(sim.NotImplementedInSimulator, match="acl_bundle.sim does not implement acl.rt.foo"):
        acl.rt.foo  # noqa: B018
    assert "dvpp_jpeg_decode_async" in dir(acl.media)
    with pytest.raises(sim.NotImplementedInSimulator, match="acl.media.dvpp_vdec_send_frame"):
        acl.media.dvpp_vdec_send_frame  # noqa: B018  # video is outside the image subset
    assert isinstance(sim.NotImplementedInSimulator("x"), AttributeError)
    assert sorted(dir(acl.util)) == ["bytes_to_ptr", "numpy_contiguous_to_ptr", "numpy_to_ptr", "ptr_to_bytes",
                                     "ptr_to_numpy", "start_thread", "stop_thread"]
    assert "execute" in dir(acl.mdl) and "malloc" in dir(acl.rt)
    # real pyACL has no acl.ACL_* attributes (its samples define their own): neither has the simulator
    with pytest.raises(AttributeError, match="does not export its constants"):
        acl.ACL_FLOAT  # noqa: B018
    assert not [n for n in dir(acl) if n.startswith("ACL_")]


def test_import_does_not_need_onnxruntime():
    code = (
        "import sys; sys.modules['onnxruntime'] = None; sys.modules['onnx'] = None\n"
        "from acl_bundle import sim\n"
        "assert sim.acl.init() == 0 and sim.acl.finalize() == 0\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(_root()))
    assert r.returncode == 0, r.stderr


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def test_configure_device_count():
    sim.configure(device_count=4)
    try:
        assert acl.init() == 0
        assert acl.rt.get_device_count() == (4, 0)
        assert acl.rt.set_device(3) == 0
        assert acl.rt.reset_device(3) == 0
        sim.reset()  # survives reset
        assert acl.init() == 0
        assert acl.rt.get_device_count() == (4, 0)
        assert acl.finalize() == 0
    finally:
        sim.configure(device_count=2)
    with pytest.raises(ValueError):
        sim.configure(run_mode=7)


def test_recent_err_msg_is_per_thread(dev):
    acl.rt.free(12345)
    msg = acl.get_recent_err_msg()
    assert "free" in msg
    other = {}
    t = threading.Thread(target=lambda: other.setdefault("m", acl.get_recent_err_msg()))
    t.start()
    t.join()
    assert other["m"] is None  # nothing failed in that thread


def test_stats_counts_calls(dev):
    a = np.zeros(4, np.float32)
    acl.util.numpy_to_ptr(a)
    s = sim.stats()
    assert s["calls"]["acl.rt.set_device"] == 1 and s["calls"]["acl.util.numpy_to_ptr"] == 1
