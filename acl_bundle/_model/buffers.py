"""Device memory and I/O structures of one model: the release ledger and the per-batch infer slots.

:class:`Ledger` records every ACL resource as it is acquired, with its release step,
and releases them in reverse order; it counts the device bytes it holds.  A slot is
built on a temporary ledger that is merged into the model's only once the whole slot
exists, so a failed build leaves nothing behind.

:class:`Slot` is one batch size's pre-built infer I/O (device buffers, data buffers,
datasets, output shapes); :meth:`Slot.run` copies in, executes and copies out with no
allocation and every return code checked.
"""
from __future__ import annotations

import itertools
import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from .._constants import ACL_MEM_MALLOC_HUGE_FIRST
from .._errors import AclCleanupWarning, AclError, check, code_message, null_handle, recent_error, unwrap
from .context import ModelContext, current_context, restore_context
from .description import Description

log = logging.getLogger("acl_bundle")


class Ledger:
    """Every ACL handle acquired, with its release step, in acquisition order; and their device bytes."""

    def __init__(self, acl: Any) -> None:
        self.acl = acl
        self.context = 0  # made current before releasing (0: leave the thread's context alone)
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self._bytes = 0
        self._lock = threading.Lock()  # slots of several batch sizes may be merged at once

    @property
    def device_bytes(self) -> int:
        return self._bytes

    def push(self, name: str, release: Callable[[], Any], nbytes: int = 0) -> None:
        with self._lock:
            self._undo.append((name, release))
            self._bytes += nbytes

    def create(self, name: str, create: Callable[[], int], destroy: Callable[[int], Any]) -> int:
        """Call a bare ``create_*`` (NULL is its only failure) and record its ``destroy_*``."""
        handle = create()
        if not handle:
            raise null_handle(self.acl, name)
        self.push(name.replace("create", "destroy"), lambda: destroy(handle))
        return handle

    def malloc(self, size: int) -> int:
        acl = self.acl
        size = max(size, 1)
        ptr = unwrap(acl, "acl.rt.malloc", acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST))
        self.push("acl.rt.free", lambda: acl.rt.free(ptr), size)
        return ptr

    def dataset(self, buffers: Sequence[tuple[int, int]], data_buffers: list[int] | None = None) -> int:
        """Create a dataset holding one data buffer per ``(ptr, size)``; their handles go to ``data_buffers``."""
        acl = self.acl
        ds = self.create("acl.mdl.create_dataset", acl.mdl.create_dataset, acl.mdl.destroy_dataset)
        for ptr, size in buffers:
            db = self.create(
                "acl.create_data_buffer", partial(acl.create_data_buffer, ptr, size), acl.destroy_data_buffer
            )
            unwrap(acl, "acl.mdl.add_dataset_buffer", acl.mdl.add_dataset_buffer(ds, db))
            if data_buffers is not None:
                data_buffers.append(db)
        return ds

    def absorb(self, other: Ledger) -> None:
        """Take over everything ``other`` holds (it is then empty)."""
        with self._lock:
            self._undo.extend(other._undo)
            self._bytes += other._bytes
        other._undo, other._bytes = [], 0

    def release(self, restore: int | None = None) -> list[str]:
        """Release everything in reverse order; return problems instead of raising.

        With a context recorded, it is made current first (ACL releases a context's
        resources under it) and afterwards the thread gets back ``restore`` — by default
        the context it had: a finalizer run by the garbage collector in the middle of
        another model's call must not change that call's context.
        """
        problems: list[str] = []
        acl = self.acl
        if self.context:
            if restore is None:
                restore = current_context(acl)
            ret = acl.rt.set_context(self.context)
            if ret != 0:
                problems.append(code_message("acl.rt.set_context", ret))
        while self._undo:
            name, fn = self._undo.pop()
            try:
                ret = fn()
            except Exception as e:  # keep releasing the rest
                problems.append(f"{name} raised {e!r}")
                continue
            if isinstance(ret, list):  # _backend.release reports a list of AclError
                problems.extend(str(e) for e in ret)
            elif ret not in (0, None):
                problems.append(code_message(name, ret, recent_error(acl)))
        if restore and restore != self.context:
            restore_context(acl, restore)
        self.context = 0
        self._bytes = 0
        return problems

    def release_into(self, e: BaseException) -> None:
        """Unwind after a failure: release everything, noting problems on the exception."""
        for p in self.release():
            if hasattr(e, "add_note"):
                e.add_note(f"while unwinding: {p}")


