"""Dynamic image sizes and dynamic dims through BundleModel.infer, checked against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from acl_bundle import BundleModel
from acl_bundle.sim import acl as ACL
from acl_bundle.sim import builder, models

HW = [(4, 6), (8, 8)]
DIMS = [(1, 5, 4, 1, 5), (2, 8, 4, 2, 8)]  # all input dims of each gear: seq [B, T, 4], mask [B, T]


def _bundle(tmp_path, model, **kw):
    om, _ = builder.save(builder.build_bundle(model, **kw), tmp_path / "dyn.om")
    return om


def test_dynamic_image_size_picks_the_gear_from_the_input_shape(tmp_path):
    model, w = models.image_model(seed=3)
    om = _bundle(tmp_path, model, dynamic_image_size=HW)
    with BundleModel(om, acl=ACL) as m:
        assert m.inputs[0].shape == (1, 3, -1, -1) and m.batch_sizes == ()
        assert [t.shape for t in m.outputs] == [(1, 3, -1, -1), (1, 3)]
        before = None
        for h, wd in (HW[1], HW[0], HW[1], HW[0]):
            x = np.random.default_rng(h * wd).standard_normal((1, 3, h, wd)).astype(np.float32)
            scaled, pooled = m.infer(x)
            ref = models.image_model_reference(x, w)
            assert scaled.shape == (1, 3, h, wd)
            np.testing.assert_allclose(scaled, ref["scaled"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(pooled, ref["pooled"], rtol=1e-5, atol=1e-5)
            if before is None and (h, wd) == HW[0]:
                before = m.device_bytes
        for _ in range(3):  # steady state: no allocation per call
            m.infer(np.zeros((1, 3, 4, 6), np.float32))
        assert m.device_bytes == before
        with pytest.raises(ValueError, match=r"match none of the model's image sizes.*\[4, 6\]"):
            m.infer(np.zeros((1, 3, 5, 5), np.float32))
        with pytest.raises(ValueError, match=r"must have shape \(1, 3, -1, -1\)"):
            m.infer(np.zeros((1, 4, 4, 6), np.float32))


def test_dynamic_dims_with_updates(tmp_path):
    model, w = models.sequence_model(seed=5)
    om = _bundle(tmp_path, model, dynamic_dims=[(1, 5, 1, 5), (2, 8, 2, 8)])
    rng = np.random.default_rng(0)
    with BundleModel(om, acl=ACL) as m:
        assert [t.shape for t in m.inputs] == [(-1, -1, 4), (-1, -1)]
        names = {v.name for v in m.variables}
        new = {k: ((v * 1.5).astype(v.dtype) if k in names else v) for k, v in w.items()}
        for weights in (w, new):
            if weights is new:
                m.update({k: v for k, v in new.items() if k in names})
            for b, t in ((2, 8), (1, 5), (2, 8)):
                seq = rng.standard_normal((b, t, 4)).astype(np.float32)
                mask = (rng.uniform(size=(b, t)) > 0.3).astype(np.float32)
                proj, summed = m.infer(seq, mask)
                ref = models.sequence_model_reference(seq, mask, weights)
                np.testing.assert_allclose(proj, ref["proj"], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(summed, ref["summed"], rtol=1e-5, atol=1e-4)
        with pytest.raises(ValueError, match="match none of the model's dims gears"):
            m.infer(np.zeros((2, 5, 4), np.float32), np.zeros((2, 5), np.float32))
