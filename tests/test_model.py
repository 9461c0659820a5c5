"""BundleModel on the simulator: numerics against numpy, validation, memory discipline, lifecycle."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from acl_bundle import AclError, BundleModel, ModelClosedError, UnknownVariableError, sim
from acl_bundle import _constants as C
from helpers import device_weights, reference

ACL = sim.acl


def _x(rng, batch=1, n=8, dtype=np.float32):
    return rng.standard_normal((batch, n)).astype(dtype)


def _new(weights, rng, scale=1.0):
    return {k: (rng.standard_normal(v.shape) * scale).astype(v.dtype) for k, v in weights.items()}


# --------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-2)])
@pytest.mark.parametrize("init", [True, False])
def test_design_card_matches_numpy_before_and_after_updates(make_bundle, dtype, tol, init):
    om, w0 = make_bundle(dtype=dtype, init=init)
    rng = np.random.default_rng(1)
    x = _x(rng, dtype=np.dtype(dtype))
    with BundleModel(om, acl=ACL) as m:
        assert m.has_init is init
        assert [v.name for v in m.variables] == list(w0)
        current = dict(w0)
        if not init:  # no init graph: variables hold nothing useful until the first full update
            m.update(w0)
        np.testing.assert_allclose(m.infer(x), reference(x, current), rtol=tol, atol=tol)

        new = _new(w0, rng)
        m.update({1: new["fc0.bias"]})  # by index
        current["fc0.bias"] = new["fc0.bias"]
        np.testing.assert_allclose(m.infer(x), reference(x, current), rtol=tol, atol=tol)

        m.update({"fc1.weight": new["fc1.weight"], "fc0.weight": new["fc0.weight"]})  # by name
        current["fc1.weight"], current["fc0.weight"] = new["fc1.weight"], new["fc0.weight"]
        np.testing.assert_allclose(m.infer(x), reference(x, current), rtol=tol, atol=tol)
        assert m.version == (3 if not init else 2)
        for k, v in device_weights(m).items():
            np.testing.assert_array_equal(v, current[k])


def test_dynamic_batch_two_sizes(make_bundle):
    om, w0 = make_bundle(batch_sizes=[1, 4])
    rng = np.random.default_rng(2)
    with BundleModel(om, acl=ACL) as m:
        assert m.batch_sizes == (1, 4)
        assert m.inputs[0].shape == (-1, 8)
        assert m.outputs[0].shape == (-1, 4)  # reported at the largest batch (4, 4); dim 0 is the batch
        for b in (1, 4, 1):
            x = _x(rng, batch=b)
            np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
        new = _new(w0, rng)
        m.update(new)
        for b in (4, 1):
            x = _x(rng, batch=b)
            np.testing.assert_allclose(m.infer(x), reference(x, new), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"batch 1\.\.4, got \(5, 8\)"):
            m.infer(_x(rng, batch=5))
    with (BundleModel(om, acl=ACL, pad_batch=False) as m,
          pytest.raises(ValueError, match=r"batch in \[1, 4\], got \(3, 8\)")):
        m.infer(_x(rng, batch=3))


def test_rows_between_batch_sizes_are_padded_up_and_the_padding_dropped(make_bundle):
    om, w0 = make_bundle(batch_sizes=[1, 4, 8])
    rng = np.random.default_rng(5)
    with BundleModel(om, acl=ACL) as m:
        for rows in (3, 2, 5, 7, 3):
            x = _x(rng, batch=rows)
            y = m.infer(x)
            assert y.shape == (rows, 4)
            np.testing.assert_allclose(y, reference(x, w0), rtol=1e-5, atol=1e-5)
        x4 = _x(rng, batch=4)  # the slot that ran 3 rows still gives exact results for 4
        np.testing.assert_allclose(m.infer(x4), reference(x4, w0), rtol=1e-5, atol=1e-5)
        m.infer(_x(rng, batch=1))  # now every batch size has its slot
        before = m.device_bytes
        for rows in (1, 2, 3, 4, 5, 6, 7, 8):
            m.infer(_x(rng, batch=rows))
        assert m.device_bytes == before  # 2..3 run on 4, 5..7 on 8: no slot per row count
    with pytest.raises(TypeError, match="pad_batch must be True or False"):
        BundleModel(om, acl=ACL, pad_batch="yes")


def test_infer_by_name_and_return_version(make_bundle):
    om, w0 = make_bundle()
    x = _x(np.random.default_rng(3))
    with BundleModel(om, acl=ACL) as m:
        y, v = m.infer({"x": x}, return_version=True)
        assert v == 0
        np.testing.assert_allclose(y, reference(x, w0), rtol=1e-5, atol=1e-5)
        assert m.update({0: w0["fc0.weight"] * 2}) == 1
        assert m.infer(x, return_version=True)[1] == 1


def test_outputs_belong_to_caller(make_bundle):
    om, w0 = make_bundle()
    rng = np.random.default_rng(4)
    x1, x2 = _x(rng), _x(rng)
    with BundleModel(om, acl=ACL) as m:
        y1 = m.infer(x1)
        y1_copy = y1.copy()
        y2 = m.infer(x2)
        np.testing.assert_array_equal(y1, y1_copy)  # second call did not write into the first result
        y2[...] = 123
        np.testing.assert_allclose(m.infer(x2), reference(x2, w0), rtol=1e-5, atol=1e-5)


def test_description(make_bundle):
    om, w0 = make_bundle(sizes=(8, 16, 4))
    with BundleModel(om, acl=ACL) as m:
        assert [(t.name, t.shape, t.dtype) for t in m.inputs] == [("x", (1, 8), np.dtype(np.float32))]
        assert [(t.name, t.shape) for t in m.outputs] == [("y", (1, 4))]
        assert [(v.index, v.name, v.shape, v.nbytes) for v in m.variables] == [
            (i, k, a.shape, a.nbytes) for i, (k, a) in enumerate(w0.items())
        ]
        assert set(m.model_ids) == {"infer", "init", "update"}
        assert len(set(m.model_ids.values())) == 3
        assert "version=0" in repr(m)


# --------------------------------------------------------------------------- bad input
BAD_UPDATES = [
    (
        {"nope": 0},
        UnknownVariableError,
        r"^unknown variable 'nope'; expected an index 0\.\.3 or one of "
        r"\['fc0.weight', 'fc0.bias', 'fc1.weight', 'fc1.bias'\]$",
    ),
    ({7: 0}, UnknownVariableError, r"^unknown variable 7; expected an index 0\.\.3"),
    ({True: 0}, UnknownVariableError, r"^unknown variable True"),
    ({-1: 0}, UnknownVariableError, r"^unknown variable -1; expected an index 0\.\.3"),
    ({0: "w"}, TypeError, r"^variable 'fc0.weight' needs a numpy.ndarray of float32, got str$"),
    ({0: [[1.0]]}, TypeError, r"got list$"),
    (
        {0: np.zeros((8, 16), np.float64)},
        TypeError,
        r"^variable 'fc0.weight' is float32, got float64; cast it with \.astype\(numpy\.float32\)$",
    ),
    ({0: np.zeros((8, 16), ">f4")}, TypeError, r"got >f4"),
    ({0: np.zeros((16, 8), np.float32)}, ValueError, r"^variable 'fc0.weight' has shape \(8, 16\), got \(16, 8\)$"),
    ({0: np.zeros((8, 16, 1), np.float32)}, ValueError, r"has shape \(8, 16\), got \(8, 16, 1\)$"),
    ({}, ValueError, r"^update got an empty mapping"),
    ({0: np.zeros((8, 16), np.float32), "fc0.weight": np.zeros((8, 16), np.float32)}, ValueError, r"named twice"),
    (
        {"nope": 0, 1: np.zeros(3, np.float32)},
        UnknownVariableError,
        r"^2 problems in update: unknown variable 'nope'.*; variable 'fc0.bias' has shape \(16,\), got \(3,\)$",
    ),
]


@pytest.mark.parametrize("weights,exc,msg", BAD_UPDATES)
def test_bad_update_is_rejected_and_changes_nothing(make_bundle, weights, exc, msg):
    om, w0 = make_bundle()
    x = _x(np.random.default_rng(5))
    with BundleModel(om, acl=ACL) as m:
        before = device_weights(m)
        copies = {k: v.copy() for k, v in weights.items() if isinstance(v, np.ndarray)}
        h2d = sim.stats()["bytes_copied"]["HOST_TO_DEVICE"]
        with pytest.raises(exc, match=msg):
            m.update(weights)
        assert sim.stats()["bytes_copied"]["HOST_TO_DEVICE"] == h2d  # rejected before any device copy
        after = device_weights(m)
        assert all(np.array_equal(before[k], after[k]) and before[k].tobytes() == after[k].tobytes() for k in before)
        for k, v in copies.items():
            np.testing.assert_array_equal(weights[k], v)
        assert m.version == 0
        np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)


def test_update_rejects_non_mapping(make_bundle):
    om, _ = make_bundle()
    with BundleModel(om, acl=ACL) as m, pytest.raises(
        TypeError, match=r"^update expects a mapping of variable index or name to numpy array, got list$"
    ):
        m.update([np.zeros((8, 16), np.float32)])


@pytest.mark.parametrize("args,exc,msg", [
    ((), TypeError, r"^infer takes 1 input\(s\) \['x'\] \(positionally or as one mapping\), got 0$"),
    ((np.zeros((1, 8), np.float32),) * 2, TypeError, r"got 2$"),
    ((np.zeros((1, 8), np.float64),), TypeError, r"^input 'x' must have dtype float32, got float64"),
    ((np.zeros((2, 8), np.float32),), ValueError, r"^input 'x' must have shape \(1, 8\), got \(2, 8\)$"),
    ((np.zeros(8, np.float32),), ValueError, r"got \(8,\)$"),
    (([[0.0] * 8],), TypeError, r"^input 'x' must be a numpy.ndarray of float32, got list$"),
    (({"y": np.zeros((1, 8), np.float32)},), KeyError, r"unknown \['y'\], missing \['x'\]"),
])
def test_bad_infer_input(make_bundle, args, exc, msg):
    om, _ = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        h2d = sim.stats()["bytes_copied"]["HOST_TO_DEVICE"]
        with pytest.raises(exc, match=msg):
            m.infer(*args)
        assert sim.stats()["bytes_copied"]["HOST_TO_DEVICE"] == h2d


def test_noncontiguous_and_readonly_inputs_leave_caller_arrays_alone(make_bundle):
    om, w0 = make_bundle()
    rng = np.random.default_rng(6)
    with BundleModel(om, acl=ACL) as m:
        big = rng.standard_normal((16, 8)).astype(np.float32).T  # (8, 16) Fortran-ordered view
        assert not big.flags.c_contiguous
        keep = big.copy()
        m.update({"fc0.weight": big})
        np.testing.assert_array_equal(big, keep)
        np.testing.assert_array_equal(device_weights(m)["fc0.weight"], keep)
        x = _x(rng)
        x.setflags(write=False)
        np.testing.assert_allclose(m.infer(x), reference(x, {**w0, "fc0.weight": keep}), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- copies and allocations
def test_update_copies_exactly_the_changed_bytes(make_bundle):
    om, w0 = make_bundle(sizes=(8, 32, 4))
    with BundleModel(om, acl=ACL) as m:
        m.update({"fc0.weight": w0["fc0.weight"]})  # warm up
        before = sim.stats()
        m.update({"fc1.bias": w0["fc1.bias"] + 1})
        after = sim.stats()
        assert (
            after["bytes_copied"]["HOST_TO_DEVICE"] - before["bytes_copied"]["HOST_TO_DEVICE"] == w0["fc1.bias"].nbytes
        )
        assert after["update_bytes_applied"] - before["update_bytes_applied"] == w0["fc1.bias"].nbytes
        assert m.stats["last_update"]["bytes"] == w0["fc1.bias"].nbytes
        assert m.stats["update_bytes"] == w0["fc0.weight"].nbytes + w0["fc1.bias"].nbytes  # cumulative


def test_no_device_allocation_in_steady_state(make_bundle):
    om, w0 = make_bundle(batch_sizes=[1, 4])
    rng = np.random.default_rng(7)
    with BundleModel(om, acl=ACL) as m:
        for b in (1, 4):
            m.infer(_x(rng, batch=b))
        m.update({0: w0["fc0.weight"]})
        m.update({"fc1.weight": w0["fc1.weight"]})  # a shape-known variable from the other layer too
        s0 = sim.stats()
        live0 = sim.live_resources()
        for i in range(100):
            m.infer(_x(rng, batch=(1, 4)[i % 2]))
            m.update({i % 4: w0[list(w0)[i % 4]]})
        s1 = sim.stats()
        assert s1["mallocs"] == s0["mallocs"]
        assert s1["calls"].get("acl.create_tensor_desc", 0) == s0["calls"].get("acl.create_tensor_desc", 0)
        assert s1["calls"].get("acl.mdl.create_dataset", 0) == s0["calls"].get("acl.mdl.create_dataset", 0)
        assert sim.live_resources() == live0
        assert m.stats["infers"] == 102 and m.stats["updates"] == 102


def test_device_memory_accounting(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        # default pool: every variable, each 64-byte aligned; plus the one 64-byte buffer of unchanged inputs
        staging = sum(-(-v.nbytes // 64) * 64 for v in w0.values()) + 64
        assert m.device_bytes == staging
        m.infer(np.zeros((1, 8), np.float32))
        assert m.device_bytes == staging + 8 * 4 + 4 * 4


# --------------------------------------------------------------------------- manifest / roles
def test_without_manifest_shapes_unknown_validated_by_bytes(make_bundle):
    om, w0 = make_bundle(manifest=False)
    rng = np.random.default_rng(8)
    with BundleModel(om, acl=ACL) as m:
        assert all(v.shape is None for v in m.variables)
        new = _new(w0, rng)
        m.update(new)
        x = _x(rng)
        np.testing.assert_allclose(m.infer(x), reference(x, new), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"holds 512 bytes of float32, got 256 bytes"):
            m.update({0: np.zeros((8, 8), np.float32)})
        # Same byte count, wrong shape: only the update graph can tell; it refuses and changes nothing.
        before = device_weights(m)
        with pytest.raises(AclError) as ei:
            m.update({0: np.zeros((16, 8), np.float32), 1: np.ones(16, np.float32)})
        assert ei.value.func == "acl.mdl.execute"
        after = device_weights(m)
        assert all(np.array_equal(before[k], after[k]) for k in before)
        np.testing.assert_allclose(m.infer(x), reference(x, new), rtol=1e-5, atol=1e-5)
        m.update({1: new["fc0.bias"] * 2})  # still usable
        assert m.version == 2


def test_manifest_that_disagrees_is_refused(make_bundle, tmp_path):
    om, _ = make_bundle()
    bad = {"format": "acl-bundle-manifest", "version": 1,
           "variables": [{"name": "fc0.weight", "dtype": "float32", "shape": [8, 16]}]}
    with pytest.raises(ValueError, match=r"^manifest does not match the bundle: variables \['fc0.weight'\] vs bundle"):
        BundleModel(om, acl=ACL, manifest=bad)
    with pytest.raises(ValueError, match='"format" must be'):
        BundleModel(om, acl=ACL, manifest={"vars": []})
    wrong_shape = {
        **bad,
        "variables": [
            {"name": "fc0.weight", "dtype": "float32", "shape": [16, 8, 1]},
            {"name": "fc0.bias", "dtype": "float32", "shape": [16]},
            {"name": "fc1.weight", "dtype": "float16", "shape": [16, 4]},
            {"name": "fc1.bias", "dtype": "float32", "shape": [5]},
        ],
    }
    with pytest.raises(
        ValueError,
        match=r"'fc1.weight': manifest float16 \(16, 4\) \(128 B\) vs bundle float32 \(256 B\); "
        r"'fc1.bias': manifest float32 \(5,\) \(20 B\) vs bundle float32 \(16 B\)$",
    ):
        BundleModel(om, acl=ACL, manifest=wrong_shape)


def test_two_graph_bundle_roles(make_bundle):
    om, w0 = make_bundle(init=False)
    with BundleModel(om, acl=ACL) as m:
        assert set(m.model_ids) == {"infer", "update"}
    with BundleModel(om, acl=ACL, roles={"infer": 0, "update": 1}) as m:
        m.update(w0)
        x = np.ones((1, 8), np.float32)
        np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="roles must map"):
        BundleModel(om, acl=ACL, roles={"infer": 0, "update": 0})


def test_from_bytes(make_bundle):
    om, w0 = make_bundle()
    data = om.read_bytes()
    with BundleModel.from_bytes(data, acl=ACL, manifest=om.with_suffix(".manifest.json")) as m:
        x = np.ones((1, 8), np.float32)
        np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
        assert m.variables[0].shape == (8, 16)
    with pytest.raises(TypeError, match="from_bytes expects bytes, got str"):
        BundleModel.from_bytes("x", acl=ACL)


def test_skip_init_and_init_inputs(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL, run_init=False) as m:
        assert sim.stats()["executions"].get(m.model_ids["init"], 0) == 0
    with pytest.raises(ValueError, match=r"the init graph takes 0 inputs \[\]; init_inputs has 1"):
        BundleModel(om, acl=ACL, init_inputs=[np.zeros(1)])
    with pytest.raises(ValueError, match=r"^init_inputs given but the init graph is not run"):
        BundleModel(om, acl=ACL, run_init=False, init_inputs=[])
    om2, _ = make_bundle(init=False)
    with pytest.raises(ValueError, match=r"^init_inputs given but the init graph is not run"):
        BundleModel(om2, acl=ACL, init_inputs=[])


# --------------------------------------------------------------------------- lifecycle
def test_context_is_the_models_own_live_context_until_close(make_bundle):
    om, _ = make_bundle()
    before = set(sim.live_resources()["contexts"])
    m = BundleModel(om, acl=ACL)
    created = set(sim.live_resources()["contexts"]) - before
    assert created == {m.context}  # the one context the load created, not the caller's (none here)
    m.close()
    assert set(sim.live_resources()["contexts"]) == before  # released with the model
    with pytest.raises(ModelClosedError, match=r"is closed$"):
        m.context  # noqa: B018


def test_close_is_idempotent_and_use_after_close_is_clear(make_bundle):
    om, w0 = make_bundle()
    m = BundleModel(om, acl=ACL)
    m.close()
    m.close()
    assert m.closed
    assert sim.leaks() == {}
    with pytest.raises(ModelClosedError, match=r"^BundleModel\('.*bundle\d+\.om'\) is closed$"):
        m.infer(np.zeros((1, 8), np.float32))
    with pytest.raises(ModelClosedError):
        m.update({0: w0["fc0.weight"]})


def test_exception_inside_with_releases_everything(make_bundle):
    om, _ = make_bundle()
    with pytest.raises(RuntimeError, match="boom"), BundleModel(om, acl=ACL) as m:
        m.infer(np.zeros((1, 8), np.float32))
        raise RuntimeError("boom")
    assert m.closed and sim.leaks() == {}


def test_dropped_model_is_released_by_finalizer(make_bundle):
    om, _ = make_bundle()
    m = BundleModel(om, acl=ACL)
    m.infer(np.zeros((1, 8), np.float32))
    del m
    import gc

    gc.collect()
    assert sim.leaks() == {}


def test_missing_file_is_clear_and_touches_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a file"):
        BundleModel(tmp_path / "nope.om", acl=ACL)
    with pytest.raises(FileNotFoundError):
        BundleModel(tmp_path, acl=ACL)
    assert sim.stats()["calls"] == {} or sum(sim.stats()["calls"].values()) == 0


def test_corrupt_file_gives_acl_error_and_no_leak(tmp_path):
    bad = tmp_path / "bad.om"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(AclError) as ei:
        BundleModel(bad, acl=ACL)
    assert ei.value.func == "acl.mdl.bundle_load_from_file"
    assert ei.value.code in (145000, 145006, 545001)
    assert re.match(r"^acl\.mdl\.bundle_load_from_file returned \d+ \(ACL_ERROR_GE_\w+\)", str(ei.value))


def _constructor_trace(om):
    with sim.record() as calls:
        BundleModel(om, acl=ACL).close()
    return list(calls)


# Getters that pyACL defines with no error path (a bare int/str, per the pyACL documentation): a failure there is
# indistinguishable from a value, so the sweep cannot expect an exception from them. get_context failing
# means "no current context" (the wrapper then sets its own and has nothing to restore); get_input_index_by_name
# failing means "no dynamic-shape input" (a static model).
BARE_GETTERS = re.compile(
    r"^acl\.mdl\.get_(num_(inputs|outputs)|(input|output)_(size_by_index|data_type|format|name_by_index))$"
    r"|^acl\.rt\.get_context$|^acl\.mdl\.get_input_index_by_name$"
    r"|^acl\.get_recent_err_msg$"
)  # diagnostics: read after get_context's expected miss


def test_constructor_failure_at_every_step_leaves_nothing(make_bundle):
    om, _ = make_bundle()
    trace = _constructor_trace(om)
    load_part = trace[: trace.index("acl.mdl.execute") + 1]  # up to and including the init execution
    seen: dict[str, int] = {}
    n = 0
    for name in load_part:
        seen[name] = seen.get(name, 0) + 1
        if BARE_GETTERS.match(name):
            continue
        with sim.fault(name, 500000, on_call=seen[name]) as f, pytest.raises((AclError, ValueError)) as ei:
            BundleModel(om, acl=ACL)
        assert f.fired == 1, name
        if isinstance(ei.value, AclError):
            assert ei.value.func == name
        assert sim.leaks() == {}, f"leak after failing {name} #{seen[name]}"
        n += 1
    assert n >= 20


def test_several_models_share_one_runtime_and_reopen(make_bundle):
    om1, w1 = make_bundle(seed=1)
    om2, w2 = make_bundle(sizes=(8, 4), seed=2)
    x = np.ones((1, 8), np.float32)
    a = BundleModel(om1, acl=ACL)
    b = BundleModel(om2, acl=ACL)
    assert sim.stats()["calls"]["acl.init"] == 1
    assert sim.live_resources()["devices"] == {0: 1}
    np.testing.assert_allclose(a.infer(x), reference(x, w1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.infer(x), reference(x, w2), rtol=1e-5, atol=1e-5)
    a.close()
    assert sim.live_resources()["initialized"]
    np.testing.assert_allclose(b.infer(x), reference(x, w2), rtol=1e-5, atol=1e-5)
    b.close()
    assert sim.leaks() == {}
    with BundleModel(om1, acl=ACL) as c:  # reopen after everything closed
        np.testing.assert_allclose(c.infer(x), reference(x, w1), rtol=1e-5, atol=1e-5)


def test_application_initialised_acl_is_shared_not_finalized(make_bundle):
    om, w0 = make_bundle()
    assert ACL.init() == 0
    try:
        with BundleModel(om, acl=ACL) as m:
            m.infer(np.ones((1, 8), np.float32))
        assert sim.live_resources()["initialized"]  # the application owns finalize
    finally:
        assert ACL.finalize() == 0


def test_two_devices(make_bundle):
    om, w0 = make_bundle()
    x = np.ones((1, 8), np.float32)
    with BundleModel(om, acl=ACL, device_id=0) as a, BundleModel(om, acl=ACL, device_id=1) as b:
        assert sim.live_resources()["devices"] == {0: 1, 1: 1}
        b.update({0: w0["fc0.weight"] * 0})
        np.testing.assert_allclose(a.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            b.infer(x), reference(x, {**w0, "fc0.weight": w0["fc0.weight"] * 0}), rtol=1e-5, atol=1e-5
        )


def test_calls_from_another_thread_use_the_models_context(make_bundle):
    om, w0 = make_bundle()
    x = np.ones((1, 8), np.float32)
    out = {}
    with BundleModel(om, acl=ACL) as m:
        t = threading.Thread(target=lambda: out.update(y=m.infer(x), v=m.update({1: w0["fc0.bias"]})))
        t.start()
        t.join()
    np.testing.assert_allclose(out["y"], reference(x, w0), rtol=1e-5, atol=1e-5)
    assert out["v"] == 1


def test_device_run_mode_uses_device_to_device_copies(make_bundle):
    om, w0 = make_bundle()
    sim.configure(run_mode=C.ACL_DEVICE)
    try:
        with BundleModel(om, acl=ACL) as m:
            x = np.ones((1, 8), np.float32)
            np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
            m.update({1: w0["fc0.bias"] + 1})
            assert sim.stats()["bytes_copied"]["HOST_TO_DEVICE"] == 0
            assert sim.stats()["bytes_copied"]["DEVICE_TO_DEVICE"] > 0
    finally:
        sim.configure(run_mode=C.ACL_HOST)


def test_acl_error_reads_well():
    e = AclError("acl.mdl.execute", 145003, "model 7 is not loaded")
    assert str(e) == "acl.mdl.execute returned 145003 (ACL_ERROR_GE_EXEC_MODEL_ID_INVALID): model 7 is not loaded"
    assert (e.func, e.code, e.name) == ("acl.mdl.execute", 145003, "ACL_ERROR_GE_EXEC_MODEL_ID_INVALID")


# --------------------------------------------------------------------------- contract details (mutation testing)
def test_failed_update_is_counted_and_leaves_version_and_weights(make_bundle):
    om, w0 = make_bundle()
    x = _x(np.random.default_rng(11))
    with BundleModel(om, acl=ACL) as m:
        before = device_weights(m)
        with (sim.fault("acl.mdl.execute", 507011, on_call=1),
              pytest.raises(AclError, match=r"^acl\.mdl\.execute returned 507011")):
            m.update({"fc0.bias": w0["fc0.bias"] + 1})
        st = m.stats
        assert (st["failed_updates"], st["updates"], st["version"], m.version) == (1, 0, 0, 0)
        assert all(before[k].tobytes() == v.tobytes() for k, v in device_weights(m).items())
        np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
        assert m.update({"fc0.bias": w0["fc0.bias"] + 1}) == 1
        assert (m.stats["failed_updates"], m.stats["updates"]) == (1, 1)


def test_infer_slot_whose_buffers_failed_to_build_is_given_back(make_bundle):
    """With one slot per batch size, a failed first build must not leave the slot counted.

    Later calls would wait forever."""
    om, w0 = make_bundle()
    x = np.ones((1, 8), np.float32)
    m = BundleModel(om, acl=ACL, max_concurrency=1)
    with (sim.fault("acl.rt.malloc", 207001, on_call=1),
          pytest.raises(AclError, match=r"^acl\.rt\.malloc returned 207001")):
        m.infer(x)
    out = {}
    t = threading.Thread(target=lambda: out.update(y=m.infer(x)), daemon=True)
    t.start()
    t.join(timeout=60)  # a hang guard, not a timing check: the call needs milliseconds
    assert not t.is_alive(), "infer waits forever for a slot whose build failed"
    m.close()
    np.testing.assert_allclose(out["y"], reference(x, w0), rtol=1e-5, atol=1e-5)


def test_noncontiguous_infer_input_is_read_in_logical_order(make_bundle):
    om, w0 = make_bundle()
    rng = np.random.default_rng(12)
    with BundleModel(om, acl=ACL) as m:
        x = rng.standard_normal((1, 16)).astype(np.float32)[:, ::2]  # (1, 8) strided view
        assert x.shape == (1, 8) and not x.flags.c_contiguous
        keep = x.copy()
        np.testing.assert_allclose(m.infer(x), reference(keep, w0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.infer({"x": x}), reference(keep, w0), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(x, keep)


def test_acl_error_without_detail_has_no_trailing_colon():
    e = AclError("acl.rt.malloc", 100000)
    assert str(e) == "acl.rt.malloc returned 100000 (ACL_ERROR_INVALID_PARAM)"
    assert e.detail == ""


def test_a_runtime_whose_error_message_getter_raises_does_not_mask_the_error():
    from acl_bundle._errors import check, recent_error

    class Runtime:
        def get_recent_err_msg(self):
            raise RuntimeError("the diagnostics helper itself failed")

    assert recent_error(Runtime()) == ""

    class Chatty:
        def get_recent_err_msg(self):
            return "  model 7 is not loaded\n"

    e = AclError("acl.mdl.execute", 145003, recent_error(Chatty()))
    assert e.detail == "model 7 is not loaded"
    assert str(e).endswith("(ACL_ERROR_GE_EXEC_MODEL_ID_INVALID): model 7 is not loaded")
    with pytest.raises(AclError, match=r"^acl\.mdl\.execute returned 507011 \(ACL_ERROR_RT_MODEL_EXECUTE\)$"):
        check(Runtime(), "acl.mdl.execute", 507011)


def test_tf_output_suffix_is_optional_in_variable_names(make_bundle):
    om, w0 = make_bundle()
    with BundleModel(om, acl=ACL) as m:
        new = (w0["fc0.bias"] + 1).astype(np.float32)
        m.update({"fc0.bias:0": new})  # a TF session's {var.name: value} spelling
        np.testing.assert_array_equal(device_weights(m)["fc0.bias"], new)
        with pytest.raises(ValueError, match="named twice"):
            m.update({"fc0.bias": new, "fc0.bias:0": new})
        with pytest.raises(KeyError, match="unknown variable 'fc0.bias:1'"):
            m.update({"fc0.bias:1": new})


# --------------------------------------------------------------------------- bounded staging
def test_one_variable_staging_pool_serves_single_variable_updates(make_bundle):
    om, w0 = make_bundle(sizes=(8, 32, 4))
    largest = max(v.nbytes for v in w0.values())
    rng = np.random.default_rng(5)
    x = _x(rng)
    with BundleModel(om, acl=ACL, staging_bytes=largest) as m:
        assert m.staging_bytes == largest
        # the pool (largest variable, 64-byte aligned) + the one buffer unchanged inputs share; nothing per variable
        assert m.device_bytes == -(-largest // 64) * 64 + 64
        current = dict(w0)
        for _ in range(3):
            for name, a in _new(w0, rng).items():  # every variable goes through the same pool slot
                m.update({name: a})
                current[name] = a
                np.testing.assert_allclose(m.infer(x), reference(x, current), rtol=1e-5, atol=1e-5)
        assert {k: v.tobytes() for k, v in device_weights(m).items()} == {k: v.tobytes() for k, v in current.items()}


def test_update_that_does_not_fit_the_pool_is_refused_before_any_copy(make_bundle):
    om, w0 = make_bundle(sizes=(8, 32, 4))
    largest = max(v.nbytes for v in w0.values())
    with BundleModel(om, acl=ACL, staging_bytes=largest) as m:
        before, version, h2d = device_weights(m), m.version, sim.stats()["bytes_copied"]["HOST_TO_DEVICE"]
        new = _new(w0, np.random.default_rng(6))
        need = sum(-(-a.nbytes // 64) * 64 for a in (new["fc0.weight"], new["fc1.weight"]))
        with pytest.raises(ValueError, match=rf"needs {need} bytes of staging; the pool has {largest}") as ei:
            m.update({"fc0.weight": new["fc0.weight"], "fc1.weight": new["fc1.weight"]})
        assert type(ei.value).__name__ == "StagingTooSmallError"
        with pytest.raises(ValueError, match="needs"):
            m.stage({"fc0.weight": new["fc0.weight"], "fc1.weight": new["fc1.weight"]})
        assert sim.stats()["bytes_copied"]["HOST_TO_DEVICE"] == h2d  # nothing reached the device
        assert m.version == version and m.stats["failed_updates"] == 0
        assert {k: v.tobytes() for k, v in device_weights(m).items()} == {k: v.tobytes() for k, v in before.items()}
        m.update({"fc0.weight": new["fc0.weight"]})  # one at a time fits


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_staging_bytes_is_checked(make_bundle, bad):
    om, _ = make_bundle()
    with pytest.raises(ValueError, match="staging_bytes must be an int >= 0 or None"):
        BundleModel(om, acl=ACL, staging_bytes=bad)
    assert sim.leaks() == {}
