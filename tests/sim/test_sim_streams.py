"""Which context owns a stream, a model and an event; teardown of streams with their context."""
from __future__ import annotations

import numpy as np
from helpers import reference as ref

from acl_bundle import _constants as C
from acl_bundle import sim

acl = sim.acl
H2D, D2H = C.ACL_MEMCPY_HOST_TO_DEVICE, C.ACL_MEMCPY_DEVICE_TO_HOST


def test_stream_of_another_context_is_107003(rig):
    """api_impl.cc COND_RETURN_AND_MSG_INVALID_CONTEXT_STREAM: memcpy async, stream destroy, event record."""
    default, _ = acl.rt.get_context()
    s_default, _ = acl.rt.create_stream()
    ctx, _ = acl.rt.create_context(0)  # now current
    s_ctx, _ = acl.rt.create_stream()
    p = rig.malloc(16)
    a = np.arange(16, dtype=np.uint8)
    ap = acl.util.numpy_to_ptr(a)
    assert acl.rt.memcpy_async(p, 16, ap, 16, H2D, s_default) == 107003
    assert "belongs to context" in acl.get_recent_err_msg()
    assert acl.rt.memcpy_async(p, 16, ap, 16, H2D, s_ctx) == 0
    assert acl.rt.destroy_stream(s_default) == 107003
    ev, _ = acl.rt.create_event()
    assert acl.rt.record_event(ev, s_default) == 107003
    assert acl.rt.record_event(ev, s_ctx) == 0
    # synchronising any live stream is fine: the runtime switches context (api_impl.cc:1719)
    assert acl.rt.synchronize_stream(s_default) == 0
    assert acl.rt.synchronize_stream(s_ctx) == 0
    assert acl.rt.set_context(default) == 0
    assert acl.rt.memcpy_async(p, 16, ap, 16, H2D, s_ctx) == 107003
    assert acl.rt.destroy_stream(s_ctx) == 107003
    assert acl.rt.destroy_stream(s_default) == 0
    assert acl.rt.destroy_event(ev) == 0  # an event needs no context to die
    assert acl.rt.destroy_context(ctx) == 0
    assert sim.live_resources()["streams"] == []  # s_ctx died with its context


def test_destroy_context_tears_down_its_streams_after_their_work(rig):
    p = rig.malloc(16)
    out = np.zeros(16, np.uint8)
    src = np.arange(16, dtype=np.uint8)
    rig.h2d(p, src)
    default, _ = acl.rt.get_context()
    keep, _ = acl.rt.create_stream()
    ctx, _ = acl.rt.create_context(0)
    s1, _ = acl.rt.create_stream()
    s2, _ = acl.rt.create_stream()
    assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(out), 16, p, 16, D2H, s1) == 0
    assert not out.any()
    assert sorted(sim.live_resources()["streams"]) == sorted([keep, s1, s2])
    assert acl.rt.destroy_context(ctx) == 0
    assert sim.live_resources()["streams"] == [keep]  # only the default context's stream is left
    assert np.array_equal(out, src)  # the queued copy ran first
    assert acl.rt.set_context(default) == 0
    assert acl.rt.synchronize_stream(s1) == 107000  # gone
    assert acl.rt.destroy_stream(keep) == 0


def test_last_reset_device_tears_down_the_default_contexts_streams():
    assert acl.init() == 0
    assert acl.rt.set_device(1) == 0 and acl.rt.set_device(1) == 0
    st, _ = acl.rt.create_stream()
    assert acl.rt.reset_device(1) == 0
    assert sim.live_resources()["streams"] == [st]  # not the last reset: the device stays set
    assert acl.rt.reset_device(1) == 0
    assert sim.live_resources()["streams"] == []
    assert acl.rt.set_device(1) == 0
    assert acl.rt.synchronize_stream(st) == 107000
    assert acl.rt.reset_device(1) == 0
    assert acl.finalize() == 0


def test_model_runs_only_in_the_context_it_was_loaded_in(rig, mlp_plain):
    """api_impl.cc:4419/4441: a model of another context is 107004, for execute and execute_async."""
    path, w = mlp_plain()
    mid = rig.load(path)
    default, _ = acl.rt.get_context()
    ins, inp = rig.dataset([32])
    outs, outp = rig.dataset([16])
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    rig.h2d(inp[0], x)
    ctx, _ = acl.rt.create_context(0)
    assert acl.mdl.execute(mid, ins, outs) == 107004
    st, _ = acl.rt.create_stream()
    assert acl.mdl.execute_async(mid, ins, outs, st) == 107004
    assert acl.mdl.execute_async(mid, ins, outs, 0) == 107004
    assert acl.rt.set_context(default) == 0
    assert acl.mdl.execute_async(mid, ins, outs, st) == 107003  # the model is ours, the stream is not
    assert acl.mdl.execute(mid, ins, outs) == 0
    np.testing.assert_allclose(rig.d2h(outp[0], np.float32, (1, 4)), ref(x, w), rtol=1e-5, atol=1e-5)
    assert acl.rt.destroy_context(ctx) == 0
    assert sim.stats()["executions"] == {mid: 1}


def test_events_mark_the_work_before_them(dev):
    p, _ = acl.rt.malloc(16, 2)
    st, _ = acl.rt.create_stream()
    ev, ret = acl.rt.create_event()
    assert ret == 0 and sim.live_resources()["events"] == [ev]
    src = np.arange(16, dtype=np.uint8)
    out1, out2 = np.zeros(16, np.uint8), np.zeros(16, np.uint8)
    assert acl.rt.memcpy_async(p, 16, acl.util.numpy_to_ptr(src), 16, H2D, st) == 0
    assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(out1), 16, p, 16, D2H, st) == 0
    assert acl.rt.record_event(ev, st) == 0
    assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(out2), 16, p, 16, D2H, st) == 0
    assert not out1.any()
    assert acl.rt.synchronize_event(ev) == 0
    assert np.array_equal(out1, src) and not out2.any()  # up to the event, not beyond
    assert acl.rt.query_event(ev) == (C.ACL_EVENT_STATUS_COMPLETE, 0)
    assert acl.rt.synchronize_stream(st) == 0 and np.array_equal(out2, src)
    assert acl.rt.record_event(ev, 0) == 0 and acl.rt.synchronize_event(ev) == 0  # the default stream
    assert acl.rt.record_event(12345, st) == 107000
    assert acl.rt.destroy_event(ev) == 0
    assert acl.rt.destroy_event(ev) == 107000
    assert acl.rt.synchronize_event(ev) == 107000
    acl.rt.destroy_stream(st)
    acl.rt.free(p)


def test_events_need_a_context_to_be_created():
    assert acl.rt.create_event() == (0, 107002)