_slot_keys = itertools.count()


class Slot:
    """Pre-built infer I/O for one batch size: device buffers, data buffers, datasets, output shapes."""

    __slots__ = ("batch", "in_ds", "out_ds", "inputs", "outputs", "batched_in", "batched_out", "key", "reads")

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.key = next(_slot_keys)  # what a reader claims while it uses this slot (Gate.claims)
        self.reads = 0  # completed reads on this slot (changed only by the call that claimed it)
        self.in_ds = 0
        self.out_ds = 0
        self.inputs: list[tuple[int, int]] = []  # (device ptr, size) per data input
        self.outputs: list[tuple[int, int, tuple[int, ...], np.dtype]] = []
        self.batched_in: list[bool] = []  # dim 0 is the dynamic batch (padding applies)
        self.batched_out: list[bool] = []

    def run(self, ctx: ModelContext, model_id: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Copy ``arrays`` in, execute ``model_id``, copy the outputs out into new arrays (context current)."""
        acl = ctx.acl
        memcpy, host_ptr = acl.rt.memcpy, ctx.host_ptr
        kind = ctx.h2d
        for a, (ptr, size) in zip(arrays, self.inputs):
            if a.nbytes:
                ret = memcpy(ptr, size, host_ptr(a), a.nbytes, kind)
                if ret:
                    raise AclError("acl.rt.memcpy", ret, recent_error(acl))
        ret = acl.mdl.execute(model_id, self.in_ds, self.out_ds)  # a reader: no commit runs now
        if ret:
            raise AclError("acl.mdl.execute", ret, recent_error(acl))
        outs = []
        kind = ctx.d2h
        for ptr, _size, shape, dtype in self.outputs:
            out = np.empty(shape, dtype)
            n = out.nbytes
            if n:
                ret = memcpy(host_ptr(out), n, ptr, n, kind)
                if ret:
                    raise AclError("acl.rt.memcpy", ret, recent_error(acl))
            outs.append(out)
        return outs


    def run_padded(self, ctx: ModelContext, model_id: int, arrays: list[np.ndarray], rows: int) -> list[np.ndarray]:
        """Run ``rows`` (< ``self.batch``) rows: the batch's remaining input rows are zeroed on the
        device, and only the first ``rows`` rows of each batch-major output are copied back."""
        acl = ctx.acl
        memcpy, host_ptr = acl.rt.memcpy, ctx.host_ptr
        for a, (ptr, size), batched in zip(arrays, self.inputs, self.batched_in):
            if a.nbytes:
                ret = memcpy(ptr, size, host_ptr(a), a.nbytes, ctx.h2d)
                if ret:
                    raise AclError("acl.rt.memcpy", ret, recent_error(acl))
            if batched:
                pad = a.nbytes // rows * (self.batch - rows)
                if pad:
                    ret = acl.rt.memset(ptr + a.nbytes, size - a.nbytes, 0, pad)
                    if ret:
                        raise AclError("acl.rt.memset", ret, recent_error(acl))
        ret = acl.mdl.execute(model_id, self.in_ds, self.out_ds)
        if ret:
            raise AclError("acl.mdl.execute", ret, recent_error(acl))
        outs = []
        for (ptr, _size, shape, dtype), batched in zip(self.outputs, self.batched_out):
            out = np.empty((rows,) + shape[1:] if batched else shape, dtype)
            n = out.nbytes
            if n:
                ret = memcpy(host_ptr(out), n, ptr, n, ctx.d2h)
                if ret:
                    raise AclError("acl.rt.memcpy", ret, recent_error(acl))
            outs.append(out)
        return outs


def select_profile(acl: Any, d: Description, model_id: int, ds: int, key: Any) -> None:
    """Write the batch size / image size / dims gear ``key`` into ``ds``'s dynamic-shape input."""
    if d.dynamic == "batch":
        name, ret = "acl.mdl.set_dynamic_batch_size", acl.mdl.set_dynamic_batch_size(model_id, ds, d.mb_index, key)
    elif d.dynamic == "hw":
        name, ret = "acl.mdl.set_dynamic_hw_size", acl.mdl.set_dynamic_hw_size(model_id, ds, d.mb_index, key[0], key[1])
    else:
        dims = {"name": "", "dimCount": len(key), "dims": list(key)}
        name, ret = "acl.mdl.set_input_dynamic_dims", acl.mdl.set_input_dynamic_dims(model_id, ds, d.mb_index, dims)
    check(acl, name, ret)


def _profile_keys(d: Description) -> list[Any]:
    return list(d.profiles) if d.profiles else list(d.batch_sizes)


def _input_shape(d: Description, i: int, key: Any) -> tuple[int, ...]:
    return d.profiles[key][i] if d.profiles else d.inputs[i].shape_for(key)


def probe_output_shapes(acl: Any, d: Description, model_id: int, infer_desc: int) -> dict[Any, list[tuple[int, ...]]]:
    """Each batch size's (or gear's) output shapes, read at load for every one of them.

    ``get_cur_output_dims`` answers for the batch last set *or executed* on the model
    (per model, not per dataset), so reading it while other threads infer would race;
    at load nothing else can use the model yet.  A scratch dataset carries the batch
    input (``set_dynamic_batch_size`` writes only the buffer at ``mb_index``).
    """
    if d.mb_index is None:
        return {0: [t.shape for t in d.outputs]}
    tmp = Ledger(acl)
    shapes: dict[Any, list[tuple[int, ...]]] = {}
    try:
        mb = tmp.malloc(d.mb_size)
        ds = tmp.dataset([(mb, d.mb_size)] * (d.mb_index + 1))
        for key in _profile_keys(d):
            select_profile(acl, d, model_id, ds, key)
            shapes[key] = [_cur_output_shape(acl, d, infer_desc, i, key) for i in range(len(d.outputs))]
    except BaseException as e:
        tmp.release_into(e)
        raise
    for p in tmp.release():
        warnings.warn(f"output-shape probe teardown: {p}", AclCleanupWarning, stacklevel=3)
    return shapes


def build_slot(acl: Any, ledger: Ledger, d: Description, model_id: int, batch: int,
               out_shapes: list[tuple[int, ...]]) -> Slot:
    """Allocate one batch size's I/O on a temporary ledger; merge it into ``ledger`` once complete."""
    tmp = Ledger(acl)
    slot = Slot(batch)
    slot.batched_in = [bool(t.shape) and t.shape[0] == -1 for t in d.inputs]
    slot.batched_out = [bool(t.shape) and t.shape[0] == -1 for t in d.outputs]
    try:
        # Buffers take the size the model reports (its largest batch), as ACL's samples
        # do; only the batch's own bytes are copied in and out.
        for i, (t, reported) in enumerate(zip(d.inputs, d.in_sizes)):
            shape = _input_shape(d, i, batch) if d.mb_index is not None else t.shape
            size = max(reported, int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize)
            slot.inputs.append((tmp.malloc(size), size))
        bufs = list(slot.inputs)
        if d.mb_index is not None:
            bufs.insert(d.mb_index, (tmp.malloc(d.mb_size), d.mb_size))
        slot.in_ds = tmp.dataset(bufs)
        if d.mb_index is not None:  # writes the batch (or gear) into this slot's own dynamic-shape input
            select_profile(acl, d, model_id, slot.in_ds, batch)
        for t, reported, shape in zip(d.outputs, d.out_sizes, out_shapes):
            size = max(reported, int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize)
            slot.outputs.append((tmp.malloc(size), size, shape, t.dtype))
        slot.out_ds = tmp.dataset([(p, s) for p, s, _, _ in slot.outputs])
    except BaseException as e:
        tmp.release_into(e)
        raise
    ledger.absorb(tmp)
    log.debug("built infer buffers for %s", batch)
    return slot


def _cur_output_shape(acl: Any, d: Description, infer_desc: int, i: int, batch: Any) -> tuple[int, ...]:
    """Output ``i``'s dims at the batch (gear) just set, checked against the description of that output."""
    dims = unwrap(acl, "acl.mdl.get_cur_output_dims", acl.mdl.get_cur_output_dims(infer_desc, i))
    shape = tuple(int(x) for x in dims["dims"][: dims["dimCount"]])
    t = d.outputs[i]
    if d.profiles:  # image-size / dims gears: the rank is all the description fixes
        if len(shape) != len(t.shape) or any(x < 0 for x in shape):
            raise ValueError(
                f"output {t.name!r} reports dims {shape} at gear {list(batch)}; its description is {t.shape}"
            )
        return shape
    if shape != t.shape_for(batch):
        raise ValueError(f"output {t.name!r} reports dims {shape} at batch {batch}; its description {t.shape} "
                         f"implies {t.shape_for(batch)}")
    return shape
