"""Checkpoint hot reload across two processes: a trainer writes checkpoints, a server serves them.

    server (this process)                      trainer (child process)
    BundleModel + CheckpointWatcher  <-- dir --  write_checkpoint(dir, weights, step)

The trainer learns a softmax classifier with SGD and commits a checkpoint every few
steps with :func:`acl_bundle.checkpoint.write_checkpoint` (data file via temp name +
fsync + atomic rename, then a JSON marker with the SHA-256: the commit point).  At the
end it "crashes" half-way through writing one more checkpoint (a data file, no
marker), which the server must ignore.  The server keeps inferring the whole time and
checks, at the end:

* the applied steps only ever increased;
* the last committed step was applied, the half-written one was not;
* the served outputs equal an independent numpy forward pass of the weights read
  straight from the last checkpoint file with ``numpy.load``.

Run:  python samples/checkpoint_hot_reload.py     (exit code 1 if a check fails)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")

N_FEATURES, N_CLASSES, BATCH = 12, 3, 16


def reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """Independent numpy forward pass of the linear softmax classifier (float64)."""
    z = x.astype(np.float64) @ w["W1"].astype(np.float64) + w["b1"].astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def trainer(directory: Path, steps: int, every: int, seed: int) -> int:
    """The trainer process: numpy SGD, a checkpoint every ``every`` steps, then a crash mid-write."""
    from acl_bundle.checkpoint import write_checkpoint

    rng = np.random.default_rng(seed)
    true_w = rng.standard_normal((N_FEATURES, N_CLASSES))
    w = {"W1": np.zeros((N_FEATURES, N_CLASSES)), "b1": np.zeros(N_CLASSES)}
    last = 0
    for step in range(1, steps + 1):
        x = rng.standard_normal((64, N_FEATURES))
        y = (x @ true_w).argmax(1)
        p = reference(x, w)
        p[np.arange(len(y)), y] -= 1
        w["W1"] -= 0.5 * x.T @ p / len(y)
        w["b1"] -= 0.5 * p.mean(0)
        if step % every == 0:
            info = write_checkpoint(directory, {k: v.astype(np.float32) for k, v in w.items()}, step, keep=4)
            print(f"[trainer] committed step {step}: {info.path.name} sha256 {info.sha256[:12]}…", flush=True)
            last = step
            time.sleep(0.05)  # a real trainer trains for a while between checkpoints
    # Simulated crash half-way through the next checkpoint: data bytes, no marker.
    partial = directory / f"step-{last + every:08d}.npz"
    partial.write_bytes(b"PK\x03\x04" + os.urandom(100))
    print(f"[trainer] crashed while writing {partial.name} (no marker)", flush=True)
    return 0


def server(steps: int, every: int, seed: int) -> int:
    from acl_bundle import BundleModel
    from acl_bundle.checkpoint import MARKER_SUFFIX
    from acl_bundle.sim import builder, models
    from acl_bundle.watcher import CheckpointWatcher

    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp, "checkpoints")
        ckpt.mkdir()
        onnx_model, _ = models.classifier(N_FEATURES, N_CLASSES, batch=BATCH, zeros=True)
        om, _ = builder.save(builder.build_bundle(onnx_model), Path(tmp, "classifier.om"))
        applied_steps: list[int] = []
        with BundleModel(om) as model, CheckpointWatcher(
            model, ckpt, poll_interval=0.05, on_apply=lambda a: applied_steps.append(a.step)
        ) as watcher:
            child = subprocess.Popen([sys.executable, __file__, "--trainer", str(ckpt), "--steps", str(steps),
                                      "--every", str(every), "--seed", str(seed)])
            rng = np.random.default_rng(1)
            served = 0
            while child.poll() is None:  # keep serving while the trainer works
                model.infer(rng.standard_normal((BATCH, N_FEATURES)).astype(np.float32))
                served += 1
                time.sleep(0.002)
            if child.returncode != 0:
                failures.append(f"trainer exited with {child.returncode}")
            final = (steps // every) * every
            if not watcher.wait_for_step(final, timeout=30):
                failures.append(f"step {final} was not applied (applied: {watcher.applied_step})")
            time.sleep(0.2)  # give the watcher time to look at the half-written file
            watcher.poll()
            last_marker = sorted(ckpt.glob(f"*{MARKER_SUFFIX}"))[-1]
            data_file = ckpt / f"step-{final:08d}.npz"
            with np.load(data_file, allow_pickle=False) as z:  # independent of acl_bundle.checkpoint
                expected_w = {k: z[k] for k in z.files}
            x = rng.standard_normal((BATCH, N_FEATURES)).astype(np.float32)
            logits, probs = model.infer(x)
            err = float(np.abs(probs - reference(x, expected_w)).max())
            print(f"[server] served {served} infer calls while the trainer ran; applied steps {applied_steps}")
            print(f"[server] serving step {watcher.applied_step} (version {model.version}); "
                  f"last marker {last_marker.name}; skipped {watcher.skipped}")
            print(f"[server] outputs vs numpy reference of {data_file.name}: max |diff| {err:.1e}")
            if err > 1e-5:
                failures.append(f"served probabilities differ from the reference by {err:.3g}")
            if watcher.applied_step != final:
                failures.append(f"serving step {watcher.applied_step}, expected {final} "
                                "(the half-written file must be ignored)")
            if applied_steps != sorted(set(applied_steps)) or not applied_steps:
                failures.append(f"applied steps not strictly increasing: {applied_steps}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("OK: the server followed the trainer's checkpoints and ignored the half-written one")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", metavar="DIR", help=argparse.SUPPRESS)  # internal: run as the trainer
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.trainer:
        return trainer(Path(a.trainer), a.steps, a.every, a.seed)
    return server(a.steps, a.every, a.seed)


if __name__ == "__main__":
    sys.exit(main())
