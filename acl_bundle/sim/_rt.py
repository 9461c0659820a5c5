"""Process, device, context and stream calls."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from . import _state as S
from ._state import LOCK, TLS, WORLD, api, ints, new_handle, set_err


@dataclass(eq=False)
class Context:
    id: int
    device: int


@dataclass(eq=False)
class Stream:
    id: int
    ctx: int
    pending: list[Callable[[], object]] = field(default_factory=list)


# ---- process ---------------------------------------------------------------------------
@api("acl.init", "ret", init=False)
def init(config_path: str | None = None) -> int:
    if config_path is not None and not isinstance(config_path, str):
        raise TypeError(f"init: config_path must be str, not {type(config_path).__name__}")
    if config_path is not None and config_path != "" and not os.path.isfile(config_path):
        return set_err(S.E_FILE, f"init: config file {config_path!r} does not exist")
    with LOCK:
        if WORLD.initialized:
            return set_err(S.E_REPEAT_INIT, "init: acl is already initialised")
        WORLD.initialized = True
        WORLD.ever_initialized = True
        WORLD.finalized = False
    return 0


@api("acl.finalize", "ret", init=False)
def finalize() -> int:
    with LOCK:
        if not WORLD.initialized:
            if WORLD.finalized:
                return set_err(S.E_REPEAT_FINAL, "finalize: acl is already finalised")
            return set_err(S.E_UNINIT, "finalize: acl.init has never been called")
        pending = [s for s in WORLD.streams.values() if s.pending]
        WORLD.initialized = False
        WORLD.finalized = True
    for s in pending:
        _drain(s)
    return 0


@api("acl.get_version", "t3", init=False)
def get_version() -> tuple[int, int, int, int]:
    """The simulator simulates the CANN 8.0 API level."""
    return 8, 0, 0, 0


@api("acl.get_recent_err_msg", "str", init=False)
def get_recent_err_msg() -> str:
    """The calling thread's most recent error message (not cleared by reading)."""
    return TLS.err


@api("acl.app_log", "none", init=False)
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
            WORLD.default_ctx[device_id] = new_handle()
        _make_current(WORLD.default_ctx[device_id])
    return 0


@api("acl.rt.reset_device", "ret", pre=ints("device_id"))
def reset_device(device_id: int) -> int:
    with LOCK:
        n = WORLD.devices.get(device_id, 0)
        if n <= 0:
            return set_err(S.E_DEVICE, f"reset_device: device {device_id} is not set")
        if n == 1:
            del WORLD.devices[device_id]
            WORLD.default_ctx.pop(device_id, None)  # implicit context dies with the device
        else:
            WORLD.devices[device_id] = n - 1
    return 0


@api("acl.rt.get_device_count", "t1")
def get_device_count() -> tuple[int, int]:
    return S.CONFIG.device_count, 0


@api("acl.rt.get_run_mode", "t1")
def get_run_mode() -> tuple[int, int]:
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
    with LOCK:
        if WORLD.contexts.pop(context, None) is None:
            return set_err(S.E_RT_PARAM, f"destroy_context: {context:#x} is not a live context")
    return 0


@api("acl.rt.set_context", "ret", pre=ints("context"))
def set_context(context: int) -> int:
    with LOCK:
        if context in WORLD.contexts or context in WORLD.default_ctx.values():
            _make_current(context)
            return 0
    return set_err(S.E_RT_PARAM, f"set_context: {context:#x} is not a live context")


@api("acl.rt.get_context", "t1")
def get_context() -> tuple[int, int]:
    with LOCK:
        ctx = S.current_context()
        if ctx is None:
            return 0, set_err(S.E_CTX_NULL, "get_context: no current context in this thread")
        return ctx.id, 0


# ---- streams ------------------------------------------------------------------------------
@api("acl.rt.create_stream", "t1", ctx=True)
def create_stream() -> tuple[int, int]:
    with LOCK:
        st = Stream(new_handle(), S.current_context().id)
        WORLD.streams[st.id] = st
        return st.id, 0


def _drain(st: Stream) -> int:
    """Run queued work outside the lock, in order; return the first error code of the work."""
    first = 0
    while True:
        with LOCK:
            if not st.pending:
                return first
            work = st.pending.pop(0)
        ret = work()
        if ret and not first:
            first = ret


def enqueue(name: str, stream: int, work: Callable[[], object] | None) -> int:
    """Queue ``work`` on ``stream`` (LOCK held); callers run stream-0 work themselves, synchronously."""
    st = WORLD.streams.get(stream)
    if st is None:
        return set_err(S.E_RT_PARAM, f"{name}: {stream:#x} is not a live stream")
    if work is not None:
        st.pending.append(work)
    return 0


@api("acl.rt.synchronize_stream", "ret", ctx=True, pre=ints("stream"))
def synchronize_stream(stream: int) -> int:
    with LOCK:
        st = WORLD.streams.get(stream)
        if st is None and stream != 0:
            return set_err(S.E_RT_PARAM, f"synchronize_stream: {stream:#x} is not a live stream")
    return _drain(st) if st is not None else 0


@api("acl.rt.destroy_stream", "ret", ctx=True, pre=ints("stream"))
def destroy_stream(stream: int) -> int:
    """Pending work on the stream is run first (our choice)."""
    with LOCK:
        st = WORLD.streams.get(stream)
        if st is None:
            return set_err(S.E_RT_PARAM, f"destroy_stream: {stream:#x} is not a live stream")
    _drain(st)
    with LOCK:
        WORLD.streams.pop(stream, None)
    return 0
