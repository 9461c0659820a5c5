"""ruff and mypy, configured in pyproject.toml, run by the test suite (CI runs only pytest).

Both come with the ``test`` extra; without them these tests skip and say so.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    """The tool from this interpreter's environment (the venv the README's command makes), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return [found]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    r = _run([*_tool("ruff"), "check", "--no-cache", "acl_bundle", "tests"])
    assert r.returncode == 0, f"ruff check acl_bundle tests:\n{r.stdout}\n{r.stderr}"


def test_ruff_sees_the_projects_rules(tmp_path: Path) -> None:
    """The configuration is the one in pyproject.toml: a 121-character line and an unsorted import fail."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n\nx = '" + "a" * 120 + "'\n")
    r = _run([*_tool("ruff"), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)])
    assert r.returncode == 1 and "E501" in r.stdout and "I001" in r.stdout, r.stdout


def test_mypy_is_clean() -> None:
    r = _run([*_tool("mypy"), "--no-incremental", "--cache-dir", "/dev/null"])
    assert r.returncode == 0, f"mypy (files from pyproject.toml):\n{r.stdout}\n{r.stderr}"
    assert "source files" in r.stdout, r.stdout  # it checked the configured files, not nothing
