"""From a TF training graph with BatchNorm and Dropout to a served bundle: freeze, build, stream checkpoints.

What a TF user does before serving, with ``tf.compat.v1`` code:

1. **Train** the training graph (``is_training=True``: BatchNorm normalises with the batch
   statistics and updates its moving mean/variance; Dropout drops) and save a checkpoint
   with ``tf.compat.v1.train.Saver``.
2. **Freeze the inference graph**: build the same model with ``is_training=False`` (BatchNorm
   uses the moving mean/variance, Dropout is the identity), restore the checkpoint and
   ``convert_variables_to_constants`` -> ``model.pb``.
3. **Build** bundles with the command line (run here in-process)::

       acl-bundle build model.pb --inputs x:0 --outputs y:0 --batch-sizes 4 \\
           --variables conv/kernel:0,bn/gamma:0,bn/beta:0,dense/kernel:0,dense/bias:0

   The trainable variables are updatable; the BatchNorm statistics stay the constants
   frozen into the graph.  A second bundle also lists ``bn/moving_mean:0,bn/moving_variance:0``.
4. **Serve while training goes on**: the training graph keeps saving checkpoints into the
   same directory; a :class:`~acl_bundle.CheckpointWatcher` per bundle applies each one
   (Adam slots and the step counter in the checkpoint are ignored).

After every checkpoint both bundles are checked against TensorFlow's inference graph:
the first must equal it with the new trainable variables and the statistics it was
frozen with, the second with everything from the checkpoint; the two differ once the
statistics have moved, and repeated calls give identical results (Dropout is off).

Needs the ``tf`` and ``sim`` extras (``pip install -e '.[tf,sim]'``).
Run:  python samples/tf_freeze_and_build.py   (exit code 1 if a check fails)
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from acl_bundle import BundleModel, CheckpointWatcher, cli  # noqa: E402

tf1 = tf.compat.v1
BATCH = 4
TRAINABLE = ["conv/kernel:0", "bn/gamma:0", "bn/beta:0", "dense/kernel:0", "dense/bias:0"]
BN_STATS = ["bn/moving_mean:0", "bn/moving_variance:0"]


def model(is_training: bool):
    """conv 3x3 -> BatchNorm (fused) -> ReLU -> Dropout(0.5) -> dense(3); returns (x, y, BN update ops)."""
    x = tf1.placeholder(tf.float32, [None, 6, 6, 2], name="x")
    with tf1.variable_scope("conv"):
        k = tf1.get_variable("kernel", [3, 3, 2, 4], initializer=tf1.glorot_uniform_initializer(seed=1))
    h = tf.nn.conv2d(x, k, 1, "SAME")
    with tf1.variable_scope("bn"):
        gamma = tf1.get_variable("gamma", [4], initializer=tf1.ones_initializer())
        beta = tf1.get_variable("beta", [4], initializer=tf1.zeros_initializer())
        mean = tf1.get_variable("moving_mean", [4], initializer=tf1.zeros_initializer(), trainable=False)
        var = tf1.get_variable("moving_variance", [4], initializer=tf1.ones_initializer(), trainable=False)
    updates = []
    if is_training:
        h, m, v = tf1.nn.fused_batch_norm(h, gamma, beta, epsilon=1e-3, is_training=True)
        updates = [tf1.assign(mean, 0.8 * mean + 0.2 * m), tf1.assign(var, 0.8 * var + 0.2 * v)]
        h = tf1.nn.dropout(tf.nn.relu(h), rate=0.5)
    else:
        h, _, _ = tf1.nn.fused_batch_norm(h, gamma, beta, mean=mean, variance=var, epsilon=1e-3, is_training=False)
        h = tf.nn.relu(h)  # Dropout is the identity at inference
    with tf1.variable_scope("dense"):
        w = tf1.get_variable("kernel", [6 * 6 * 4, 3], initializer=tf1.glorot_uniform_initializer(seed=2))
        b = tf1.get_variable("bias", [3], initializer=tf1.zeros_initializer())
    return x, tf.identity(tf.matmul(tf.reshape(h, [-1, 6 * 6 * 4]), w) + b, name="y"), updates


class Inference:
    """TensorFlow's inference graph: trainable variables from one checkpoint, BN statistics from another."""

    def __init__(self) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x, self.y, _ = model(is_training=False)
            self.all = tf1.train.Saver()
            self.trainable = tf1.train.Saver(tf1.trainable_variables())
            self.sess = tf1.Session(graph=self.graph)

    def __call__(self, x: np.ndarray, trainable_from: str, stats_from: str) -> np.ndarray:
        with self.graph.as_default():
            self.all.restore(self.sess, stats_from)
            self.trainable.restore(self.sess, trainable_from)
            return self.sess.run(self.y, {self.x: x})


