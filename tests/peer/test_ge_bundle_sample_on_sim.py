"""GE's own Python bundle sample, replayed BY HAND (nothing vendored).

hicann/ge ``examples/offline_compile_run/python/src/bundle_model/`` bundles two plain graphs
(Add and Mul of two [2, 3] float inputs, no variables) with ``bundle_build_model`` and runs
each with ``run_bundle_model.py`` + ``common.py``: ``bundle_load_from_file``,
``bundle_get_model_num/_model_id``; per sub-model ``create_desc``/``get_desc``, one
``rt.malloc(size, 2)`` + data buffer per input and output, H2D ``memcpy`` from
``util.bytes_to_ptr(arr.tobytes())``, ``execute``, D2H into ``rt.malloc_host`` memory,
``util.ptr_to_bytes``, the shape from ``get_output_dims`` (``dims["dims"][:dims["dimCount"]]``),
then ``rt.free`` of every buffer address, ``bundle_unload``, ``reset_device``, ``finalize``.
Here :func:`acl_bundle.sim.builder.build_plain_bundle` stands in for the GE build.
"""
from __future__ import annotations

import numpy as np
import pytest

from acl_bundle import sim
from acl_bundle.sim import builder, models

ACL_MEM_MALLOC_NORMAL_ONLY, H2D, D2H = 2, 1, 2  # the sample's common.py defines them too


def _dataset(acl, desc, side):
    n = acl.mdl.get_num_inputs(desc) if side == "input" else acl.mdl.get_num_outputs(desc)
    size_of = acl.mdl.get_input_size_by_index if side == "input" else acl.mdl.get_output_size_by_index
    ds, items = acl.mdl.create_dataset(), []
    for i in range(n):
        size = size_of(desc, i)
        buf, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_NORMAL_ONLY)
        assert ret == 0
        _, ret = acl.mdl.add_dataset_buffer(ds, acl.create_data_buffer(buf, size))
        assert ret == 0
        items.append({"buffer": buf, "size": size})
    return ds, items


def _release(acl, ds):
    for i in range(acl.mdl.get_dataset_num_buffers(ds)):
        db = acl.mdl.get_dataset_buffer(ds, i)
        assert acl.rt.free(acl.get_data_buffer_addr(db)) == 0
        assert acl.destroy_data_buffer(db) == 0
    assert acl.mdl.destroy_dataset(ds) == 0


def _run(acl, model_id, inputs):
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    ins, in_items = _dataset(acl, desc, "input")
    outs, out_items = _dataset(acl, desc, "output")
    for item, arr in zip(in_items, inputs):
        data = arr.tobytes()
        assert acl.rt.memcpy(item["buffer"], item["size"], acl.util.bytes_to_ptr(data), len(data), H2D) == 0
    assert acl.mdl.execute(model_id, ins, outs) == 0, acl.get_recent_err_msg()
    results = []
    for i, item in enumerate(out_items):
        host, ret = acl.rt.malloc_host(item["size"])
        assert ret == 0
        assert acl.rt.memcpy(host, item["size"], item["buffer"], item["size"], D2H) == 0
        raw = acl.util.ptr_to_bytes(host, item["size"])
        assert acl.rt.free_host(host) == 0
        dims, ret = acl.mdl.get_output_dims(desc, i)
        assert ret == 0
        results.append(np.frombuffer(raw, np.float32).reshape(tuple(dims["dims"][: dims["dimCount"]])))
    _release(acl, ins)
    _release(acl, outs)
    assert acl.mdl.destroy_desc(desc) == 0
    return results


def test_ge_bundle_sample_two_plain_graphs(tmp_path):
    om, man = builder.save(builder.build_plain_bundle([models.elementwise("Add"), models.elementwise("Mul")]),
                           tmp_path / "bundle_sample.om")
    assert man is None  # no variables, no manifest
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    y = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]], np.float32)
    acl = sim.install()
    try:
        assert acl.init() == 0 and acl.rt.set_device(0) == 0
        bundle_id, ret = acl.mdl.bundle_load_from_file(str(om))
        assert ret == 0
        n, ret = acl.mdl.bundle_get_model_num(bundle_id)
        assert (n, ret) == (2, 0)
        ids = [acl.mdl.bundle_get_model_id(bundle_id, i)[0] for i in range(n)]
        (added,) = _run(acl, ids[0], [x, y])
        (multiplied,) = _run(acl, ids[1], [x, y])
        np.testing.assert_array_equal(added, x + y)
        np.testing.assert_array_equal(multiplied, x * y)
        assert acl.mdl.unload(ids[0]) == 100000  # bundle-inner ids go through bundle_unload
        assert acl.mdl.bundle_unload(bundle_id) == 0
        assert acl.rt.reset_device(0) == 0 and acl.finalize() == 0
        assert sim.leaks() == {}
    finally:
        sim.uninstall()


def test_plain_bundle_builder_rules():
    with pytest.raises(ValueError, match="at least 2 graphs"):
        builder.build_plain_bundle([models.elementwise("Add")])
    with pytest.raises(TypeError):
        builder.build_plain_bundle("add.onnx")
    mf = builder.build_plain_bundle([models.elementwise("Add"), models.elementwise("Sub", (4,))])
    assert mf.kind == "bundle" and [g.role for g in mf.graphs] == ["model", "model"] and not mf.variables


def test_bundle_model_refuses_a_bundle_without_update_graph(tmp_path):
    """BundleModel needs an update graph: a bundle of plain graphs is refused with a clear error."""
    from acl_bundle import BundleModel

    om, _ = builder.save(builder.build_plain_bundle([models.elementwise("Add"), models.elementwise("Mul")]),
                         tmp_path / "two.om")
    with pytest.raises(ValueError, match="update"):
        BundleModel(om, acl=sim.acl)
    assert sim.leaks() == {}
