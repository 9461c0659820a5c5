"""The model's own ACL context: created on its device, made current for each call, and how to copy.

ACL contexts are per thread, so every call a model makes first makes its context
current in the calling thread, and gives the thread back the context it had
(:meth:`ModelContext.enter` / :func:`restore_context`): an application that mixes
BundleModel with its own pyACL code keeps using its own context and streams.  The copy kinds follow
``acl.rt.get_run_mode()``: in host run mode the application's memory is host memory (host<->device copies); when
the application itself runs on the device, its memory is device memory (pyACL documentation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .. import _backend
from .._constants import ACL_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE
from .._errors import AclError, check, code_message, recent_error, unwrap


class Releases(Protocol):
    """What a context needs of the release ledger (buffers.Ledger): somewhere to push its releases."""

    context: int

    def push(self, name: str, release: Callable[[], Any]) -> None: ...


log = logging.getLogger("acl_bundle")


def _array_address(a: np.ndarray) -> int:
    return a.ctypes.data


def current_context(acl: Any) -> int:
    """The calling thread's current context; 0 when it has none (``get_context`` answers an error).

    That expected miss is also recorded in the thread's error messages; they are read (which
    clears them) so the next real error's ``get_recent_err_msg`` is not followed by it."""
    ctx, ret = acl.rt.get_context()
    if ret != 0:
        recent_error(acl)
        return 0
    return ctx


def restore_context(acl: Any, prev: int) -> None:
    """Make ``prev`` current again (0: nothing to do). Never raises: it runs in ``finally`` blocks.

    Real ACL cannot unset a context, so a thread that had none keeps ours.  If ``prev``
    was destroyed meanwhile by its owner, there is nothing to go back to.
    """
    if prev:
        ret = acl.rt.set_context(prev)
        if ret != 0:
            log.warning(
                "could not make the caller's context current again: %s", code_message("acl.rt.set_context", ret)
            )


class ModelContext:
    """One model's device context, its copy kinds and its host-pointer function."""

    __slots__ = ("acl", "device_id", "handle", "h2d", "d2h", "host_ptr")

    def __init__(self, acl: Any, device_id: int, ledger: Releases) -> None:
        """Share the process-wide runtime, create the context; each step's release goes on ``ledger``."""
        self.acl = acl
        self.device_id = device_id
        _backend.acquire(acl, device_id)
        ledger.push("acl_bundle runtime release", lambda: _backend.release(acl, device_id))
        ctx = unwrap(acl, "acl.rt.create_context", acl.rt.create_context(device_id))
        self.handle: int = ctx
        ledger.context = ctx
        ledger.push("acl.rt.destroy_context", lambda: acl.rt.destroy_context(ctx))
        run_mode = unwrap(acl, "acl.rt.get_run_mode", acl.rt.get_run_mode())
        self.h2d = ACL_MEMCPY_HOST_TO_DEVICE if run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        self.d2h = ACL_MEMCPY_DEVICE_TO_HOST if run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        # pyACL marks numpy_to_ptr "to be deprecated"; any host address is valid to real ACL.
        self.host_ptr = getattr(acl.util, "numpy_to_ptr", None) or _array_address

    def enter(self) -> int:
        """Make this model's context current in the calling thread; return the one to restore (0: none).

        One ``get_context``; ``set_context`` only when another context (or none) is current.
        The thread's context is read on every call, never cached: other code may change it.
        """
        acl = self.acl
        cur, ret = acl.rt.get_context()
        if ret == 0 and cur == self.handle:
            return 0
        ret2 = acl.rt.set_context(self.handle)
        if ret2:
            raise AclError("acl.rt.set_context", ret2, recent_error(acl))
        return cur if ret == 0 else 0

    def memcpy(self, dst: int, dst_max: int, src: int, count: int, kind: int) -> None:
        """``acl.rt.memcpy`` with its code checked; a 0-byte copy is no call at all."""
        if count:
            check(self.acl, "acl.rt.memcpy", self.acl.rt.memcpy(dst, dst_max, src, count, kind))
