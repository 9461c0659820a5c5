"""Process, device, context and stream calls.

Sources (hicann/runtime): ``src/acl/aclrt_impl/acl.cpp`` (init/finalize and their
reference count), ``src/acl/aclrt_impl/context.cpp`` and ``src/runtime/api/impl/api_impl.cc``
+ ``api_error.cc`` (contexts, streams and which context a stream belongs to).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _state as S
from ._state import LOCK, TLS, WORLD, api, ints, new_handle, set_err


@dataclass(eq=False)
class Context:
    id: int
    device: int


@dataclass(eq=False)
class Stream:
    """A stream's queue. Work runs in order, by one thread at a time (``run_lock``), when someone
    waits for it: synchronize_stream, an event's synchronisation, a callback thread's
    process_report, or the stream's (or its context's) destruction. ``id`` 0: a context's default stream."""

    id: int
    ctx: int
    pending: list[Callable[[], Any]] = field(default_factory=list)
    run_lock: Any = field(default_factory=threading.RLock)


# Signalled (LOCK held) when work is queued on a stream or a callback report for a thread:
# process_report waits on it.
REPORTS = threading.Condition(LOCK)


# ---- process ---------------------------------------------------------------------------
@api("acl.init", "ret")
def init(config_path: str | None = None) -> int:
    """aclInit: a repeat call adds a reference and answers 100002 (acl.cpp:388-391)."""
    if config_path is not None and not isinstance(config_path, str):
        raise TypeError(f"init: config_path must be str, not {type(config_path).__name__}")
    with LOCK:
        if WORLD.init_refcount > 0:
            WORLD.init_refcount += 1
            return set_err(
                S.E_REPEAT_INIT, f"init: acl is already initialised (reference count now {WORLD.init_refcount})"
            )
    if config_path is not None and config_path != "" and not os.path.isfile(config_path):
        return set_err(S.E_FILE, f"init: config file {config_path!r} does not exist")
    with LOCK:
        WORLD.initialized = True
        WORLD.init_refcount = 1
        WORLD.finalized = False
    return 0


def _finalize_internal() -> None:
    """aclFinalizeInternal: tear the ACL layer down whatever the reference count (acl.cpp:547-627)."""
    with LOCK:
        pending = [s for s in (*WORLD.streams.values(), *WORLD.default_streams.values()) if s.pending]
        WORLD.initialized = False
        WORLD.init_refcount = 0
        WORLD.finalized = True
    for s in pending:
        _drain(s)


@api("acl.finalize", "ret")
def finalize() -> int:
    """aclFinalize checks only that it did not run already (acl.cpp:634): without an init it succeeds."""
    with LOCK:
        if WORLD.finalized:
            return set_err(S.E_REPEAT_FINAL, "finalize: acl is already finalised")
    _finalize_internal()
    return 0


@api("acl.finalize_reference", "t1")
def finalize_reference() -> tuple[int, int]:
    """aclFinalizeReference: drop one init reference; the last one finalises (acl.cpp:648-683)."""
    with LOCK:
        n = WORLD.init_refcount
        if n > 1:
            WORLD.init_refcount = n - 1
            return n - 1, 0
        if n < 1:
            return 0, set_err(
                S.E_REPEAT_FINAL,
                "finalize_reference: no acl.init reference is left (finalised already or never initialised)",
            )
    _finalize_internal()
    return 0, 0


@api("acl.get_version", "t3")
def get_version() -> tuple[int, int, int, int]:
    """The simulator simulates the CANN 8.0 API level."""
    return 8, 0, 0, 0


@api("acl.get_soc_name", "none")
def get_soc_name() -> str | None:
    """aclrtGetSocName (pyACL spells it ``acl.get_soc_name``): needs no init, no device (acl_rt_impl_base.cpp:189)."""
    return S.CONFIG.soc_name


@api("acl.get_recent_err_msg", "none")
def get_recent_err_msg() -> str | None:
    """The calling thread's error messages, newest first; reading clears them; None when there are none.

    pyACL documents "obtains and clears"; the runtime returns nullptr (None) when empty (acl.cpp:1311-1313).
    """
    msgs = TLS.errs
    if not msgs:
        return None
    TLS.errs = []
    return "\n".join(reversed(msgs))


