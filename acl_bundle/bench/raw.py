"""The baseline of scenario 1: the minimal raw pyACL infer sequence, with no wrapper code (RawInfer)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _backend
from .._constants import (
    ACL_DYNAMIC_TENSOR_NAME,
    ACL_MEM_MALLOC_HUGE_FIRST,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_TO_NUMPY,
)


class RawInfer:
    """The minimal hand-written pyACL inference sequence for one bundle file (pyACL documentation).

    Loads its own copy of the bundle, runs the init graph, pre-builds the infer
    graph's datasets for one batch size; ``__call__`` is then memcpy in, execute,
    memcpy out.  Uses ``acl.*`` calls only (no wrapper code).  Open it while a
    :class:`BundleModel` holds the runtime, close it first.
    """

    def __init__(self, acl: Any, path: str, batch: int, device_id: int = 0, context: int = 0) -> None:
        self.acl = acl
        self.ctx = 0  # the context it loads into and runs in (set by _open)
        self._undo: list[Callable[[], Any]] = []
        self._owns_init = False
        try:
            self._open(path, batch, device_id, context)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ok(ret: int, what: str) -> None:
        if ret != 0:
            raise RuntimeError(f"raw pyACL: {what} returned {ret}")

    def _open(self, path: str, batch: int, dev: int, context: int) -> None:
        acl, ok, undo = self.acl, self._ok, self._undo
        ret = acl.init()
        if ret not in (0, _backend.REPEAT_INITIALIZE):
            ok(ret, "acl.init")
        finalize_reference = getattr(acl, "finalize_reference", None)
        if finalize_reference is not None:  # every acl.init, 100002 included, holds a reference
            undo.append(finalize_reference)
        elif ret == 0:
            self._owns_init = True
            undo.append(acl.finalize)
        ok(acl.rt.set_device(dev), "acl.rt.set_device")
        undo.append(lambda: acl.rt.reset_device(dev))
        if context:  # load into (and run in) a context the caller owns, e.g. the wrapper's own
            ok(acl.rt.set_context(context), "acl.rt.set_context")
        ctx, ret = acl.rt.get_context()
        ok(ret, "acl.rt.get_context")
        self.ctx = ctx
        bundle_id, ret = acl.mdl.bundle_load_from_file(path)
        ok(ret, "acl.mdl.bundle_load_from_file")
        undo.append(lambda: acl.mdl.bundle_unload(bundle_id))
        n, ret = acl.mdl.bundle_get_model_num(bundle_id)
        ok(ret, "acl.mdl.bundle_get_model_num")
        ids = []
        for i in range(n):
            mid, ret = acl.mdl.bundle_get_model_id(bundle_id, i)
            ok(ret, "acl.mdl.bundle_get_model_id")
            ids.append(mid)
        if n == 3:  # [infer, init, update]: run init once, with empty datasets
            ins, outs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
            try:
                ok(acl.mdl.execute(ids[1], ins, outs), "acl.mdl.execute(init)")
            finally:
                acl.mdl.destroy_dataset(ins)
                acl.mdl.destroy_dataset(outs)
        self.infer_id = ids[0]
        desc = acl.mdl.create_desc()
        undo.append(lambda: acl.mdl.destroy_desc(desc))
        ok(acl.mdl.get_desc(desc, self.infer_id), "acl.mdl.get_desc")
        mb_index, ret = acl.mdl.get_input_index_by_name(desc, ACL_DYNAMIC_TENSOR_NAME)
        dynamic = ret == 0

        def buffer(size: int) -> tuple[int, int]:
            ptr, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
            ok(ret, "acl.rt.malloc")
            undo.append(lambda: acl.rt.free(ptr))
            db = acl.create_data_buffer(ptr, size)
            undo.append(lambda: acl.destroy_data_buffer(db))
            return ptr, db

        def dataset() -> int:
            ds = acl.mdl.create_dataset()
            undo.append(lambda: acl.mdl.destroy_dataset(ds))
            return ds

        self.in_ds, self.out_ds = dataset(), dataset()
        n_in = acl.mdl.get_num_inputs(desc)
        data_inputs = [i for i in range(n_in) if not (dynamic and i == mb_index)]
        if len(data_inputs) != 1 or acl.mdl.get_num_outputs(desc) != 1:
            raise ValueError("RawInfer handles one data input and one output")
        for i in range(n_in):
            ptr, db = buffer(acl.mdl.get_input_size_by_index(desc, i))
            _, ret = acl.mdl.add_dataset_buffer(self.in_ds, db)
            ok(ret, "acl.mdl.add_dataset_buffer")
            if i == data_inputs[0]:
                self.in_ptr, self.in_size = ptr, acl.mdl.get_input_size_by_index(desc, i)
        if dynamic:
            ok(
                acl.mdl.set_dynamic_batch_size(self.infer_id, self.in_ds, mb_index, batch),
                "acl.mdl.set_dynamic_batch_size",
            )
        # After set_dynamic_batch_size, get_cur_output_dims gives this batch's dims
        # (get_output_dims would give the largest batch's).
        dims, ret = acl.mdl.get_cur_output_dims(desc, 0)
        ok(ret, "acl.mdl.get_cur_output_dims")
        self.out_shape = tuple(dims["dims"][: dims["dimCount"]])
        self.out_dtype = ACL_TO_NUMPY[acl.mdl.get_output_data_type(desc, 0)]
        size = acl.mdl.get_output_size_by_index(desc, 0)
        self.out_ptr, db = buffer(size)
        _, ret = acl.mdl.add_dataset_buffer(self.out_ds, db)
        ok(ret, "acl.mdl.add_dataset_buffer")
        self.out_nbytes = int(np.prod(self.out_shape)) * self.out_dtype.itemsize

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acl = self.acl
        ret = acl.rt.memcpy(self.in_ptr, self.in_size, acl.util.numpy_to_ptr(x), x.nbytes, ACL_MEMCPY_HOST_TO_DEVICE)
        if ret:
            self._ok(ret, "acl.rt.memcpy")
        ret = acl.mdl.execute(self.infer_id, self.in_ds, self.out_ds)
        if ret:
            self._ok(ret, "acl.mdl.execute")
        out = np.empty(self.out_shape, self.out_dtype)
        ret = acl.rt.memcpy(acl.util.numpy_to_ptr(out), self.out_nbytes, self.out_ptr, self.out_nbytes,
                            ACL_MEMCPY_DEVICE_TO_HOST)
        if ret:
            self._ok(ret, "acl.rt.memcpy")
        return out

    def close(self) -> None:
        """Release in reverse order (idempotent)."""
        if self._undo and self.ctx:
            self.acl.rt.set_context(self.ctx)
        while self._undo:
            self._undo.pop()()
