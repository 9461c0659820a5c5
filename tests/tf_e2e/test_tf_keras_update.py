"""docs/tensorflow.md's TF2 / Keras 3 key→value update, run as written (issue 23): ``v.path`` names, and every
variable the bundle has, BatchNorm moving statistics included, against TensorFlow's own inference output."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from acl_bundle import BundleModel  # noqa: E402
from acl_bundle.sim import builder, tf_builder  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "tensorflow.md"


def _block() -> str:
    text = DOC.read_text()
    marker = "tests/tf_e2e/test_tf_keras_update.py runs this block -->"
    rest = text[text.index(marker) :]
    return re.search(r"```python\n(.*?)```", rest, re.S).group(1)


def test_the_documented_keras_update_matches_tensorflow_with_batchnorm_statistics(tmp_path):
    inp = keras.Input((8,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(16)(inp))
    model = keras.Model(inp, keras.layers.Dense(4)(h))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    model.export(str(tmp_path / "sm"), verbose=False)
    om, _ = builder.save(tf_builder.build_bundle_from_tf(tmp_path / "sm", batch_sizes=[1, 8]), tmp_path / "k.om")
    model.fit(x * 3 + 1, rng.standard_normal((64, 4)).astype(np.float32), epochs=3, verbose=0)  # moves the BN stats
    want = model(x[:8], training=False).numpy()
    with BundleModel(om) as m:
        exec(_block(), {"m": m, "model": model})
        np.testing.assert_allclose(m.infer(x[:8]), want, rtol=1e-5, atol=1e-5)
        trainable_only = {f"{v.path}:0": v.numpy() for v in model.trainable_variables}
        with BundleModel(om) as stale:  # what pushing only trainable variables serves
            stale.update(trainable_only)
            assert np.abs(stale.infer(x[:8]) - want).max() > 1e-3


def test_a_tf_build_prints_no_tensorflow_start_up_noise(tmp_path):
    """TensorFlow's C++ start-up lines (absl's pre-init warning, oneDNN, CPU features) came out twice per build."""
    import os
    import subprocess
    import sys

    inp = keras.Input((8,))
    keras.Model(inp, keras.layers.Dense(4)(inp)).export(str(tmp_path / "sm"), verbose=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    r = subprocess.run(
        [sys.executable, "-m", "acl_bundle", "build", str(tmp_path / "sm"), "-o", str(tmp_path / "m.om"),
         "--batch-sizes", "1,4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and r.stderr == "", r.stderr
