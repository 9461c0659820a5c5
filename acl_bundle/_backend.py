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
import sys
import threading
from types import ModuleType
from typing import Any

from ._constants import CODES, SIM_MAGIC
from ._errors import AclError, BackendNotFoundError, check, extra_hint, recent_error

log = logging.getLogger("acl_bundle")

REPEAT_INITIALIZE = CODES["ACL_ERROR_REPEAT_INITIALIZE"]  # acl.init when ACL is already initialised


#: How a user forces the simulator, per interface (hints name the one the user is in).
_FORCE_SIM = {"python": "pass acl=acl_bundle.sim.acl", "cli": "pass --sim"}


def is_sim_file(source: str | os.PathLike[str] | bytes | bytearray | memoryview | None) -> bool:
    """Whether ``source`` (a path, or a bundle's bytes) starts with the simulator format's magic.

    Reads at most the magic's bytes and imports nothing of the simulator (its magic is a
    constant here, ``acl_bundle.sim.format`` takes it from here)."""
    if source is None:
        return False
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[: len(SIM_MAGIC)]) == SIM_MAGIC
    try:
        with open(source, "rb") as f:
            return f.read(len(SIM_MAGIC)) == SIM_MAGIC
    except (OSError, TypeError, ValueError):
        return False


def resolve_acl(acl: Any = None, *, source: Any = None, force_sim: bool = False, interface: str = "python") -> Any:
    """Return the ``acl`` module that runs ``source``: the one backend rule of every entry point.

    1. An explicit choice wins: ``acl`` (a module with pyACL's interface), then
       ``force_sim`` (the command line's ``--sim``), then ``ACL_BUNDLE_BACKEND``
       (``sim`` = the simulator even where a module named ``acl`` imports; ``pyacl`` =
       pyACL or :class:`BackendNotFoundError`, never the simulator).
    2. Otherwise the file decides: a bundle in the simulator's format (``source`` a path
       or the bundle's bytes starting with its magic) can only run on the simulator, so
       it does; anything else is a device bundle and runs on pyACL (``import acl``).
    3. A device bundle without pyACL raises :class:`BackendNotFoundError`: one sentence
       naming the ``ImportError`` and both ways out (pyACL from the CANN toolkit, or the
       simulator with a simulator bundle), phrased for ``interface`` (``"python"`` or
       ``"cli"``).  A missing ``libascendcl.so`` usually means CANN's ``set_env.sh``
       was not sourced; the message says so.
    """
    if acl is not None:
        if isinstance(acl, (str, bytes)) or not (hasattr(acl, "rt") and hasattr(acl, "mdl")):
            raise TypeError(f"acl must be the pyACL module (or one with the same interface, e.g. acl_bundle.sim.acl) "
                            f"or None, got {acl!r:.40}; for the simulator pass acl=acl_bundle.sim.acl or set "
                            "ACL_BUNDLE_BACKEND=sim")
        return acl
    force = _FORCE_SIM.get(interface, _FORCE_SIM["python"])
    raw = os.environ.get("ACL_BUNDLE_BACKEND", "")
    choice = raw.strip().lower()
    if choice not in ("", "sim", "pyacl"):
        raise BackendNotFoundError(f"ACL_BUNDLE_BACKEND={raw!r:.40} is not a backend; use 'pyacl', 'sim' or leave it "
                                   "unset")
    if force_sim or choice == "sim" or (choice == "" and is_sim_file(source)):
        why = ("--sim" if force_sim else "ACL_BUNDLE_BACKEND=sim" if choice == "sim"
               else "the bundle is in the simulator's format")
        return _simulator(why)
    try:
        return importlib.import_module("acl")
    except ImportError as e:
        cause = f"{type(e).__name__}: {e}"
        broken = ""
        if not isinstance(e, ModuleNotFoundError) or getattr(e, "name", None) != "acl":
            broken = (" (the module was found but failed to load: on an Ascend host source the CANN environment "
                      "first, e.g. 'source /usr/local/Ascend/ascend-toolkit/set_env.sh', so that libascendcl.so "
                      "and its Python bindings are found)")
        if choice == "pyacl":
            is_path = isinstance(source, (str, os.PathLike))
            sim_note = (f"; {os.fspath(source)} is a simulator bundle: unset ACL_BUNDLE_BACKEND to run it on the "
                        "simulator" if is_path and is_sim_file(source) else "")
            raise BackendNotFoundError(
                f"ACL_BUNDLE_BACKEND=pyacl but 'import acl' failed ({cause}){broken}{sim_note}") from e
        if isinstance(source, (str, os.PathLike)):
            what = f"{os.fspath(source)!s} is not a simulator bundle, so it needs"
        else:
            what = "a device bundle needs" if source is not None else "running on Ascend needs"
        raise BackendNotFoundError(
            f"{what} pyACL ('import acl', from the Ascend CANN toolkit), which was not found ({cause}){broken}; "
            f"either install CANN on an Ascend host, or run on the simulator: {extra_hint('sim')}, build a "
            f"simulator bundle with 'acl-bundle build' (it runs there with no flag) or {force} "
            "(or set ACL_BUNDLE_BACKEND=sim)."
        ) from e


def _simulator(why: str) -> Any:
    try:
        sim: ModuleType = importlib.import_module("acl_bundle.sim")
    except ImportError as e:
        raise BackendNotFoundError(
            f"{why} selects the simulator but it cannot be imported ({type(e).__name__}: {e}); {extra_hint('sim')}"
        ) from e
    return sim.acl


def is_simulator(acl: Any) -> bool:
    """Whether ``acl`` is the simulator's module (without importing the simulator)."""
    sim = sys.modules.get("acl_bundle.sim")
    return sim is not None and acl is getattr(sim, "acl", None)


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
