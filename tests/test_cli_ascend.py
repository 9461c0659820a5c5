"""``acl-bundle build --target ascend``: what it asks the native builder for, and one clear line when it cannot.

The native tool itself needs CANN (tests/native compiles it against GE's headers); here it is replaced by
a stand-in named by ACL_BUNDLE_NATIVE_TOOL that records its argv, or built for real with CMake against a
fake CANN folder to check the CMake project's CANN lookup.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import onnx
import pytest

from acl_bundle.cli import main
from acl_bundle.device import builder as device_builder
from acl_bundle.sim import builder, models
from acl_bundle.sim.format import dumps

STAND_IN = """#!{python}
import json, sys
from pathlib import Path
args = sys.argv[1:]
Path({log!r}).write_text(json.dumps(args))
mode = {mode!r}
if mode == "fail":
    print("acl_bundle_builder: error: aclgrphBundleBuildModel failed with status 4294967295 (0xffffffff): "
          "E19999: Inner Error! op MatMul not supported", file=sys.stderr)
    sys.exit(1)
out = Path(args[args.index("--output") + 1])
out.write_bytes(b"not a real om")
manifest = {{"format": "acl-bundle-manifest", "version": 1,
            "variables": [{{"name": "fc0.weight", "dtype": "float32", "shape": [8, 16]}}]}}
if mode == "bad-manifest":
    manifest["variables"] = []
