"""bazige/ascendfly's model execution path, written out BY HAND (nothing vendored).

ascendfly ``ascend/model/model.py`` (commit cb176fd35b7f71e2e529f00583edc110f9afd364, Apache-2.0
header) depends on its AscendArray/resource/log modules (and through them on acl.media), so
instead of vendoring that tree this test replays the pyACL call sequence AscendModel makes:
create_context/create_stream, load_from_file, create_desc/get_desc, get_num_inputs/outputs,
``get_input_dims_v2`` per input and ``get_output_dims`` per output (shape from ``dims["dims"]``,
name from ``dims["name"]``), get_*_data_type/format, one ``rt.malloc(nbytes, 0)`` + data buffer
per tensor, H2D copy of the input, ``execute_async`` + ``rt.synchronize_stream``, D2H copy of
the output, then the teardown in reverse.
"""
from __future__ import annotations

import numpy as np

from acl_bundle import sim
from acl_bundle._constants import ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE, ACL_TO_NUMPY
from acl_bundle.sim import builder, models


def test_ascendfly_execute_async_sequence(tmp_path):
    acl = sim.install()
    try:
        model, weights = models.mlp((8, 16, 4), seed=3)
        om, _ = builder.save(builder.build_plain(model), tmp_path / "m.om")
        assert acl.init() == 0
        count, ret = acl.rt.get_device_count()
        assert ret == 0 and count >= 1
        assert acl.rt.set_device(0) == 0
        ctx, ret = acl.rt.create_context(0)
        assert ret == 0
        cur, ret = acl.rt.get_context()
        assert (cur, ret) == (ctx, 0)
        assert acl.rt.set_context(ctx) == 0
        stream, ret = acl.rt.create_stream()
        assert ret == 0
        model_id, ret = acl.mdl.load_from_file(str(om))
        assert ret == 0
        desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(desc, model_id) == 0

        tensors = {}
        datasets = []
        for side, n, get_dims, get_dt, get_fmt in (
            ("in", acl.mdl.get_num_inputs(desc), acl.mdl.get_input_dims_v2, acl.mdl.get_input_data_type, acl.mdl.get_input_format),
            ("out", acl.mdl.get_num_outputs(desc), acl.mdl.get_output_dims, acl.mdl.get_output_data_type, acl.mdl.get_output_format),
        ):
            ds = acl.mdl.create_dataset()
            datasets.append(ds)
            for i in range(n):
                dims, ret = get_dims(desc, i)
                assert ret == 0
                shape, dtype = tuple(dims["dims"]), ACL_TO_NUMPY[get_dt(desc, i)]
                assert get_fmt(desc, i) >= 0
                nbytes = int(np.prod(shape)) * dtype.itemsize
                ptr, ret = acl.rt.malloc(nbytes, 0)
                assert ret == 0
                db = acl.create_data_buffer(ptr, nbytes)
                _, ret = acl.mdl.add_dataset_buffer(ds, db)
                assert ret == 0
                tensors[(side, dims["name"])] = (ptr, nbytes, shape, dtype)
        assert set(tensors) == {("in", "x"), ("out", "y")}

        x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
        xp, xn, _, _ = tensors[("in", "x")]
        xb = x.tobytes()
        assert acl.rt.memcpy(xp, xn, acl.util.bytes_to_ptr(xb), len(xb), ACL_MEMCPY_HOST_TO_DEVICE) == 0
        assert acl.mdl.execute_async(model_id, datasets[0], datasets[1], stream) == 0
        assert acl.rt.synchronize_stream(stream) == 0
        yp, yn, yshape, ydt = tensors[("out", "y")]
        out = bytes(yn)
        assert acl.rt.memcpy(acl.util.bytes_to_ptr(out), yn, yp, yn, ACL_MEMCPY_DEVICE_TO_HOST) == 0
        y = np.frombuffer(out, ydt).reshape(yshape)
        np.testing.assert_allclose(y, models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)

        for ds in datasets:
            for i in range(acl.mdl.get_dataset_num_buffers(ds)):
                assert acl.destroy_data_buffer(acl.mdl.get_dataset_buffer(ds, i)) == 0
            assert acl.mdl.destroy_dataset(ds) == 0
        for ptr, *_ in tensors.values():
            assert acl.rt.free(ptr) == 0
        assert acl.mdl.unload(model_id) == 0
        assert acl.mdl.destroy_desc(desc) == 0
        assert acl.rt.destroy_stream(stream) == 0
        assert acl.rt.destroy_context(ctx) == 0
        assert acl.rt.reset_device(0) == 0
        assert acl.finalize() == 0
        assert sim.leaks() == {}
    finally:
        sim.uninstall()
