"""Model/bundle load, descs, execute (infer/init/update), dynamic batch."""
from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np
import pytest
from simhelp import Rig

from acl_bundle import _constants as C
from acl_bundle import sim
from acl_bundle.sim import _state, format
from helpers import reference as ref

acl = sim.acl
F, ND = C.ACL_FLOAT, C.ACL_FORMAT_ND


class BundleRun:
    """A loaded MLP bundle with datasets for every graph (sizes from the descs)."""

    def __init__(self, rig: Rig, path, batch_sizes=None) -> None:
        self.rig = rig
        self.bid, ids = rig.load_bundle(path)
        self.infer, self.update = ids[0], ids[-1]
        self.init = ids[1] if len(ids) == 3 else None
        self.d_inf, self.d_upd = rig.desc(self.infer), rig.desc(self.update)
        n_in = acl.mdl.get_num_inputs(self.d_inf)
        self.inf_in, self.inf_in_p = rig.dataset([acl.mdl.get_input_size_by_index(self.d_inf, i) for i in range(n_in)])
        self.inf_out, self.inf_out_p = rig.dataset([acl.mdl.get_output_size_by_index(self.d_inf, 0)])
        n_upd = acl.mdl.get_num_inputs(self.d_upd)
        self.upd_in, self.upd_p = rig.dataset([acl.mdl.get_input_size_by_index(self.d_upd, i) for i in range(n_upd)])
        self.upd_out, _ = rig.dataset([])
        self.names = [acl.mdl.get_input_name_by_index(self.d_upd, i)[: -len("_var_data")] for i in range(n_upd)]
        if self.init is not None:
            self.init_in, _ = rig.dataset([])
            self.init_out, _ = rig.dataset([])

    def run_init(self) -> int:
        return acl.mdl.execute(self.init, self.init_in, self.init_out)

    def infer_x(self, x: np.ndarray) -> np.ndarray:
        self.rig.h2d(self.inf_in_p[0], x)
        assert acl.mdl.execute(self.infer, self.inf_in, self.inf_out) == 0, acl.get_recent_err_msg()
        return self.rig.d2h(self.inf_out_p[0], np.float32, (x.shape[0], 4))

    def set_update(self, new: dict[str, np.ndarray]) -> None:
        for i, name in enumerate(self.names):
            if name in new:
                self.rig.h2d(self.upd_p[i], new[name])
                td = self.rig.tensor_desc(F, list(new[name].shape))
            else:
                td = self.rig.tensor_desc(F, [0])
            assert acl.mdl.set_dataset_tensor_desc(self.upd_in, td, i) == (self.upd_in, 0)

    def run_update(self) -> int:
        return acl.mdl.execute(self.update, self.upd_in, self.upd_out)


