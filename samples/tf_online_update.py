"""Online update from a TensorFlow trainer: ``{var.name: value}`` pushed every step, inference serving the whole time.

The key->value workflow of a TF1 trainer, on the simulator::

    values = sess.run({v.name: v for v in tf.compat.v1.trainable_variables()})   # {"dense/kernel:0": ...}
    model.update(values)                                                        # unchanged TF names
    y = model.infer(x)

1. The TF1 graph (a two-layer softmax classifier written with ``tf.compat.v1``) is frozen
   once with ``convert_variables_to_constants`` and built into a bundle with
   :func:`acl_bundle.sim.tf_builder.build_bundle_from_tf` (what ``acl-bundle build model.pb
   --inputs x:0 --outputs y:0`` does); the bundle's variables are the TF variables, named
   ``dense/kernel:0`` etc.
2. The trainer runs Adam steps in its session and pushes ``{var.name: value}`` of the
   trainable variables after every step; a serving thread calls ``model.infer(x,
   return_version=True)`` the whole time.
3. TensorFlow is the reference: after each push the same session computes ``y`` for the
   probe batch with the weights just pushed; every result the serving thread got must
   equal TensorFlow's output for the version that produced it (a torn update would not).

Prints the update and infer timings.  Needs the ``tf`` and ``sim`` extras (``pip install -e '.[tf,sim]'``).
Run:  python samples/tf_online_update.py        (exit code 1 if a check fails)
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from acl_bundle import BundleModel  # noqa: E402
from acl_bundle.sim import builder, tf_builder  # noqa: E402

tf1 = tf.compat.v1
N_IN, HIDDEN, N_OUT, BATCH, STEPS = 16, 32, 5, 8, 60


def dense(x, n: int, name: str):
    with tf1.variable_scope(name):
        w = tf1.get_variable("kernel", [int(x.shape[-1]), n],
                             initializer=tf1.glorot_uniform_initializer(seed=len(name)))
        b = tf1.get_variable("bias", [n], initializer=tf1.zeros_initializer())
    return tf.matmul(x, w) + b


def main() -> int:
    rng = np.random.default_rng(0)
    true_w = rng.standard_normal((N_IN, N_OUT))
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, N_IN], name="x")
        labels = tf1.placeholder(tf.int64, [None])
        logits = dense(tf.nn.relu(dense(x, HIDDEN, "dense")), N_OUT, "out")
        y = tf.nn.softmax(logits, name="y")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = tf1.train.AdamOptimizer(0.02).minimize(loss)
        trainable = {v.name: v for v in tf1.trainable_variables()}
        sess = tf1.Session(graph=graph)
        sess.run(tf1.global_variables_initializer())
        frozen = tf1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["y"])

    failures: list[str] = []
    probe = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        mf = tf_builder.build_bundle_from_tf(frozen, inputs=[f"x:0[{BATCH},{N_IN}]"], outputs=["y:0"])
        om, _ = builder.save(mf, os.path.join(tmp, "classifier.om"))
        with BundleModel(om) as m:
            print(f"bundle variables (TF names): {[v.name for v in m.variables]}")
            reference = {0: sess.run(y, {x: probe})}  # version -> TensorFlow's output for the probe
            served: list[tuple[int, np.ndarray]] = []
            infer_s: list[float] = []
            stop = threading.Event()

            def serve() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    out, version = m.infer(probe, return_version=True)
                    infer_s.append(time.perf_counter() - t0)
                    served.append((version, out))

            server = threading.Thread(target=serve)
            server.start()
            update_s = []
            try:
                for _ in range(STEPS):
                    xb = rng.standard_normal((64, N_IN)).astype(np.float32)
                    sess.run(train, {x: xb, labels: (xb @ true_w).argmax(1)})
                    values = sess.run(trainable)  # {"dense/kernel:0": array, ...}, as a TF trainer pushes them
                    t0 = time.perf_counter()
                    version = m.update(values)
                    update_s.append(time.perf_counter() - t0)
                    reference[version] = sess.run(y, {x: probe})  # the same weights, in TensorFlow
                    time.sleep(0.002)
            finally:
                stop.set()
                server.join()
            worst = 0.0
            for version, out in served:
                worst = max(worst, float(np.abs(out - reference[version]).max()))
            versions = {v for v, _ in served}
            print(f"{STEPS} pushes of {len(values)} variables ({sum(a.nbytes for a in values.values()):,} bytes): "
                  f"update median {1e3 * statistics.median(update_s):.3f} ms; "
                  f"{len(served)} infers (batch {BATCH}) median {1e3 * statistics.median(infer_s):.3f} ms, "
                  f"served {len(versions)} versions")
            print(f"every served result vs TensorFlow's output for its version: max |diff| {worst:.1e}")
            if worst > 1e-5:
                failures.append(f"a served result differs from TensorFlow's by {worst:.3g}")
            if m.version != STEPS:
                failures.append(f"model version {m.version}, expected {STEPS}")
            final = m.infer(probe)
            if not np.allclose(final, reference[STEPS], atol=1e-6):
                failures.append("the final weights do not serve TensorFlow's final output")
            acc = float((final.argmax(1) == (probe @ true_w).argmax(1)).mean())
            print(f"final model: accuracy on the probe batch {acc:.2f}")
    sess.close()
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("OK: every served result matched TensorFlow's output for the weights of its version")
    return 0


if __name__ == "__main__":
    sys.exit(main())
