"""The specialised infer path: the common case at the cost of the raw pyACL sequence.

Built once per model at load (:func:`build`).  It serves a call only when it is the
plain case — exact arrays (type, dtype, shape of one of the model's batch sizes,
C-contiguous), an idle slot of that batch already built, no commit running or
waiting, not closed — and otherwise returns None so that ``BundleModel.infer`` takes
the general path (padding, mappings, conversions, a batch size's first call, a commit
pending, errors to explain).  The guarantees are the general path's:

* admission: :meth:`Gate.fast_slot` and a claim on the slot (one dict operation each
  way, no lock, no counter), so an interrupt (Ctrl-C in the main thread) anywhere in
  this path leaves nothing a commit cannot recover (see the gate); it never waits for a
  commit, so phase fairness is the general path's whenever a commit is pending;
* the weight version is read inside the reader section;
* no allocation but the output arrays; every return code checked;
* the caller's context is restored: one ``get_context`` per call, ``set_context`` only
  when another context (or none) is current; the thread's context is never cached.

ACL functions are looked up on the ``acl`` module at every call (``acl.rt.memcpy``,
not a bound copy), so a runtime wrapped or patched after load (fault injection,
tracing, tests) sees every call of this path too.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._errors import AclError, recent_error
from .context import ModelContext, restore_context

FastInfer = Callable[[tuple[Any, ...]], "tuple[Any, Any] | None"]
getframe = sys._getframe


def build(ctx: ModelContext, accept: Sequence[tuple[np.dtype, dict[tuple[int, ...], int]]], default_batch: int,
          gate: Any, model_id: int,
          updater: Any, *, one_input_copy: bool = True) -> FastInfer:
    """The fast path of one model: ``fast(inputs)`` -> ``(result, version)``, or None = take the general path.

    ``result`` is what ``infer`` returns: the array of a one-output model, else a tuple.
    ``one_input_copy=False`` builds the loop version even for one input (for
    ``scripts/fast_one_input.py``, which compares the two).
    """
    if not accept:  # image-size / dims gears (or no data input): always the general path
        return lambda inputs: None
    acl, handle, host_ptr, h2d, d2h = ctx.acl, ctx.handle, ctx.host_ptr, ctx.h2d, ctx.d2h
    n_in = len(accept)
    ndarray, empty = np.ndarray, np.empty
    claims = gate.claims

    if n_in == 1 and one_input_copy:
        return _build_one(acl, handle, host_ptr, h2d, d2h, gate, accept[0], default_batch, model_id, updater)

    def fast(inputs: tuple[Any, ...]) -> tuple[Any, Any] | None:
        if len(inputs) != n_in:
            return None
        batch = 0
        for a, (dtype, shapes) in zip(inputs, accept):
            if type(a) is not ndarray or a.dtype != dtype or not a.flags.c_contiguous:
                return None
            b = shapes.get(a.shape)
            if b is None or (b and batch and b != batch):
                return None
            batch = b or batch
        batch = batch or default_batch
        slot = gate.fast_slot(batch)
        if slot is None:
            return None
        me, key = getframe(), slot.key
        if claims.setdefault(key, me) is not me:  # another reader took it first
            return None
        restore = 0
        try:
            if gate.held:  # a commit or shutdown began after fast_slot looked: the general path waits
                return None
            rt = acl.rt
            cur, ret = rt.get_context()
            if ret or cur != handle:  # ModelContext.enter, inline
                ret2 = rt.set_context(handle)
                if ret2:
                    raise AclError("acl.rt.set_context", ret2, recent_error(acl))
                restore = cur if ret == 0 else 0
            memcpy = rt.memcpy
            for a, (ptr, size) in zip(inputs, slot.inputs):
                n = a.nbytes
                if n:
                    ret = memcpy(ptr, size, host_ptr(a), n, h2d)
                    if ret:
                        raise AclError("acl.rt.memcpy", ret, recent_error(acl))
            ret = acl.mdl.execute(model_id, slot.in_ds, slot.out_ds)
            if ret:
                raise AclError("acl.mdl.execute", ret, recent_error(acl))
            outs = []
            for ptr, _size, shape, dtype in slot.outputs:
                out = empty(shape, dtype)
                n = out.nbytes
                if n:
                    ret = memcpy(host_ptr(out), n, ptr, n, d2h)
                    if ret:
                        raise AclError("acl.rt.memcpy", ret, recent_error(acl))
                outs.append(out)
            slot.reads += 1
            version = updater.current  # inside the reader section: no commit can run
        finally:
            if restore:
                restore_context(acl, restore)
            claims.pop(key, None)
            if gate.held:
                gate.wake()
        return (outs[0] if len(outs) == 1 else tuple(outs)), version

    return fast


def _build_one(acl: Any, handle: int, host_ptr: Callable[[np.ndarray], int], h2d: int, d2h: int,
               gate: Any,
               accept: tuple[np.dtype, dict[tuple[int, ...], int]], default_batch: int, model_id: int,
               updater: Any) -> FastInfer:
    """:func:`build`'s path for a one-input model (the common case), the same steps without the loops.

    A deliberate second copy of ``fast``'s steps: on the tiny MLP it costs 1.040-1.046x
    the raw sequence against 1.051-1.057x for ``fast`` itself (``scripts/fast_one_input.py
    --rounds 10``, both built on one model and called alternately with the raw sequence;
    two runs), and the goal is 1.05x.  The dtype is compared by identity first (arrays
    of a builtin dtype share numpy's canonical dtype object), then by equality.
    """
    want, shapes = accept
    ndarray, empty, get_shape = np.ndarray, np.empty, shapes.get
    claims = gate.claims

    def fast(inputs: tuple[Any, ...]) -> tuple[Any, Any] | None:
        if len(inputs) != 1:
            return None
        a = inputs[0]
        if type(a) is not ndarray:
            return None
        dt = a.dtype
        if (dt is not want and dt != want) or not a.flags.c_contiguous:
            return None
        batch = get_shape(a.shape)
        if batch is None:
            return None
        batch = batch or default_batch
        slot = gate.fast_slot(batch)
        if slot is None:
            return None
        me, key = getframe(), slot.key
        if claims.setdefault(key, me) is not me:  # another reader took it first
            return None
        restore = 0
        try:
            if gate.held:  # a commit or shutdown began after fast_slot looked: the general path waits
                return None
            rt = acl.rt
            cur, ret = rt.get_context()
            if ret or cur != handle:  # ModelContext.enter, inline
                ret2 = rt.set_context(handle)
                if ret2:
                    raise AclError("acl.rt.set_context", ret2, recent_error(acl))
                restore = cur if ret == 0 else 0
            n = a.nbytes
            if n:
                ptr, size = slot.inputs[0]
                ret = rt.memcpy(ptr, size, host_ptr(a), n, h2d)
                if ret:
                    raise AclError("acl.rt.memcpy", ret, recent_error(acl))
            ret = acl.mdl.execute(model_id, slot.in_ds, slot.out_ds)
            if ret:
                raise AclError("acl.mdl.execute", ret, recent_error(acl))
            outs = []
            for ptr, _size, shape, dtype in slot.outputs:
                out = empty(shape, dtype)
                n = out.nbytes
                if n:
                    ret = rt.memcpy(host_ptr(out), n, ptr, n, d2h)
                    if ret:
                        raise AclError("acl.rt.memcpy", ret, recent_error(acl))
                outs.append(out)
            slot.reads += 1
            version = updater.current  # inside the reader section: no commit can run
        finally:
            if restore:
                restore_context(acl, restore)
            claims.pop(key, None)
            if gate.held:
                gate.wake()
        return (outs[0] if len(outs) == 1 else tuple(outs)), version

    return fast
