"""Bundles built from TensorFlow models (frozen GraphDef, SavedModel) through tf2onnx; TensorFlow is the reference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tfhelp

from acl_bundle import BundleModel, cli, load_checkpoint
from acl_bundle.sim import builder, tf_builder

tf1 = tf.compat.v1
ROOT = Path(__file__).resolve().parents[2]


def _run_frozen(graph_def, x: np.ndarray, output: str = "y:0", input_: str = "x:0") -> np.ndarray:
    """TensorFlow's own output of a frozen GraphDef."""
    g = tf.Graph()
    with g.as_default():
        tf1.import_graph_def(graph_def, name="")
        with tf1.Session(graph=g) as s:
            return s.run(output, {input_: x})


def test_frozen_graph_bundle_has_tf_names_and_computes_what_tensorflow_computes(tf1_run):
    gd = tf1.GraphDef.FromString(tf1_run.export.read_bytes())
    with BundleModel(tf1_run.om) as m:
        assert [t.name for t in m.inputs] == ["x:0"] and [t.name for t in m.outputs] == ["y:0"]
        assert [v.name for v in m.variables] == ["dense/kernel:0", "dense/bias:0", "hidden/kernel:0", "hidden/bias:0",
                                                "out/kernel:0", "out/bias:0"]
        assert m.batch_sizes == (1, 4)
        for n in (1, 4):
            x = np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32)
            np.testing.assert_allclose(m.infer(x), _run_frozen(gd, x), rtol=1e-5, atol=1e-6)


def test_saved_model_bundle_uses_the_signature_names_and_computes_what_tensorflow_computes(tf2_run):
    serve = tf.saved_model.load(str(tf2_run.export)).signatures["serving_default"]
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    with BundleModel(tf2_run.om) as m:
        assert [t.name for t in m.inputs] == ["x:0"] and [t.name for t in m.outputs] == ["y:0"]
        assert {v.name for v in m.variables} == {
            f"{n}/{k}:0" for n in ("dense", "hidden", "out") for k in ("kernel", "bias")
        }
        np.testing.assert_allclose(m.infer({"x:0": x}), serve(x=tf.constant(x))["y"].numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def bn_graphs(tmp_path_factory):
    """The conv+BN+Dropout model: trained (moving statistics move), frozen for inference, trained further.

    Returns (frozen .pb, checkpoint it was frozen from, a later training checkpoint).
    """
    tmp = tmp_path_factory.mktemp("bn")
    rng = np.random.default_rng(0)
    train = tf.Graph()
    with train.as_default():
        x, y, updates = tfhelp.conv_bn_model(is_training=True)
        labels = tf1.placeholder(tf.int64, [None])
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y))
        with tf.control_dependencies(updates):
            step = tf1.train.AdamOptimizer(0.05).minimize(loss)
        saver = tf1.train.Saver()
        sess = tf1.Session(graph=train)
        sess.run(tf1.global_variables_initializer())

        def fit(n: int) -> None:
            for _ in range(n):
                xb = rng.standard_normal((16, 6, 6, 2)).astype(np.float32) * 2 + 1
                sess.run(step, {x: xb, labels: rng.integers(0, 3, 16)})

        fit(5)
        first = saver.save(sess, str(tmp / "ck" / "model.ckpt"), global_step=5)
        fit(5)
        later = saver.save(sess, str(tmp / "ck" / "model.ckpt"), global_step=10)
        sess.close()
    infer = tf.Graph()
    with infer.as_default():
        tfhelp.conv_bn_model(is_training=False)
        with tf1.Session(graph=infer) as s:
            tf1.train.Saver().restore(s, first)
            frozen = tf1.graph_util.convert_variables_to_constants(s, infer.as_graph_def(), ["y"])
    pb = tmp / "model.pb"
    pb.write_bytes(frozen.SerializeToString())
    return pb, first, later


def _tf_inference(trainable_from: str, stats_from: str, x: np.ndarray) -> np.ndarray:
    """TensorFlow's inference graph with the trainable variables of one checkpoint and the BN statistics of another."""
    g = tf.Graph()
    with g.as_default():
        xt, yt, _ = tfhelp.conv_bn_model(is_training=False)
        with tf1.Session(graph=g) as s:
            tf1.train.Saver().restore(s, stats_from)
            tf1.train.Saver(tf1.trainable_variables()).restore(s, trainable_from)
            return s.run(yt, {xt: x})


