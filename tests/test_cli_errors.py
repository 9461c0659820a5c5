"""The command line as a user meets it: one-line errors, no tracebacks or temp names, quiet pipes, warnings shown."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from acl_bundle import sim
from acl_bundle.cli import main
from acl_bundle.sim import builder, models

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _error_line(capsys, pattern: str) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.match(r"^acl-bundle: error: " + pattern, lines[0]), lines[0]
    assert ".tmp" not in err
    return lines[0]


@pytest.fixture
def onnx_file(tmp_path):
    model, _ = models.mlp((8, 16, 4))
    p = tmp_path / "mlp.onnx"
    onnx.save(model, p)
    return p


def test_version_matches_the_package_metadata(capsys):
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"acl-bundle {version}"


def test_inspect_into_a_closed_pipe_exits_quietly(make_bundle):
    om, _ = make_bundle()
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader (head) is gone before we write
    try:
        p = subprocess.run([sys.executable, "-m", "acl_bundle", "inspect", str(om), "--sim"], stdout=w_fd,
                           stderr=subprocess.PIPE, env=ENV, timeout=120)
    finally:
        os.close(w_fd)
    assert p.stderr == b"", p.stderr.decode()
    assert p.returncode == 141


def test_build_into_a_missing_directory_names_it(onnx_file, tmp_path, capsys):
    assert main(["build", str(onnx_file), "-o", str(tmp_path / "nope" / "x.om")]) == 2
    _error_line(capsys, re.escape(f"output directory {tmp_path / 'nope'} does not exist"))


def test_build_write_errors_name_the_output_not_the_temp_file(onnx_file, tmp_path, capsys, monkeypatch):
    import acl_bundle._files as files

    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert main(["build", str(onnx_file), "-o", str(tmp_path / "x.om")]) == 2
    line = _error_line(capsys, r"No space left on device: ")  # the OS's reason and the file, no "[Errno 28]"
    assert line.endswith(f"{tmp_path / 'x.om'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


def test_build_from_onnx_with_missing_external_data(tmp_path, capsys):
    model, _ = models.mlp((8, 16, 4))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    assert main(["build", str(tmp_path / "ext.onnx"), "-o", str(tmp_path / "x.om")]) == 2
    _error_line(capsys, re.escape(f"cannot build from {tmp_path / 'ext.onnx'}: "))


@pytest.mark.parametrize("sizes,pattern", [
    (",".join(str(i) for i in range(1, 102)), r"--batch-sizes lists 101 batch sizes; ATC allows at most 100"),
    ("1,100000000000", r"--batch-sizes 100000000000 is too large: at most 65536"),
])
def test_batch_sizes_bounds(onnx_file, tmp_path, capsys, sizes, pattern):
    assert main(["build", str(onnx_file), "-o", str(tmp_path / "x.om"), "--batch-sizes", sizes]) == 2
    _error_line(capsys, pattern)
    assert not (tmp_path / "x.om").exists()


def test_batch_sizes_whose_buffers_exceed_the_simulators_memory(tmp_path, capsys):
    model, _ = models.mlp((32768, 4, 32768))  # 128 KiB in and out per sample
    onnx.save(model, tmp_path / "wide.onnx")
    assert main(["build", str(tmp_path / "wide.onnx"), "-o", str(tmp_path / "w.om"), "--batch-sizes", "1,65536"]) == 2
    _error_line(capsys, r"--batch-sizes: batch 65536 needs 17,179,869,184 bytes of input and output buffers per call, "
                        r"more than the simulator's 8,589,934,592 bytes")


def test_a_crafted_om_declaring_huge_variables_is_an_allocation_error(tmp_path, capsys):
    import dataclasses

    from acl_bundle.sim import format as fmt

    model, _ = models.mlp((8, 16, 4))
    mf = builder.build_bundle(model, init=False)
    mf.variables[0] = dataclasses.replace(mf.variables[0], shape=(10**6, 10**6))
    p = tmp_path / "huge.om"
    p.write_bytes(fmt.dumps(mf))
    assert main(["inspect", str(p), "--sim"]) == 2
    _error_line(capsys, r"cannot load .* \(simulator\): acl.mdl.bundle_load_from_file returned 207001 "
                        r"\(ACL_ERROR_RT_MEMORY_ALLOCATION\)")


def test_manifest_path_is_read_as_given(make_bundle, tmp_path, capsys):
    om, w = make_bundle()
    man = json.loads(builder.manifest_path(om).read_text())
    builder.manifest_path(om).unlink()
    other = tmp_path / "shapes.txt"  # not .json, not beside the bundle
    other.write_text(json.dumps(man))
    assert main(["inspect", str(om), "--sim", "--json", "--manifest", str(other)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"] == str(other)
    assert [v["shape"] for v in info["variables"]] == [list(a.shape) for a in w.values()]


def test_inspect_allocates_no_device_buffers(make_bundle, capsys):
    om, _ = make_bundle()
    before = sim.stats()["mallocs"]
    assert main(["inspect", str(om), "--sim"]) == 0
    assert sim.stats()["mallocs"] == before
    from acl_bundle import BundleModel

    with BundleModel(om, run_init=False):
        assert sim.stats()["mallocs"] > before  # what inspect used to do: staging per variable


def test_inspect_picks_the_backend_by_the_file(make_bundle, tmp_path, capsys, monkeypatch):
    om, _ = make_bundle()
    monkeypatch.setitem(sys.modules, "acl", None)  # no pyACL on this host
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    assert main(["inspect", str(om)]) == 0  # a simulator bundle: the simulator, and it says so
    assert "loaded on the simulator" in capsys.readouterr().out
    device_om = tmp_path / "device.om"
    device_om.write_bytes(b"IMOD" + bytes(200))  # anything that is not a simulator file
    assert main(["inspect", str(device_om)]) == 2  # never silently on the simulator
    line = _error_line(capsys, re.escape(str(device_om)) + r" is not a simulator bundle, so it needs pyACL "
                               r"\('import acl', from the Ascend CANN toolkit\), which was not found "
                               r"\(ModuleNotFoundError: ")
    assert "pass --sim" in line and "acl=acl_bundle.sim.acl" not in line  # phrased for the command line
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "pyacl")
    assert main(["inspect", str(om)]) == 2
    _error_line(capsys, r"ACL_BUNDLE_BACKEND=pyacl but 'import acl' failed .*; .* is a simulator bundle: unset "
                        r"ACL_BUNDLE_BACKEND to run it on the simulator")


def test_library_warnings_reach_cli_users(make_bundle, capsys, monkeypatch):
    import acl_bundle.cli as cli

    om, _ = make_bundle()
    import acl_bundle.cli.inspect as inspect_cmd

    real = inspect_cmd.describe

    def noisy(*a, **k):
        logging.getLogger("acl_bundle").warning("something the user should know")
        return real(*a, **k)

    monkeypatch.setattr(inspect_cmd, "describe", noisy)
    assert main(["inspect", str(om), "--sim"]) == 0
    err = capsys.readouterr().err
    assert err == "acl-bundle: warning: something the user should know\n"
    assert not any(isinstance(h, cli._Lines) for h in logging.getLogger("acl_bundle").handlers)


def test_unexpected_errors_are_one_line_without_a_traceback(make_bundle, capsys, monkeypatch):

    om, _ = make_bundle()
    import acl_bundle.cli.inspect as inspect_cmd

    monkeypatch.setattr(inspect_cmd, "describe", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert main(["inspect", str(om), "--sim"]) == 1
    err = capsys.readouterr().err
    assert err == "acl-bundle: error: unexpected RuntimeError: boom (set ACL_BUNDLE_DEBUG=1 for the traceback)\n"


def test_demo_plot_into_a_directory(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    d = tmp_path / "plots"
    d.mkdir()
    assert main(["demo", "--ticks", "20", "--fast", "--plot", str(d)]) == 0
    png = d / "acl-bundle-demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in capsys.readouterr().out
    assert sorted(p.name for p in d.iterdir()) == ["acl-bundle-demo.png"]


def test_demo_plot_into_a_missing_directory_fails_before_running(tmp_path, capsys):
    assert main(["demo", "--ticks", "20", "--fast", "--plot", str(tmp_path / "no" / "x.png")]) == 2
    _error_line(capsys, re.escape(f"--plot {tmp_path / 'no' / 'x.png'}: directory {tmp_path / 'no'} does not exist"))


def test_bench_plot_of_scenario_6_alone(capsys):
    assert main(["bench", "--only", "6", "--plot", "x.png"]) == 2
    _error_line(capsys, r"--plot draws the ratio goals; scenario 6 only counts calls")


def test_no_hint_points_at_pypi():
    """acl-bundle is not published: no message in the package says `pip install acl-bundle`."""
    hits = []
    for p in (ROOT / "acl_bundle").rglob("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"pip install ['\"]?acl-bundle", line):
                hits.append(f"{p.relative_to(ROOT)}:{i}")
    assert hits == []
    assert not re.search(r"pip install ['\"]?acl-bundle", (ROOT / "README.md").read_text())