@api("acl.app_log", "none")
def app_log(log_level: int, message: str) -> None:
    """pyACL's ``acl.app_log(log_level, message)`` (aclAppLog; levels 0 DEBUG .. 3 ERROR): no return value.

    Kept in :func:`app_log_records` instead of the device log; acllite logs through it.
    """
    S.check_int(("log_level", log_level))
    if not isinstance(message, str):
        raise TypeError(f"app_log: message must be str, not {type(message).__name__}")
    with LOCK:
        APP_LOG.append((int(log_level), message))
        del APP_LOG[:-APP_LOG_MAX]


APP_LOG: list[tuple[int, str]] = []
APP_LOG_MAX = 1000


def app_log_records() -> list[tuple[int, str]]:
    """The most recent ``acl.app_log`` calls (level, message), oldest first."""
    with LOCK:
        return list(APP_LOG)


# ---- device / context --------------------------------------------------------------------
def _make_current(cid: int) -> None:
    TLS.gen = WORLD.gen
    TLS.ctx = cid


@api("acl.rt.set_device", "ret", pre=ints("device_id"))
def set_device(device_id: int) -> int:
    with LOCK:
        if not 0 <= device_id < S.CONFIG.device_count:
            return set_err(S.E_DEVICE, f"set_device: device {device_id} not in [0, {S.CONFIG.device_count})")
        WORLD.devices[device_id] = WORLD.devices.get(device_id, 0) + 1
        if device_id not in WORLD.default_ctx:
            cid = WORLD.default_ctx[device_id] = new_handle()
            WORLD.default_ctx_objs[cid] = S.DefaultCtx(cid, device_id)
        _make_current(WORLD.default_ctx[device_id])
    return 0


@api("acl.rt.reset_device", "ret", pre=ints("device_id"))
def reset_device(device_id: int) -> int:
    """The last reset releases the device's default context and every stream created in it."""
    with LOCK:
        n = WORLD.devices.get(device_id, 0)
        if n <= 0:
            return set_err(S.E_DEVICE, f"reset_device: device {device_id} is not set")
        if n > 1:
            WORLD.devices[device_id] = n - 1
            return 0
        del WORLD.devices[device_id]
        cid = WORLD.default_ctx.pop(device_id, None)  # implicit context dies with the device
        if cid is not None:
            WORLD.default_ctx_objs.pop(cid, None)
        doomed = _streams_of(cid) if cid is not None else []
    _tear_down(doomed)
    return 0


@api("acl.rt.get_device", "t1")
def get_device() -> tuple[int, int]:
    """The device of the calling thread's current context; none -> 107002 (api_impl.cc:3490)."""
    with LOCK:
        ctx = S.current_context()
        if ctx is None:
            return 0, set_err(S.E_CTX_NULL, "get_device: no current context in this thread")
        return ctx.device, 0


@api("acl.rt.get_device_count", "t1")
def get_device_count() -> tuple[int, int]:
    return S.CONFIG.device_count, 0


@api("acl.rt.get_run_mode", "t1")
def get_run_mode() -> tuple[int, int]:
    """Needs neither init nor a context ("the api do not need context", api_impl.cc ApiImpl::GetRunMode)."""
    return S.CONFIG.run_mode, 0


@api("acl.rt.create_context", "t1", pre=ints("device_id"))
def create_context(device_id: int) -> tuple[int, int]:
    with LOCK:
        if not 0 <= device_id < S.CONFIG.device_count:
            return 0, set_err(S.E_DEVICE, f"create_context: device {device_id} not in [0, {S.CONFIG.device_count})")
        ctx = Context(new_handle(), device_id)
        WORLD.contexts[ctx.id] = ctx
        _make_current(ctx.id)
        return ctx.id, 0


