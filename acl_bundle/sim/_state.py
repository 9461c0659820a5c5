"""Process-wide simulator state, thread-local context, error messages, faults, stats."""
from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import logging
import operator
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .._constants import ACL_HOST, CODES, error_name

log = logging.getLogger("acl_bundle.sim")

GiB = 1 << 30


class SimulatorMisuse(RuntimeError):
    """Misuse that would crash (or corrupt) a real process where pyACL has no error return."""


class NotImplementedInSimulator(AttributeError):
    """A pyACL name the simulator does not implement."""


# ---- error codes used by the simulator --------------------------------------------
OK = 0
E_PARAM = CODES["ACL_ERROR_INVALID_PARAM"]  # 100000
E_UNINIT = CODES["ACL_ERROR_UNINITIALIZE"]  # 100001
E_REPEAT_INIT = CODES["ACL_ERROR_REPEAT_INITIALIZE"]  # 100002
E_FILE = CODES["ACL_ERROR_INVALID_FILE"]  # 100003
E_NOT_DYNAMIC = CODES["ACL_ERROR_MODEL_NOT_DYNAMIC"]  # 100019
E_REPEAT_FINAL = CODES["ACL_ERROR_REPEAT_FINALIZE"]  # 100037
E_BUNDLE_ID = CODES["ACL_ERROR_INVALID_BUNDLE_MODEL_ID"]  # 148053
E_GE_PARAM = CODES["ACL_ERROR_GE_PARAM_INVALID"]  # 145000
E_GE_NOT_INIT = CODES["ACL_ERROR_GE_EXEC_NOT_INIT"]  # 145001
E_GE_PATH = CODES["ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID"]  # 145002
E_MODEL_ID = CODES["ACL_ERROR_GE_EXEC_MODEL_ID_INVALID"]  # 145003
E_DYN_LENGTH = CODES["ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID"]  # 145012
E_BATCH = CODES["ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID"]  # 145013
E_AIPP_NOT_EXIST = CODES["ACL_ERROR_GE_AIPP_NOT_EXIST"]  # 145015
E_SHAPE = CODES["ACL_ERROR_GE_SHAPE_INVALID"]  # 145021
E_DTYPE = CODES["ACL_ERROR_GE_DATATYPE_INVALID"]  # 145022
E_LOAD = CODES["ACL_ERROR_GE_LOAD_MODEL"]  # 545001
E_RT_PARAM = CODES["ACL_ERROR_RT_PARAM_INVALID"]  # 107000
E_DEVICE = CODES["ACL_ERROR_RT_INVALID_DEVICEID"]  # 107001
E_CTX_NULL = CODES["ACL_ERROR_RT_CONTEXT_NULL"]  # 107002
E_STREAM_CTX = CODES["ACL_ERROR_RT_STREAM_CONTEXT"]  # 107003
E_MODEL_CTX = CODES["ACL_ERROR_RT_MODEL_CONTEXT"]  # 107004
E_STREAM_SUB = CODES["ACL_ERROR_RT_STREAM_SUBSCRIBE"]  # 107011
E_THREAD_SUB = CODES["ACL_ERROR_RT_THREAD_SUBSCRIBE"]  # 107012
E_NO_CB_REG = CODES["ACL_ERROR_RT_STREAM_NO_CB_REG"]  # 107015
E_MEM_TYPE = CODES["ACL_ERROR_RT_INVALID_MEMORY_TYPE"]  # 107016
E_ALLOC = CODES["ACL_ERROR_RT_MEMORY_ALLOCATION"]  # 207001
E_EXEC = CODES["ACL_ERROR_RT_MODEL_EXECUTE"]  # 507011
E_REPORT_TIMEOUT = CODES["ACL_ERROR_RT_REPORT_TIMEOUT"]  # 507012


# ---- configuration (survives reset) -----------------------------------------------
@dataclass
class Config:
    device_count: int = 2
    run_mode: int = ACL_HOST
    device_memory: int = 8 * GiB
    soc_name: str = "Ascend310P3"


CONFIG = Config()

# Ids never reused, not even across reset().
_handle_counter = itertools.count(0x1000, 16)
_model_counter = itertools.count(1)
_bundle_counter = itertools.count(1)
_id_lock = threading.Lock()


def new_handle() -> int:
    with _id_lock:
        return next(_handle_counter)


def new_model_id() -> int:
    with _id_lock:
        return next(_model_counter)


def new_bundle_id() -> int:
    with _id_lock:
        return next(_bundle_counter)


