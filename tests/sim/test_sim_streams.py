"""Which context owns a stream, a model and an event; teardown of streams with their context."""
from __future__ import annotations

import numpy as np

from acl_bundle import _constants as C
from acl_bundle import sim
from helpers import reference as ref

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


def test_a_client_that_does_not_synchronise_reads_stale_output(rig, mlp_plain):
    """execute_async and memcpy_async on the default stream (0) and on a created one run only when the
    stream is waited for; a synchronous memcpy does not wait for them (as on a device)."""
    path, w = mlp_plain()
    mid = rig.load(path)
    ins, inp = rig.dataset([32])
    outs, outp = rig.dataset([16])
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    rig.h2d(inp[0], x)
    assert acl.rt.memset(outp[0], 16, 0, 16) == 0
    for stream in (0, acl.rt.create_stream()[0]):
        assert acl.rt.memset(outp[0], 16, 0, 16) == 0
        assert acl.mdl.execute_async(mid, ins, outs, stream) == 0
        host = np.full((1, 4), 7, np.float32)
        assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(host), 16, outp[0], 16, D2H, stream) == 0
        assert (rig.d2h(outp[0], np.float32, (1, 4)) == 0).all()  # stale: the model has not run yet
        assert (host == 7).all()  # and the queued copy has not either
        assert sim.stats()["executions"].get(mid, 0) == (0 if stream == 0 else 1)
        assert acl.rt.synchronize_stream(stream) == 0
        np.testing.assert_allclose(host, ref(x, w), rtol=1e-5, atol=1e-5)  # in stream order: model, then copy
        if stream:
            assert acl.rt.destroy_stream(stream) == 0


def test_streams_are_independent_and_events_force_only_their_stream(dev):
    p, _ = acl.rt.malloc(16, 2)
    s1, _ = acl.rt.create_stream()
    s2, _ = acl.rt.create_stream()
    ev, _ = acl.rt.create_event()
    h1, h2 = np.zeros(16, np.uint8), np.zeros(16, np.uint8)
    assert acl.rt.memset_async(p, 16, 3, 16, s1) == 0
    assert acl.rt.record_event(ev, s1) == 0
    assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(h2), 16, p, 16, D2H, s2) == 0
    assert acl.rt.memset_async(p, 16, 4, 16, s1) == 0
    assert acl.rt.synchronize_stream(s2) == 0  # s2 does not wait for s1: it copies what is there
    assert (h2 == 0xCD).all()  # malloc'd memory, not yet set
    assert acl.rt.synchronize_event(ev) == 0  # s1 up to the event, not beyond
    assert acl.rt.memcpy(acl.util.numpy_to_ptr(h1), 16, p, 16, D2H) == 0 and (h1 == 3).all()
    assert acl.rt.synchronize_device() == 0  # every stream of the device
    assert acl.rt.memcpy(acl.util.numpy_to_ptr(h1), 16, p, 16, D2H) == 0 and (h1 == 4).all()
    assert acl.rt.record_event(ev, 0) == 0 and acl.rt.query_event(ev) == (C.ACL_EVENT_STATUS_COMPLETE, 0)
    for s in (s1, s2):
        acl.rt.destroy_stream(s)
    acl.rt.destroy_event(ev)
    acl.rt.free(p)


def test_default_stream_work_runs_when_its_context_goes(dev):
    p, _ = acl.rt.malloc(16, 2)
    out = np.zeros(16, np.uint8)
    ctx, _ = acl.rt.create_context(0)
    assert acl.rt.memset_async(p, 16, 8, 16, 0) == 0
    assert acl.rt.memcpy_async(acl.util.numpy_to_ptr(out), 16, p, 16, D2H, 0) == 0
    assert not out.any()
    assert acl.rt.destroy_context(ctx) == 0  # its default stream is torn down after its work ran
    assert (out == 8).all()
    assert acl.rt.set_device(0) == 0 and acl.rt.free(p) == 0 and acl.rt.reset_device(0) == 0
