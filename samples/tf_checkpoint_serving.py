"""A TensorFlow trainer and an acl_bundle server as two processes on one checkpoint directory.

    server (this process)                               trainer (child process, plain TensorFlow)
    build the bundle from the trainer's export   <--    export: frozen model.pb (TF1) / SavedModel (TF2)
    BundleModel + CheckpointWatcher(m, "ckpts/") <--    TF1: saver.save(sess, "ckpts/model.ckpt", global_step=step)
                                                        TF2: manager.save(checkpoint_number=step)

The trainer is the ordinary TF code (it never imports acl_bundle): TF1 ``tf.compat.v1``
graph + ``Saver``, or TF2 ``tf.Module`` + Keras Adam + ``tf.train.CheckpointManager``.
It first exports the inference model, then trains and checkpoints every few steps.
The server builds a bundle from the export (variables named by their TF names), watches
the directory (TF's ``checkpoint`` state file is the commit point), and keeps inferring.
After every applied checkpoint it checks the bundle against TensorFlow itself: the
trainer's model code restores that checkpoint (``Saver.restore`` /
``tf.train.Checkpoint.restore``) and runs on the same inputs.  Then it kills the trainer
at a random moment (SIGKILL, as a preempted job dies, possibly mid-save) and checks that
it serves exactly TF's newest committed checkpoint.

Needs the ``tf`` and ``sim`` extras (``pip install -e '.[tf,sim]'``).
Run:  python samples/tf_checkpoint_serving.py [--variant tf1|tf2|both]     (exit code 1 if a check fails)
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N_IN, HIDDEN, N_OUT, BATCH, EVERY = 12, 32, 4, 8, 3


# --------------------------------------------------------------------------- the TF model (shared by both sides)
def tf1_model(tf):
    """TF1 code: x -> dense(relu) -> out = y; variables dense/kernel, dense/bias, out/kernel, out/bias."""
    tf1 = tf.compat.v1

    def dense(h, n, name):
        with tf1.variable_scope(name):
            w = tf1.get_variable("kernel", [int(h.shape[-1]), n],
                                 initializer=tf1.glorot_uniform_initializer(seed=len(name)))
            b = tf1.get_variable("bias", [n], initializer=tf1.zeros_initializer())
        return tf.matmul(h, w) + b

    x = tf1.placeholder(tf.float32, [None, N_IN], name="x")
    return x, tf.identity(dense(tf.nn.relu(dense(x, HIDDEN, "dense")), N_OUT, "out"), name="y")


def tf2_net(tf):
    """TF2 code: the same network as a tf.Module with a serving signature x -> {"y": ...}."""

    class Dense(tf.Module):
        def __init__(self, n_in, n_out, name):
            super().__init__(name=name)
            init = tf.keras.initializers.GlorotUniform(seed=len(name))
            self.kernel = tf.Variable(init([n_in, n_out]), name=f"{name}/kernel")
            self.bias = tf.Variable(tf.zeros([n_out]), name=f"{name}/bias")

        def __call__(self, h):
            return tf.matmul(h, self.kernel) + self.bias

    class Net(tf.Module):
        def __init__(self):
            super().__init__(name="net")
            self.dense = Dense(N_IN, HIDDEN, "dense")
            self.out = Dense(HIDDEN, N_OUT, "out")

        @tf.function(input_signature=[tf.TensorSpec([None, N_IN], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.out(tf.nn.relu(self.dense(x)))}

    return Net()


# --------------------------------------------------------------------------- trainer process (no acl_bundle)
def trainer(variant: str, directory: Path, export: Path) -> int:
    import tensorflow as tf

    print(f"[trainer {variant}] TensorFlow {tf.__version__}; acl_bundle imported: {'acl_bundle' in sys.modules}",
          flush=True)
    rng = np.random.default_rng(0)
    true_w = rng.standard_normal((N_IN, N_OUT))

    def batch():
        xb = rng.standard_normal((64, N_IN)).astype(np.float32)
        return xb, (xb @ true_w).argmax(1)

    if variant == "tf1":
        tf1 = tf.compat.v1
        graph = tf.Graph()
        with graph.as_default():
            x, y = tf1_model(tf)
            labels = tf1.placeholder(tf.int64, [None])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y))
            step = tf1.train.get_or_create_global_step()
            train = tf1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
            saver = tf1.train.Saver(max_to_keep=1000)
            with tf1.Session(graph=graph) as sess:
                sess.run(tf1.global_variables_initializer())
                frozen = tf1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), ["y"])
                Path(f"{export}.tmp").write_bytes(frozen.SerializeToString())
                os.replace(f"{export}.tmp", export)
                while True:  # until the server kills us
                    xb, yb = batch()
                    sess.run(train, {x: xb, labels: yb})
                    s = int(sess.run(step))
                    if s % EVERY == 0:
                        saver.save(sess, str(directory / "model.ckpt"), global_step=s)
                    time.sleep(0.01)
    net = tf2_net(tf)
    opt = tf.keras.optimizers.Adam(0.01)
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=net, optimizer=opt, step=step), str(directory),
                                         max_to_keep=1000)
    tf.saved_model.save(net, f"{export}.tmp", signatures=net.serve)
    os.replace(f"{export}.tmp", export)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=net.serve(xb)["y"]))
        opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        step.assign_add(1)

    while True:
        train_step(*batch())
        if int(step.numpy()) % EVERY == 0:
            manager.save(checkpoint_number=int(step.numpy()))
        time.sleep(0.01)


# --------------------------------------------------------------------------- server (this process)
class Oracle:
    """TensorFlow's own inference of a checkpoint: the trainer's model code restores it and runs."""

    def __init__(self, tf, variant: str) -> None:
        self.tf, self.variant = tf, variant
        if variant == "tf1":
            self.graph = tf.Graph()
            with self.graph.as_default():
                self.x, self.y = tf1_model(tf)
                self.saver = tf.compat.v1.train.Saver()
                self.sess = tf.compat.v1.Session(graph=self.graph)
        else:
            self.net = tf2_net(tf)

    def __call__(self, prefix: Path, x: np.ndarray) -> np.ndarray:
        if self.variant == "tf1":
            with self.graph.as_default():
                self.saver.restore(self.sess, str(prefix))
                return self.sess.run(self.y, {self.x: x})
        self.tf.train.Checkpoint(model=self.net).restore(str(prefix)).expect_partial()
        return self.net.serve(self.tf.constant(x))["y"].numpy()


def serve(variant: str, seed: int) -> list[str]:
    import tensorflow as tf

    from acl_bundle import BundleModel, CheckpointWatcher
    from acl_bundle.sim import builder, tf_builder

    failures: list[str] = []
    rng = np.random.default_rng(seed)
    x_check = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    oracle = Oracle(tf, variant)
    tmp = Path(tempfile.mkdtemp(prefix=f"tf_serving_{variant}_"))
    try:
        ckpts = tmp / "ckpts"
        ckpts.mkdir()
        export = tmp / ("model.pb" if variant == "tf1" else "saved_model")
        child = subprocess.Popen([sys.executable, __file__, "--trainer", variant, "--dir", str(ckpts),
                                  "--export", str(export)])
        try:
            deadline = time.monotonic() + 300
            while not export.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not export.exists():
                return [f"{variant}: the trainer exported no model (exit code {child.poll()})"]
            if variant == "tf1":
                cmd = f"acl-bundle build {export.name} --inputs x:0 --outputs y:0 --batch-sizes {BATCH}"
                mf = tf_builder.build_bundle_from_tf(export, inputs=["x:0"], outputs=["y:0"], batch_sizes=[BATCH])
            else:
                cmd = f"acl-bundle build {export.name}/ --batch-sizes {BATCH}"
                mf = tf_builder.build_bundle_from_tf(export, batch_sizes=[BATCH])
            om, _ = builder.save(mf, tmp / "model.om")
            print(f"[server {variant}] built {om.name} from the trainer's {export.name} (as `{cmd}`): variables "
                  f"{[v.name for v in mf.variables]}")
            applied: list[int] = []
            lock = threading.Lock()
            with BundleModel(om) as model:

                def check(a) -> None:  # in the watcher thread, right after each update
                    y, version = model.infer(x_check, return_version=True)
                    err = float(np.abs(y - oracle(a.path, x_check)).max())
                    with lock:
                        applied.append(a.step)
                        if version != a.version or err > 1e-5:
                            failures.append(f"{variant} step {a.step}: version {version}/{a.version}, "
                                            f"|bundle - TF| {err:.3g}")
                    print(f"[server {variant}] step {a.step:3d} -> version {a.version:2d}: "
                          f"read {1e3 * a.read_seconds:5.1f} ms, "
                          f"update {1e3 * a.update_seconds:5.2f} ms, commit->served {1e3 * a.lag_seconds:5.1f} ms, "
                          f"|bundle - TF| {err:.1e}", flush=True)

                with CheckpointWatcher(model, ckpts, poll_interval=0.05, on_apply=check) as watcher:
                    served = 0
                    while len(applied) < 5 and child.poll() is None and time.monotonic() < deadline:
                        model.infer(rng.standard_normal((BATCH, N_IN)).astype(np.float32))
                        served += 1
                        time.sleep(0.002)
                    time.sleep(random.Random(seed).uniform(0, 0.3))
                    child.kill()  # a preempted trainer: SIGKILL at a random moment, maybe mid-save
                    child.wait()
                    state = tf.train.get_checkpoint_state(str(ckpts))  # TF's own reading of its commit point
                    newest = Path(state.model_checkpoint_path)
                    newest_step = int(newest.name.rsplit("-", 1)[1])
                    if not watcher.wait_for_step(newest_step, timeout=30):
                        failures.append(f"{variant}: step {newest_step} (TF's newest commit) was not applied")
                    time.sleep(0.2)
                    watcher.poll()
                    leftovers = sorted(p.name for p in ckpts.iterdir() if "temp" in p.name)
                    print(f"[server {variant}] trainer killed; TF's newest commit is {newest.name}, serving step "
                          f"{watcher.applied_step}; {served} infers while it trained; "
                          f"half-written files left: {leftovers or 'none'}")
                    if watcher.applied_step != newest_step:
                        failures.append(f"{variant}: serving step {watcher.applied_step}, "
                                        f"TF's newest commit is {newest_step}")
                    err = float(np.abs(model.infer(x_check) - oracle(ckpts / newest.name, x_check)).max())
                    if err > 1e-5:
                        failures.append(f"{variant}: final weights differ from TF's newest checkpoint by {err:.3g}")
                    if len(applied) < 5 or applied != sorted(set(applied)):
                        failures.append(f"{variant}: applied steps {applied} (expected at least 5, increasing)")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["tf1", "tf2", "both"], default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trainer", choices=["tf1", "tf2"], help=argparse.SUPPRESS)  # internal: run as the trainer
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--export", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trainer:
        return trainer(a.trainer, Path(a.dir), Path(a.export))
    failures = []
    for variant in (["tf1", "tf2"] if a.variant == "both" else [a.variant]):
        failures += serve(variant, a.seed)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("OK: after every applied checkpoint the bundle matched TensorFlow's own inference of it; "
          "the killed trainer's newest commit is served")
    return 0


if __name__ == "__main__":
    sys.exit(main())