def main() -> int:
    rng = np.random.default_rng(0)
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = Path(tmp, "ckpts")
        ckpts.mkdir()
        # 1. the training graph
        train_graph = tf.Graph()
        with train_graph.as_default():
            x, y, updates = model(is_training=True)
            labels = tf1.placeholder(tf.int64, [None])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y))
            global_step = tf1.train.get_or_create_global_step()
            with tf.control_dependencies(updates):  # the BN moving averages update with every step
                train = tf1.train.AdamOptimizer(0.02).minimize(loss, global_step=global_step)
            saver = tf1.train.Saver(max_to_keep=100)
            sess = tf1.Session(graph=train_graph)
            sess.run(tf1.global_variables_initializer())

        def fit(steps: int) -> str:
            with train_graph.as_default():
                for _ in range(steps):
                    xb = (rng.standard_normal((32, 6, 6, 2)) * 2 + 1).astype(np.float32)
                    sess.run(train, {x: xb, labels: (xb.sum((1, 2, 3)) > 72).astype(np.int64) + (xb[:, 0, 0, 0] > 1)})
                return saver.save(sess, str(ckpts / "model.ckpt"), global_step=int(sess.run(global_step)))

        frozen_from = fit(20)
        # 2. the inference graph, frozen
        infer_graph = tf.Graph()
        with infer_graph.as_default():
            model(is_training=False)
            with tf1.Session(graph=infer_graph) as s:
                tf1.train.Saver().restore(s, frozen_from)
                frozen = tf1.graph_util.convert_variables_to_constants(s, infer_graph.as_graph_def(), ["y"])
        pb = Path(tmp, "model.pb")
        pb.write_bytes(frozen.SerializeToString())
        print(f"froze the inference graph from {Path(frozen_from).name}: {len(frozen.node)} nodes, "
              f"ops {sorted({n.op for n in frozen.node} - {'Const', 'Identity'})}")
        # 3. build, with the command line
        oms = {}
        for tag, chosen in (("params", TRAINABLE), ("params+bn", TRAINABLE + BN_STATS)):
            om = Path(tmp, f"{tag}.om")
            argv = ["build", str(pb), "--inputs", "x:0", "--outputs", "y:0", "--batch-sizes", str(BATCH),
                    "--variables", ",".join(chosen), "-o", str(om)]
            print("$ acl-bundle " + " ".join(a if a != str(pb) else "model.pb" for a in argv[:-2]) + f" -o {om.name}")
            if cli.main(argv) != 0:
                return 1
            oms[tag] = om
        # 4. serve while training streams checkpoints in
        reference = Inference()
        probe = (rng.standard_normal((BATCH, 6, 6, 2)) * 2 + 1).astype(np.float32)
        with BundleModel(oms["params"]) as a, BundleModel(oms["params+bn"]) as b:
            start = int(Path(frozen_from).name.rsplit("-", 1)[1])
            print(f"bundle '{oms['params'].name}' variables {[v.name for v in a.variables]}")
            print(f"bundle '{oms['params+bn'].name}' variables {[v.name for v in b.variables]}")
            with CheckpointWatcher(a, ckpts, poll_interval=0.02, start_after=start) as wa, \
                    CheckpointWatcher(b, ckpts, poll_interval=0.02, start_after=start) as wb:
                for _ in range(4):
                    prefix = fit(5)
                    step = int(Path(prefix).name.rsplit("-", 1)[1])
                    if not (wa.wait_for_step(step, timeout=30) and wb.wait_for_step(step, timeout=30)):
                        failures.append(f"step {step} was not applied to both bundles")
                        break
                    want_a = reference(probe, trainable_from=prefix, stats_from=frozen_from)
                    want_b = reference(probe, trainable_from=prefix, stats_from=prefix)
                    got_a, got_b = a.infer(probe), b.infer(probe)
                    err_a, err_b = float(np.abs(got_a - want_a).max()), float(np.abs(got_b - want_b).max())
                    gap = float(np.abs(got_a - got_b).max())
                    print(f"step {step}: |params - TF (frozen BN stats)| {err_a:.1e}, |params+bn - TF| {err_b:.1e}; "
                          f"the two bundles differ by {gap:.3f} (BN statistics moved)")
                    if err_a > 1e-5 or err_b > 1e-5:
                        failures.append(f"step {step}: bundles differ from TensorFlow by {err_a:.3g} / {err_b:.3g}")
                    if not (np.array_equal(a.infer(probe), got_a) and np.array_equal(b.infer(probe), got_b)):
                        failures.append(f"step {step}: repeated inference differs (Dropout not the identity?)")
                if not gap > 1e-3:
                    failures.append("the BN statistics never changed the output; "
                                    "the frozen/updatable check proves nothing")
        sess.close()
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("OK: the inference-mode graph served every checkpoint as TensorFlow does; "
          "BN statistics frozen unless chosen, Dropout is the identity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
