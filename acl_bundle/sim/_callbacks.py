"""Host callbacks: ``acl.util.start_thread/stop_thread`` and
``acl.rt.subscribe_report / launch_callback / process_report / unsubscribe_report``.

The documented pattern: a thread started with ``acl.util.start_thread(fn, args_list)``
loops on ``acl.rt.process_report(timeout_ms)``; ``subscribe_report(thread_id, stream)``
binds it to a stream; ``launch_callback(fn, user_data, block_type, stream)`` queues a task
that, when the stream reaches it, has the subscribed thread call ``fn(user_data)``
(``block_type`` 1: the stream waits until it returned).

Sources (hicann/runtime): ``src/acl/aclrt_impl/callback.cpp`` (block type :163-166, timeout
:189-192), ``src/runtime/api/impl/api_impl.cc`` (CallbackLaunch :5353: context, stream
context, "stream is not bound to any thread" 107015; ProcessReport :5382 finds the
calling thread's subscription, by its OS thread id), ``src/runtime/core/src/utils/subscribe.cc``
(a stream subscribed twice 107011 :76; unsubscribing a stream that is not subscribed 107011
:194, or by another thread 107012 :202; a thread with no subscription 107012 :416).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .._constants import ACL_CALLBACK_BLOCK, ACL_CALLBACK_NO_BLOCK
from . import _state as S
from ._rt import REPORTS, Stream, check_stream, enqueue
from ._state import LOCK, WORLD, api, ints, set_err

log = logging.getLogger("acl_bundle.sim")

__all__ = ["REPORTS"]  # signalled when work or a report is queued (defined with the streams)
_POLL = 0.05  # seconds between checks of a blocked callback's fate


def _queue(tid: int) -> collections.deque:
    return WORLD.reports.setdefault(tid, collections.deque())


def _key(stream: int) -> int:
    """Subscription key (LOCK held, context checked): the stream, or -context for its default stream."""
    return stream if stream else -S.current_context().id


@api("acl.util.start_thread", "t1")
def start_thread(thr_func: Callable[[Any], Any], args_list: list) -> tuple[int, int]:
    """Run ``thr_func(args_list)`` in a new thread; return (thread id, 0). The thread has no context."""
    if not callable(thr_func):
        raise TypeError(f"start_thread: thr_func must be callable, not {type(thr_func).__name__}")
    if not isinstance(args_list, list):
        raise TypeError(f"start_thread: args_list must be list, not {type(args_list).__name__}")
    t = threading.Thread(target=thr_func, args=(args_list,), name="acl.util.start_thread", daemon=True)
    t.start()
    tid = int(t.native_id or 0)
    with LOCK:
        WORLD.threads[tid] = t
    return tid, 0


@api("acl.util.stop_thread", "ret", pre=ints("thr_id"))
def stop_thread(thr_id: int) -> int:
    """Wait for a thread from start_thread to exit (pyACL: "waits for the thread to exit")."""
    with LOCK:
        t = WORLD.threads.get(thr_id)
        if t is None:
            return set_err(S.E_PARAM, f"stop_thread: {thr_id} is not a thread started by acl.util.start_thread")
    if t is threading.current_thread():
        raise S.SimulatorMisuse("stop_thread: a thread cannot wait for itself to exit")
    t.join()
    with LOCK:
        WORLD.threads.pop(thr_id, None)
    return 0


@api("acl.rt.subscribe_report", "ret", pre=ints("thread_id", "stream"))
def subscribe_report(thread_id: int, stream: int) -> int:
    with LOCK:
        ret = check_stream("subscribe_report", stream)
        if ret:
            return ret
        key = _key(stream)
        if key in WORLD.subscriptions:
            return set_err(
                S.E_STREAM_SUB,
                f"subscribe_report: stream {stream:#x} already has a callback thread ({WORLD.subscriptions[key]})",
            )
        WORLD.subscriptions[key] = thread_id
    return 0


@api("acl.rt.unsubscribe_report", "ret", pre=ints("thread_id", "stream"))
def unsubscribe_report(thread_id: int, stream: int) -> int:
    with LOCK:
        ret = check_stream("unsubscribe_report", stream)
        if ret:
            return ret
        key = _key(stream)
        have = WORLD.subscriptions.get(key)
        if have is None:
            return set_err(S.E_STREAM_SUB, f"unsubscribe_report: stream {stream:#x} has no callback thread")
        if have != thread_id:
            return set_err(
                S.E_THREAD_SUB, f"unsubscribe_report: stream {stream:#x} is bound to thread {have}, not {thread_id}"
            )
        del WORLD.subscriptions[key]
    return 0


@api("acl.rt.launch_callback", "ret")
def launch_callback(fn: Callable[[Any], Any], user_data: Any, block_type: int, stream: int) -> int:
    S.check_int(("block_type", block_type), ("stream", stream))
    if not callable(fn):
        raise TypeError(f"launch_callback: fn must be callable, not {type(fn).__name__}")
    if block_type not in (ACL_CALLBACK_NO_BLOCK, ACL_CALLBACK_BLOCK):
        return set_err(
            S.E_PARAM,
            f"launch_callback: block_type {block_type} is neither ACL_CALLBACK_NO_BLOCK (0) nor ACL_CALLBACK_BLOCK (1)",
        )
    with LOCK:
        ret = check_stream("launch_callback", stream)
        if ret:
            return ret
        key = _key(stream)
        tid = WORLD.subscriptions.get(key)
        if tid is None:
            return set_err(
                S.E_NO_CB_REG,
                f"launch_callback: stream {stream:#x} is not bound to any thread; call acl.rt.subscribe_report first",
            )
        gen = WORLD.gen

        def work() -> int:
            """Run by a thread that waits for the stream: hand the report to the subscribed thread."""
            done = threading.Event() if block_type == ACL_CALLBACK_BLOCK else None
            with LOCK:
                if WORLD.gen != gen:
                    return 0
                _queue(tid).append((fn, user_data, done))
                REPORTS.notify_all()
            while done is not None and not done.wait(_POLL):
                with LOCK:  # stop waiting if the report can no longer be taken (reset, unsubscribed)
                    if WORLD.gen != gen or tid not in WORLD.subscriptions.values():
                        return 0
            return 0

        work.report = (tid, fn, user_data, gen)  # type: ignore[attr-defined]  # process_report forces it
        return enqueue(stream, work)


def _forced(tid: int) -> Stream | None:
    """A stream subscribed to ``tid`` with a callback of ``tid`` queued and nobody running it,
    its run lock taken (LOCK held)."""
    for key, who in WORLD.subscriptions.items():
        if who != tid:
            continue
        st = WORLD.streams.get(key) if key > 0 else WORLD.default_streams.get(-key)
        if st is None or not any(getattr(w, "report", (None,))[0] == tid for w in st.pending):
            continue
        if st.run_lock.acquire(blocking=False):
            return st
    return None


def _run_to_callback(st: Stream, tid: int) -> bool:
    """With ``st``'s run lock held: run its work in order up to ``tid``'s first callback and call that
    here (the stream waits for it, whatever the block type); False if none was reached."""
    try:
        while True:
            with LOCK:
                if not st.pending:
                    return False
                work = st.pending.pop(0)
            rep = getattr(work, "report", None)
            if rep is None or rep[0] != tid:
                work()
                continue
            _tid, fn, user_data, gen = rep
            with LOCK:
                if WORLD.gen != gen:
                    continue
            _call(fn, user_data, None)
            return True
    finally:
        st.run_lock.release()


def _call(fn: Callable[[Any], Any], user_data: Any, done: threading.Event | None) -> None:
    try:
        fn(user_data)
    except Exception:  # a callback error must not kill the reporting thread
        log.exception("acl.rt.launch_callback function %r raised", fn)
    finally:
        if done is not None:
            done.set()


@api("acl.rt.process_report", "ret", pre=ints("timeout"))
def process_report(timeout: int) -> int:
    """Run one callback of a stream this thread subscribed to; wait up to ``timeout`` ms (-1: forever).

    A callback is reached when the stream's earlier work has run: a waiting thread that
    synchronises the stream hands it over, and otherwise this thread runs the stream up to
    the callback itself (on a device the stream progresses on its own; here, waiting for a
    callback is what forces it).
    """
    if timeout < -1 or timeout == 0:
        return set_err(S.E_PARAM, f"process_report: timeout {timeout} must be -1 (wait forever) or > 0 ms")
    tid = threading.get_native_id()
    deadline = None if timeout == -1 else time.monotonic() + timeout / 1000
    with LOCK:
        if tid not in WORLD.subscriptions.values():
            return set_err(
                S.E_THREAD_SUB,
                f"process_report: thread {tid} is not subscribed to any stream (acl.rt.subscribe_report)",
            )
        gen = WORLD.gen
    while True:
        with LOCK:
            q = _queue(tid)
            if WORLD.gen != gen:
                return set_err(S.E_REPORT_TIMEOUT, f"process_report: no callback within {timeout} ms")
            if q:
                fn, user_data, done = q.popleft()
                break
            st = _forced(tid)
            if st is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return set_err(S.E_REPORT_TIMEOUT, f"process_report: no callback within {timeout} ms")
                REPORTS.wait(left)
                continue
        if _run_to_callback(st, tid):
            return 0
    _call(fn, user_data, done)
    return 0
