"""bazige/ascendfly's Context / AscendModel / AscendArray path, written out BY HAND (nothing vendored).

ascendfly (commit cb176fd35b7f71e2e529f00583edc110f9afd364, Apache-2.0) depends on its own log,
image and acl.media modules, so instead of vendoring that tree these tests replay the pyACL
calls its classes make, in their order:

* ``Context(devices)`` (``ascend/resource/context.py``): ``rt.get_device_count()`` to check the
  device ids BEFORE ``acl.init()``, then ``init``, and per device ``set_device`` +
  ``create_context`` (so the last device's context ends up current);
* ``AscendArray(shape, dtype, context=ctx)`` (``ascend/data/ascendarray.py`` + ``resource/mem.py``):
  ``set_context(ctx)`` then ``rt.malloc(nbytes, 0)`` (DEVICE) or ``rt.malloc_host`` (HOST);
  ``clone(ndarray)``: ``numpy_to_ptr`` + ``memcpy`` kind 1; ``to(other)``: ``memcpy`` kind 3;
  ``to_numpy()``: a HOST AscendArray, ``memcpy`` kind 2, ``util.ptr_to_numpy(host_ptr, shape, npy)``
  and a copy; ``Memory.reset``: ``rt.memset(ptr, size, value, size)``; ``mem_info``: ``get_mem_info``;
* ``AscendModel(ctx, path)`` (``ascend/model/model.py``): ``create_stream(ctx)`` = ``set_context`` +
  ``create_stream``; ``load_from_file``; ``create_desc``/``get_desc``; ``get_input_dims_v2`` per
  input and ``get_output_dims`` per output (shape from ``dims["dims"]``, name ``dims["name"]``),
  ``get_*_data_type/format``; one AscendArray + data buffer per tensor; ``feed_data`` copies the
  caller's AscendArray into the input tensor with ``to`` (D2D); ``run`` = ``execute_async`` +
  ``synchronize_stream``; teardown: datasets, ``unload``, ``destroy_stream``.
"""
from __future__ import annotations

import numpy as np

from acl_bundle import sim
from acl_bundle._constants import ACL_TO_NUMPY, NPY_TYPE_TO_NUMPY
from acl_bundle.sim import builder, models

H2D, D2H, D2D = 1, 2, 3  # ascendfly's const.ACL_MEMCPY_*: pyACL exports no constants
NPY_OF = {v: k for k, v in NPY_TYPE_TO_NUMPY.items()}


class _Array:
    """What an ascendfly AscendArray does to pyACL (DEVICE or HOST memory in a context)."""

    def __init__(self, acl, shape, dtype, context, flag="DEVICE"):
        self.acl, self.shape, self.dtype, self.flag = acl, tuple(shape), np.dtype(dtype), flag
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        assert acl.rt.set_context(context) == 0  # bind_context
        if flag == "DEVICE":
            self.ptr, ret = acl.rt.malloc(self.nbytes, 0)  # ACL_MEM_MALLOC_HUGE_FIRST
        else:
            self.ptr, ret = acl.rt.malloc_host(self.nbytes)
        assert ret == 0, acl.get_recent_err_msg()
        self.context = context

    @classmethod
    def clone(cls, acl, array, context):
        a = cls(acl, array.shape, array.dtype, context)
        assert acl.rt.memcpy(a.ptr, a.nbytes, acl.util.numpy_to_ptr(array), array.nbytes, H2D) == 0
        return a

    def to(self, other):
        assert self.acl.rt.memcpy(other.ptr, self.nbytes, self.ptr, self.nbytes, D2D) == 0

    def to_numpy(self):
        host = _Array(self.acl, self.shape, self.dtype, self.context, flag="HOST")
        assert self.acl.rt.memcpy(host.ptr, self.nbytes, self.ptr, self.nbytes, D2H) == 0
        out = self.acl.util.ptr_to_numpy(host.ptr, self.shape, NPY_OF[self.dtype]).copy()
        host.free()
        return out

    def free(self):
        assert (self.acl.rt.free if self.flag == "DEVICE" else self.acl.rt.free_host)(self.ptr) == 0