class Intervals:
    """Sorted, non-overlapping (or ``multi``: possibly overlapping) address intervals."""

    def __init__(self, multi: bool = False) -> None:
        self.multi = multi
        self.starts: list[int] = []
        self.by_start: dict[int, list[Any]] = {}

    def add(self, start: int, obj: Any) -> None:
        lst = self.by_start.get(start)
        if lst is None:
            bisect.insort(self.starts, start)
            self.by_start[start] = [obj]
        elif self.multi:
            lst.append(obj)
        else:
            raise AssertionError(f"interval at {start:#x} already registered")

    def remove(self, start: int, obj: Any) -> None:
        lst = self.by_start[start]
        lst.remove(obj)
        if not lst:
            del self.by_start[start]
            i = bisect.bisect_left(self.starts, start)
            del self.starts[i]

    def get(self, start: int) -> Any:
        lst = self.by_start.get(start)
        return lst[0] if lst else None

    def find(self, addr: int, n: int, alive: Callable[[Any], bool] = lambda o: True) -> Any:
        """The object whose [start, start+size) contains [addr, addr+n), or None."""
        i = bisect.bisect_right(self.starts, addr)
        for j in range(i - 1, max(-1, i - 1 - (256 if self.multi else 1)), -1):
            start = self.starts[j]
            for obj in self.by_start[start]:
                if addr + max(n, 0) <= start + obj.size and alive(obj):
                    return obj
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_start.values())

    def values(self) -> list[Any]:
        return [o for s in self.starts for o in self.by_start[s]]


# ---- the world ----------------------------------------------------------------------
class World:
    """Everything alive in the simulated process. Guard with ``LOCK``."""

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.initialized = False
        self.init_refcount = 0  # aclInit reference count (acl.cpp: repeat init +1, finalize_reference -1)
        self.finalized = False  # aclFinalizeFlag: set by finalize, cleared by init
        self.devices: dict[int, int] = {}
        self.default_ctx: dict[int, int] = {}  # device -> implicit context id (alive while set)
        self.contexts: dict[int, Any] = {}  # explicit contexts
        self.streams: dict[int, Any] = {}
        self.default_streams: dict[int, Any] = {}  # context id -> its default stream (stream 0), made on first use
        self.datasets: dict[int, Any] = {}
        self.data_buffers: dict[int, Any] = {}
        self.tensor_descs: dict[int, Any] = {}  # includes dataset-owned copies
        self.model_descs: dict[int, Any] = {}
        self.models: dict[int, Any] = {}  # plain and bundle-inner models
        self.bundles: dict[int, Any] = {}
        self.events: dict[int, Any] = {}
        self.media: dict[int, Any] = {}  # acl.media descriptors and configs by handle
        self.threads: dict[int, Any] = {}  # acl.util.start_thread threads not yet stopped, by thread id
        self.subscriptions: dict[int, int] = {}  # stream id (-context: its default stream) -> thread id
        self.reports: dict[int, Any] = {}  # thread id -> deque of queued callbacks (launch_callback)
        self.device_blocks = Intervals()  # acl.rt.malloc (and runtime-allocated outputs)
        self.host_blocks = Intervals()  # acl.rt.malloc_host
        self.freed_host = Intervals()  # malloc_host blocks given back by free_host, memory kept (use after free)
        self.freed_host_order: dict[int, Any] = {}  # the same, oldest first
        self.freed_host_bytes = 0
        self.regions = Intervals(multi=True)  # bytes_to_ptr / numpy_to_ptr registrations
        self.device_used: dict[int, int] = {}  # device -> accounted bytes
        self.device_frees = 0  # device memory given back so far: a cached "this address is live" is stale after one
        self.default_ctx_objs: dict[int, DefaultCtx] = {}  # the same default contexts by id (set and popped with it)


LOCK = threading.RLock()
_gen_counter = itertools.count(1)
WORLD = World(next(_gen_counter))


class _TLS(threading.local):
    def __init__(self) -> None:
        self.gen = 0
        self.ctx = 0
        self.errs: list[str] = []  # oldest first; acl.get_recent_err_msg returns and clears them


TLS = _TLS()
MAX_ERRS = 32  # unread messages kept per thread (the runtime's pile-up is unbounded)


def set_err(code: int, msg: str) -> int:
    """Add ``msg`` to the calling thread's unread error messages and return ``code``."""
    errs = TLS.errs
    errs.append(f"{msg} ({code} {error_name(code)})" if code else msg)
    if len(errs) > MAX_ERRS:
        del errs[: len(errs) - MAX_ERRS]
    log.debug("acl error %s: %s", code, msg)
    return code