def test_bundle_sequence_before_and_after_update(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    assert acl.mdl.bundle_get_model_num(b.bid) == (3, 0)
    assert b.run_init() == 0
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_allclose(b.infer_x(x), ref(x, w), rtol=1e-5, atol=1e-5)
    new = {"fc1.weight": np.random.default_rng(2).standard_normal((16, 4)).astype(np.float32)}
    b.set_update(new)
    assert b.run_update() == 0
    w2 = {**w, **new}
    np.testing.assert_allclose(b.infer_x(x), ref(x, w2), rtol=1e-5, atol=1e-5)
    dev_w = sim.variables(b.bid)
    for k in w2:
        np.testing.assert_array_equal(dev_w[k], w2[k])
    s = sim.stats()
    assert s["update_bytes_applied"] == 16 * 4 * 4
    assert s["executions"] == {b.init: 1, b.infer: 2, b.update: 1}


def test_update_descs_and_layout(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    d = b.d_upd
    assert acl.mdl.get_num_inputs(d) == 4 and acl.mdl.get_num_outputs(d) == 0
    assert acl.mdl.get_input_dims(d, 0) == ({"name": "fc0.weight_var_data", "dimCount": 1, "dims": [-2]}, 0)
    assert acl.mdl.get_input_size_by_index(d, 0) == 8 * 16 * 4
    assert acl.mdl.get_input_data_type(d, 0) == F
    assert acl.mdl.get_input_format(d, 0) == ND
    assert acl.mdl.get_input_dims(d, 9) == ({}, 100000)
    assert acl.mdl.get_input_size_by_index(d, 9) == 0
    assert acl.mdl.get_input_data_type(d, 9) == -1
    di = rig.desc(b.init)
    assert acl.mdl.get_num_inputs(di) == 0 and acl.mdl.get_num_outputs(di) == 0
    # infer inputs do not list the variables
    assert acl.mdl.get_num_inputs(b.d_inf) == 1
    assert acl.mdl.get_input_index_by_name(b.d_inf, "x") == (0, 0)
    assert acl.mdl.get_input_index_by_name(b.d_inf, "ascend_mbatch_shape_data")[1] == 100000
    assert acl.mdl.get_output_index_by_name(b.d_inf, "y") == (0, 0)
    assert acl.mdl.get_output_dims(b.d_inf, 0) == ({"name": "y", "dimCount": 2, "dims": [1, 4]}, 0)
    assert acl.mdl.get_dynamic_batch(b.d_inf) == ({"batchCount": 0, "batch": []}, 0)


def test_update_is_all_or_nothing(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    assert b.run_init() == 0
    new = {"fc0.weight": np.ones((8, 16), np.float32), "fc1.bias": np.ones(4, np.float32)}
    b.set_update(new)
    # make the last input bad: wrong dims
    bad = rig.tensor_desc(F, [5])
    acl.mdl.set_dataset_tensor_desc(b.upd_in, bad, 3)
    assert b.run_update() == 145021
    assert "fc1.bias" in acl.get_recent_err_msg()
    for k, v in sim.variables(b.bid).items():
        np.testing.assert_array_equal(v, w[k])  # nothing changed
    assert sim.stats()["update_bytes_applied"] == 0
    # wrong dtype -> 145022
    acl.mdl.set_dataset_tensor_desc(b.upd_in, rig.tensor_desc(C.ACL_FLOAT16, [4]), 3)
    assert b.run_update() == 145022
    # input without desc -> 100000
    acl.mdl.set_dataset_tensor_desc(b.upd_in, 0, 3)
    assert b.run_update() == 100000
    assert "no tensor desc" in acl.get_recent_err_msg()
    # a buffer too small for the variable -> 145021
    acl.mdl.set_dataset_tensor_desc(b.upd_in, rig.tensor_desc(F, [4]), 3)
    db = acl.mdl.get_dataset_buffer(b.upd_in, 0)
    acl.update_data_buffer(db, b.upd_p[0], 16)
    assert b.run_update() == 145021
    acl.update_data_buffer(db, b.upd_p[0], 8 * 16 * 4)
    assert b.run_update() == 0
    got = sim.variables(b.bid)
    np.testing.assert_array_equal(got["fc0.weight"], new["fc0.weight"])
    np.testing.assert_array_equal(got["fc0.bias"], w["fc0.bias"])  # empty desc: untouched


def test_empty_update_input_needs_device_address(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.set_update({})
    assert b.run_update() == 0
    assert sim.stats()["update_bytes_applied"] == 0
    host = np.zeros(16, np.uint8)
    db = acl.mdl.get_dataset_buffer(b.upd_in, 1)
    acl.update_data_buffer(db, acl.util.numpy_to_ptr(host), 16)
    assert b.run_update() == 100000
    acl.update_data_buffer(db, 0, 0)
    assert b.run_update() == 100000


def test_update_validates_what_changed_and_stays_strict(rig, mlp_bundle, monkeypatch):
    """After a passing update only changed/non-empty inputs are validated again; a freed empty-input
    address, a re-pointed buffer and a new desc are still caught."""
    from acl_bundle.sim import _mdl

    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.set_update({})
    assert b.run_update() == 0  # first time: all 4 inputs validated
    seen = []
    real = _mdl.device_range
    monkeypatch.setattr(_mdl, "device_range", lambda addr, n: seen.append(addr) or real(addr, n))
    assert b.run_update() == 0
    assert seen == []  # nothing changed: no input validated again
    new = np.full(4, 7, np.float32)
    rig.h2d(b.upd_p[3], new)
    acl.mdl.set_dataset_tensor_desc(b.upd_in, rig.tensor_desc(F, [4]), 3)
    assert b.run_update() == 0
    assert seen == [b.upd_p[3]]  # the changed one only
    np.testing.assert_array_equal(sim.variables(b.bid)["fc1.bias"], new)
    seen.clear()
    assert b.run_update() == 0
    assert seen == [b.upd_p[3]]  # a non-empty input is copied, so validated, every time
    # an empty input's memory freed after it passed: caught
    p = rig.malloc(64)
    db = acl.mdl.get_dataset_buffer(b.upd_in, 1)
    acl.update_data_buffer(db, p, 64)
    assert b.run_update() == 0
    assert acl.rt.free(p) == 0
    rig.ptrs.remove(p)
    assert b.run_update() == 100000
    assert "is not a live device address" in acl.get_recent_err_msg()
    acl.update_data_buffer(db, b.upd_p[1], 16 * 4)
    assert b.run_update() == 0
    # a desc changed after a pass: caught
    before = sim.variables(b.bid)
    acl.mdl.set_dataset_tensor_desc(b.upd_in, rig.tensor_desc(F, [5]), 2)
    assert b.run_update() == 145021
    for k, v in sim.variables(b.bid).items():
        np.testing.assert_array_equal(v, before[k])  # nothing applied


def test_bundle_without_init_is_zero_filled(rig, mlp_bundle):
    path, w = mlp_bundle(init=False)
    b = BundleRun(rig, path)
    assert b.init is None
    assert acl.mdl.bundle_get_model_num(b.bid) == (2, 0)
    assert all(not v.any() for v in sim.variables(b.bid).values())
    b.set_update(w)
    assert b.run_update() == 0
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(b.infer_x(x), ref(x, w), rtol=1e-5, atol=1e-5)


def test_execute_validation(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    assert acl.mdl.execute(b.infer, 12345, b.inf_out) == 100000
    assert acl.mdl.execute(b.infer, b.inf_in, 12345) == 100000
    two, _ = rig.dataset([32, 32])
    assert acl.mdl.execute(b.infer, two, b.inf_out) == 100000
    assert "2 buffers" in acl.get_recent_err_msg()
    assert acl.mdl.execute(b.infer, b.inf_in, two) == 100000
    small_in, _ = rig.dataset([16])
    assert acl.mdl.execute(b.infer, small_in, b.inf_out) == 100000
    small_out, _ = rig.dataset([8])
    assert acl.mdl.execute(b.infer, b.inf_in, small_out) == 100000
    # input in host memory (host run mode) -> 100000
    host = np.zeros(8, np.float32)
    hds = acl.mdl.create_dataset()
    rig.dss.append(hds)
    acl.mdl.add_dataset_buffer(hds, rig.buffer(acl.util.numpy_to_ptr(host), 32))
    assert acl.mdl.execute(b.infer, hds, b.inf_out) == 100000
    # tensor desc inconsistent with the static input
    acl.mdl.set_dataset_tensor_desc(b.inf_in, rig.tensor_desc(F, [2, 4]), 0)
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 100000
    acl.mdl.set_dataset_tensor_desc(b.inf_in, rig.tensor_desc(F, [1, 8]), 0)
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 0
    # a destroyed buffer inside a dataset
    ds, _ = rig.dataset([32])
    db = acl.mdl.get_dataset_buffer(ds, 0)
    acl.destroy_data_buffer(db)
    assert acl.mdl.execute(b.infer, ds, b.inf_out) == 100000
    assert sim.stats()["executions"] == {b.infer: 1}


def test_runtime_allocated_output(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    out = acl.mdl.create_dataset()
    rig.dss.append(out)
    db = rig.buffer(0, 0)
    acl.mdl.add_dataset_buffer(out, db)
    x = np.ones((1, 8), np.float32)
    rig.h2d(b.inf_in_p[0], x)
    assert acl.mdl.execute(b.infer, b.inf_in, out) == 0
    p, n = acl.get_data_buffer_addr(db), acl.get_data_buffer_size(db)
    assert p and n == 16
    assert p in sim.live_resources()["device_blocks"]  # the caller owns it now
    np.testing.assert_allclose(rig.d2h(p, np.float32, (1, 4)), ref(x, w), rtol=1e-5, atol=1e-5)
    assert acl.rt.free(p) == 0


def test_model_ids_and_unload(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    assert acl.mdl.unload(b.infer) == 100000
    assert acl.mdl.bundle_get_model_id(b.bid, 3) == (0, 100000)
    assert acl.mdl.bundle_get_model_id(999, 0) == (0, 148053)
    assert acl.mdl.bundle_get_model_num(999) == (0, 148053)
    assert acl.mdl.bundle_unload(999) == 148053
    assert acl.mdl.bundle_unload(b.bid) == 0
    rig.bundles.clear()
    assert acl.mdl.bundle_unload(b.bid) == 148053
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 145003
    assert acl.mdl.execute(b.update, b.upd_in, b.upd_out) == 145003
    assert acl.mdl.unload(b.infer) == 145003
    d = acl.mdl.create_desc()
    rig.descs.append(d)
    assert acl.mdl.get_desc(d, b.infer) == 145003
    # descs are snapshots that stay valid after unload
    assert acl.mdl.get_num_inputs(b.d_inf) == 1
    assert acl.mdl.get_output_dims(b.d_inf, 0)[1] == 0
    assert acl.mdl.get_desc(12345, b.infer) == 100000
    with pytest.raises(TypeError):
        acl.mdl.execute("1", 1, 1)
    with pytest.raises(KeyError):
        sim.variables(b.bid)


def test_load_errors(rig, mlp_bundle, mlp_plain, tmp_path):
    bpath, _ = mlp_bundle()
    ppath, _ = mlp_plain()
    with pytest.raises(TypeError):
        acl.mdl.load_from_file(b"x")
    assert acl.mdl.load_from_file(str(tmp_path / "nope.om")) == (0, 145002)
    assert acl.mdl.load_from_file(str(tmp_path)) == (0, 145002)
    assert acl.mdl.load_from_file(str(bpath)) == (0, 145000)
    assert "bundle_load" in acl.get_recent_err_msg()
    assert acl.mdl.bundle_load_from_file(str(ppath)) == (0, 145000)
    junk = tmp_path / "junk.om"
    junk.write_bytes(b"not a model file at all")
    assert acl.mdl.load_from_file(str(junk)) == (0, 145000)
    trunc = tmp_path / "trunc.om"
    trunc.write_bytes(ppath.read_bytes()[:-3])
    assert acl.mdl.load_from_file(str(trunc)) == (0, 145006)
    # an ONNX graph onnxruntime rejects
    mf = format.loads(ppath.read_bytes())
    g = mf.graphs[0]
    mf.graphs[0] = format.GraphSpec(g.role, g.inputs, g.outputs, b"\x08\x07garbage")
    bad = tmp_path / "bad.om"
    bad.write_bytes(format.dumps(mf))
    assert acl.mdl.load_from_file(str(bad)) == (0, 545001)
    assert sim.leaks().keys() <= {"initialized", "devices"}


def test_load_without_onnxruntime(rig, mlp_plain, monkeypatch):
    ppath, _ = mlp_plain()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert acl.mdl.load_from_file(str(ppath)) == (0, 545001)
    assert "pip install -e '.[sim]'" in acl.get_recent_err_msg()


def test_load_from_mem(rig, mlp_plain, mlp_bundle):
    ppath, w = mlp_plain()
    data = ppath.read_bytes()
    mid, ret = acl.mdl.load_from_mem(acl.util.bytes_to_ptr(data), len(data))
    assert ret == 0
    assert acl.mdl.unload(mid) == 0
    assert acl.mdl.unload(mid) == 145003
    freed = rig.malloc(len(data))
    acl.rt.free(freed)
    rig.ptrs.remove(freed)
    assert acl.mdl.load_from_mem(freed, len(data)) == (0, 107000)  # a freed device address
    assert acl.mdl.load_from_mem(4096, 100) == (0, 107000)  # unmapped memory
    bpath, _ = mlp_bundle()
    bdata = bpath.read_bytes()
    bid, ret = acl.mdl.bundle_load_from_mem(acl.util.bytes_to_ptr(bdata), len(bdata))
    assert ret == 0
    assert acl.mdl.bundle_unload(bid) == 0
    assert acl.mdl.bundle_load_from_mem(acl.util.bytes_to_ptr(data), len(data)) == (0, 145000)


def run_dyn(rig, mid, desc, batch, x, set_batch=True):
    n_in = acl.mdl.get_num_inputs(desc)
    ins, inp = rig.dataset([acl.mdl.get_input_size_by_index(desc, i) for i in range(n_in)])
    outs, outp = rig.dataset([acl.mdl.get_output_size_by_index(desc, 0)])
    idx, ret = acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data")
    assert ret == 0 and idx == n_in - 1
    rig.h2d(inp[0], x)
    if set_batch:
        assert acl.mdl.set_dynamic_batch_size(mid, ins, idx, batch) == 0
    ret = acl.mdl.execute(mid, ins, outs)
    if ret:
        return ret, None
    return 0, rig.d2h(outp[0], np.float32, (batch, 4))


def test_dynamic_batch_plain(rig, mlp_plain):
    ppath, w = mlp_plain(batch_sizes=[1, 4])
    mid = rig.load(ppath)
    d = rig.desc(mid)
    assert acl.mdl.get_dynamic_batch(d) == ({"batchCount": 2, "batch": [1, 4]}, 0)
    assert acl.mdl.get_input_dims(d, 0)[0]["dims"] == [-1, 8]
    assert acl.mdl.get_input_dims(d, 1) == ({"name": "ascend_mbatch_shape_data", "dimCount": 1, "dims": [1]}, 0)
    assert acl.mdl.get_input_size_by_index(d, 0) == 4 * 8 * 4  # max batch
    assert acl.mdl.get_input_size_by_index(d, 1) == 8
    assert acl.mdl.get_input_data_type(d, 1) == C.ACL_INT64
    assert acl.mdl.get_cur_output_dims(d, 0)[0]["dims"] == [4, 4]
    # Documented: get_output_dims reports the largest batch profile (get_input_dims keeps -1).
    assert acl.mdl.get_output_dims(d, 0) == ({"name": "y", "dimCount": 2, "dims": [4, 4]}, 0)
    ins1, _ = rig.dataset([32, 8])
    assert acl.mdl.set_dynamic_batch_size(mid, ins1, 1, 1) == 0
    assert acl.mdl.get_cur_output_dims(d, 0)[0]["dims"] == [1, 4]  # follows the batch just set
    rng = np.random.default_rng(3)
    for batch in (4, 1):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        ret, y = run_dyn(rig, mid, d, batch, x)
        assert ret == 0, acl.get_recent_err_msg()
        np.testing.assert_allclose(y, ref(x, w), rtol=1e-5, atol=1e-5)
        assert acl.mdl.get_cur_output_dims(d, 0)[0]["dims"] == [batch, 4]
    x = np.zeros((1, 8), np.float32)
    assert run_dyn(rig, mid, d, 1, x, set_batch=False)[0] == 145013
    ins, _ = rig.dataset([32, 8])
    assert acl.mdl.set_dynamic_batch_size(mid, ins, 1, 3) == 145013
    assert acl.mdl.set_dynamic_batch_size(mid, ins, 0, 1) == 100000
    assert acl.mdl.set_dynamic_batch_size(999, ins, 1, 1) == 145003
    # an image size is no gear of a dynamic-batch model (GE matches it against the batch gears)
    assert acl.mdl.set_dynamic_hw_size(mid, ins, 1, 2, 2) == 145013


def test_dynamic_batch_on_static_model(rig, mlp_plain):
    ppath, w = mlp_plain()
    mid = rig.load(ppath)
    ins, _ = rig.dataset([32, 8])
    assert acl.mdl.set_dynamic_batch_size(mid, ins, 1, 1) == 100019


def test_dynamic_batch_bundle(rig, mlp_bundle):
    path, w = mlp_bundle(batch_sizes=[2, 3])
    bid, ids = rig.load_bundle(path)
    d = rig.desc(ids[0])
    acl.mdl.execute(ids[1], *(rig.dataset([])[0] for _ in range(2)))
    x = np.ones((3, 8), np.float32)
    ret, y = run_dyn(rig, ids[0], d, 3, x)
    assert ret == 0
    np.testing.assert_allclose(y, ref(x, w), rtol=1e-5, atol=1e-5)


def test_variables_bound_zero_copy(rig, mlp_bundle, mocker):
    import onnxruntime as ort

    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    spy_in = mocker.spy(ort.IOBinding, "bind_input")
    spy_out = mocker.spy(ort.IOBinding, "bind_output")
    b.infer_x(np.ones((1, 8), np.float32))
    bundle = _state.WORLD.bundles[b.bid]
    var_ptrs = {v.spec.name: v.ptr for v in bundle.vars}
    bound = {c.args[1]: c.args[6] for c in spy_in.call_args_list}
    for name, ptr in var_ptrs.items():
        assert bound[name] == ptr  # the variable memory itself, not a copy
    assert bound["x"] == b.inf_in_p[0]
    assert spy_out.call_args_list[0].args[6] == b.inf_out_p[0]


def test_lock_not_held_while_onnxruntime_runs(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    model = _state.WORLD.models[b.infer]
    real = model.session
    seen = {}

    class Probe:
        def io_binding(self):
            return real.io_binding()

        def run_with_iobinding(self, io):
            def try_lock():
                ok = _state.LOCK.acquire(timeout=2)
                seen["free"] = ok
                if ok:
                    _state.LOCK.release()

            t = threading.Thread(target=try_lock)
            t.start()
            t.join()
            return real.run_with_iobinding(io)

    model.session = Probe()
    try:
        b.infer_x(np.ones((1, 8), np.float32))
    finally:
        model.session = real
    assert seen["free"]


def test_execute_async(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    st, _ = acl.rt.create_stream()
    assert acl.mdl.execute_async(b.init, b.init_in, b.init_out, st) == 0
    x = np.ones((1, 8), np.float32)
    rig.h2d(b.inf_in_p[0], x)
    assert acl.mdl.execute_async(b.infer, b.inf_in, b.inf_out, st) == 0
    assert sim.stats()["executions"] == {}
    assert acl.mdl.execute_async(b.infer, 1, b.inf_out, st) == 100000  # validated now
    assert acl.mdl.execute_async(b.infer, b.inf_in, b.inf_out, 77) == 107000
    assert acl.rt.synchronize_stream(st) == 0
    np.testing.assert_allclose(rig.d2h(b.inf_out_p[0], np.float32, (1, 4)), ref(x, w), rtol=1e-5, atol=1e-5)
    assert acl.rt.destroy_stream(st) == 0


def test_bundle_models_are_not_serialised(rig, mlp_bundle):
    """An update may run to completion while an infer of the same bundle is inside onnxruntime."""
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    b.set_update({"fc1.bias": np.full(4, 5.0, np.float32)})
    ctx, _ = acl.rt.get_context()
    model = _state.WORLD.models[b.infer]
    real = model.session
    seen = {}

    class Probe:
        def io_binding(self):
            return real.io_binding()

        def run_with_iobinding(self, io):
            def upd():
                acl.rt.set_context(ctx)
                seen["update"] = b.run_update()

            t = threading.Thread(target=upd)
            t.start()
            t.join(timeout=5)
            seen["joined"] = not t.is_alive()
            return real.run_with_iobinding(io)

    model.session = Probe()
    try:
        y = b.infer_x(np.ones((1, 8), np.float32))
    finally:
        model.session = real
    assert seen == {"update": 0, "joined": True}
    expect = ref(np.ones((1, 8), np.float32), {**w, "fc1.bias": np.full(4, 5.0, np.float32)})
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_dead_model_desc(rig, mlp_plain):
    ppath, _ = mlp_plain()
    mid = rig.load(ppath)
    d = acl.mdl.create_desc()
    assert acl.mdl.get_desc(d, mid) == 0
    assert acl.mdl.get_num_inputs(d) == 1
    assert acl.mdl.destroy_desc(d) == 0
    assert acl.mdl.destroy_desc(d) == 100000  # double destroy
    assert acl.mdl.get_desc(d, mid) == 100000
    assert acl.mdl.get_num_inputs(d) == 0 and acl.mdl.get_num_outputs(d) == 0
    assert acl.mdl.get_input_size_by_index(d, 0) == 0 and acl.mdl.get_output_size_by_index(d, 0) == 0
    assert acl.mdl.get_input_name_by_index(d, 0) == "" and acl.mdl.get_output_data_type(d, 0) == -1
    assert acl.mdl.get_input_dims(d, 0) == ({}, 100000)
    assert acl.mdl.get_output_dims(d, 0) == ({}, 100000)
    assert acl.mdl.get_cur_output_dims(d, 0) == ({}, 100000)
    assert acl.mdl.get_input_index_by_name(d, "x") == (0, 100000)
    assert acl.mdl.get_output_index_by_name(d, "y") == (0, 100000)
    assert acl.mdl.get_dynamic_batch(d) == ({}, 100000)


def test_execute_buffer_counts_and_places(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    assert b.run_init() == 0
    empty, _ = rig.dataset([])
    assert acl.mdl.execute(b.infer, empty, b.inf_out) == 100000  # too few inputs
    assert acl.mdl.execute(b.infer, b.inf_in, empty) == 100000  # too few outputs
    # an update dataset one buffer short is rejected, not applied in part
    b.set_update({"fc0.weight": np.ones((8, 16), np.float32)})
    short = acl.mdl.create_dataset()
    rig.dss.append(short)
    for i in range(3):
        acl.mdl.add_dataset_buffer(short, acl.mdl.get_dataset_buffer(b.upd_in, i))
        acl.mdl.set_dataset_tensor_desc(short, acl.mdl.get_dataset_tensor_desc(b.upd_in, i), i)
    assert acl.mdl.execute(b.update, short, b.upd_out) == 100000
    # output in host memory (host run mode)
    host = np.zeros(4, np.float32)
    hout = acl.mdl.create_dataset()
    rig.dss.append(hout)
    acl.mdl.add_dataset_buffer(hout, rig.buffer(acl.util.numpy_to_ptr(host), 16))
    assert acl.mdl.execute(b.infer, b.inf_in, hout) == 100000
    # a dead stream fails before anything happens (no runtime-allocated output)
    rt_out = acl.mdl.create_dataset()
    rig.dss.append(rt_out)
    rdb = rig.buffer(0, 0)
    acl.mdl.add_dataset_buffer(rt_out, rdb)
    blocks = sim.live_resources()["device_blocks"]
    assert acl.mdl.execute_async(b.infer, b.inf_in, rt_out, 77) == 107000
    assert acl.get_data_buffer_addr(rdb) == 0 and sim.live_resources()["device_blocks"] == blocks
    assert sim.stats()["executions"] == {b.init: 1}
    for k, v in sim.variables(b.bid).items():
        np.testing.assert_array_equal(v, w[k])


def test_dynamic_batch_buffer_checks(rig, mlp_plain):
    ppath, _ = mlp_plain(batch_sizes=[1, 4])
    mid = rig.load(ppath)
    ins, inp = rig.dataset([128, 8])
    outs, _ = rig.dataset([64])
    dead = acl.mdl.create_dataset()
    acl.mdl.destroy_dataset(dead)
    assert acl.mdl.set_dynamic_batch_size(mid, dead, 1, 1) == 100000
    # the batch input must be >= 8 bytes of device memory
    host = np.zeros(1, np.int64)
    hds = acl.mdl.create_dataset()
    rig.dss.append(hds)
    acl.mdl.add_dataset_buffer(hds, rig.buffer(inp[0], 128))
    acl.mdl.add_dataset_buffer(hds, rig.buffer(acl.util.numpy_to_ptr(host), 8))
    assert acl.mdl.set_dynamic_batch_size(mid, hds, 1, 1) == 100000
    assert host[0] == 0
    assert acl.mdl.set_dynamic_batch_size(mid, ins, 1, 1) == 0
    mb = acl.mdl.get_dataset_buffer(ins, 1)
    assert acl.update_data_buffer(mb, inp[1], 2) == 0
    assert acl.mdl.execute(mid, ins, outs) == 100000  # shorter than one uint32
    assert acl.mdl.set_dynamic_batch_size(mid, ins, 1, 1) == 145012  # ge_executor.cc:385
    assert acl.update_data_buffer(mb, inp[1], 4) == 0  # GE writes and reads a uint32 then
    assert acl.mdl.set_dynamic_batch_size(mid, ins, 1, 4) == 0
    assert ctypes.c_uint64.from_address(inp[1]).value == 4  # only the low 4 bytes written (were 1)
    d = rig.desc(mid)
    assert acl.mdl.execute(mid, ins, outs) == 0
    assert acl.mdl.get_cur_output_dims(d, 0)[0]["dims"] == [4, 4]  # the uint32 selected batch 4
    assert acl.update_data_buffer(mb, inp[1], 8) == 0
    assert acl.mdl.execute(mid, ins, outs) == 0
    assert acl.mdl.set_dynamic_hw_size(999, ins, 1, 2, 2) == 145003


def test_update_rejects_wrong_shape_and_host_buffers(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    assert b.run_init() == 0
    b.set_update({"fc0.weight": np.ones((8, 16), np.float32)})
    # same element count, different shape
    acl.mdl.set_dataset_tensor_desc(b.upd_in, rig.tensor_desc(F, [16, 8]), 0)
    assert b.run_update() == 145021
    acl.mdl.set_dataset_tensor_desc(b.upd_in, rig.tensor_desc(F, [8, 16]), 0)
    # new bias in host memory (host run mode): not device memory
    host = np.full(4, 9.0, np.float32)
    db = acl.mdl.get_dataset_buffer(b.upd_in, 3)
    acl.update_data_buffer(db, acl.util.numpy_to_ptr(host), 16)
    acl.mdl.set_dataset_tensor_desc(b.upd_in, rig.tensor_desc(F, [4]), 3)
    assert b.run_update() == 145021
    for k, v in sim.variables(b.bid).items():
        np.testing.assert_array_equal(v, w[k])
    assert sim.stats()["update_bytes_applied"] == 0


def test_init_graph_resets_variables(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    assert b.run_init() == 0
    b.set_update({"fc1.bias": np.full(4, 3.0, np.float32)})
    assert b.run_update() == 0
    assert (sim.variables(b.bid)["fc1.bias"] == 3.0).all()
    assert b.run_init() == 0  # every run of init writes the initial values again
    for k, v in sim.variables(b.bid).items():
        np.testing.assert_array_equal(v, w[k])