out.with_suffix(".manifest.json").write_text(json.dumps(manifest))
print("wrote", out, ": bundle model, graphs infer/init/update")
"""


@pytest.fixture()
def no_cann(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ACL_BUNDLE_NATIVE_TOOL"):
        monkeypatch.delenv(var, raising=False)
    if any(Path(d).exists() for d in device_builder.CANN_DEFAULTS):
        pytest.skip("CANN is installed here")


@pytest.fixture()
def mlp_file(tmp_path: Path) -> Path:
    p = tmp_path / "mlp.onnx"
    onnx.save(models.mlp((8, 16, 4))[0], p)
    return p


def _stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str = "ok") -> Path:
    log = tmp_path / "argv.json"
    tool = tmp_path / "fake_builder"
    tool.write_text(STAND_IN.format(python=sys.executable, log=str(log), mode=mode))
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("ACL_BUNDLE_NATIVE_TOOL", str(tool))
    return log


def _one_error_line(capsys: pytest.CaptureFixture[str], match: str) -> str:
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("acl-bundle: error: ") and match in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_without_cann_one_line_says_what_is_missing(no_cann, mlp_file, tmp_path, capsys):
    out = tmp_path / "d.om"
    assert main(["build", str(mlp_file), "-o", str(out), "--target", "ascend", "--soc-version", "Ascend310P3"]) != 0
    line = _one_error_line(capsys, "--target ascend needs the CANN toolkit, which is not installed here")
    assert "ASCEND_HOME_PATH" in line and not out.exists()


def test_a_cann_variable_pointing_elsewhere_is_named(no_cann, mlp_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path))
    assert main(["build", str(mlp_file), "--target", "ascend", "--soc-version", "Ascend310P3"]) == 2
    _one_error_line(capsys, f"ASCEND_HOME_PATH={tmp_path} has no include/ge/ge_ir_build.h")


@pytest.mark.parametrize("args, match", [
    ([], "--target ascend needs --soc-version"),
    (["--soc-version", "Ascend310P3", "--plain"], "--plain and several models are --target sim only"),
    (["--soc-version", "Ascend310P3", "--precision-mode", "fp8"], "invalid choice: 'fp8'"),
])
def test_usage_mistakes(no_cann, mlp_file, capsys, args, match):
    assert main(["build", str(mlp_file), "--target", "ascend", *args]) == 2
    _one_error_line(capsys, match)


def test_device_only_options_are_refused_for_the_simulator(mlp_file, capsys):
    assert main(["build", str(mlp_file), "--soc-version", "Ascend310P3"]) == 2
    _one_error_line(capsys, "--soc-version and --input-format apply to --target ascend")


def test_tf_options_reach_the_native_builder_in_atc_syntax(tmp_path, monkeypatch, capsys):
    log = _stand_in(tmp_path, monkeypatch)
    pb = tmp_path / "frozen.pb"
    pb.write_bytes(b"\n\x05\n\x01x\x12\x00")  # a one-node GraphDef is enough: the stand-in does not read it
    out = tmp_path / "dev.om"
    code = main(["build", str(pb), "-o", str(out), "--target", "ascend", "--soc-version", "Ascend910B1",
                 "--inputs", "x:0[-1,8],mask:0", "--outputs", "y:0,z:0", "--batch-sizes", "1,4",
                 "--variables", "dense/kernel:0,dense/bias:0", "--no-init",
                 "--precision-mode", "must_keep_origin_dtype",
                 "--input-format", "ND"])
    assert code == 0, capsys.readouterr().err
    argv = json.loads(log.read_text())
    assert "--no-init" in argv
    argv.remove("--no-init")
    opts = dict(zip(argv[::2], argv[1::2]))
    assert opts == {"--model": str(pb), "--output": str(out), "--soc-version": "Ascend910B1",
                    "--framework": "tensorflow",
                    "--variables": "dense/kernel:0,dense/bias:0", "--precision-mode": "must_keep_origin_dtype",
                    "--input-shape": "x:-1,8", "--input-data-names": "x;mask", "--out-nodes": "y:0;z:0",
                    "--input-format": "ND", "--dynamic-batch-size": "1,4"}
    assert "graphs infer/init/update" in capsys.readouterr().out


def test_onnx_defaults_leave_the_choice_to_the_native_builder(tmp_path, monkeypatch, mlp_file, capsys):
    log = _stand_in(tmp_path, monkeypatch)
    assert main(["build", str(mlp_file), "--target", "ascend", "--soc-version", "Ascend310P3",
                 "--dynamic-image-size", "224,224;448,448"]) == 0
    argv = json.loads(log.read_text())
    assert dict(zip(argv[::2], argv[1::2])) == {"--model": str(mlp_file), "--output": str(mlp_file.with_suffix(".om")),
                                                "--soc-version": "Ascend310P3", "--framework": "onnx",
                                                "--dynamic-image-size": "224,224;448,448"}


def test_a_ge_failure_is_one_line_with_ges_status_and_message(tmp_path, monkeypatch, mlp_file, capsys):
    _stand_in(tmp_path, monkeypatch, mode="fail")
    assert main(["build", str(mlp_file), "--target", "ascend", "--soc-version", "Ascend310P3"]) == 1
    _one_error_line(capsys, "aclgrphBundleBuildModel failed with status 4294967295 (0xffffffff): E19999")


def test_a_manifest_the_wrapper_cannot_read_is_an_error(tmp_path, monkeypatch, mlp_file, capsys):
    _stand_in(tmp_path, monkeypatch, mode="bad-manifest")
    assert main(["build", str(mlp_file), "--target", "ascend", "--soc-version", "Ascend310P3"]) == 2
    _one_error_line(capsys, '"variables" must be a non-empty list')


def test_target_sim_output_is_unchanged(mlp_file, tmp_path, capsys):
    a, b = tmp_path / "a.om", tmp_path / "b.om"
    assert main(["build", str(mlp_file), "-o", str(a)]) == 0
    default_out = capsys.readouterr().out
    assert main(["build", str(mlp_file), "-o", str(b), "--target", "sim"]) == 0
    assert capsys.readouterr().out == default_out.replace(str(tmp_path / "a."), str(tmp_path / "b."))
    assert a.read_bytes() == b.read_bytes() == dumps(builder.build_bundle(mlp_file))


@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake on PATH")
def test_cmake_project_finds_cann_from_ascend_home_path_and_names_what_is_missing(tmp_path):
    cann = tmp_path / "cann"
    for header in ("include/ge/ge_ir_build.h", "include/parser/onnx_parser.h"):
        (cann / header).parent.mkdir(parents=True, exist_ok=True)
        (cann / header).write_text("")
    env = {**os.environ, "ASCEND_HOME_PATH": str(cann), "ACL_BUNDLE_CACHE": str(tmp_path / "cache")}
    env.pop("ACL_BUNDLE_NATIVE_TOOL", None)
    with pytest.raises(device_builder.DeviceBuildError) as e:
        device_builder.native_tool(env)
    msg = str(e.value)
    assert f"CANN: {cann}" not in msg  # status lines are not errors
    assert f"libgraph.so not found under {cann}/lib64" in msg and "cmake exited 1" in msg
    builds = list((tmp_path / "cache").iterdir())
    assert len(builds) == 1 and builds[0].name.startswith("bundle_builder-")