def test_ascendfly_context_model_array_path(tmp_path):
    acl = sim.install()
    try:
        model, weights = models.mlp((8, 16, 4), seed=3)
        om, _ = builder.save(builder.build_plain(model), tmp_path / "m.om")

        # Context({0, 1}): device ids checked before acl.init (ascend/resource/context.py __check_para)
        devices = {0, 1}
        count, ret = acl.rt.get_device_count()
        assert ret == 0 and count >= len(devices)
        assert acl.init() == 0
        contexts = {}
        for dev in sorted(devices):
            assert acl.rt.set_device(dev) == 0
            contexts[dev], ret = acl.rt.create_context(dev)
            assert ret == 0
        ctx = contexts[0]
        assert acl.rt.get_run_mode() == (1, 0)  # ascend.run_mode(): ACL_HOST

        # AscendModel(ctx, path)
        assert acl.rt.set_context(ctx) == 0
        stream, ret = acl.rt.create_stream()
        assert ret == 0
        model_id, ret = acl.mdl.load_from_file(str(om))
        assert ret == 0
        desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(desc, model_id) == 0
        tensors, datasets = {}, []
        for side, n, get_dims, get_dt, get_fmt in (
            (
                "in",
                acl.mdl.get_num_inputs(desc),
                acl.mdl.get_input_dims_v2,
                acl.mdl.get_input_data_type,
                acl.mdl.get_input_format,
            ),
            (
                "out",
                acl.mdl.get_num_outputs(desc),
                acl.mdl.get_output_dims,
                acl.mdl.get_output_data_type,
                acl.mdl.get_output_format,
            ),
        ):
            ds = acl.mdl.create_dataset()
            datasets.append(ds)
            for i in range(n):
                dims, ret = get_dims(desc, i)
                assert ret == 0 and get_fmt(desc, i) >= 0
                arr = _Array(acl, dims["dims"], ACL_TO_NUMPY[get_dt(desc, i)], ctx)
                db = acl.create_data_buffer(arr.ptr, arr.nbytes)
                _, ret = acl.mdl.add_dataset_buffer(ds, db)
                assert ret == 0
                tensors[(side, dims["name"])] = arr
        assert set(tensors) == {("in", "x"), ("out", "y")}

        # Memory.reset / mem_info on the output tensor
        y_arr = tensors[("out", "y")]
        assert acl.rt.memset(y_arr.ptr, y_arr.nbytes, 0, y_arr.nbytes) == 0
        free, total, ret = acl.rt.get_mem_info(0)
        assert ret == 0 and 0 < free < total

        for seed in (0, 1):
            x = np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)
            src = _Array.clone(acl, x, ctx)  # the caller's AscendArray ...
            src.to(tensors[("in", "x")])  # ... fed with feed_data: a D2D copy
            src.free()
            assert acl.mdl.execute_async(model_id, datasets[0], datasets[1], stream) == 0
            assert acl.rt.synchronize_stream(stream) == 0
            y = y_arr.to_numpy()
            np.testing.assert_allclose(y, models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)

        # teardown: AscendModel.__del__ (datasets, unload, stream), then the arrays and the Context
        for ds in datasets:
            for i in range(acl.mdl.get_dataset_num_buffers(ds)):
                assert acl.destroy_data_buffer(acl.mdl.get_dataset_buffer(ds, i)) == 0
            assert acl.mdl.destroy_dataset(ds) == 0
        assert acl.mdl.unload(model_id) == 0
        assert acl.mdl.destroy_desc(desc) == 0
        assert acl.rt.destroy_stream(stream) == 0
        for arr in tensors.values():
            arr.free()
        for dev, c in contexts.items():
            assert acl.rt.destroy_context(c) == 0
            assert acl.rt.reset_device(dev) == 0
        assert acl.finalize() == 0
        assert sim.leaks() == {}
    finally:
        sim.uninstall()


def test_ascendfly_style_copy_from_arr_ctypes_data(tmp_path):
    """Code that hands ACL ``arr.ctypes.data`` (never registered with numpy_to_ptr) works."""
    acl = sim.install()
    try:
        model, weights = models.mlp((8, 4), seed=1)
        om, _ = builder.save(builder.build_plain(model), tmp_path / "m.om")
        assert acl.init() == 0 and acl.rt.set_device(0) == 0
        mid, _ = acl.mdl.load_from_file(str(om))
        x = np.arange(8, dtype=np.float32).reshape(1, 8) / 8
        y = np.empty((1, 4), np.float32)
        xp, _ = acl.rt.malloc(x.nbytes, 0)
        yp, _ = acl.rt.malloc(y.nbytes, 0)
        ins, outs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        dbs = [acl.create_data_buffer(xp, x.nbytes), acl.create_data_buffer(yp, y.nbytes)]
        acl.mdl.add_dataset_buffer(ins, dbs[0])
        acl.mdl.add_dataset_buffer(outs, dbs[1])
        assert acl.rt.memcpy(xp, x.nbytes, x.ctypes.data, x.nbytes, H2D) == 0
        assert acl.mdl.execute(mid, ins, outs) == 0
        assert acl.rt.memcpy(y.ctypes.data, y.nbytes, yp, y.nbytes, D2H) == 0
        np.testing.assert_allclose(y, models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
        for db in dbs:
            acl.destroy_data_buffer(db)
        for ds in (ins, outs):
            acl.mdl.destroy_dataset(ds)
        acl.rt.free(xp)
        acl.rt.free(yp)
        assert acl.mdl.unload(mid) == 0
        assert acl.rt.reset_device(0) == 0 and acl.finalize() == 0
    finally:
        sim.uninstall()
