"""init/finalize, devices, contexts (per thread), streams."""
from __future__ import annotations

import threading

import pytest

from acl_bundle import _constants as C
from acl_bundle import sim
from acl_bundle.sim import builder, models

acl = sim.acl


def test_runtime_calls_answer_before_init(tmp_path):
    """No ACL-layer init check (the runtime checks init only for dump APIs): clients such as
    ascendfly (get_device_count) and acllite (get_run_mode at import) start before acl.init."""
    assert acl.rt.get_device_count() == (2, 0)
    assert acl.rt.get_run_mode() == (C.ACL_HOST, 0)
    assert acl.get_soc_name() == "Ascend310P3"
    assert acl.get_version() == (8, 0, 0, 0)
    assert acl.util.bytes_to_ptr(b"abc") != 0
    ds, desc = acl.mdl.create_dataset(), acl.mdl.create_desc()
    db, td = acl.create_data_buffer(0, 0), acl.create_tensor_desc(C.ACL_FLOAT, [1], C.ACL_FORMAT_ND)
    assert all((ds, desc, db, td)) and len({ds, desc, db, td}) == 4
    assert acl.get_tensor_desc_size(td) == 4
    assert acl.mdl.get_input_dims(desc, 0) == ({}, 100000)  # an empty desc, not "uninitialised"
    assert acl.rt.set_device(0) == 0
    p, ret = acl.rt.malloc(64, 2)
    assert ret == 0 and acl.rt.get_mem_info(0)[2] == 0
    assert acl.rt.get_device() == (0, 0)
    # the GE executor is what needs acl.init: model load/execute/get_desc answer 145001
    model, _ = models.mlp((8, 4))
    om, _ = builder.save(builder.build_plain(model), tmp_path / "m.om")
    assert acl.mdl.load_from_file(str(om)) == (0, 145001)
    assert acl.mdl.load_from_file("/nonexistent") == (0, 145001)  # before the path is looked at
    assert acl.mdl.load_from_mem(acl.util.bytes_to_ptr(om.read_bytes()), om.stat().st_size) == (0, 145001)
    assert acl.mdl.bundle_load_from_file(str(om)) == (0, 145001)
    assert acl.mdl.execute(1, ds, ds) == 145001
    assert acl.mdl.get_desc(desc, 1) == 145001
    assert "acl.init" in acl.get_recent_err_msg()
    assert acl.init() == 0
    mid, ret = acl.mdl.load_from_file(str(om))
    assert ret == 0 and acl.mdl.get_desc(desc, mid) == 0
    assert acl.mdl.unload(mid) == 0
    assert acl.rt.free(p) == 0 and acl.rt.reset_device(0) == 0
    for ret in (acl.mdl.destroy_dataset(ds), acl.mdl.destroy_desc(desc), acl.destroy_data_buffer(db)):
        assert ret == 0
    acl.destroy_tensor_desc(td)
    assert acl.finalize() == 0


def test_calls_after_finalize(tmp_path):
    assert acl.init() == 0
    assert acl.finalize() == 0
    assert acl.rt.set_device(0) == 0  # the runtime outlives aclFinalize
    d = acl.mdl.create_desc()
    assert d
    assert acl.mdl.load_from_file("/nonexistent") == (0, 145001)
    assert acl.mdl.destroy_desc(d) == 0
    assert acl.rt.reset_device(0) == 0


def test_repeat_init_and_finalize_codes():
    """acl.cpp: finalize checks only its own flag (:634), so a finalize without init succeeds."""
    assert acl.finalize() == 0  # never initialised
    assert acl.finalize() == 100037
    assert acl.init() == 0
    assert acl.init() == 100002
    assert sim.live_resources()["initialized"]
    assert acl.finalize() == 0  # a single finalize ends it, whatever the reference count
    assert acl.finalize() == 100037
    assert acl.init() == 0  # init -> finalize -> init works
    assert acl.finalize() == 0


