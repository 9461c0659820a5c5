"""Choose the ``acl`` module and share one ACL runtime per process.

``acl.init``/``acl.finalize`` are once per process and devices are refcounted by
ACL itself, so every :class:`~acl_bundle.BundleModel` in a process goes through
:func:`acquire`/:func:`release`: the first model initialises ACL (unless the
application already did: ``acl.init`` answering 100002 means "already initialised",
and then finalising stays the application's job), each device is set once, and the
last model to close resets the device and finalises what we initialised.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType
from typing import Any

from ._constants import CODES
from ._errors import AclError, BackendNotFoundError, check, extra_hint, recent_error

log = logging.getLogger("acl_bundle")

REPEAT_INITIALIZE = CODES["ACL_ERROR_REPEAT_INITIALIZE"]  # acl.init when ACL is already initialised


def resolve_acl(acl: Any = None) -> Any:
    """Return the ``acl`` module to use.

    An explicit ``acl`` wins.  Otherwise ``ACL_BUNDLE_BACKEND`` decides: ``sim`` = the
    simulator, even where a module named ``acl`` imports; ``pyacl`` = pyACL or
    :class:`BackendNotFoundError`, never the simulator; unset = pyACL, else the error
    (it says how to get either).  The error carries the ``ImportError`` of
    ``import acl`` (a missing ``libascendcl.so`` usually means the CANN ``set_env.sh``
    was not sourced).
    """
    if acl is not None:
        if isinstance(acl, (str, bytes)) or not (hasattr(acl, "rt") and hasattr(acl, "mdl")):
            raise TypeError(f"acl must be the pyACL module (or one with the same interface, e.g. acl_bundle.sim.acl) "
                            f"or None, got {acl!r:.40}; for the simulator pass acl=acl_bundle.sim.acl or set "
                            "ACL_BUNDLE_BACKEND=sim")
        return acl
    choice = os.environ.get("ACL_BUNDLE_BACKEND", "").strip().lower()
    if choice not in ("", "sim", "pyacl"):
        raise BackendNotFoundError(
            f"ACL_BUNDLE_BACKEND={os.environ['ACL_BUNDLE_BACKEND']!r:.40} is not a backend; use 'pyacl', 'sim' or "
            "leave it unset"
        )
    if choice == "sim":
        try:
            sim: ModuleType = importlib.import_module("acl_bundle.sim")
        except ImportError as e:
            raise BackendNotFoundError(
                f"ACL_BUNDLE_BACKEND=sim but the simulator cannot be imported ({type(e).__name__}: {e}); "
                f"{extra_hint('sim')}"
            ) from e
        return sim.acl
    try:
        return importlib.import_module("acl")
    except ImportError as e:
        cause = f"{type(e).__name__}: {e}"
        hint = ""
        if not isinstance(e, ModuleNotFoundError) or getattr(e, "name", None) != "acl":
            hint = (" The module was found but failed to load: on an Ascend host source the CANN environment "
                    "first (e.g. 'source /usr/local/Ascend/ascend-toolkit/set_env.sh') so that libascendcl.so "
                    "and its Python bindings are found.")
        if choice == "pyacl":
            raise BackendNotFoundError(
                f"ACL_BUNDLE_BACKEND=pyacl but 'import acl' failed ({cause}).{hint}"
            ) from e
        raise BackendNotFoundError(
            f"pyACL ('import acl', from the Ascend CANN toolkit) was not found ({cause}).{hint} "
            f"To run on the simulator instead, {extra_hint('sim')}, and set ACL_BUNDLE_BACKEND=sim "
            "or pass acl=acl_bundle.sim.acl."
        ) from e


class _Process:
    """Per-``acl``-module shared state: who initialised ACL, and device refcounts."""

    __slots__ = ("acl", "users", "owns_init", "devices")

    def __init__(self, acl: Any) -> None:
        self.acl = acl
        self.users = 0
        self.owns_init = False
        self.devices: dict[int, int] = {}


_lock = threading.Lock()
_processes: dict[int, _Process] = {}


def acquire(acl: Any, device_id: int) -> None:
    """Initialise ACL (first user) and set ``device_id`` (first user of that device)."""
    with _lock:
        proc = _processes.get(id(acl))
        if proc is None:
            proc = _Process(acl)
            ret = acl.init()
            if ret == REPEAT_INITIALIZE:
                log.info("ACL already initialised by the application; sharing it")
            else:
                check(acl, "acl.init", ret)
                proc.owns_init = True
            _processes[id(acl)] = proc
        try:
            if device_id not in proc.devices:
                check(acl, "acl.rt.set_device", acl.rt.set_device(device_id))
                proc.devices[device_id] = 0
        except BaseException:
            if proc.users == 0:
                _finish(proc)
            raise
        proc.devices[device_id] += 1
        proc.users += 1


def release(acl: Any, device_id: int) -> list[AclError]:
    """Undo one :func:`acquire`; return (not raise) errors so teardown can go on."""
    errors: list[AclError] = []
    with _lock:
        proc = _processes.get(id(acl))
        if proc is None or proc.devices.get(device_id, 0) <= 0:
            return errors
        proc.users -= 1
        proc.devices[device_id] -= 1
        if proc.devices[device_id] == 0:
            del proc.devices[device_id]
            ret = acl.rt.reset_device(device_id)
            if ret != 0:
                errors.append(AclError("acl.rt.reset_device", ret, recent_error(acl)))
        if proc.users == 0:
            errors.extend(_finish(proc))
    return errors


def _finish(proc: _Process) -> list[AclError]:
    """The last model of the process is gone: give back our ``acl.init``.

    Where the runtime has ``acl.finalize_reference``, every ``acl.init`` (including one
    that answered 100002, already initialised) counts a reference and only the last
    ``finalize_reference`` tears ACL down (hicann/runtime ``src/acl/aclrt_impl/acl.cpp``,
    ``aclInitImpl`` lines 388-391: ``aclInitRefCount++`` before returning ACL_ERROR_REPEAT_INITIALIZE;
    ``aclFinalizeReferenceImpl`` lines 648-683: decrement, finalize at 1), so we always give ours back
    and never finalize under another component.  Without it, ``acl.finalize`` is called
    only if we were the ones who initialised.
    """
    del _processes[id(proc.acl)]
    acl = proc.acl
    finalize_reference = getattr(acl, "finalize_reference", None)
    if finalize_reference is not None:
        _count, ret = finalize_reference()
        return [] if ret == 0 else [AclError("acl.finalize_reference", ret, recent_error(acl))]
    if not proc.owns_init:
        return []
    ret = acl.finalize()
    return [] if ret == 0 else [AclError("acl.finalize", ret, recent_error(acl))]


def forget_after_fork() -> None:
    """In a forked child: the parent's runtime state is not ours (ACL does not survive fork)."""
    global _lock
    _lock = threading.Lock()
    _processes.clear()
