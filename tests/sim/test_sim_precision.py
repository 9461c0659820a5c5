"""GE precision modes on the simulator: each mode's outputs are what numpy's fp16 arithmetic predicts.

References are plain numpy, written from ATC's --precision_mode description (acl_bundle/sim/_precision.py),
sharing no code with the graph rewrite: ``h`` rounds to float16, fp16 + fp16 is numpy's float16 addition.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import helpers
from acl_bundle import BundleModel
from acl_bundle.sim import builder, models
from acl_bundle.sim import format as F
from acl_bundle.sim._precision import GE_DEFAULT, MODES

SIZES = (8, 16, 4)


def h(a):
    return np.asarray(a).astype(np.float16)


def f(a):
    return np.asarray(a).astype(np.float32)


def force_fp16_reference(x, w):
    """Every tensor float16; matrix products of fp16 values accumulated in float32 (the Cube unit), then rounded."""
    a = h(x)
    n = len(w) // 2
    for i in range(n):
        a = h(f(a) @ f(h(w[f"fc{i}.weight"])))
        a = a + h(w[f"fc{i}.bias"])  # float16 + float16 in numpy: the correctly rounded fp16 sum
        if i < n - 1:
            a = np.maximum(a, np.float16(0))
    return f(a)


def matrix_fp16_reference(x, w, round_output: bool):
    """Matrix ops take fp16-rounded inputs (and give fp16-rounded results if ``round_output``); vector ops fp32."""
    a = f(x)
    n = len(w) // 2
    for i in range(n):
        a = f(h(a)) @ f(h(w[f"fc{i}.weight"]))
        if round_output:
            a = f(h(a))
        a = a + f(w[f"fc{i}.bias"])
        if i < n - 1:
            a = np.maximum(a, 0)
    return a


def _infer(tmp_path: Path, mode, x, weights=None, update=None):
    model, w0 = models.mlp(SIZES, seed=1, batch=3)
    om, _ = builder.save(builder.build_bundle(model, precision_mode=mode), tmp_path / f"{mode}.om")
    with BundleModel(om) as m:
        if update:
            m.update(update)
        return m.infer(x), w0


@pytest.fixture
def x():
    return np.random.default_rng(2).standard_normal((3, SIZES[0])).astype(np.float32) * 3


def _within_one_fp16_ulp(got, want):
    return np.all(np.abs(got - want) <= np.spacing(np.abs(h(want))).astype(np.float32))


def test_force_fp16_outputs_differ_from_fp32_by_what_numpy_fp16_predicts(tmp_path, x):
    y32, w = _infer(tmp_path, None, x)
    y16, _ = _infer(tmp_path, "force_fp16", x)
    pred = force_fp16_reference(x, w)
    np.testing.assert_allclose(y32, helpers.reference(x, w), rtol=1e-6, atol=1e-6)  # no mode: exact float32
    assert _within_one_fp16_ulp(y16, pred), np.abs(y16 - pred).max()
    drift, predicted = y16 - y32, pred - helpers.reference(x, w)
    assert np.abs(drift).max() > 1e-4, "force_fp16 must not compute in float32"
    np.testing.assert_allclose(drift, predicted, atol=float(np.spacing(h(np.abs(pred).max()))))


def test_force_fp16_rounds_updated_variables_too(tmp_path, x):
    rng = np.random.default_rng(7)
    _, w0 = models.mlp(SIZES, seed=1)
    new = {k: (rng.standard_normal(v.shape) * 0.7).astype(np.float32) for k, v in w0.items()}
    y16, _ = _infer(tmp_path, "force_fp16", x, update=new)
    assert _within_one_fp16_ulp(y16, force_fp16_reference(x, new))
    assert not np.allclose(y16, helpers.reference(x, new), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["allow_fp32_to_fp16", "allow_mix_precision", "allow_mix_precision_fp16"])
def test_matrix_ops_in_fp16_vector_ops_in_fp32(tmp_path, x, mode):
    y, w = _infer(tmp_path, mode, x)
    np.testing.assert_allclose(y, matrix_fp16_reference(x, w, round_output=True), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["force_fp32", "cube_fp16in_fp32out"])
def test_cube_fp16_in_fp32_out(tmp_path, x, mode):
    y, w = _infer(tmp_path, mode, x)
    np.testing.assert_allclose(y, matrix_fp16_reference(x, w, round_output=False), rtol=1e-6, atol=1e-6)
    assert not np.allclose(y, helpers.reference(x, w), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["must_keep_origin_dtype", "allow_fp32_to_bf16"])
def test_origin_dtype_modes_compute_in_float32(tmp_path, x, mode):
    y, w = _infer(tmp_path, mode, x)
    np.testing.assert_array_equal(y, _infer(tmp_path, None, x)[0])


def test_mix_precision_bf16_rounds_matrix_ops_to_bfloat16(tmp_path, x):
    y, w = _infer(tmp_path, "allow_mix_precision_bf16", x)

    def bf16(a):  # round to nearest even on the top 16 bits of the float32 pattern
        u = f(a).view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).view(np.float32)

    a = f(x)
    for i in range(2):
        a = bf16(bf16(a) @ bf16(w[f"fc{i}.weight"])) + w[f"fc{i}.bias"]
        if i == 0:
            a = np.maximum(a, 0)
    np.testing.assert_allclose(y, a, rtol=1e-6, atol=1e-6)


def test_mode_is_recorded_in_the_file_and_manifest(tmp_path):
    model, _ = models.mlp(SIZES)
    om, man = builder.save(builder.build_bundle(model, precision_mode="force_fp16"), tmp_path / "m.om")
    data = Path(om).read_bytes()
    assert struct.unpack_from("<8sHH", data)[1:] == (1, F.PRECISION_MINOR)
    assert F.loads(data).precision_mode == "force_fp16"
    assert json.loads(Path(man).read_text())["precision_mode"] == "force_fp16"


def test_a_file_without_mode_is_written_as_before(tmp_path):
    model, _ = models.mlp(SIZES)
    om, man = builder.save(builder.build_bundle(model), tmp_path / "m.om")
    data = Path(om).read_bytes()
    assert struct.unpack_from("<8sHH", data)[1:] == (1, 1) and b"precision_mode" not in data
    assert "precision_mode" not in json.loads(Path(man).read_text())


def test_unknown_mode_is_refused_naming_geS_modes():
    model, _ = models.mlp(SIZES)
    with pytest.raises(ValueError, match="not one of GE's: force_fp16, force_fp32"):
        builder.build_bundle(model, precision_mode="fp16")


def test_a_file_with_a_bogus_mode_does_not_load(tmp_path):
    model, _ = models.mlp(SIZES)
    mf = builder.build_bundle(model, precision_mode="force_fp16")
    mf.precision_mode = "bogus"
    path = tmp_path / "bad.om"
    path.write_bytes(F.dumps(mf))
    bogus = "unknown precision_mode 'bogus'"
    with pytest.raises(Exception, match=f"{F.ERR_CORRUPT}.*{bogus}|{bogus}.*{F.ERR_CORRUPT}"):
        BundleModel(path)


def test_ge_default_is_force_fp16_and_every_mode_is_ges():
    assert GE_DEFAULT == "force_fp16"
    assert set(MODES) == {"force_fp16", "force_fp32", "cube_fp16in_fp32out", "allow_mix_precision",
                          "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision_fp16",
                          "allow_mix_precision_bf16", "allow_fp32_to_bf16"}