@api("acl.rt.destroy_context", "ret", pre=ints("context"))
def destroy_context(context: int) -> int:
    """Destroys the context and every stream created in it (Context::TearDown, api_impl.cc:4131-4172)."""
    if context == 0:  # context.cpp:55
        return set_err(S.E_PARAM, "destroy_context: context is NULL")
    with LOCK:
        if context in WORLD.default_ctx.values():  # api_impl.cc:4141
            return set_err(
                S.E_CTX_NULL,
                f"destroy_context: {context:#x} is a device's default (primary) context; reset_device releases it",
            )
        if WORLD.contexts.pop(context, None) is None:  # api_impl.cc:4134-4137
            return set_err(S.E_CTX_NULL, f"destroy_context: {context:#x} is not a live context (destroyed already?)")
        doomed = _streams_of(context)
    _tear_down(doomed)
    return 0


@api("acl.rt.set_context", "ret", pre=ints("context"))
def set_context(context: int) -> int:
    """NULL -> 100000 (context.cpp:67); dead or unknown -> 107000 (api_error.cc:3646)."""
    if context == 0:
        return set_err(S.E_PARAM, "set_context: context is NULL")
    with LOCK:
        if context in WORLD.contexts or context in WORLD.default_ctx.values():
            _make_current(context)
            return 0
    return set_err(S.E_RT_PARAM, f"set_context: {context:#x} is not a live context")


@api("acl.rt.get_context", "t1")
def _get_context_api() -> tuple[int, int]:
    # No LOCK: aclrtGetCurrentContextImpl takes none either (hicann/runtime
    # src/acl/aclrt_impl/context.cpp:74-88: one rtCtxGetCurrent, the calling thread's
    # current context). This reads the calling thread's own state and one dict lookup, each
    # atomic under the GIL; a context destroyed
    # by another thread meanwhile is answered as before or after that destroy, as on real ACL.
    ctx = S.current_context()
    if ctx is None:
        return 0, set_err(S.E_CTX_NULL, "get_context: no current context in this thread")
    return ctx.id, 0


# _get_context_api is the decorated call (counting, recorders, injected faults); the registry gets this one:
def get_context() -> tuple[int, int]:
    """``acl.rt.get_context``: the decorated call's answer, counted the same way, without its frames.

    Real pyACL answers from a thread-local in a C call; an application's serving path
    reads it on every call (acl_bundle's infer does), so the simulator's three Python
    frames for it would weigh on every figure.  With a recorder or a fault active, or any
    context but a created one current, the decorated call answers.
    """
    if S.RECORDERS or S.FAULTS:
        return _get_context_api()
    t = TLS
    cid = t.ctx
    if cid and t.gen == WORLD.gen and cid in WORLD.contexts:
        with S.STATS_LOCK:
            calls = S.STATS["calls"]
            calls["acl.rt.get_context"] = calls.get("acl.rt.get_context", 0) + 1
        return cid, 0
    return _get_context_api()


S.REGISTRY["acl.rt.get_context"] = get_context


# ---- streams ------------------------------------------------------------------------------
@api("acl.rt.create_stream", "t1", ctx=True)
def create_stream() -> tuple[int, int]:
    with LOCK:
        st = Stream(new_handle(), S.current_context().id)
        WORLD.streams[st.id] = st
        return st.id, 0


def check_stream(name: str, stream: int) -> int:
    """A stream used for new work must belong to the current context (LOCK held).

    No context -> 107002; 0 is the current context's default stream; a stream of another
    context -> 107003 (COND_RETURN_AND_MSG_INVALID_CONTEXT_STREAM_WITH_FUNC_DESC, e.g.
    api_impl.cc:2882 memcpy async, :2152 event record, :1584 stream destroy).
    """
    ctx = S.current_context()
    if ctx is None:
        return set_err(
            S.E_CTX_NULL, f"{name}: no current context in this thread (call acl.rt.set_device or set_context)"
        )
    if stream == 0:
        return 0
    st = WORLD.streams.get(stream)
    if st is None:
        return set_err(S.E_RT_PARAM, f"{name}: {stream:#x} is not a live stream")
    if st.ctx != ctx.id:
        return set_err(
            S.E_STREAM_CTX,
            f"{name}: stream {stream:#x} belongs to context {st.ctx:#x}, but the current context is {ctx.id:#x}",
        )
    return 0


