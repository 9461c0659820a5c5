"""The native bundle builder (native/bundle_builder/) against the GE and metadef headers.

Needs checkouts of github.com/hicann/ge and github.com/hicann/metadef named by ``GE_SOURCE_DIR`` and
``METADEF_SOURCE_DIR`` and a C++17 ``g++``; skipped otherwise, saying which is missing.  Linking and running
the builder needs CANN, so here every source file is compiled ``-fsyntax-only`` against the headers; the
parts that call no CANN library (options, the model files' constant order, SHA-256, the manifest text) are
linked into ``test/pure_parts.cpp`` and run against Python's onnx, TensorFlow, hashlib and the manifest
reader; and the whole tool is linked with ``test/fake_ge.cpp`` (the GE symbols it uses, mimicking GE's ONNX
parser naming and recording every call) and run end to end, through ``acl-bundle build --target ascend``
too.  The commits last checked are named in docs/device-builder.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from acl_bundle.sim import builder, models

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "native" / "bundle_builder" / "src"
GE_CALLS = ("aclgrphParseONNX", "aclgrphParseTensorFlow", "aclgrphConvertToWeightRefreshableGraphs",
            "aclgrphBundleBuildModel", "aclgrphBundleSaveModel")


def _include_flags() -> list[str]:
    ge, metadef = os.environ.get("GE_SOURCE_DIR"), os.environ.get("METADEF_SOURCE_DIR")
    missing = [name for name, v in (("GE_SOURCE_DIR", ge), ("METADEF_SOURCE_DIR", metadef)) if not v]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not set: point them at checkouts of hicann/ge and hicann/metadef "
                    "to compile the native builder against GE's headers")
    assert ge and metadef
    if not (Path(ge) / "inc/external/ge/ge_ir_build.h").is_file():
        pytest.skip(f"GE_SOURCE_DIR={ge} has no inc/external/ge/ge_ir_build.h (not a hicann/ge checkout)")
    if not (Path(metadef) / "inc/external/graph/types.h").is_file():
        pytest.skip(f"METADEF_SOURCE_DIR={metadef} has no inc/external/graph/types.h (not a hicann/metadef checkout)")
    if shutil.which("g++") is None:
        pytest.skip("no g++ on PATH")
    g, m = Path(ge), Path(metadef)
    # where CANN installs these headers, all under include/ (hicann/ge cmake/package.cmake:146-172, :254-262)
    return [f"-I{p}" for p in (g / "inc/external", g / "inc/parser/external", g / "inc/graph_metadef/external",
                               g / "inc/graph_metadef", m / "inc/external")]


@pytest.fixture(scope="module")
def flags() -> list[str]:
    return ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-D_GLIBCXX_USE_CXX11_ABI=0", *_include_flags()]


@pytest.fixture(scope="module")
def pure_parts(flags: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("native") / "pure_parts"
    parts = ("options.cpp", "model_order.cpp", "sha256.cpp", "manifest.cpp")
    sources = [ROOT / "native/bundle_builder/test/pure_parts.cpp"] + [SRC / f for f in parts]
    r = subprocess.run(["g++", *flags, "-O1", *map(str, sources), "-o", str(exe)],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _run(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], check=False, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("source", sorted(p.name for p in SRC.glob("*.cpp")))
def test_every_source_compiles_against_ge_headers(flags: list[str], source: str) -> None:
    r = subprocess.run(["g++", *flags, "-I", str(SRC), "-fsyntax-only", str(SRC / source)],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]


def test_main_calls_the_five_ge_functions_and_finalizes() -> None:
    text = (SRC / "main.cpp").read_text()
    for call in GE_CALLS:
        assert f"ge::{call}(" in text, call
    assert "ge::aclgrphBuildFinalize()" in text


def test_onnx_initializer_order_is_the_files(pure_parts: Path, tmp_path: Path) -> None:
    # names deliberately out of sorted order, one int64 initializer, which the default rule skips
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "z.weight")
    b = numpy_helper.from_array(np.ones(3, np.float16), "a.bias")
    shape = numpy_helper.from_array(np.array([1, 3], np.int64), "m.shape")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "z.weight"], ["h"]),
         helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16),
         helper.make_node("Add", ["h16", "a.bias"], ["s"]), helper.make_node("Reshape", ["s", "m.shape"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 3])], [w, b, shape])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g), str(path))
    r = _run(pure_parts, "onnx-order", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    got = [tuple(line.split("\t")) for line in r.stdout.splitlines()]
    assert got == [("z.weight", "1"), ("a.bias", "10"), ("m.shape", "7")]
    # the simulator builder's default variables, in its order, are the float ones of this list
    mf = builder.build_bundle(str(path))
    assert [v.name for v in mf.variables] == [n for n, t in got if t in ("1", "10", "11")]


def test_onnx_order_of_the_project_models(pure_parts: Path, tmp_path: Path) -> None:
    import onnx

    model, weights = models.mlp((8, 16, 16, 4))
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    r = _run(pure_parts, "onnx-order", str(path))
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == list(weights)


def test_truncated_model_is_an_error_not_a_crash(pure_parts: Path, tmp_path: Path) -> None:
    model, _ = models.mlp((8, 16, 4))
    data = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 40])
    r = _run(pure_parts, "onnx-order", str(path))
    assert r.returncode == 1 and r.stdout.startswith("error: ") and "past the end" in r.stdout


def test_graphdef_node_order_is_the_files(pure_parts: Path, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        k = tf.constant(np.ones((2, 3), np.float32), name="dense/kernel")
        tf.identity(tf.matmul(x, tf.identity(k, name="dense/kernel/read")), name="y")
    path = tmp_path / "g.pb"
    path.write_bytes(g.as_graph_def().SerializeToString())
    r = _run(pure_parts, "graphdef-order", str(path))
    want = [(n.name, n.op) for n in g.as_graph_def().node]
    assert [tuple(line.split("\t")) for line in r.stdout.splitlines()] == want


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000])
def test_sha256_matches_hashlib(pure_parts: Path, tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert _run(pure_parts, "sha256", str(path)).stdout.strip() == hashlib.sha256(data).hexdigest()


def test_manifest_is_the_simulator_schema(pure_parts: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"x")
    r = _run(pure_parts, "manifest", "--model", str(model_file), "--output", str(tmp_path / "b.om"),
             "--soc-version", "Ascend310P3", "--dynamic-batch-size", "1,8")
    assert r.returncode == 0, r.stdout + r.stderr
    m = builder.load_manifest(json.loads(r.stdout))
    assert [(v["name"], v["dtype"], v["shape"]) for v in m["variables"]] == [("fc.weight", "float32", [2, 3]),
                                                                             ("fc.bias", "float16", [3])]
    assert m["batch_sizes"] == [1, 8] and m["graphs"] == ["infer", "init", "update"] and m["model_count"] == 3
    sim_keys = set(builder.manifest(builder.build_bundle(models.mlp()[0])))
    assert sim_keys - {"outputs"} <= set(m), "every key the simulator builder writes (outputs: the device reports them)"


def test_manifest_gears_and_no_init(pure_parts: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"x")
    r = _run(pure_parts, "manifest", "--model", str(model_file), "--output", str(tmp_path / "b.om"),
             "--soc-version", "Ascend910B1", "--dynamic-image-size", "224,224;448,320", "--no-init")
    m = json.loads(r.stdout)
    assert m["dynamic_image_size"] == [[224, 224], [448, 320]] and m["batch_sizes"] == []
    assert m["has_init"] is False and all(v["sha256"] is None for v in m["variables"])


@pytest.mark.parametrize("args, message", [
    ([], "--model, --output and --soc-version are required"),
    (["--output", "b.bin"], "--output must end with .om"),
    (["--precision-mode", "fp8"], "is not one of GE's"),
    (["--dynamic-batch-size", "1,8", "--dynamic-dims", "1;2"], "at most one of"),
    (["--dynamic-batch-size", "1,x"], "positive integers"),
    (["--dynamic-batch-size", "1,99999999999999999999"], "positive integers"),
    (["--variables", "a,,b"], "empty name"),
    (["--variables", "a,a"], "listed twice"),
    (["--out-nodes", "y:0"], "apply to TensorFlow models"),
    (["--bogus", "1"], "unknown option --bogus"),
])
def test_option_mistakes_are_one_clear_line(pure_parts: Path, tmp_path: Path, args: list[str], message: str) -> None:
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"x")
    base = ["--model", str(model_file), "--output", str(tmp_path / "b.om"), "--soc-version", "Ascend310P3"]
    base = base if args else []
    r = _run(pure_parts, "options", *base, *args)
    assert r.returncode == 2 and message in r.stdout, r.stdout


def test_options_defaults(pure_parts: Path, tmp_path: Path) -> None:
    pb = tmp_path / "frozen.pb"
    pb.write_bytes(b"x")
    r = _run(pure_parts, "options", "--model", str(pb), "--output", str(tmp_path / "d.om"), "--soc-version=Ascend310P3",
             "--variables", "dense/kernel:0,dense/bias:0", "--no-init")
    got = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert got["framework"] == "tensorflow" and got["manifest"] == str(tmp_path / "d.manifest.json")
    assert got["variables"] == "dense/kernel:0,dense/bias:0" and got["init"] == "0" and got["precision_mode"] == ""


# --------------------------------------------------------------------------- the whole tool on a fake GE
@pytest.fixture(scope="module")
def fake_tool(flags: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("native") / "acl_bundle_builder"
    sources = [ROOT / "native/bundle_builder/test/fake_ge.cpp", *sorted(SRC.glob("*.cpp"))]
    cmd = ["g++", *flags, "-Wno-unused-parameter", "-I", str(SRC), "-O0", *map(str, sources), "-o", str(exe)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _onnx_file(tmp_path: Path, **kw) -> Path:
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save(models.mlp((8, 16, 16, 4), seed=5, **kw)[0], str(path))
    return path


def _variables(m: dict) -> list[tuple]:
    return [(v["name"], v["dtype"], v["shape"], v["index"], v["nbytes"], v["sha256"]) for v in m["variables"]]


def test_default_build_writes_the_simulator_builders_manifest(fake_tool: Path, tmp_path: Path) -> None:
    src = _onnx_file(tmp_path)
    om = tmp_path / "dev.om"
    r = _run(fake_tool, "--model", str(src), "--output", str(om), "--soc-version", "Ascend310P3",
             "--dynamic-batch-size", "1,8")
    assert r.returncode == 0, r.stderr
    dev = json.loads(om.with_suffix(".manifest.json").read_text())
    sim = builder.manifest(builder.build_bundle(str(src), batch_sizes=[1, 8]))
    assert _variables(dev) == _variables(sim)  # names, dtypes, shapes, order and initial values' digests
    for key in ("format", "version", "kind", "graphs", "model_count", "inputs", "batch_sizes", "has_init"):
        assert dev[key] == sim[key], key
    assert dev["precision_mode"] == "force_fp16" and dev["soc_version"] == "Ascend310P3"
    log = json.loads(om.read_text())  # what the fake GE was asked
    names = [v["name"] for v in sim["variables"]]
    ranks = {n: i for i, n in enumerate(sorted(names))}  # GE's parser names initializers in name order
    assert log["const_names"] == [f"{n}_Initializer_{ranks[n]}" for n in names]
    assert [g["name"] for g in log["graphs"]] == ["var_infer_graph", "var_init_graph", "var_update_graph"]
    assert log["graphs"][0]["options"] == {"ge.dynamicBatchSize": "1,8", "input_shape": "x:-1,8"}
    assert log["graphs"][1]["options"] == log["graphs"][2]["options"] == {}
    assert log["global"] == {"ge.socVersion": "Ascend310P3"}  # no precision_mode: GE's own default


def test_explicit_variables_no_init_and_precision(fake_tool: Path, tmp_path: Path) -> None:
    src = _onnx_file(tmp_path, dtype="float16")
    om = tmp_path / "dev.om"
    r = _run(fake_tool, "--model", str(src), "--output", str(om), "--soc-version", "Ascend910B1", "--no-init",
             "--variables", "fc2.weight,fc0.bias", "--precision-mode", "allow_fp32_to_fp16", "--input-format", "ND")
    assert r.returncode == 0, r.stderr
    dev = json.loads(om.with_suffix(".manifest.json").read_text())
    sim = builder.manifest(builder.build_bundle(str(src), variables=["fc2.weight", "fc0.bias"], init=False))
    assert _variables(dev) == _variables(sim) and [v["dtype"] for v in dev["variables"]] == ["float16", "float16"]
    assert dev["graphs"] == ["infer", "update"] and dev["has_init"] is False
    log = json.loads(om.read_text())
    assert [g["name"] for g in log["graphs"]] == ["var_infer_graph", "var_update_graph"]
    assert log["global"]["ge.exec.precision_mode"] == "allow_fp32_to_fp16"
    assert log["graphs"][0]["options"] == {"input_format": "ND"}


@pytest.mark.parametrize("variables, message", [
    ("fc0.weight,x", "variable x cannot stay updatable: GE's parser made no Const node of it"),
    ("nope", "variable nope cannot stay updatable"),
])
def test_a_variable_that_is_no_initializer_is_named(fake_tool: Path, tmp_path: Path, variables: str,
                                                    message: str) -> None:
    src = _onnx_file(tmp_path)
    om = tmp_path / "dev.om"
    r = _run(fake_tool, "--model", str(src), "--output", str(om), "--soc-version", "Ascend310P3",
             "--variables", variables)
    assert r.returncode == 1 and r.stderr.startswith("acl_bundle_builder: error: ") and message in r.stderr, r.stderr
    assert not om.exists() and not om.with_suffix(".manifest.json").exists()


@pytest.mark.parametrize("call", ["aclgrphParseONNX", "aclgrphBuildInitialize",
                                  "aclgrphConvertToWeightRefreshableGraphs", "aclgrphBundleBuildModel",
                                  "aclgrphBundleSaveModel"])
def test_a_ge_failure_is_one_line_with_status_and_ges_message(fake_tool: Path, tmp_path: Path, call: str) -> None:
    src = _onnx_file(tmp_path)
    om = tmp_path / "dev.om"
    r = subprocess.run([str(fake_tool), "--model", str(src), "--output", str(om), "--soc-version", "Ascend310P3"],
                       check=False, capture_output=True, text=True, env={**os.environ, "FAKE_GE_FAIL": call})
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"acl_bundle_builder: error: {call}")
    assert "failed with status 4294967295 (0xffffffff): E19999: Inner Error! injected failure" in lines[0]
    assert not om.with_suffix(".manifest.json").exists()


def test_acl_bundle_build_target_ascend_end_to_end(fake_tool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from acl_bundle.cli import main

    monkeypatch.setenv("ACL_BUNDLE_NATIVE_TOOL", str(fake_tool))
    src = _onnx_file(tmp_path)
    out = tmp_path / "dev.om"
    assert main(["build", str(src), "-o", str(out), "--target", "ascend", "--soc-version", "Ascend310P3",
                 "--dynamic-image-size", "1,1"]) == 0  # the fake takes any gear; GE would check the inputs
    text = capsys.readouterr().out
    assert f"wrote {out}: bundle model, graphs infer/init/update, soc Ascend310P3, precision_mode force_fp16" in text
    assert [v.name for v in builder.variables_from_manifest(builder.load_manifest(out))] == \
           ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert json.loads(out.read_text())["graphs"][0]["options"]["ge.dynamicImageSize"] == "1,1"


def test_frozen_tf_graph_gives_the_simulator_builders_variables(fake_tool: Path, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from acl_bundle.sim import tf_builder

    tf1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 8], name="x")
        h = x
        for name, n in (("dense", 16), ("out", 4)):
            with tf1.variable_scope(name):
                k = tf1.get_variable("kernel", [h.shape[-1], n], initializer=tf1.glorot_uniform_initializer(seed=n))
                b = tf1.get_variable("bias", [n], initializer=tf1.constant_initializer(0.25))
            h = tf.matmul(h, k) + b
        h = h * tf.constant(np.full(4, 2.0, np.float32), name="scale")  # a float Const read by Mul: no variable
        tf.identity(tf.nn.relu(h), name="y")
        with tf1.Session(graph=g) as s:
            s.run(tf1.global_variables_initializer())
            frozen = tf1.graph_util.convert_variables_to_constants(s, g.as_graph_def(), ["y"])
    pb = tmp_path / "frozen.pb"
    pb.write_bytes(frozen.SerializeToString())
    om = tmp_path / "dev.om"
    r = _run(fake_tool, "--model", str(pb), "--output", str(om), "--soc-version", "Ascend310P3",
             "--input-shape", "x:1,8", "--input-data-names", "x", "--out-nodes", "y:0")
    assert r.returncode == 0, r.stderr
    dev = json.loads(om.with_suffix(".manifest.json").read_text())
    sim = builder.manifest(tf_builder.build_bundle_from_tf(pb, inputs=["x:0[1,8]"], outputs=["y:0"]))
    assert _variables(dev) == _variables(sim)
    assert [v["name"] for v in dev["variables"]] == ["dense/kernel:0", "dense/bias:0", "out/kernel:0", "out/bias:0"]
    assert dev["inputs"] == sim["inputs"] == [{"name": "x:0", "dtype": "float32", "shape": [1, 8]}]
    log = json.loads(om.read_text())
    assert log["const_names"] == ["dense/kernel", "dense/bias", "out/kernel", "out/bias"]
    # the parser options by their ge::ir_option names (OUT_NODES is "ge.outputNodeName")
    assert json.loads(log["parse"].split(" ", 1)[1]) == {"ge.outputNodeName": "y:0", "input_data_names": "x",
                                                          "input_shape": "x:1,8"}
