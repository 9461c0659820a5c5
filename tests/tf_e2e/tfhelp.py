"""TensorFlow as the oracle: restore a checkpoint into the trainer's own model code and run it."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tf_trainer

HERE = Path(__file__).resolve().parent
TRAINER = HERE / "tf_trainer.py"


class TF1Oracle:
    """The trainer's TF1 inference graph in a session; ``__call__(prefix, x)`` restores a checkpoint and runs ``y``."""

    def __init__(self, hidden: int) -> None:
        import tensorflow as tf

        tf1 = tf.compat.v1
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x, self.y = tf_trainer.tf1_model(hidden)
            self.saver = tf1.train.Saver(tf1.global_variables())  # the model's variables only
            self.sess = tf1.Session(graph=self.graph)

    def __call__(self, prefix: str | os.PathLike[str], x: np.ndarray) -> np.ndarray:
        with self.graph.as_default():
            self.saver.restore(self.sess, str(prefix))
            return self.sess.run(self.y, {self.x: x})

    def weights(self, prefix: str | os.PathLike[str]) -> dict[str, np.ndarray]:
        """``{var.name: value}`` after restoring ``prefix``, as a TF1 trainer would push them."""
        import tensorflow as tf

        with self.graph.as_default():
            self.saver.restore(self.sess, str(prefix))
            variables = tf.compat.v1.trainable_variables()
            return dict(zip([v.name for v in variables], self.sess.run(variables)))

    def close(self) -> None:
        self.sess.close()


class TF2Oracle:
    """The trainer's TF2 module; ``__call__(prefix, x)`` restores with ``tf.train.Checkpoint`` and runs ``serve``."""

    def __init__(self, hidden: int) -> None:
        import tensorflow as tf

        self.tf = tf
        self.net = tf_trainer.Net(hidden)

    def __call__(self, prefix: str | os.PathLike[str], x: np.ndarray) -> np.ndarray:
        self.tf.train.Checkpoint(model=self.net).restore(str(prefix)).expect_partial()
        return self.net.serve(self.tf.constant(x))["y"].numpy()

    def close(self) -> None:
        pass


def oracle(variant: str, hidden: int) -> TF1Oracle | TF2Oracle:
    return TF1Oracle(hidden) if variant == "tf1" else TF2Oracle(hidden)


class Trainer:
    """tf_trainer.py as its own process (plain TensorFlow, no acl_bundle on its path).

    Its stdout lines are collected by a thread."""

    def __init__(self, variant: str, directory: Path, *, steps: int, every: int = 2, hidden: int = 16,
                 export: Path | None = None, resume: bool = False, keep: int = 1000, seed: int = 0,
                 hold: bool = False) -> None:
        import queue
        import tempfile
        import threading

        cmd = [sys.executable, str(TRAINER), "--variant", variant, "--dir", str(directory), "--steps", str(steps),
               "--every", str(every), "--hidden", str(hidden), "--keep", str(keep), "--seed", str(seed)]
        if export is not None:
            cmd += ["--export", str(export)]
        if resume:
            cmd.append("--resume")
        if hold:
            cmd.append("--hold")
        directory.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (the process's stderr, closed by close())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=env, cwd=str(directory.parent))
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in self.proc.stdout:
                self._q.put(line.strip())
            self._q.put(None)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def wait_line(self, prefix: str, timeout: float = 120.0) -> str:
        """Block until the trainer prints a line starting with ``prefix``; AssertionError if it ends or times out."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"trainer printed no {prefix!r} within {timeout} s") from None
            if line is None:
                raise AssertionError(f"trainer ended before {prefix!r}: rc={self.proc.wait()}\n{self.err()}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def go(self) -> None:
        """Release a trainer started with ``hold=True``."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def err(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def kill(self) -> int:
        """SIGKILL (by PID, via Popen) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=30)

    def wait(self, timeout: float = 300.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=5)
        while not self._q.empty():
            line = self._q.get()
            if line is not None:
                self.lines.append(line)
        return rc

    def close(self) -> None:
        self.kill()
        self._thread.join(timeout=5)
        for f in (self.proc.stdout, self.proc.stdin, self.stderr):
            with contextlib.suppress(OSError):  # stdin of a killed process
                f.close()


# --------------------------------------------------------------------------- an inference-mode graph (BN + Dropout)
def conv_bn_model(is_training: bool):
    """TF1 code as users write it: conv -> BatchNorm (fused; moving statistics) -> ReLU -> Dropout -> dense.

    ``is_training=False`` builds the inference graph: BN on its moving mean/variance, Dropout the identity.
    Returns (x, y, update_ops).
    """
    import tensorflow as tf

    tf1 = tf.compat.v1
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
        updates = [tf1.assign(mean, 0.5 * mean + 0.5 * m), tf1.assign(var, 0.5 * var + 0.5 * v)]
    else:
        h, _, _ = tf1.nn.fused_batch_norm(h, gamma, beta, mean=mean, variance=var, epsilon=1e-3, is_training=False)
    h = tf.nn.relu(h)
    if is_training:
        h = tf1.nn.dropout(h, rate=0.5)
    h = tf.reshape(h, [-1, 6 * 6 * 4])
    with tf1.variable_scope("dense"):
        w = tf1.get_variable("kernel", [6 * 6 * 4, 3], initializer=tf1.glorot_uniform_initializer(seed=2))
        b = tf1.get_variable("bias", [3], initializer=tf1.zeros_initializer())
    return x, tf.identity(tf.matmul(h, w) + b, name="y"), updates


TRAINABLE = ["conv/kernel:0", "bn/gamma:0", "bn/beta:0", "dense/kernel:0", "dense/bias:0"]
BN_STATS = ["bn/moving_mean:0", "bn/moving_variance:0"]
