"""An ordinary TensorFlow trainer for the tests: TF1 ``Saver`` or TF2 ``CheckpointManager``; no acl_bundle import.

    python tf_trainer.py --variant tf1|tf2 --dir CKPTS [--steps N] [--every K] [--hidden H]
                         [--export PATH] [--resume] [--keep K] [--seed S] [--hold]

Trains a softmax classifier (x[?, 8] -> dense(H, relu) -> hidden(H, relu) -> out(3) = y)
with Adam on a synthetic stream and saves a checkpoint every K steps, the way a TF user
does (``saver.save(sess, prefix, global_step=step)`` / ``manager.save(checkpoint_number=step)``).
``--export`` first writes the inference model (TF1: a frozen GraphDef ``.pb``; TF2: a
SavedModel directory).  Prints ``ready``, then ``saving <step>`` / ``saved <step>`` around
each save (the tests kill it at random points) and ``done`` at the end; ``--hold`` waits for a line
on stdin after ``ready`` (so a test can start several trainers at once and run them one by one).  The model
functions are imported by the tests as TensorFlow's reference (the oracle).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1
N_IN, N_OUT = 8, 3


def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    true_w = np.random.default_rng(123).standard_normal((N_IN, N_OUT))
    x = rng.standard_normal((n, N_IN)).astype(np.float32)
    return x, (x @ true_w).argmax(1).astype(np.int64)


def _ready(a: argparse.Namespace) -> None:
    print("ready", flush=True)
    if a.hold:
        sys.stdin.readline()


# --------------------------------------------------------------------------- TF1
def tf1_dense(x, n: int, name: str, relu: bool):
    with tf1.variable_scope(name):
        w = tf1.get_variable(
            "kernel", [int(x.shape[-1]), n], initializer=tf1.glorot_uniform_initializer(seed=len(name))
        )
        b = tf1.get_variable("bias", [n], initializer=tf1.zeros_initializer())
    h = tf.matmul(x, w) + b
    return tf.nn.relu(h) if relu else h


def tf1_model(hidden: int):
    """Build the model in the current graph; return (x, y)."""
    x = tf1.placeholder(tf.float32, [None, N_IN], name="x")
    h = tf1_dense(x, hidden, "dense", True)
    h = tf1_dense(h, hidden, "hidden", True)
    y = tf.identity(tf1_dense(h, N_OUT, "out", False), name="y")
    return x, y


def train_tf1(a: argparse.Namespace) -> None:
    rng = np.random.default_rng(a.seed)
    graph = tf.Graph()
    with graph.as_default():
        x, y = tf1_model(a.hidden)
        labels = tf1.placeholder(tf.int64, [None])
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y))
        step = tf1.train.get_or_create_global_step()
        train = tf1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
        saver = tf1.train.Saver(max_to_keep=a.keep)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            latest = tf.train.latest_checkpoint(a.dir)
            if a.resume and latest:
                saver.restore(sess, latest)
            if a.export:
                frozen = tf1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["y"])
                tmp = a.export + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(frozen.SerializeToString())
                os.replace(tmp, a.export)
            _ready(a)
            s = int(sess.run(step))
            while s < a.steps:
                xb, yb = _data(rng, 64)
                sess.run(train, {x: xb, labels: yb})
                s = int(sess.run(step))
                if s % a.every == 0:
                    print(f"saving {s}", flush=True)
                    saver.save(sess, os.path.join(a.dir, "model.ckpt"), global_step=s)
                    print(f"saved {s}", flush=True)


# --------------------------------------------------------------------------- TF2
class Dense(tf.Module):
    def __init__(self, n_in: int, n_out: int, name: str, relu: bool) -> None:
        super().__init__(name=name)
        init = tf.keras.initializers.GlorotUniform(seed=len(name))
        self.kernel = tf.Variable(init([n_in, n_out]), name=f"{name}/kernel")
        self.bias = tf.Variable(tf.zeros([n_out]), name=f"{name}/bias")
        self.relu = relu

    def __call__(self, x):
        h = tf.matmul(x, self.kernel) + self.bias
        return tf.nn.relu(h) if self.relu else h


class Net(tf.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__(name="net")
        self.dense = Dense(N_IN, hidden, "dense", True)
        self.hidden = Dense(hidden, hidden, "hidden", True)
        self.out = Dense(hidden, N_OUT, "out", False)

    @tf.function(input_signature=[tf.TensorSpec([None, N_IN], tf.float32, name="x")])
    def serve(self, x):
        return {"y": self.out(self.hidden(self.dense(x)))}


def train_tf2(a: argparse.Namespace) -> None:
    rng = np.random.default_rng(a.seed)
    net = Net(a.hidden)
    opt = tf.keras.optimizers.Adam(0.01)
    step = tf.Variable(0, dtype=tf.int64, name="step")
    ckpt = tf.train.Checkpoint(model=net, optimizer=opt, step=step)
    manager = tf.train.CheckpointManager(ckpt, a.dir, max_to_keep=a.keep)
    if a.resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
    if a.export:
        tmp = a.export + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tf.saved_model.save(net, tmp, signatures=net.serve)
        os.replace(tmp, a.export)
    _ready(a)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            logits = net.serve(xb)["y"]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
        variables = net.trainable_variables
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        step.assign_add(1)

    while int(step.numpy()) < a.steps:
        train_step(*_data(rng, 64))
        s = int(step.numpy())
        if s % a.every == 0:
            print(f"saving {s}", flush=True)
            manager.save(checkpoint_number=s)
            print(f"saved {s}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["tf1", "tf2"], required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--keep", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--hold", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    (train_tf1 if a.variant == "tf1" else train_tf2)(a)
    assert "acl_bundle" not in sys.modules  # the trainer side is plain TensorFlow
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
