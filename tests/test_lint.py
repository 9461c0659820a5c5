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
    r = _run([*_tool("ruff"), "check", "--no-cache", "acl_bundle", "tests", "samples", "scripts"])
    assert r.returncode == 0, f"ruff check acl_bundle tests samples scripts:\n{r.stdout}\n{r.stderr}"


def test_ruff_sees_the_projects_rules(tmp_path: Path) -> None:
    """The configuration is the one in pyproject.toml: a 121-character line and an unsorted import fail."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n\nx = '" + "a" * 120 + "'\n")
    r = _run([*_tool("ruff"), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)])
    assert r.returncode == 1 and "E501" in r.stdout and "I001" in r.stdout, r.stdout


# Modules mypy does not check yet, each with why; every other module of the package is in [tool.mypy] files.
MYPY_NOT_YET: dict[str, str] = {}


def test_mypy_checks_the_whole_package_but_the_listed_modules() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    unchecked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "acl_bundle").rglob("*.py")
                       if not any(str(p.relative_to(ROOT)) == f or p.is_relative_to(ROOT / f) for f in files)
                       and not any(str(p.relative_to(ROOT)) == m or p.is_relative_to(ROOT / m) for m in MYPY_NOT_YET))
    assert not unchecked, f"add to [tool.mypy] files in pyproject.toml: {unchecked}"


def test_mypy_is_clean() -> None:
    r = _run([*_tool("mypy"), "--no-incremental", "--cache-dir", "/dev/null"])
    assert r.returncode == 0, f"mypy (files from pyproject.toml):\n{r.stdout}\n{r.stderr}"
    assert "source files" in r.stdout, r.stdout  # it checked the configured files, not nothing


def test_mypy_reads_the_loaders_keyword_options(tmp_path: Path) -> None:
    """BundleModel(**options: Unpack[LoadOptions]): a misspelt or mistyped option is a type error, as if named."""
    code = tmp_path / "use.py"
    code.write_text("from acl_bundle import BundleModel\n"
                    "BundleModel('b.om', max_concurrency=2, history=1)\n"
                    "BundleModel.from_bytes(b'x', run_init=False)\n"
                    "BundleModel('b.om', max_concurency=2)\n"
                    "BundleModel.from_bytes(b'x', history='1')\n")
    r = _run([*_tool("mypy"), "--no-incremental", "--cache-dir", "/dev/null", "--config-file",
              str(ROOT / "pyproject.toml"), str(code)])
    errors = [line.split(":")[1] for line in r.stdout.splitlines() if ": error:" in line]
    assert errors == ["4", "5"], r.stdout
