"""init/finalize, devices, contexts (per thread), streams."""
from __future__ import annotations

import threading

import pytest

from acl_bundle import sim

acl = sim.acl


def test_calls_before_init_return_uninitialize():
    assert acl.rt.set_device(0) == 100001
    assert acl.rt.malloc(64, 2) == (0, 100001)
    assert acl.rt.get_mem_info(0) == (0, 0, 100001)
    assert acl.mdl.load_from_file("/nonexistent") == (0, 100001)
    assert acl.mdl.create_dataset() == 0
    assert acl.create_tensor_desc(acl.ACL_FLOAT, [1], acl.ACL_FORMAT_ND) == 0
    assert acl.mdl.get_input_dims(1, 0) == ({}, 100001)
    assert "init" in acl.get_recent_err_msg()
    assert acl.get_version() == (8, 0, 0, 0)
    assert acl.util.bytes_to_ptr(b"abc") != 0  # pure host helper


def test_calls_after_finalize_return_uninitialize():
    assert acl.init() == 0
    assert acl.finalize() == 0
    assert acl.rt.set_device(0) == 100001
    assert acl.mdl.create_desc() == 0


def test_repeat_init_and_finalize_codes():
    assert acl.finalize() == 100001  # never initialised (our choice)
    assert acl.init() == 0
    assert acl.init() == 100002
    assert sim.live_resources()["initialized"]
    assert acl.finalize() == 0  # a single finalize ends it
    assert acl.finalize() == 100037
    assert acl.init() == 0  # init -> finalize -> init works
    assert acl.finalize() == 0


def test_init_argument_checks(tmp_path):
    with pytest.raises(TypeError):
        acl.init(5)
    assert acl.init(str(tmp_path / "missing.json")) == 100003
    assert not sim.live_resources()["initialized"]
    cfg = tmp_path / "acl.json"
    cfg.write_text("{}")
    assert acl.init(str(cfg)) == 0
    assert acl.finalize() == 0


def test_set_device_range_and_counts():
    assert acl.init() == 0
    assert acl.rt.set_device(2) == 107001
    assert acl.rt.set_device(-1) == 107001
    assert acl.rt.set_device(1) == 0
    assert acl.rt.set_device(1) == 0
    assert sim.live_resources()["devices"] == {1: 2}
    assert acl.rt.reset_device(1) == 0
    assert acl.rt.reset_device(1) == 0
    assert acl.rt.reset_device(1) == 107001
    assert acl.rt.get_device_count() == (2, 0)
    assert acl.rt.get_run_mode() == (acl.ACL_HOST, 0)
    assert acl.finalize() == 0


def test_no_context_without_set_device():
    assert acl.init() == 0
    assert acl.rt.malloc(64, 2) == (0, 107002)
    assert acl.rt.create_stream() == (0, 107002)
    assert acl.rt.get_context() == (0, 107002)
    assert acl.mdl.execute(1, 1, 1) == 107002
    assert acl.finalize() == 0


def test_context_is_per_thread(dev):
    ctx, ret = acl.rt.get_context()
    assert ret == 0 and ctx
    out = {}

    def other():
        out["malloc"] = acl.rt.malloc(64, 2)
        out["get"] = acl.rt.get_context()
        out["set"] = acl.rt.set_context(ctx)
        p, ret = acl.rt.malloc(64, 2)
        out["after_set"] = ret
        acl.rt.free(p)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert out["malloc"] == (0, 107002)
    assert out["get"] == (0, 107002)
    assert out["set"] == 0 and out["after_set"] == 0


def test_explicit_context_lifecycle(dev):
    ctx, ret = acl.rt.create_context(0)
    assert ret == 0 and ctx
    assert acl.rt.get_context() == (ctx, 0)
    assert sim.live_resources()["contexts"] == [ctx]
    seen = {}

    def other():
        acl.rt.set_context(ctx)
        seen["before"] = acl.rt.get_context()
        ev.wait()
        seen["after"] = acl.rt.malloc(16, 2)

    ev = threading.Event()
    t = threading.Thread(target=other)
    t.start()
    assert acl.rt.destroy_context(ctx) == 0
    ev.set()
    t.join()
    assert seen["before"] == (ctx, 0)
    assert seen["after"] == (0, 107002)  # destroyed for every thread
    assert acl.rt.malloc(16, 2) == (0, 107002)
    assert acl.rt.destroy_context(ctx) == 107000
    assert acl.rt.set_context(ctx) == 107000
    assert acl.rt.create_context(5) == (0, 107001)
    assert acl.rt.set_device(0) == 0  # make the default context current again
    assert acl.rt.reset_device(0) == 0


def test_reset_device_kills_default_context():
    assert acl.init() == 0
    assert acl.rt.set_device(0) == 0
    assert acl.rt.reset_device(0) == 0
    assert acl.rt.malloc(16, 2) == (0, 107002)
    assert acl.finalize() == 0


def test_streams(dev):
    st, ret = acl.rt.create_stream()
    assert ret == 0 and st
    assert sim.live_resources()["streams"] == [st]
    assert acl.rt.synchronize_stream(st) == 0
    assert acl.rt.destroy_stream(st) == 0
    assert acl.rt.destroy_stream(st) == 107000
    assert acl.rt.synchronize_stream(st) == 107000


def test_reset_invalidates_thread_contexts():
    assert acl.init() == 0
    assert acl.rt.set_device(0) == 0
    sim.reset()
    assert acl.init() == 0
    assert acl.rt.malloc(16, 2) == (0, 107002)  # old context from before reset is gone
    assert acl.finalize() == 0


def test_handles_distinct_and_never_reused(dev):
    ds = acl.mdl.create_dataset()
    db = acl.create_data_buffer(0, 0)
    td = acl.create_tensor_desc(acl.ACL_FLOAT, [1], acl.ACL_FORMAT_ND)
    d = acl.mdl.create_desc()
    hs = [ds, db, td, d]
    assert len(set(hs)) == 4 and all(h > 0 for h in hs)
    # a dataset handle is not a data buffer handle and vice versa
    assert acl.destroy_data_buffer(ds) == 100000
    assert acl.mdl.destroy_dataset(db) == 100000
    assert acl.mdl.destroy_dataset(ds) == 0
    assert acl.destroy_data_buffer(db) == 0
    acl.destroy_tensor_desc(td)
    assert acl.mdl.destroy_desc(d) == 0
    sim.reset()
    assert acl.init() == 0
    assert acl.mdl.create_dataset() > max(hs)
    sim.reset()


def test_repeat_init_changes_nothing():
    assert acl.init() == 0
    assert acl.rt.set_device(0) == 0
    p, ret = acl.rt.malloc(16, 2)
    assert ret == 0
    assert acl.init() == 100002
    assert sim.live_resources()["devices"] == {0: 1}
    assert acl.rt.get_context()[1] == 0  # the default context survived
    assert acl.rt.free(p) == 0
    assert acl.rt.reset_device(0) == 0
    assert acl.finalize() == 0
