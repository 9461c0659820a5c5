"""The wrapper on a real NPU: model, update, infer, context, close and threads (``pytest -m device``).

Bundles come from the native builder (see conftest.py).  References: numpy float32 (tests/helpers.py) for
the bundle built with ``must_keep_origin_dtype``; for GE's default precision (force_fp16) the simulator's
emulation of it, so a run here also measures how close the simulator's fp16 is to the device's (the
figures are recorded as junit properties: run with ``--junitxml``).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import helpers
from acl_bundle import BundleModel, ModelClosedError, sim
from acl_bundle.sim import builder, models

pytestmark = pytest.mark.device
SIZES = (8, 16, 4)


def _open(device, path, **kw):
    return BundleModel(path, acl=device.acl, device_id=device.device_id, **kw)


def _x(n=1, seed=0):
    return np.random.default_rng(seed).standard_normal((n, SIZES[0])).astype(np.float32)


def _new_weights(seed):
    _, w = models.mlp(SIZES, seed=seed)
    return w


def test_manifest_is_the_simulator_builders(device_bundles):
    dev = builder.load_manifest(device_bundles["fp32"])
    sim = builder.manifest(builder.build_bundle(str(device_bundles["onnx"])))
    assert [(v["name"], v["dtype"], v["shape"]) for v in dev["variables"]] == \
           [(v["name"], v["dtype"], v["shape"]) for v in sim["variables"]]
    assert dev["graphs"] == ["infer", "init", "update"] and dev["target"] == "ascend"
    assert [v["sha256"] for v in dev["variables"]] == [v["sha256"] for v in sim["variables"]]


def test_fp32_bundle_infers_what_numpy_computes(device, device_bundles):
    x = _x(seed=1)
    with _open(device, device_bundles["fp32"]) as m:
        assert [v.name for v in m.variables] == list(device_bundles["weights"])
        np.testing.assert_allclose(m.infer(x), helpers.reference(x, device_bundles["weights"]), rtol=1e-3, atol=1e-4)


def test_default_precision_is_fp16_as_the_simulator_emulates_it(device, device_bundles, record_property):
    x = _x(seed=2)
    sim_om, _ = builder.save(builder.build_bundle(str(device_bundles["onnx"]), precision_mode="force_fp16"),
                             device_bundles["default"].with_name("sim_fp16.om"))
    with BundleModel(sim_om, acl=sim.acl) as s:
        y_sim16 = s.infer(x)
    with _open(device, device_bundles["default"]) as m:
        y_dev = m.infer(x)
    ref32 = helpers.reference(x, device_bundles["weights"])
    ulp = np.spacing(np.abs(ref32).astype(np.float16)).astype(np.float32)
    record_property("max_abs_device_vs_sim_fp16", float(np.abs(y_dev - y_sim16).max()))
    record_property("max_abs_device_vs_fp32", float(np.abs(y_dev - ref32).max()))
    record_property("max_abs_sim_fp16_vs_fp32", float(np.abs(y_sim16 - ref32).max()))
    assert np.all(np.abs(y_dev - y_sim16) <= 4 * ulp + 1e-6), (y_dev, y_sim16)


def test_update_by_name_and_by_index_changes_only_those(device, device_bundles):
    w0 = dict(device_bundles["weights"])
    new = _new_weights(11)
    x = _x(seed=3)
    with _open(device, device_bundles["fp32"]) as m:
        m.update({"fc0.weight": new["fc0.weight"]})
        w0["fc0.weight"] = new["fc0.weight"]
        np.testing.assert_allclose(m.infer(x), helpers.reference(x, w0), rtol=1e-3, atol=1e-4)
        index = list(w0).index("fc1.bias")
        m.update({index: new["fc1.bias"]})
        w0["fc1.bias"] = new["fc1.bias"]
        np.testing.assert_allclose(m.infer(x), helpers.reference(x, w0), rtol=1e-3, atol=1e-4)


def test_dynamic_batch_bundle(device, device_bundles):
    w = device_bundles["weights"]
    with _open(device, device_bundles["batch"]) as m:
        assert m.batch_sizes == (1, 4, 8)
        for n in (1, 3, 4, 8):  # 3 runs padded on batch 4
            x = _x(n, seed=n)
            y = m.infer(x)
            assert y.shape == (n, SIZES[-1])
            np.testing.assert_allclose(y, helpers.reference(x, w), rtol=2e-2, atol=2e-2)  # GE default: fp16


def test_callers_context_is_left_as_found(device, device_bundles):
    acl = device.acl
    with _open(device, device_bundles["fp32"]) as m:
        before, ret = acl.rt.get_context()
        m.infer(_x())
        m.update({"fc0.bias": np.zeros(SIZES[1], np.float32)})
        after, ret2 = acl.rt.get_context()
        assert (after, ret2) == (before, ret)


def test_close_is_idempotent_and_use_after_close_is_an_error(device, device_bundles):
    m = _open(device, device_bundles["fp32"])
    m.infer(_x())
    m.close()
    m.close()
    with pytest.raises(ModelClosedError):
        m.infer(_x())


def test_infers_during_updates_see_one_weight_set_or_the_other(device, device_bundles):
    a, b = device_bundles["weights"], _new_weights(21)
    x = _x(seed=5)
    ya, yb = helpers.reference(x, a), helpers.reference(x, b)
    bad: list[str] = []
    with _open(device, device_bundles["fp32"]) as m:
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                y = m.infer(x)
                if not (np.allclose(y, ya, rtol=1e-3, atol=1e-4) or np.allclose(y, yb, rtol=1e-3, atol=1e-4)):
                    bad.append(repr(y))

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(40):
                m.update(b if i % 2 == 0 else a)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    assert not bad, bad[:3]
