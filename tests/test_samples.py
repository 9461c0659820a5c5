"""Every sample written for the online-learning issue runs in a subprocess on the simulator and checks itself."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {
    "online_update.py": "OK: every served result matched the weights of its version",
    "checkpoint_hot_reload.py": "OK: the server followed the trainer's checkpoints and ignored the half-written one",
    "export_from_torch.py": "OK: parameters are live variables, BatchNorm statistics frozen, Dropout is the identity",
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_runs_and_passes_its_own_check(name, tmp_path):
    env = {**os.environ, "ACL_BUNDLE_BACKEND": "sim", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "samples" / name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert SAMPLES[name] in proc.stdout
    assert "FAILED" not in proc.stdout + proc.stderr