def drain_until(st: Stream, done: Callable[[], bool] | None = None) -> int:
    """Run queued work in order, outside the world lock, until ``done()`` (an event's marker ran)
    or the queue is empty; return the first error code of the work. One runner per stream."""
    first = 0
    with st.run_lock:
        while True:
            with LOCK:
                if (done is not None and done()) or not st.pending:
                    return first
                work = st.pending.pop(0)
            ret = work()
            if ret and not first:
                first = ret


def _drain(st: Stream) -> int:
    return drain_until(st)


def default_stream(cid: int) -> Stream:
    """Context ``cid``'s default stream (LOCK held)."""
    st = WORLD.default_streams.get(cid)
    if st is None:
        st = WORLD.default_streams[cid] = Stream(0, cid)
    return st


def stream_of(stream: int) -> Stream:
    """The queue of a stream :func:`check_stream` accepted; 0 is the current context's default stream (LOCK held)."""
    if stream == 0:
        return default_stream(S.current_context().id)
    return WORLD.streams[stream]


def enqueue(stream: int, work: Callable[[], Any] | None) -> int:
    """Queue ``work`` on a stream that :func:`check_stream` accepted, the default stream too (LOCK held).

    Nothing runs now: on a device the work runs on the device, and the host sees its results
    only after it waited for the stream, so a client that reads without synchronising reads
    what was there before.
    """
    if work is not None:
        stream_of(stream).pending.append(work)
        REPORTS.notify_all()  # a callback thread waiting in process_report may have work to force
    return 0


def _streams_of(cid: int) -> list[Stream]:
    """Remove and return the streams created in context ``cid`` (LOCK held)."""
    doomed = [s for s in WORLD.streams.values() if s.ctx == cid]
    for s in doomed:
        del WORLD.streams[s.id]
        WORLD.subscriptions.pop(s.id, None)
    WORLD.subscriptions.pop(-cid, None)  # its default stream
    dflt = WORLD.default_streams.pop(cid, None)
    if dflt is not None:
        doomed.append(dflt)
    return doomed


def _tear_down(streams: list[Stream]) -> None:
    """Run what the removed streams still had queued (as destroy_stream does)."""
    for s in streams:
        _drain(s)


@api("acl.rt.synchronize_stream", "ret", ctx=True, pre=ints("stream"))
def synchronize_stream(stream: int) -> int:
    """Any live stream may be synchronised: the runtime switches to its context and back (api_impl.cc:1719).

    0 is the current context's default stream. Returns the first error of the work it ran.
    """
    with LOCK:
        if stream == 0:
            st = WORLD.default_streams.get(S.current_context().id)
        else:
            st = WORLD.streams.get(stream)
            if st is None:
                return set_err(S.E_RT_PARAM, f"synchronize_stream: {stream:#x} is not a live stream")
    return _drain(st) if st is not None else 0


@api("acl.rt.synchronize_device", "ret", ctx=True)
def synchronize_device() -> int:
    """Wait for every stream of the current context's device (each context on it, default streams too)."""
    with LOCK:
        dev = S.current_context().device
        cids = {c.id for c in WORLD.contexts.values() if c.device == dev}
        if dev in WORLD.default_ctx:
            cids.add(WORLD.default_ctx[dev])
        todo = [s for s in (*WORLD.streams.values(), *WORLD.default_streams.values()) if s.ctx in cids]
    first = 0
    for st in todo:
        ret = _drain(st)
        if ret and not first:
            first = ret
    return first


@api("acl.rt.destroy_stream", "ret", pre=ints("stream"))
def destroy_stream(stream: int) -> int:
    """Pending work on the stream is run first (our choice); another context's stream -> 107003."""
    with LOCK:
        if stream == 0:
            return set_err(S.E_PARAM, "destroy_stream: stream is NULL")
        ret = check_stream("destroy_stream", stream)
        if ret:
            return ret
        st = WORLD.streams[stream]
    _drain(st)
    with LOCK:
        WORLD.streams.pop(stream, None)
        WORLD.subscriptions.pop(stream, None)
    return 0
