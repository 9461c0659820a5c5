"""TF checkpoints as weight sources: TensorFlow's own files, TensorFlow's values and outputs as the reference."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from acl_bundle import BundleModel, CheckpointError, CheckpointMismatchError, Variable, load_checkpoint
from acl_bundle.checkpoint import read_checkpoint
from acl_bundle.tf_checkpoint import tf_checkpoint_names, tf_prefix

tf1 = tf.compat.v1
ROOT = Path(__file__).resolve().parents[2]


def _tf1_save(directory: Path, values: dict[str, np.ndarray], step: int = 1) -> str:
    """Save ``values`` as TF1 variables (names as given) with tf.compat.v1.train.Saver; return the prefix."""
    g = tf.Graph()
    with g.as_default():
        vs = [tf1.get_variable(name, initializer=tf.constant(v)) for name, v in values.items()]
        saver = tf1.train.Saver(vs)
        with tf1.Session(graph=g) as s:
            s.run(tf1.global_variables_initializer())
            return saver.save(s, str(directory / "model.ckpt"), global_step=step)


def test_tf1_checkpoint_holds_exactly_what_the_session_saved(tmp_path):
    rng = np.random.default_rng(0)
    values = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32), "f64": rng.standard_normal(4),
        "f16": rng.standard_normal((2, 2)).astype(np.float16), "i8": np.array([-128, 0, 127], np.int8),
        "u8": np.arange(7, dtype=np.uint8), "i32": np.array([[1, -2], [3, 2**31 - 1]], np.int32),
        "i64": np.array([2**62, -5], np.int64), "scope/scalar": np.float32(2.5), "flag": np.array([True, False]),
    }
    prefix = _tf1_save(tmp_path, values)
    got = read_checkpoint(prefix)
    assert sorted(got) == sorted(values)  # the state file / object graph are not tensors
    for k, v in values.items():
        assert got[k].dtype == np.asarray(v).dtype, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_tf2_object_paths_map_to_the_saved_variable_names(tmp_path):
    module = tf.Module()
    module.l1 = tf.Module()
    module.l1.kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="dense/kernel")
    counter = tf.Variable(3, name="steps")
    prefix = tf.train.Checkpoint(model=module, counter=counter).write(str(tmp_path / "c"))
    assert "model/l1/kernel/.ATTRIBUTES/VARIABLE_VALUE" in read_checkpoint(prefix)  # keys as in the file
    names = tf_checkpoint_names(prefix)
    assert names["model/l1/kernel/.ATTRIBUTES/VARIABLE_VALUE"] == "dense/kernel"
    w = load_checkpoint(prefix, [Variable(0, "dense/kernel:0", (2, 3), np.dtype(np.float32), 24)])
    assert list(w) == ["dense/kernel:0"]  # `counter` is not a variable of the model: ignored
    np.testing.assert_array_equal(w["dense/kernel:0"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_tf2_names_shared_by_several_variables_fall_back_to_object_paths(tmp_path):
    a = tf.Variable(np.ones(2, np.float32), name="w")  # TF2 does not make names unique
    b = tf.Variable(np.zeros(2, np.float32), name="w")
    prefix = tf.train.Checkpoint(enc=a, dec=b).write(str(tmp_path / "c"))
    w = load_checkpoint(prefix, ["enc", "dec"])
    np.testing.assert_array_equal(w["enc"], np.ones(2, np.float32))
    np.testing.assert_array_equal(w["dec"], np.zeros(2, np.float32))


def test_strip_prefix_and_rename_apply_after_the_default_names(tmp_path):
    k = np.full((2, 2), 7, np.float32)
    prefix = _tf1_save(tmp_path, {"train/dense/kernel": k, "train/dense/bias": np.ones(2, np.float32)})
    w = load_checkpoint(prefix, ["dense/kernel:0", "dense/bias:0"], strip_prefix="train/")
    np.testing.assert_array_equal(w["dense/kernel:0"], k)
    w = load_checkpoint(prefix, ["fc.weight"], rename=lambda n: "fc.weight" if n.endswith("kernel") else None)
    np.testing.assert_array_equal(w["fc.weight"], k)


@pytest.mark.parametrize("variant", ["tf1", "tf2"])
def test_bundle_built_from_the_tf_model_serves_every_checkpoint_like_tensorflow(variant, tf1_run, tf2_run, oracles):
    run = tf1_run if variant == "tf1" else tf2_run
    prefixes = [run.dir / (f"model.ckpt-{s}" if variant == "tf1" else f"ckpt-{s}") for s in (2, 4, 6)]
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    with BundleModel(run.om) as m:
        assert [v.name for v in m.variables] == ["dense/kernel:0", "dense/bias:0", "hidden/kernel:0", "hidden/bias:0",
                                                "out/kernel:0", "out/bias:0"]
        before = m.infer(x)
        for prefix in prefixes:
            m.update(load_checkpoint(prefix, m))  # Adam slots, global_step / save_counter are ignored
            np.testing.assert_allclose(m.infer(x), oracles[variant](prefix, x), rtol=1e-5, atol=1e-6)
        assert not np.allclose(before, m.infer(x))  # the weights really changed


def test_update_takes_tf_variable_names_as_a_tf1_trainer_pushes_them(tf1_run, oracles):
    prefix = tf1_run.dir / "model.ckpt-4"
    pushed = oracles["tf1"].weights(prefix)  # {var.name: value} from sess.run(tf.trainable_variables())
    assert "dense/kernel:0" in pushed
    x = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    with BundleModel(tf1_run.om) as m:
        m.update(pushed)
        np.testing.assert_allclose(m.infer(x), oracles["tf1"](prefix, x), rtol=1e-5, atol=1e-6)
        m.update({"dense/kernel:0": np.zeros((8, 16), np.float32)})  # one variable by its TF name
        np.testing.assert_array_equal(m.infer(x), np.broadcast_to(m.infer(np.zeros_like(x)), (4, 3)))


def test_prefix_index_data_file_and_directory_name_the_same_checkpoint(tf1_run):
    prefix = tf1_run.dir / "model.ckpt-6"
    want = read_checkpoint(prefix)
    for form in (prefix.with_name(prefix.name + ".index"), prefix.with_name(prefix.name + ".data-00000-of-00001"),
                 tf1_run.dir):
        assert tf_prefix(form) == prefix
        got = read_checkpoint(form)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_sharded_checkpoint_is_read_across_its_data_files(tmp_path):
    values = {f"v{i}": np.full((64,), i, np.float32) for i in range(4)}
    ck = tf.train.Checkpoint(**{k: tf.Variable(v, name=k) for k, v in values.items()})
    opts = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=300)
    )
    prefix = ck.write(str(tmp_path / "c"), options=opts)
    assert len(list(tmp_path.glob("c.data-*"))) == 4
    w = load_checkpoint(prefix, list(values))
    for k, v in values.items():
        np.testing.assert_array_equal(w[k], v)


@pytest.fixture
def saved(tmp_path):
    values = {"a": np.arange(64, dtype=np.float32), "b": np.linspace(0, 1, 256).astype(np.float32)}
    return Path(_tf1_save(tmp_path, values)), values


def _data(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".data-00000-of-00001")


@pytest.mark.parametrize("where", [0, 300, -1])
def test_a_flipped_byte_in_the_data_fails_tf_crc32c(saved, where):
    prefix, _ = saved
    data = bytearray(_data(prefix).read_bytes())
    data[where] ^= 0x20
    _data(prefix).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="Checksum does not match"):
        load_checkpoint(prefix, ["a", "b"])


def test_truncated_data_missing_shard_and_corrupt_index_are_refused(saved):
    prefix, _ = saved
    full = _data(prefix).read_bytes()
    _data(prefix).write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(prefix, ["a", "b"])
    _data(prefix).unlink()
    with pytest.raises(CheckpointError, match="no data file"):
        load_checkpoint(prefix, ["a", "b"])
    _data(prefix).write_bytes(full)
    index = prefix.with_name(prefix.name + ".index")
    raw = bytearray(index.read_bytes())
    index.write_bytes(bytes(raw[:-8]))
    with pytest.raises(CheckpointError, match="index"):
        load_checkpoint(prefix, ["a", "b"])


def test_an_index_claiming_more_bytes_than_the_data_files_hold_is_refused_before_reading(tmp_path):
    big = Path(_tf1_save(tmp_path, {"a": np.zeros(1 << 20, np.float32)}))
    _data(big).write_bytes(b"\0" * 100)  # the index still says 4 MiB
    with pytest.raises(CheckpointError, match="hold 100 bytes but its index lists 4194304 bytes of tensors"):
        load_checkpoint(big, ["a"])


def test_names_that_do_not_cover_the_model_are_reported(saved):
    prefix, values = saved
    with pytest.raises(CheckpointMismatchError, match=r"missing: \['c'\]") as e:
        load_checkpoint(prefix, ["a", "c"])
    assert e.value.missing == ["c"]
    assert "'a'" in str(e.value) and "'b'" in str(e.value)  # the checkpoint's names are listed
    w = load_checkpoint(prefix, ["a", "c"], allow_partial=True)
    assert list(w) == ["a"]
    with pytest.raises(CheckpointMismatchError, match="no entry matches"):
        load_checkpoint(prefix, ["z"])
    with pytest.raises(CheckpointError, match="dtype float32, expected float64"):
        load_checkpoint(prefix, [Variable(0, "a", (64,), np.dtype(np.float64), 512)])
    with pytest.raises(CheckpointError, match=r"shape \(64,\), expected \(8, 8\)"):
        load_checkpoint(prefix, [Variable(0, "a", (8, 8), np.dtype(np.float32), 256)])


def test_the_meta_graph_is_never_read(tf1_run, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(tf1_run.dir, d)
    for meta in d.glob("*.meta"):
        meta.write_bytes(b"not a MetaGraphDef")
    w = load_checkpoint(d / "model.ckpt-6", ["dense/kernel:0"], allow_partial=True)
    np.testing.assert_array_equal(w["dense/kernel:0"], read_checkpoint(tf1_run.dir / "model.ckpt-6")["dense/kernel"])


def test_not_a_tf_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "model.ckpt-1")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1"\n')
    with pytest.raises(FileNotFoundError, match="not a TF checkpoint"):
        read_checkpoint(tmp_path)  # the state file names a checkpoint that is not there
    (tmp_path / "checkpoint").write_text("this is { not a CheckpointState")
    with pytest.raises(CheckpointError, match="not a CheckpointState"):
        read_checkpoint(tmp_path)


def test_core_package_imports_without_tensorflow_and_asks_for_the_extra():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"  # as if the tf extra were not installed
        "import acl_bundle, acl_bundle.checkpoint, acl_bundle.watcher, acl_bundle.cli, acl_bundle.tf_checkpoint\n"
        "heavy = [m for m in ('tf2onnx', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from acl_bundle import load_checkpoint\n"
        "try:\n"
        f"    load_checkpoint({str(ROOT / 'no-such')!r} + '/model.ckpt-1', ['a'])\n"
        "except FileNotFoundError: pass\n"
        "import pathlib, tempfile\n"
        "d = pathlib.Path(tempfile.mkdtemp()); (d / 'm.ckpt-1.index').write_bytes(b'x'); "
        "(d / 'm.ckpt-1.data-00000-of-00001').write_bytes(b'x')\n"
        "try:\n"
        "    load_checkpoint(d / 'm.ckpt-1', ['a'])\n"
        "except ImportError as e:\n"
        "    assert \"pip install -e '.[tf]'\" in str(e), e; print('OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