# ---- stats, faults, recorders ------------------------------------------------------
STATS_LOCK = threading.Lock()
DIRS = ("HOST_TO_DEVICE", "DEVICE_TO_HOST", "DEVICE_TO_DEVICE", "HOST_TO_HOST")


def _fresh_stats() -> dict:
    return {
        "calls": {},
        "mallocs": 0,
        "host_mallocs": 0,
        "bytes_copied": dict.fromkeys(DIRS, 0),
        "memcpy_calls": dict.fromkeys(DIRS, 0),
        "executions": {},
        "update_bytes_applied": 0,
    }


STATS = _fresh_stats()


def bump(key: str, n: int = 1, sub: Any = None) -> None:
    with STATS_LOCK:
        if sub is None:
            STATS[key] += n
        else:
            STATS[key][sub] = STATS[key].get(sub, 0) + n


def stats() -> dict:
    """Counters since the last reset() (a deep copy)."""
    with STATS_LOCK:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in STATS.items()}


class Fault:
    """Active fault injection on one dotted acl function name (see :func:`fault`)."""

    def __init__(self, func: str, code: int, on_call: int = 1, times: int | None = 1) -> None:
        if on_call < 1:
            raise ValueError("on_call is 1-based")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        self.func, self.code, self.on_call, self.times = func, int(code), on_call, times
        self.seen = 0
        self.fired = 0

    def __enter__(self) -> Fault:
        with STATS_LOCK:
            self.seen = 0
            FAULTS.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with STATS_LOCK:
            if self in FAULTS:
                FAULTS.remove(self)

    def _hit(self) -> bool:
        self.seen += 1
        if self.seen < self.on_call:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


FAULTS: list[Fault] = []
RECORDERS: list[list[str]] = []


def fault(func: str, code: int, *, on_call: int = 1, times: int | None = 1) -> Fault:
    """Context manager: make the ``on_call``-th call to ``func`` (and ``times-1`` more) fail with ``code``."""
    if func not in REGISTRY:
        raise ValueError(f"unknown acl function {func!r}")
    return Fault(func, code, on_call, times)


class record:
    """Context manager yielding a list that receives the dotted name of every acl call."""

    def __enter__(self) -> list[str]:
        self.calls: list[str] = []
        with STATS_LOCK:
            RECORDERS.append(self.calls)
        return self.calls

    def __exit__(self, *exc: object) -> None:
        with STATS_LOCK:
            if any(r is self.calls for r in RECORDERS):
                RECORDERS[:] = [r for r in RECORDERS if r is not self.calls]


def clear_stats_and_faults() -> None:
    with STATS_LOCK:
        STATS.clear()
        STATS.update(_fresh_stats())
        FAULTS.clear()


# ---- API decorator ------------------------------------------------------------------
# error "forms": how a function reports an error code in its normal return shape
FORMS: dict[str, Callable[[int], Any]] = {
    "ret": lambda c: c,
    "t1": lambda c: (0, c),
    "t2": lambda c: (0, 0, c),
    "t3": lambda c: (0, 0, 0, c),
    "dims": lambda c: ({}, c),
    "handle": lambda c: 0,
    "int0": lambda c: 0,
    "intm1": lambda c: -1,
    "str": lambda c: "",
    "none": lambda c: None,
}

REGISTRY: dict[str, Callable] = {}


def current_context() -> Any:
    """The live current context of the calling thread, or None. Call with LOCK held."""
    tls = TLS
    cid = tls.ctx
    if not cid or tls.gen != WORLD.gen:
        return None
    ctx = WORLD.contexts.get(cid)
    return ctx if ctx is not None else WORLD.default_ctx_objs.get(cid)


@dataclass(frozen=True)
class DefaultCtx:
    id: int
    device: int


