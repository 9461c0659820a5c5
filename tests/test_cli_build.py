"""``acl-bundle build``: files written, one-line user errors with exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from acl_bundle.cli import main
from acl_bundle.sim import builder, models
from acl_bundle.sim.format import loads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mlp_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    model, weights = models.mlp((8, 16, 4), seed=7)
    p = tmp_path / "mlp.onnx"
    onnx.save(model, p)
    return p, weights


def _one_error_line(capsys: pytest.CaptureFixture[str], match: str) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("acl-bundle: error: "), err
    assert match in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_build_bundle(mlp_file, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    src, weights = mlp_file
    out = tmp_path / "b.om"
    assert main(["build", str(src), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out} ({out.stat().st_size:,} bytes): bundle model, graphs infer/init/update" in stdout
    assert f"4 variables, {sum(w.nbytes for w in weights.values()):,} bytes" in stdout
    assert f"wrote {tmp_path / 'b.manifest.json'}" in stdout
    mf = loads(out.read_bytes())
    assert [v.name for v in mf.variables] == list(weights)
    for raw, w in zip(mf.initial_values, weights.values()):
        np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(w.shape), w)
    man = json.loads((tmp_path / "b.manifest.json").read_text())
    assert [v["shape"] for v in man["variables"]] == [list(w.shape) for w in weights.values()]


def test_build_options(mlp_file, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    src, weights = mlp_file
    out = tmp_path / "sub.om"
    rc = main(["build", str(src), "-o", str(out), "--variables", "fc1.weight, fc0.bias", "--no-init",
               "--batch-sizes", "1,8,32"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "graphs infer/update" in stdout and "(no initial values)" in stdout and "batch sizes 1,8,32" in stdout
    mf = loads(out.read_bytes())
    assert [v.name for v in mf.variables] == ["fc1.weight", "fc0.bias"]
    assert mf.initial_values == [] and mf.batch_sizes == [1, 8, 32]
    # the graph computes the mlp with the remaining constants baked in
    sess = ort.InferenceSession(mf.graphs[0].onnx, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    (y,) = sess.run(None, {"x": x, "fc1.weight": weights["fc1.weight"], "fc0.bias": weights["fc0.bias"]})
    np.testing.assert_allclose(y, models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


def test_build_plain_and_default_output(mlp_file, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    src, _ = mlp_file
    assert main(["build", str(src), "--plain"]) == 0
    om = src.with_suffix(".om")
    assert loads(om.read_bytes()).kind == "plain"
    assert not builder.manifest_path(om).exists()
    assert "plain model, graphs model" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--variables", "nope"], "variable 'nope' is not an initializer; initializers: 'fc0.weight'"),
        (["--variables", "fc0.weight,,fc1.bias"], "--variables has an empty name"),
        (["--variables", "fc0.weight,fc0.weight"], "listed twice"),
        (["--batch-sizes", "1,x"], "--batch-sizes must be comma-separated positive integers, got '1,x'"),
        (["--batch-sizes", "0"], "--batch-sizes must be comma-separated positive integers"),
        (["--batch-sizes", "2,2"], "batch sizes must be distinct"),
        (["--plain", "--variables", "fc0.weight"], "--plain takes no --variables"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_user_errors(mlp_file, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
                     extra: list[str], match: str) -> None:
    src, _ = mlp_file
    assert main(["build", str(src), "-o", str(tmp_path / "x.om"), *extra]) == 2
    _one_error_line(capsys, match)
    assert not (tmp_path / "x.om").exists()


def test_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.om")]) == 2
    _one_error_line(capsys, "no such ONNX model")
    # the file type actually given, not "ONNX" for everything (issue 23)
    assert main(["build", str(tmp_path / "nosuch.pb")]) == 2
    _one_error_line(capsys, "no such TensorFlow frozen GraphDef (.pb): ")
    (tmp_path / "model.ckpt.meta").write_bytes(b"x")
    assert main(["build", str(tmp_path / "model.ckpt.meta")]) == 2
    _one_error_line(
        capsys, "is a TensorFlow MetaGraph (.meta: give the frozen .pb or the SavedModel directory instead)"
    )
    (tmp_path / "notsaved").mkdir()
    assert main(["build", str(tmp_path / "notsaved")]) == 2
    _one_error_line(capsys, "is a directory but not a SavedModel directory (no saved_model.pb in it)")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xfe garbage \x00")
    assert main(["build", str(bad), "-o", str(tmp_path / "x.om")]) == 2
    _one_error_line(capsys, "is not an ONNX model")
    assert main(["build", str(bad), "-o", str(bad)]) == 2
    _one_error_line(capsys, "would overwrite the input model")


def test_dynamic_input_without_batch_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = models.mlp()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    p = tmp_path / "dyn.onnx"
    onnx.save(model, p)
    assert main(["build", str(p)]) == 2
    # the option's name
    _one_error_line(capsys, "input 'x' has dynamic dim 0 ('N'); give --batch-sizes or fix the shape")


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    _one_error_line(capsys, "COMMAND")
    assert main(["frobnicate"]) == 2
    _one_error_line(capsys, "invalid choice: 'frobnicate'")
    assert main(["build"]) == 2
    _one_error_line(capsys, "the following arguments are required: model")


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "build" in capsys.readouterr().out
    assert main(["build", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--variables", "--no-init", "--plain", "--batch-sizes", "-o OM", "--target {sim,ascend}",
                "--soc-version SOC", "--precision-mode MODE"):
        assert opt in text
    assert "simulator (acl_bundle.sim) only" in text


def test_python_dash_m_subprocess(mlp_file, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, _ = mlp_file
    out = tmp_path / "sp.om"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-m", "acl_bundle", "build", str(src), "-o", str(out), "--batch-sizes", "1,4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and r.stderr == ""
    assert loads(out.read_bytes()).batch_sizes == [1, 4]
    r = subprocess.run(
        [sys.executable, "-m", "acl_bundle", "build", str(src), "--variables", "zz"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("acl-bundle: error: variable 'zz'")
    assert "Traceback" not in r.stderr


def test_build_dynamic_image_size_and_dims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ATC's value syntax ("224,224;448,448"); the files carry the gears the runtime reports."""
    img, _ = models.image_model()
    seq, _ = models.sequence_model()
    onnx.save(img, tmp_path / "img.onnx")
    onnx.save(seq, tmp_path / "seq.onnx")
    assert main(["build", str(tmp_path / "img.onnx"), "-o", str(tmp_path / "img.om"), "--plain",
                 "--dynamic-image-size", "4,6;8,8"]) == 0
    assert "image sizes 4,6;8,8" in capsys.readouterr().out
    mf = loads((tmp_path / "img.om").read_bytes())
    assert mf.dynamic_hw == [(4, 6), (8, 8)] and mf.graphs[0].inputs[0].shape == (1, 3, -1, -1)
    # ATC's own spelling works too, for a bundle
    assert main(["build", str(tmp_path / "seq.onnx"), "-o", str(tmp_path / "seq.om"),
                 "--dynamic_dims", "1,5,1,5;2,8,2,8"]) == 0
    assert "dims gears 1,5,1,5;2,8,2,8" in capsys.readouterr().out
    mf = loads((tmp_path / "seq.om").read_bytes())
    assert mf.kind == "bundle" and mf.dynamic_dims == [(1, 5, 1, 5), (2, 8, 2, 8)]
    man = json.loads((tmp_path / "seq.manifest.json").read_text())
    assert man["dynamic_dims"] == [[1, 5, 1, 5], [2, 8, 2, 8]]
    assert main(["build", str(tmp_path / "img.onnx"), "-o", str(tmp_path / "x.om"), "--plain",
                 "--dynamic-image-size", "4,6,1"]) == 2
    _one_error_line(capsys, "every gear needs 2 values")
    assert main(["build", str(tmp_path / "img.onnx"), "-o", str(tmp_path / "x.om"), "--plain",
                 "--dynamic-image-size", "4,6", "--batch-sizes", "1,2"]) == 2
    _one_error_line(capsys, "at most one of")
    assert not (tmp_path / "x.om").exists()


def test_build_a_bundle_of_plain_graphs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save(models.elementwise("Add"), tmp_path / "add.onnx")
    onnx.save(models.elementwise("Mul"), tmp_path / "mul.onnx")
    out = tmp_path / "two.om"
    assert main(["build", str(tmp_path / "add.onnx"), str(tmp_path / "mul.onnx"), "-o", str(out)]) == 0
    assert "bundle model, graphs model/model" in capsys.readouterr().out
    assert not (tmp_path / "two.manifest.json").exists()
    assert [g.role for g in loads(out.read_bytes()).graphs] == ["model", "model"]
    assert main(["build", str(tmp_path / "add.onnx"), str(tmp_path / "mul.onnx"), "-o", str(out), "--plain"]) == 2
    _one_error_line(capsys, "several models make a bundle of plain static graphs")
