"""Dynamic image sizes and dynamic dims through the raw acl.mdl API, checked against numpy."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from acl_bundle import _constants as C
from acl_bundle import sim
from acl_bundle.sim import builder, format, models

acl = sim.acl
HW = [(4, 6), (8, 8)]
DIMS = [(1, 5, 1, 5), (2, 8, 2, 8)]


def _save(tmp_path, mf, name="m.om"):
    om, _ = builder.save(mf, tmp_path / name)
    return str(om)


def _io(rig, d, side):
    n = acl.mdl.get_num_inputs(d) if side == "in" else acl.mdl.get_num_outputs(d)
    size = acl.mdl.get_input_size_by_index if side == "in" else acl.mdl.get_output_size_by_index
    return rig.dataset([size(d, i) for i in range(n)])


def _out(rig, d, ptrs, i):
    dims, ret = acl.mdl.get_cur_output_dims(d, i)
    assert ret == 0
    return rig.d2h(ptrs[i], np.float32, tuple(dims["dims"]))


def test_dynamic_image_size_end_to_end(rig, tmp_path):
    model, w = models.image_model(seed=3)
    mid = rig.load(_save(tmp_path, builder.build_plain(model, dynamic_image_size=HW)))
    d = rig.desc(mid)
    assert acl.mdl.get_dynamic_hw(d, -1) == ({"hwCount": 2, "hw": [[4, 6], [8, 8]]}, 0)
    assert acl.mdl.get_dynamic_batch(d) == ({"batchCount": 0, "batch": []}, 0)
    assert acl.mdl.get_input_dynamic_gear_count(d, -1) == (0, 0)
    assert acl.mdl.get_input_dims(d, 0)[0]["dims"] == [1, 3, -1, -1]
    assert acl.mdl.get_input_index_by_name(d, C.ACL_DYNAMIC_TENSOR_NAME) == (1, 0)
    assert acl.mdl.get_input_dims(d, 1)[0]["dims"] == [2]  # height and width
    assert acl.mdl.get_input_size_by_index(d, 0) == 1 * 3 * 8 * 8 * 4  # the largest gear
    assert acl.mdl.get_output_dims(d, 0)[0]["dims"] == [1, 3, 8, 8]  # the maximum profile
    ins, inp = _io(rig, d, "in")
    outs, outp = _io(rig, d, "out")
    for h, wd in (HW[1], HW[0], HW[1]):
        x = np.random.default_rng(h * wd).standard_normal((1, 3, h, wd)).astype(np.float32)
        assert acl.mdl.set_dynamic_hw_size(mid, ins, 1, h, wd) == 0, acl.get_recent_err_msg()
        # GE's layout: height then width, uint64 each (the buffer holds 16 bytes)
        assert (ctypes.c_uint64.from_address(inp[1]).value, ctypes.c_uint64.from_address(inp[1] + 8).value) == (h, wd)
        rig.h2d(inp[0], x)
        assert acl.mdl.execute(mid, ins, outs) == 0, acl.get_recent_err_msg()
        ref = models.image_model_reference(x, w)
        assert acl.mdl.get_cur_output_dims(d, 0)[0]["dims"] == [1, 3, h, wd]
        np.testing.assert_allclose(_out(rig, d, outp, 0), ref["scaled"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_out(rig, d, outp, 1), ref["pooled"], rtol=1e-5, atol=1e-5)
    assert sim.stats()["executions"] == {mid: 3}


def test_dynamic_image_size_rejections(rig, tmp_path):
    model, _ = models.image_model()
    mid = rig.load(_save(tmp_path, builder.build_plain(model, dynamic_image_size=HW)))
    d = rig.desc(mid)
    ins, inp = _io(rig, d, "in")
    outs, _ = _io(rig, d, "out")
    assert acl.mdl.set_dynamic_hw_size(mid, ins, 1, 5, 5) == 145013  # no such gear
    assert acl.mdl.set_dynamic_hw_size(mid, ins, 1, 0, 8) == 100000  # model.cpp:1886
    assert acl.mdl.set_dynamic_batch_size(mid, ins, 1, 4) == 145013  # a batch is no gear of an HW model
    assert acl.mdl.set_dynamic_hw_size(mid, ins, 0, 4, 6) == 100000  # not the ascend_mbatch_shape_data input
    acl.rt.memset(inp[1], 16, 0, 16)
    assert acl.mdl.execute(mid, ins, outs) == 145013  # nothing set
    small = rig.buffer(inp[1], 4)
    ds = acl.mdl.create_dataset()
    rig.dss.append(ds)
    acl.mdl.add_dataset_buffer(ds, acl.mdl.get_dataset_buffer(ins, 0))
    acl.mdl.add_dataset_buffer(ds, small)
    assert acl.mdl.set_dynamic_hw_size(mid, ds, 1, 4, 6) == 145012  # < 4 bytes per value (ge_executor.cc:444)
    assert acl.mdl.set_dynamic_hw_size(mid, ins, 1, 4, 6) == 0
    assert acl.mdl.execute(mid, ins, outs) == 0
    # a tensor desc must give the gear's shape
    td = rig.tensor_desc(C.ACL_FLOAT, [1, 3, 8, 8])
    acl.mdl.set_dataset_tensor_desc(ins, td, 0)
    assert acl.mdl.execute(mid, ins, outs) == 100000
    acl.mdl.set_dataset_tensor_desc(ins, rig.tensor_desc(C.ACL_FLOAT, [1, 3, 4, 6]), 0)
    assert acl.mdl.execute(mid, ins, outs) == 0


def test_dynamic_dims_end_to_end_in_a_bundle(rig, tmp_path):
    model, w = models.sequence_model(seed=5)
    bid, ids = rig.load_bundle(_save(tmp_path, builder.build_bundle(model, dynamic_dims=DIMS)))
    infer, init = ids[0], ids[1]
    assert acl.mdl.execute(init, rig.dataset([])[0], rig.dataset([])[0]) == 0
    d = rig.desc(infer)
    count, ret = acl.mdl.get_input_dynamic_gear_count(d, -1)
    assert (count, ret) == (2, 0)
    gears, ret = acl.mdl.get_input_dynamic_dims(d, -1, count)
    assert ret == 0
    # all input dims, the gear's values in the -1 places (seq [B, T, 4] then mask [B, T])
    assert gears == [{"name": "", "dimCount": 5, "dims": [1, 5, 4, 1, 5]},
                     {"name": "", "dimCount": 5, "dims": [2, 8, 4, 2, 8]}]
    assert acl.mdl.get_input_dims(d, 0)[0]["dims"] == [-1, -1, 4]
    assert acl.mdl.get_dynamic_hw(d, -1) == ({"hwCount": 0, "hw": []}, 0)
    idx, _ = acl.mdl.get_input_index_by_name(d, C.ACL_DYNAMIC_TENSOR_NAME)
    ins, inp = _io(rig, d, "in")
    outs, outp = _io(rig, d, "out")
    for g in (1, 0):
        b, t = DIMS[g][0], DIMS[g][1]
        rng = np.random.default_rng(g)
        seq = rng.standard_normal((b, t, 4)).astype(np.float32)
        mask = (rng.uniform(size=(b, t)) > 0.3).astype(np.float32)
        assert acl.mdl.set_input_dynamic_dims(infer, ins, idx, gears[g]) == 0, acl.get_recent_err_msg()
        rig.h2d(inp[0], seq)
        rig.h2d(inp[1], mask)
        assert acl.mdl.execute(infer, ins, outs) == 0, acl.get_recent_err_msg()
        ref = models.sequence_model_reference(seq, mask, w)
        np.testing.assert_allclose(_out(rig, d, outp, 0), ref["proj"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_out(rig, d, outp, 1), ref["summed"], rtol=1e-5, atol=1e-4)


def test_dynamic_dims_rejections(rig, tmp_path):
    model, _ = models.sequence_model()
    mid = rig.load(_save(tmp_path, builder.build_plain(model, dynamic_dims=DIMS)))
    d = rig.desc(mid)
    ins, _ = _io(rig, d, "in")
    assert acl.mdl.get_input_dynamic_gear_count(d, 0) == (0, 100000)  # index must be -1 (model_om2.cpp:1851)
    assert acl.mdl.get_input_dynamic_dims(d, -1, 1) == ([], 100000)  # fewer than the model's gears
    assert acl.mdl.get_input_dynamic_dims(d, 3, 2) == ([], 100000)
    set_dims = acl.mdl.set_input_dynamic_dims
    assert set_dims(mid, ins, 2, {"dimCount": 5, "name": "", "dims": [1, 5, 4, 1, 5]}) == 0
    assert set_dims(mid, ins, 2, {"dimCount": 5, "name": "", "dims": [1, 5, 3, 1, 5]}) == 145012  # static dim differs
    assert set_dims(mid, ins, 2, {"dimCount": 4, "name": "", "dims": [1, 5, 4, 1]}) == 145012  # not all dims
    assert set_dims(mid, ins, 2, {"dimCount": 5, "name": "", "dims": [3, 5, 4, 3, 5]}) == 145013  # no such gear
    assert set_dims(mid, ins, 2, {"dimCount": 0, "name": "", "dims": []}) == 100000  # model.cpp:1925
    with pytest.raises(TypeError):
        set_dims(mid, ins, 2, [1, 5, 4, 1, 5])
    assert acl.mdl.set_dynamic_hw_size(mid, ins, 2, 4, 6) == 145013  # no HW gears here


def test_builder_dynamic_shape_errors():
    img, _ = models.image_model()
    seq, _ = models.sequence_model()
    mlp, _ = models.mlp((8, 4))
    with pytest.raises(ValueError, match="at most one"):
        builder.build_plain(img, batch_sizes=[1, 2], dynamic_image_size=HW)
    with pytest.raises(ValueError, match="2 values"):
        builder.build_plain(img, dynamic_image_size=[(4, 6, 1)])
    with pytest.raises(ValueError, match="exactly two"):
        builder.build_plain(_identity([1, "C", "H", "W"]), dynamic_image_size=HW)  # three free dims
    with pytest.raises(ValueError, match="4 values"):
        builder.build_plain(seq, dynamic_dims=[(1, 5), (2, 8)])
    with pytest.raises(ValueError, match="no data input has a dynamic dim"):
        builder.build_plain(mlp, dynamic_dims=[(1,)])
    with pytest.raises(ValueError, match="gear"):
        builder.build_plain(seq, dynamic_dims=[(1, 5, 2, 8)])  # inconsistent B/T: onnxruntime refuses the gear
    assert builder.parse_gears("224,224;448,448", width=2) == [(224, 224), (448, 448)]
    with pytest.raises(ValueError, match="not comma-separated integers"):
        builder.parse_gears("224,x")
    with pytest.raises(ValueError, match="distinct"):
        builder.parse_gears("1,2;1,2")


def _identity(dims):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", models.OPSET)], ir_version=models.IR_VERSION)


def test_format_checks_the_gears(tmp_path):
    model, _ = models.image_model()
    mf = builder.build_plain(model, dynamic_image_size=HW)
    assert format.loads(format.dumps(mf)).gear_outputs == mf.gear_outputs
    bad = format.ModelFile(mf.kind, mf.graphs, dynamic_hw=mf.dynamic_hw, gear_outputs=mf.gear_outputs[:1])
    with pytest.raises(format.FormatError) as e:
        format.loads(format.dumps(bad))
    assert e.value.code == format.ERR_CORRUPT
    bad = format.ModelFile(mf.kind, mf.graphs, dynamic_hw=mf.dynamic_hw,
                           gear_outputs=[[(1, 3, 9, 9), (1, 3)], [(1, 3, 8, 8), (1, 4)]])
    with pytest.raises(format.FormatError):
        format.loads(format.dumps(bad))
    static = format.ModelFile(mf.kind, mf.graphs)  # -1 dims without gears
    with pytest.raises(format.FormatError):
        format.loads(format.dumps(static))