@pytest.mark.parametrize("with_stats", [False, True])
def test_inference_mode_graph_keeps_chosen_variables_updatable_and_bn_statistics_frozen(
    bn_graphs, tmp_path, with_stats
):
    pb, first, later = bn_graphs
    chosen = tfhelp.TRAINABLE + (tfhelp.BN_STATS if with_stats else [])
    mf = tf_builder.build_bundle_from_tf(pb, inputs=["x:0"], outputs=["y:0"], variables=chosen, batch_sizes=[4])
    om, _ = builder.save(mf, tmp_path / "bn.om")
    x = np.random.default_rng(5).standard_normal((4, 6, 6, 2)).astype(np.float32) * 2 + 1
    with BundleModel(om) as m:
        assert [v.name for v in m.variables] == chosen
        np.testing.assert_allclose(m.infer(x), _tf_inference(first, first, x), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(m.infer(x), m.infer(x))  # Dropout is the identity: deterministic
        m.update(load_checkpoint(later, m))  # a training checkpoint: Adam slots etc. are ignored
        # without the statistics as variables, BN keeps the moving mean/variance it was frozen with
        want = _tf_inference(later, later if with_stats else first, x)
        np.testing.assert_allclose(m.infer(x), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(_tf_inference(later, first, x), _tf_inference(later, later, x), atol=1e-4)  # stats did move


def test_variables_are_named_by_tf_names_with_or_without_output_suffix(tf1_run):
    conv = tf_builder.tf_to_onnx(tf1_run.export, outputs=["y"], variables=["dense/kernel", "out/bias:0"])
    assert conv.inputs == ("x:0",) and conv.outputs == ("y:0",) and conv.variables == ("dense/kernel:0", "out/bias:0")
    assert {i.name for i in conv.model.graph.initializer} >= {"dense/kernel:0", "out/bias:0"}


def _graph_with(build, outputs=("y",)) -> object:
    """Build a graph, initialise its variables and freeze it for ``outputs``."""
    g = tf.Graph()
    with g.as_default():
        build()
        with tf1.Session(graph=g) as s:
            s.run(tf1.global_variables_initializer())
            return tf1.graph_util.convert_variables_to_constants(s, g.as_graph_def(), list(outputs))


def test_a_variable_that_cannot_stay_updatable_fails_the_build_naming_it():
    def build():
        x = tf1.placeholder(tf.float32, [2, 4], name="x")
        w = tf1.get_variable("w", initializer=np.ones(4, np.float32))
        unused = tf1.get_variable("unused", initializer=np.ones(4, np.float32))  # noqa: F841
        tf.identity(tf.gather(x * w, [0, 2], axis=tf.constant(1, name="axis")), name="y")

    gd = _graph_with(build)
    with pytest.raises(
        ValueError,
        match=r"\['axis:0'\] cannot stay updatable: the converter needs them as constants "
        r"\(tf2onnx cannot convert node 'GatherV2': Axis of GatherV2 node must be constant\)",
    ):
        tf_builder.tf_to_onnx(gd, outputs=["y:0"], variables=["w", "axis"])
    with pytest.raises(ValueError, match="'nope' cannot stay updatable: there is no such node"):
        tf_builder.tf_to_onnx(gd, outputs=["y:0"], variables=["nope"])
    with pytest.raises(ValueError, match="'x:0' cannot stay updatable: its node is a Placeholder"):
        tf_builder.tf_to_onnx(gd, outputs=["y:0"], variables=["x:0"])
    conv = tf_builder.tf_to_onnx(gd, outputs=["y:0"])  # the default: the frozen variables feeding y
    assert conv.variables == ("w:0",)


def test_a_variable_the_outputs_do_not_need_is_refused():
    def build():
        x = tf1.placeholder(tf.float32, [2, 4], name="x")
        w = tf1.get_variable("w", initializer=np.ones(4, np.float32))
        tf.identity(x * w, name="y")
        tf.identity(x + tf1.get_variable("other", initializer=np.ones(4, np.float32)), name="z")

    gd = _graph_with(build, outputs=("y", "z"))
    with pytest.raises(ValueError, match=r"'other' cannot stay updatable: it does not feed the outputs \['y:0'\]"):
        tf_builder.tf_to_onnx(gd, outputs=["y:0"], variables=["w", "other"])


def test_a_mis_conversion_is_caught_by_comparing_with_tensorflow(tf1_run, monkeypatch):
    real = tf_builder._convert

    def broken(*args, **kwargs):
        model, values = real(*args, **kwargs)
        for node in model.graph.node:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
                break
        return model, values

    monkeypatch.setattr(tf_builder, "_convert", broken)
    with pytest.raises(ValueError, match="differs from TensorFlow's .* tf2onnx mis-converted the graph"):
        tf_builder.tf_to_onnx(tf1_run.export, outputs=["y:0"])


def test_bad_tf_models_are_clear_errors(tmp_path, tf1_run):
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\x08\x96\x01garbage\xff\xff")
    with pytest.raises(ValueError, match="not a TensorFlow GraphDef"):
        tf_builder.tf_to_onnx(junk, outputs=["y:0"])
    with pytest.raises(ValueError, match="give the output tensors"):
        tf_builder.tf_to_onnx(tf1_run.export)
    with pytest.raises(ValueError, match="output 'nope:0' is not a tensor of the graph"):
        tf_builder.tf_to_onnx(tf1_run.export, outputs=["nope"])
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [1, 2], name="x")
        tf.identity(x * tf1.get_variable("v", [2], use_resource=False), name="y")
    with pytest.raises(ValueError, match="not frozen: it holds variable ops"):
        tf_builder.tf_to_onnx(g.as_graph_def(), outputs=["y:0"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="without saved_model.pb"):
        tf_builder.tf_to_onnx(tmp_path / "empty_dir")


def test_saved_model_errors_name_what_exists(tmp_path, tf2_run):
    with pytest.raises(ValueError, match=r"no signature 'predict'; it has \['serving_default'\]"):
        tf_builder.tf_to_onnx(tf2_run.export, signature="predict")
    with pytest.raises(
        ValueError, match=r"signature 'serving_default' has no output 'logits:0'; its outputs are \['y:0'\]"
    ):
        tf_builder.tf_to_onnx(tf2_run.export, outputs=["logits"])
    with pytest.raises(ValueError, match=r"reads no such variable; it reads \['dense/bias:0'"):
        tf_builder.tf_to_onnx(tf2_run.export, variables=["dense/gamma"])
    m = tf.Module()
    m.a = tf.Variable(np.ones(2, np.float32), name="w")
    m.b = tf.Variable(np.ones(2, np.float32), name="w")
    m.f = tf.function(lambda x: {"y": x * m.a + m.b}, input_signature=[tf.TensorSpec([2], tf.float32, name="x")])
    tf.saved_model.save(m, str(tmp_path / "dup"), signatures=m.f)
    for chosen in (None, ["w"]):
        with pytest.raises(ValueError, match=r"several variables are named \['w:0'\]"):
            tf_builder.tf_to_onnx(tmp_path / "dup", variables=chosen)


def test_cli_builds_a_frozen_graph_with_tf_names(tf1_run, tmp_path, capsys):
    om = tmp_path / "cli.om"
    rc = cli.main(["build", str(tf1_run.export), "--inputs", "x:0[2,8]", "--outputs", "y:0",
                   "--variables", "dense/kernel:0,out/kernel:0", "-o", str(om)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"wrote {om}" in out.out and "2 variables" in out.out
    man = json.loads(om.with_suffix(".manifest.json").read_text())
    assert [v["name"] for v in man["variables"]] == ["dense/kernel:0", "out/kernel:0"]
    assert man["inputs"] == [{"name": "x:0", "dtype": "float32", "shape": [2, 8]}]


@pytest.mark.parametrize("argv, message", [
    (["--inputs", "x:0"], "give the output tensors"),
    (["--outputs", "y:0", "--variables", "hidden/gamma"], "'hidden/gamma' cannot stay updatable"),
    (["--outputs", "y:0", "--inputs", "x:0[2,8"], "--inputs must be comma-separated tensor names"),
    (["--outputs", "y:0", "--plain"], "--plain applies to ONNX models"),
])
def test_cli_tf_errors_are_one_line(tf1_run, tmp_path, capsys, argv, message):
    rc = cli.main(["build", str(tf1_run.export), "-o", str(tmp_path / "x.om"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.om").exists()


def test_cli_refuses_tf_options_for_onnx(tmp_path, capsys):
    import onnx

    from acl_bundle.sim import models

    model, _ = models.mlp((4, 2))
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert cli.main(["build", str(tmp_path / "m.onnx"), "--outputs", "y:0"]) == 2
    assert "apply to TensorFlow models" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_builds_a_saved_model_as_a_command(tf2_run, tmp_path):
    """The installed command itself, in its own process (slow: TensorFlow's import)."""
    om = tmp_path / "sm.om"
    proc = subprocess.run([sys.executable, "-m", "acl_bundle", "build", f"{tf2_run.export}/", "-o", str(om),
                           "--batch-sizes", "1,8"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 variables" in proc.stdout and om.is_file()
