"""The infer execute's cache (bindings per model and dataset pair) is invalidated exactly when a buffer, dataset or
descriptor changes, or device memory is freed: every check of an uncached execute still happens after a change."""
from __future__ import annotations

import numpy as np
import pytest
from simhelp import Rig
from test_sim_models import BundleRun, run_dyn

from acl_bundle import _constants as C
from acl_bundle import sim
from acl_bundle.sim import _state
from helpers import reference as ref

acl = sim.acl
E_PARAM = 100000


def _x(rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def _cache(b: BundleRun) -> dict:
    return _state.WORLD.models[b.infer].exec_cache


def test_repeated_execute_uses_the_cache_and_stays_right(rig, mlp_bundle, mocker):
    import onnxruntime as ort

    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    spy = mocker.spy(ort.IOBinding, "bind_input")
    for seed in range(5):  # new input values each time, through the same (cached) bindings
        x = _x(1, seed)
        np.testing.assert_allclose(b.infer_x(x), ref(x, w), rtol=1e-5, atol=1e-5)
    assert spy.call_count == 1 + len(w)  # bound once (x and every variable), not per execute
    assert len(_cache(b)) == 1
    assert sim.stats()["executions"][b.infer] == 5
    new = {"fc0.bias": np.full(16, 0.5, np.float32)}  # a weight update: same variable memory, new values
    b.set_update(new)
    assert b.run_update() == 0
    x = _x(1, 9)
    np.testing.assert_allclose(b.infer_x(x), ref(x, {**w, **new}), rtol=1e-5, atol=1e-5)


def test_a_re_pointed_input_buffer_is_read_from_its_new_memory(rig, mlp_bundle):
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    b.infer_x(_x())
    other = rig.malloc(8 * 4)
    x = _x(1, 3)
    rig.h2d(other, x)
    db = acl.mdl.get_dataset_buffer(b.inf_in, 0)
    assert acl.update_data_buffer(db, other, 8 * 4) == 0
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 0
    np.testing.assert_allclose(rig.d2h(b.inf_out_p[0], np.float32, (1, 4)), ref(x, w), rtol=1e-5, atol=1e-5)
    assert acl.update_data_buffer(db, other, 4) == 0  # too small now: refused as without a cache
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == E_PARAM
    assert "needs 32" in acl.get_recent_err_msg()


def test_freed_memory_under_a_cached_binding_is_refused(rig, mlp_bundle):
    path, _ = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    b.infer_x(_x())
    p = b.inf_out_p[0]
    assert acl.rt.free(p) == 0  # the output buffer's memory, behind the dataset's back
    rig.ptrs.remove(p)
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == E_PARAM
    assert "is not device memory" in acl.get_recent_err_msg()


def test_a_destroyed_buffer_and_a_wrong_desc_are_refused(rig, mlp_bundle):
    path, _ = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    b.infer_x(_x())
    td = rig.tensor_desc(C.ACL_FLOAT, [1, 7])
    assert acl.mdl.set_dataset_tensor_desc(b.inf_in, td, 0) == (b.inf_in, 0)
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == E_PARAM
    assert "tensor desc dims [1, 7]" in acl.get_recent_err_msg()
    assert acl.mdl.set_dataset_tensor_desc(b.inf_in, 0, 0) == (b.inf_in, 0)
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 0
    db = acl.mdl.get_dataset_buffer(b.inf_out, 0)
    assert acl.destroy_data_buffer(db) == 0
    rig.dbs.remove(db)
    assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == E_PARAM
    assert "output buffer 0 was destroyed" in acl.get_recent_err_msg()


def test_another_gear_is_another_binding(rig, mlp_bundle):
    path, w = mlp_bundle(batch_sizes=[1, 2, 4])
    _, ids = rig.load_bundle(path)
    d = rig.desc(ids[0])
    acl.mdl.execute(ids[1], *(rig.dataset([])[0] for _ in range(2)))
    n_in = acl.mdl.get_num_inputs(d)
    ins, inp = rig.dataset([acl.mdl.get_input_size_by_index(d, i) for i in range(n_in)])
    outs, outp = rig.dataset([acl.mdl.get_output_size_by_index(d, 0)])
    x = _x(4, 5)
    rig.h2d(inp[0], x)
    for batch in (4, 2, 4, 1, 2):  # the same datasets, the gear changed in between
        assert acl.mdl.set_dynamic_batch_size(ids[0], ins, n_in - 1, batch) == 0
        assert acl.mdl.execute(ids[0], ins, outs) == 0
        np.testing.assert_allclose(rig.d2h(outp[0], np.float32, (batch, 4)), ref(x[:batch], w), rtol=1e-5,
                                   atol=1e-5)
    ret, _ = run_dyn(rig, ids[0], d, 3, x[:3], set_batch=False)  # no gear set on a fresh dataset: refused
    assert ret != 0


@pytest.mark.parametrize("mb_bytes", [8, 4])  # int64 values, or uint32 in a 4-byte buffer (ge_executor.cc:375)
def test_the_shape_buffer_is_read_on_every_cached_execute(rig, mlp_bundle, mb_bytes):
    """A cached execute reads the gear from the ascend_mbatch_shape_data memory itself: values written there by a
    plain memcpy (no set_dynamic_batch_size, the datasets unchanged) select another gear, or none (145013)."""
    path, w = mlp_bundle(batch_sizes=[1, 2, 4])
    _, ids = rig.load_bundle(path)
    d = rig.desc(ids[0])
    acl.mdl.execute(ids[1], *(rig.dataset([])[0] for _ in range(2)))
    ins, (xp, mbp) = rig.dataset([acl.mdl.get_input_size_by_index(d, 0), mb_bytes])
    outs, outp = rig.dataset([acl.mdl.get_output_size_by_index(d, 0)])
    x = _x(4, 6)
    rig.h2d(xp, x)
    dt = np.int64 if mb_bytes == 8 else np.uint32
    for batch in (2, 2, 3, 4, 4, 0, 1):
        rig.h2d(mbp, np.array([batch], dt))
        ret = acl.mdl.execute(ids[0], ins, outs)
        if batch in (1, 2, 4):
            assert ret == 0, acl.get_recent_err_msg()
            np.testing.assert_allclose(rig.d2h(outp[0], np.float32, (batch, 4)), ref(x[:batch], w), rtol=1e-5,
                                       atol=1e-5)
        else:
            assert ret == 145013  # ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID, as uncached
            assert f"not set or invalid ([{batch}])" in acl.get_recent_err_msg()
    assert len(_state.WORLD.models[ids[0]].exec_cache) == 1  # one binding per gear used, the last one kept


def test_a_reset_device_ends_its_default_context_for_a_cached_execute(dev, mlp_bundle):
    """The default context of a device dies with its last reset_device, also for a model whose execute is cached
    (107002 in that thread), and the next set_device makes another one, where the model does not run (107004)."""
    path, w = mlp_bundle()
    assert acl.rt.set_device(1) == 0  # device 1's default context: current in this thread
    r = Rig()
    try:
        b = BundleRun(r, path)
        b.run_init()
        x = _x()
        np.testing.assert_allclose(b.infer_x(x), ref(x, w), rtol=1e-5, atol=1e-5)
        assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 0  # cached
        assert acl.rt.reset_device(1) == 0
        assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 107002  # ACL_ERROR_RT_CONTEXT_NULL
        assert acl.rt.set_device(1) == 0  # a new default context
        assert acl.mdl.execute(b.infer, b.inf_in, b.inf_out) == 107004  # ACL_ERROR_RT_MODEL_CONTEXT
        assert "was loaded in context" in acl.get_recent_err_msg()
    finally:
        r.close()
        acl.rt.reset_device(1)
        assert acl.rt.set_device(0) == 0 and acl.rt.reset_device(0) == 0  # device 0's context current again


def test_a_binding_another_thread_is_running_is_not_shared(rig, mlp_bundle):
    """While one execute runs a cached binding, another of the same datasets binds its own and is just as right."""
    path, w = mlp_bundle()
    b = BundleRun(rig, path)
    b.run_init()
    b.infer_x(_x())
    (c,) = _cache(b).values()
    assert c.io is not None  # kept: onnxruntime wrote in place
    with c.busy:  # as while another thread runs it
        x = _x(1, 4)
        np.testing.assert_allclose(b.infer_x(x), ref(x, w), rtol=1e-5, atol=1e-5)
    x = _x(1, 5)
    np.testing.assert_allclose(b.infer_x(x), ref(x, w), rtol=1e-5, atol=1e-5)
    assert sim.stats()["executions"][b.infer] == 3