def api(
    name: str,
    form: str,
    *,
    ge_init: bool = False,
    ctx: bool = False,
    pre: Callable[..., None] | None = None,
) -> Callable[[Callable], Callable]:
    """Wrap an implementation: stats, record, faults, argument types, init and context checks.

    No ACL-layer call checks ``acl.init``: the runtime's only init-checked paths are the
    dump APIs (hicann/runtime src/acl/aclrt_impl/toolchain/dump.cpp:106). ``ge_init`` marks
    the calls that reach the GE executor, which answers 145001 until ``acl.init`` initialised
    it (hicann/ge runtime/v1/executor/ge_executor.cc:988 LoadDataFromFile, :1028
    LoadModelFromData, :1173 ExecModel, :760 GetModelDescInfo). ``ctx`` answers 107002
    without a current context in the calling thread (api_impl.cc CHECK_CONTEXT_VALID).
    """
    err = FORMS[form]
    short = name.split(".")[-1]

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            hit: Fault | None = None
            with STATS_LOCK:
                calls = STATS["calls"]
                calls[name] = calls.get(name, 0) + 1
                if RECORDERS or FAULTS:  # the common case (neither) costs one test
                    for r in RECORDERS:
                        r.append(name)
                    for f in FAULTS:
                        if f.func == name and f._hit() and hit is None:
                            hit = f
            if hit is not None:
                set_err(hit.code, f"{short}: injected fault")
                return err(hit.code)
            if pre is not None:
                pre(*args, **kwargs)
            if ge_init or ctx:
                with LOCK:
                    if ge_init and not WORLD.initialized:
                        return err(
                            set_err(
                                E_GE_NOT_INIT,
                                f"{short}: the GE executor is not initialised (call acl.init first; acl.finalize ends "
                                "it)",
                            )
                        )
                    if ctx and current_context() is None:
                        return err(
                            set_err(
                                E_CTX_NULL,
                                f"{short}: no current context in this thread (call acl.rt.set_device or set_context)",
                            )
                        )
            return fn(*args, **kwargs)

        if pre is None and not ge_init and not ctx:
            slow = wrapper

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:  # noqa: F811 - the same, without the unused checks
                if RECORDERS or FAULTS:  # tests and fault injection: counted there
                    return slow(*args, **kwargs)
                with STATS_LOCK:
                    calls = STATS["calls"]
                    calls[name] = calls.get(name, 0) + 1
                return fn(*args, **kwargs)

        wrapper.__name__ = short
        wrapper.__qualname__ = short
        REGISTRY[name] = wrapper
        return wrapper

    return deco


def check_int(*names_values: tuple[str, Any]) -> None:
    """pyACL parses these with "k"/"l": anything with __index__ (int, numpy ints) passes."""
    for n, v in names_values:
        if isinstance(v, int):
            continue
        try:
            operator.index(v)
        except TypeError:
            raise TypeError(f"argument {n} must be int, not {type(v).__name__}") from None


def ints(*names: str) -> Callable[..., None]:
    """A ``pre`` hook checking that the positional arguments are ints (pyACL raises TypeError)."""

    n = len(names)

    def pre(*args: Any, **kwargs: Any) -> None:
        if not kwargs and len(args) == n:  # the common case: plain ints, nothing more to check
            for v in args:
                if v.__class__ is not int:
                    break
            else:
                return
        if len(args) + len(kwargs) != n:
            raise TypeError(f"expected {len(names)} arguments ({', '.join(names)}), got {len(args) + len(kwargs)}")
        check_int(*zip(names, args))
        check_int(*((k, v) for k, v in kwargs.items()))

    return pre


def new_world() -> None:
    """Re-initialise the world in place (reset): invalidates every thread's current context."""
    WORLD.__init__(next(_gen_counter))  # type: ignore[misc]


def iter_live(d: dict) -> Iterator:
    return iter(list(d.values()))


# The signals whose Python handlers end a process's work (KeyboardInterrupt, sys.exit in a
# SIGTERM/SIGHUP handler). Each costs two signal-module calls per deferral, so the list is short.
try:  # the C module behind `signal`: the same calls without the enum wrapping (~10x cheaper)
    import _signal as _sig
except ImportError:  # pragma: no cover - not CPython
    _sig = signal
_DEFERRABLE = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back Python-level signal handlers for the duration of the block (main thread only).

    Python runs signal handlers between bytecodes of the main thread, so a Python loop
    standing in for one C call could be interrupted half-way; here a handler that fires
    inside the block only records the signal, and the real handler runs when it ends.
    Other threads never run signal handlers, so nothing is needed there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    saved = {}

    def defer(sig: int, frame: Any) -> None:
        pending.append((sig, frame))

    for sig in _DEFERRABLE:
        h = _sig.getsignal(sig)
        if callable(h):
            saved[sig] = h
            _sig.signal(sig, defer)
    try:
        yield
    finally:
        for sig, h in saved.items():
            _sig.signal(sig, h)
        for sig, frame in pending:
            saved[sig](sig, frame)
