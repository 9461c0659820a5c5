"""TensorFlow end to end: checkpoints and models written by TensorFlow itself, once per session.

TensorFlow takes seconds to import, so the trainers' runs that only need to happen once
(in this process, with the trainer's own code) are session fixtures; the tests that need
a trainer as a separate process start ``tf_trainer.py``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import tensorflow as tf
    import tf2onnx.convert  # noqa: F401
except ImportError:  # without the tf extra these tests are not collected (CI installs it: the test extra)
    tf = None
    collect_ignore_glob = ["*.py"]

if tf is not None:
    import gc

    import onnx  # noqa: F401
    import tf_trainer

    from acl_bundle.sim import builder, tf_builder

    # The root conftest runs gc.collect() after every test; with TensorFlow's objects in the heap that costs
    # ~0.4 s a test (for the whole suite: the modules here are imported at collection).  Freeze what the
    # imports made so collections only look at objects made afterwards.
    tf.compat.v1.GraphDef, tf.keras.initializers  # noqa: B018 - load TF's lazy modules before freezing
    gc.collect()
    gc.freeze()

HIDDEN = 16


class Run(argparse.Namespace):
    dir: Path
    export: Path
    om: Path


def _train(tmp: Path, variant: str, steps: int) -> Run:
    d = tmp / f"{variant}_ckpts"
    export = tmp / ("model.pb" if variant == "tf1" else "saved_model")
    args = argparse.Namespace(variant=variant, dir=str(d), steps=steps, every=2, hidden=HIDDEN, keep=1000, seed=0,
                              export=str(export), resume=False, hold=False)
    d.mkdir()
    (tf_trainer.train_tf1 if variant == "tf1" else tf_trainer.train_tf2)(args)
    mf = tf_builder.build_bundle_from_tf(export, inputs=["x:0"] if variant == "tf1" else None,
                                         outputs=["y:0"] if variant == "tf1" else None, batch_sizes=[1, 4])
    om, _ = builder.save(mf, tmp / f"{variant}.om")
    return Run(dir=d, export=export, om=om, variant=variant)


@pytest.fixture(scope="session")
def tf1_run(tmp_path_factory) -> Run:
    """A TF1 Saver trainer ran 6 steps (checkpoints at 2, 4, 6); its frozen graph is built into ``om``."""
    return _train(tmp_path_factory.mktemp("tf1"), "tf1", 6)


@pytest.fixture(scope="session")
def tf2_run(tmp_path_factory) -> Run:
    """A TF2 CheckpointManager trainer ran 6 steps (ckpt-2, -4, -6); its SavedModel is built into ``om``."""
    return _train(tmp_path_factory.mktemp("tf2"), "tf2", 6)


@pytest.fixture(scope="session")
def oracles():
    """TensorFlow references for both variants (the trainer's own model code), made once."""
    import tfhelp

    made = {"tf1": tfhelp.TF1Oracle(HIDDEN), "tf2": tfhelp.TF2Oracle(HIDDEN)}
    yield made
    for o in made.values():
        o.close()
