"""TensorFlow checkpoint directories on S3 (a moto server): the watcher and load_checkpoint read them as local ones."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("moto")
pytest.importorskip("s3fs")

import s3help  # noqa: E402
from acl_bundle import BundleModel, CheckpointError, CheckpointWatcher, load_checkpoint  # noqa: E402
from acl_bundle.checkpoint import read_checkpoint  # noqa: E402
from acl_bundle.tf_checkpoint import read_tf_checkpoint  # noqa: E402

X = np.random.default_rng(11).standard_normal((4, 8)).astype(np.float32)


@pytest.fixture
def store(moto):
    import s3fs

    bucket = s3help.make_bucket(moto.endpoint)
    opts = s3help.options(moto.endpoint)
    return s3fs.S3FileSystem(**opts), bucket, opts


def _upload(fs, src: Path, bucket: str, prefix: str, steps: list[int]) -> None:
    """What `aws s3 sync` of a Saver directory does for these steps: index and shards, then TF's state file."""
    for s in steps:
        for f in sorted(src.glob(f"model.ckpt-{s}.*")):
            if not f.name.endswith(".meta"):
                fs.put_file(str(f), f"{bucket}/{prefix}/{f.name}")
    state = tf.compat.v1.train.generate_checkpoint_state_proto(
        str(src), str(src / f"model.ckpt-{steps[-1]}"), all_model_checkpoint_paths=[str(src / f"model.ckpt-{s}")
                                                                                        for s in steps])
    fs.pipe_file(f"{bucket}/{prefix}/checkpoint", str(state).encode())  # absolute paths, as TF1 Saver records


def test_a_saver_directory_on_s3_is_applied_by_the_watcher_as_tensorflow_computes(tf1_run, oracles, store):
    fs, bucket, opts = store
    url = f"s3://{bucket}/tf"
    _upload(fs, tf1_run.dir, bucket, "tf", [2, 4])
    with BundleModel(tf1_run.om) as m:
        w = CheckpointWatcher(m, url, storage_options=opts, poll_interval=0.05)
        assert w.protocol == "tf"
        applied = w.poll()
        assert applied.step == 4 and applied.bytes_read > 0
        np.testing.assert_allclose(m.infer(X), oracles["tf1"](tf1_run.dir / "model.ckpt-4", X), rtol=1e-5, atol=1e-6)
        assert w.poll() is None
        _upload(fs, tf1_run.dir, bucket, "tf", [2, 4, 6])  # the trainer's next save, synced
        assert w.poll().step == 6
        np.testing.assert_allclose(m.infer(X), oracles["tf1"](tf1_run.dir / "model.ckpt-6", X), rtol=1e-5, atol=1e-6)
    leftovers = list(Path(tempfile.gettempdir()).glob("acl_bundle-tf-*"))
    assert leftovers == []  # the private copies are removed after each read


def test_a_shard_listed_before_it_is_complete_is_retried_on_s3(tf1_run, oracles, store, caplog):
    fs, bucket, opts = store
    url = f"s3://{bucket}/tf"
    _upload(fs, tf1_run.dir, bucket, "tf", [2, 4])
    shard = f"{bucket}/tf/model.ckpt-4.data-00000-of-00001"
    good = fs.cat_file(shard)
    fs.pipe_file(shard, good[: len(good) // 2])  # an uploader that put a part first
    with BundleModel(tf1_run.om) as m:
        w = CheckpointWatcher(m, url, storage_options=opts, poll_interval=60)
        with caplog.at_level(logging.WARNING, logger="acl_bundle"):
            assert w.poll().step == 2  # the older complete one meanwhile
            assert w.waiting == 1 and w.skipped == 0 and "not readable yet" in caplog.text
        fs.pipe_file(shard, good)  # completed: a new ETag, size and LastModified: tried at once
        assert w.poll().step == 4
        np.testing.assert_allclose(m.infer(X), oracles["tf1"](tf1_run.dir / "model.ckpt-4", X), rtol=1e-5, atol=1e-6)


def test_load_checkpoint_reads_a_tf_checkpoint_on_s3(tf1_run, store, tmp_path):
    fs, bucket, opts = store
    _upload(fs, tf1_run.dir, bucket, "tf", [2, 4])
    local = read_tf_checkpoint(tf1_run.dir / "model.ckpt-4")
    for where in ("tf/model.ckpt-4", "tf/model.ckpt-4.index", "tf/model.ckpt-4.data-00000-of-00001", "tf"):
        got = read_checkpoint(f"s3://{bucket}/{where}", storage_options=opts)
        assert sorted(got) == sorted(local)
        for k in local:
            np.testing.assert_array_equal(got[k], local[k])
    with BundleModel(tf1_run.om) as m:
        weights = load_checkpoint(f"s3://{bucket}/tf", m, storage_options=opts)
        assert sorted(weights) == sorted(v.name for v in m.variables)
        with pytest.raises(CheckpointError, match=r"more than the limit of 100 \(max_bytes=\)"):
            load_checkpoint(f"s3://{bucket}/tf/model.ckpt-2", m, storage_options=opts, max_bytes=100)
    with pytest.raises(CheckpointError, match="TensorFlow MetaGraph"):
        load_checkpoint(f"s3://{bucket}/tf/model.ckpt-4.meta", ["w"], storage_options=opts)
    meta = tmp_path / "model.ckpt-4.meta"
    shutil.copy(tf1_run.dir / "model.ckpt-4.meta", meta)
    with pytest.raises(CheckpointError, match="is a TensorFlow MetaGraph"):
        load_checkpoint(meta, ["w"])
