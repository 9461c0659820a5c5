"""The TensorFlow samples run in subprocesses on the simulator and check themselves against TensorFlow."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = {
    "tf_online_update.py": ["OK: every served result matched TensorFlow's output for the weights of its version"],
    "tf_checkpoint_serving.py": [
        "OK: after every applied checkpoint the bundle matched TensorFlow's own inference of it",
        "[trainer tf1] TensorFlow",
        "[trainer tf2] TensorFlow",
        "acl_bundle imported: False",
    ],
    "tf_freeze_and_build.py": ["OK: the inference-mode graph served every checkpoint as TensorFlow does"],
    "tf_device_bundle.py": [
        "OK: the simulator's fp32 bundle matched TensorFlow, its force_fp16 bundle drifted as fp16 does",
        "device bundle: ",
    ],
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_tf_sample_runs_and_passes_its_own_check(name, tmp_path):
    env = {**os.environ, "ACL_BUNDLE_BACKEND": "sim", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    for line in SAMPLES[name]:
        assert line in proc.stdout, proc.stdout
    assert "acl_bundle imported: True" not in proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr
