"""The callback set as pyACL's samples use it: start_thread + process_report loop, subscribe_report,
launch_callback (blocking and not), unsubscribe_report, stop_thread."""
from __future__ import annotations

import threading
import time

from acl_bundle import sim

acl = sim.acl


def _reporter(stop: dict, rets: list):
    def thread_func(args_list):
        while not stop["exit"]:
            rets.append(acl.rt.process_report(20))

    return thread_func


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    return cond()


def test_callbacks_run_in_the_subscribed_thread_when_the_stream_reaches_them(dev):
    stream, _ = acl.rt.create_stream()
    h, _ = acl.rt.malloc_host(8)
    stop, rets, got = {"exit": False}, [], []
    tid, ret = acl.util.start_thread(_reporter(stop, rets), [])
    assert ret == 0 and tid and sim.live_resources()["threads"] == [tid]
    assert acl.rt.subscribe_report(tid, stream) == 0

    def cb(user_data):  # sees what the stream did before it
        got.append((threading.get_native_id(), user_data, acl.util.ptr_to_bytes(h, 8)))

    assert acl.rt.memset_async(h, 8, 5, 8, stream) == 0
    assert acl.rt.launch_callback(cb, [1, 2], 1, stream) == 0  # ACL_CALLBACK_BLOCK
    assert acl.rt.memset_async(h, 8, 9, 8, stream) == 0
    # nobody synchronises: the waiting callback thread runs the stream up to its callback, no further
    assert _wait_for(lambda: got)
    assert got == [(tid, [1, 2], b"\x05" * 8)]
    time.sleep(0.05)
    assert acl.util.ptr_to_bytes(h, 8) == b"\x05" * 8  # the work after the callback waits for a sync
    assert acl.rt.synchronize_stream(stream) == 0
    assert acl.util.ptr_to_bytes(h, 8) == b"\x09" * 8
    assert acl.rt.launch_callback(cb, "nb", 0, stream) == 0  # ACL_CALLBACK_NO_BLOCK
    assert acl.rt.synchronize_stream(stream) == 0  # hands the report over (or finds it run)
    assert _wait_for(lambda: len(got) == 2)
    assert got[1] == (tid, "nb", b"\x09" * 8)
    assert 507012 in rets  # process_report timed out while nothing was queued
    assert acl.rt.unsubscribe_report(tid, stream) == 0
    stop["exit"] = True
    assert acl.util.stop_thread(tid) == 0
    assert sim.live_resources()["threads"] == []
    assert acl.util.stop_thread(tid) == 100000
    assert acl.rt.destroy_stream(stream) == 0
    acl.rt.free_host(h)


def test_a_synchronising_thread_hands_blocking_callbacks_over_in_order(dev):
    """synchronize_stream reaches each blocking callback, the callback thread runs it, then the stream goes on."""
    stream, _ = acl.rt.create_stream()
    h, _ = acl.rt.malloc_host(4)
    stop, rets, seen = {"exit": False}, [], []
    tid, _ = acl.util.start_thread(_reporter(stop, rets), [])
    assert acl.rt.subscribe_report(tid, stream) == 0
    for v in range(1, 6):
        assert acl.rt.memset_async(h, 4, v, 4, stream) == 0
        assert acl.rt.launch_callback(lambda _d: seen.append(acl.util.ptr_to_bytes(h, 1)[0]), None, 1, stream) == 0
    assert acl.rt.synchronize_stream(stream) == 0
    assert seen == [1, 2, 3, 4, 5]  # each callback saw exactly the work before it
    assert acl.rt.unsubscribe_report(tid, stream) == 0
    stop["exit"] = True
    assert acl.util.stop_thread(tid) == 0
    assert acl.rt.destroy_stream(stream) == 0
    acl.rt.free_host(h)


def test_callback_error_codes(dev):
    stream, _ = acl.rt.create_stream()
    assert acl.rt.launch_callback(lambda d: None, [], 1, stream) == 107015  # no thread subscribed
    assert acl.rt.process_report(100) == 107012  # this thread subscribed nothing
    assert acl.rt.process_report(0) == 100000 and acl.rt.process_report(-2) == 100000
    me = threading.get_native_id()
    assert acl.rt.subscribe_report(me, stream) == 0
    assert acl.rt.subscribe_report(me + 1, stream) == 107011  # a stream has one callback thread
    assert acl.rt.launch_callback(lambda d: None, [], 2, stream) == 100000  # block type
    t0 = time.monotonic()
    assert acl.rt.process_report(30) == 507012  # subscribed now, but nothing to do
    assert time.monotonic() - t0 >= 0.025
    got = []
    assert acl.rt.launch_callback(got.append, "now", 0, 0) == 107015  # the default stream is not subscribed
    assert acl.rt.unsubscribe_report(me + 1, stream) == 107012  # bound to another thread
    assert acl.rt.unsubscribe_report(me, stream) == 0
    assert acl.rt.unsubscribe_report(me, stream) == 107011
    ctx, _ = acl.rt.create_context(0)
    assert acl.rt.launch_callback(got.append, [], 0, stream) == 107003  # another context's stream
    assert acl.rt.destroy_context(ctx) == 0
    assert acl.rt.destroy_stream(stream) == 107002  # no current context left in this thread
    assert acl.rt.set_device(0) == 0 and acl.rt.destroy_stream(stream) == 0
    assert acl.rt.reset_device(0) == 0


def test_default_stream_callback_runs_when_the_stream_reaches_it(dev):
    stop, rets, got = {"exit": False}, [], []
    tid, _ = acl.util.start_thread(_reporter(stop, rets), [])
    assert acl.rt.subscribe_report(tid, 0) == 0  # the current context's default stream
    assert acl.rt.launch_callback(got.append, "x", 1, 0) == 0
    assert _wait_for(lambda: got == ["x"])  # the default stream is a stream: its callback thread runs it
    assert acl.rt.synchronize_stream(0) == 0
    assert acl.rt.unsubscribe_report(tid, 0) == 0
    stop["exit"] = True
    assert acl.util.stop_thread(tid) == 0
