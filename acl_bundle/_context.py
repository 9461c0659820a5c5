"""The model's own ACL context: created on its device, made current for each call, and how to copy.

ACL contexts are per thread, so every call a model makes first makes its context
current in the calling thread.  The copy kinds follow ``acl.rt.get_run_mode()``: in
host run mode the application's memory is host memory (host<->device copies); when
the application itself runs on the device, its memory is device memory (reference §1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _backend
from ._constants import ACL_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE
from ._errors import check, unwrap

if TYPE_CHECKING:
    from ._buffers import Ledger


def _array_address(a: np.ndarray) -> int:
    return a.ctypes.data


class ModelContext:
    """One model's device context, its copy kinds and its host-pointer function."""

    __slots__ = ("acl", "device_id", "handle", "h2d", "d2h", "host_ptr")

    def __init__(self, acl: Any, device_id: int, ledger: Ledger) -> None:
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

    def make_current(self) -> None:
        check(self.acl, "acl.rt.set_context", self.acl.rt.set_context(self.handle))

    def memcpy(self, dst: int, dst_max: int, src: int, count: int, kind: int) -> None:
        """``acl.rt.memcpy`` with its code checked; a 0-byte copy is no call at all."""
        if count:
            check(self.acl, "acl.rt.memcpy", self.acl.rt.memcpy(dst, dst_max, src, count, kind))
