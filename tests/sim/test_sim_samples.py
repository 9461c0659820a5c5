"""The samples run unchanged in a subprocess (simulator installed as ``acl``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["raw_pyacl_bundle.py", "acllite_style_plain.py"])
def test_sample_runs(name):
    r = subprocess.run(
        [sys.executable, str(ROOT / "samples" / name)], capture_output=True, text=True, cwd=str(ROOT), timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("OK")