def test_finalize_reference_counts_the_inits():
    """aclFinalizeReference (acl.cpp:648-683): each repeated init is a reference; the last one finalises."""
    assert acl.finalize_reference() == (0, 100037)  # nothing to release
    assert acl.init() == 0
    assert acl.init() == 100002 and acl.init() == 100002  # three references
    assert acl.finalize_reference() == (2, 0)
    assert acl.finalize_reference() == (1, 0)
    assert sim.live_resources()["initialized"]
    assert acl.mdl.load_from_file("/nonexistent") == (0, 145002)  # still initialised: the path is checked
    assert acl.finalize_reference() == (0, 0)
    assert not sim.live_resources()["initialized"]
    assert acl.finalize_reference() == (0, 100037)
    assert acl.finalize() == 100037  # finalised already
    assert acl.init() == 0 and acl.init() == 100002
    assert acl.finalize() == 0  # finalize ignores the count
    assert acl.finalize_reference() == (0, 100037)


def test_recent_err_msg_is_cleared_by_reading_and_stacks_newest_first(dev):
    assert acl.get_recent_err_msg() is None
    assert acl.rt.free(12345) == 107000
    assert acl.mdl.destroy_dataset(777) == 100000
    msg = acl.get_recent_err_msg()
    first, second = msg.splitlines()
    assert first.startswith("destroy_dataset") and second.startswith("free")
    assert acl.get_recent_err_msg() is None  # read: cleared


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
    assert acl.rt.get_run_mode() == (C.ACL_HOST, 0)
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
    assert acl.rt.destroy_context(ctx) == 107002  # api_impl.cc:4134-4137
    assert acl.rt.set_context(ctx) == 107000  # api_error.cc:3646
    assert acl.rt.set_context(0) == 100000 and acl.rt.destroy_context(0) == 100000  # context.cpp:67, :55
    assert acl.rt.destroy_context(0xDEAD0) == 107002
    assert acl.rt.create_context(5) == (0, 107001)
    assert acl.rt.set_device(0) == 0  # make the default context current again
    default, _ = acl.rt.get_context()
    assert acl.rt.destroy_context(default) == 107002  # the primary context (api_impl.cc:4141)
    assert acl.rt.get_context() == (default, 0)
    assert acl.rt.reset_device(0) == 0


def test_get_device_follows_the_current_context(dev):
    assert acl.rt.get_device() == (0, 0)
    ctx, _ = acl.rt.create_context(1)
    assert acl.rt.get_device() == (1, 0)
    assert acl.rt.destroy_context(ctx) == 0
    assert acl.rt.get_device() == (0, 107002)  # api_impl.cc:3490
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("d", acl.rt.get_device()))
    t.start()
    t.join()
    assert out["d"] == (0, 107002)


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
    assert acl.rt.destroy_stream(0) == 100000


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
    td = acl.create_tensor_desc(C.ACL_FLOAT, [1], C.ACL_FORMAT_ND)
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


def test_get_context_answers_the_same_on_its_short_path_counted_recorded_and_faultable(dev):
    """get_context's one-frame path (a created context current, no recorder, no fault) answers and counts
    as the decorated call does; a recorder or a fault still sees it; a destroyed context is 107002 again."""
    ctx, ret = acl.rt.create_context(0)
    assert ret == 0
    before = sim.stats()["calls"].get("acl.rt.get_context", 0)
    assert [acl.rt.get_context() for _ in range(3)] == [(ctx, 0)] * 3
    assert sim.stats()["calls"]["acl.rt.get_context"] == before + 3
    with sim.record() as calls:
        assert acl.rt.get_context() == (ctx, 0)
    assert calls == ["acl.rt.get_context"]
    with sim.fault("acl.rt.get_context", 107002):
        assert acl.rt.get_context() == (0, 107002)
    assert acl.rt.get_context() == (ctx, 0)
    assert acl.rt.destroy_context(ctx) == 0
    assert acl.rt.get_context() == (0, 107002)  # not a live context any more: the decorated path answers
    assert sim.stats()["calls"]["acl.rt.get_context"] == before + 7  # every call counted once, faulted too
