"""Online update: a trainer pushes key->value weights while inference keeps serving.

The design-card usage in a realistic loop, on the simulator::

    with BundleModel("classifier.om") as m:
        m.update({"W1": w1, "b1": b1})       # only these variables are copied
        probs = m.infer(x)

A trainer thread runs SGD on a stream and pushes its weights every few steps with
``model.update``; two serving threads call ``model.infer(..., return_version=True)``
the whole time.  Every served result is checked against an independent numpy forward
pass of the weights of the version that produced it (so a torn, half-applied update
would be caught), and the timing of update vs infer is reported.

Run:  ACL_BUNDLE_BACKEND=sim python samples/online_update.py   (exit code 1 if a check fails)
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

from acl_bundle import BundleModel  # noqa: E402
from acl_bundle.sim import builder, models  # noqa: E402

N_FEATURES, N_CLASSES, HIDDEN, BATCH = 16, 5, 32, 32
PUSHES, STEPS_PER_PUSH, LR = 40, 5, 0.2


def reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """Independent numpy forward pass: softmax(relu(x W1 + b1) W2 + b2), float64."""
    h = np.maximum(x.astype(np.float64) @ w["W1"] + w["b1"], 0)
    z = h @ w["W2"] + w["b2"]
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> int:
    rng = np.random.default_rng(0)
    onnx_model, w0 = models.classifier(N_FEATURES, N_CLASSES, hidden=HIDDEN, batch=BATCH, seed=1)
    true_w = rng.standard_normal((N_FEATURES, N_CLASSES))  # the concept the trainer learns
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        om, _ = builder.save(builder.build_bundle(onnx_model), os.path.join(tmp, "classifier.om"))
        with BundleModel(om) as m:
            print(f"loaded {om}: variables {[(v.name, v.shape) for v in m.variables]}")
            history = {0: {k: v.astype(np.float64) for k, v in w0.items()}}  # version -> weights
            hist_lock = threading.Lock()
            stop = threading.Event()
            infer_times: list[float] = []
            checked = [0]

            def serve(seed: int) -> None:
                r = np.random.default_rng(seed)
                while not stop.is_set():
                    x = r.standard_normal((BATCH, N_FEATURES)).astype(np.float32)
                    t0 = time.perf_counter()
                    (_, probs), version = m.infer(x, return_version=True)
                    infer_times.append(time.perf_counter() - t0)
                    with hist_lock:
                        w = history[version]  # the trainer records a version before pushing it
                    err = float(np.abs(probs - reference(x, w)).max())
                    if err > 1e-4:
                        failures.append(f"version {version}: served probs differ from the reference by {err:.3g}")
                    checked[0] += 1

            servers = [threading.Thread(target=serve, args=(s,)) for s in (1, 2)]
            for t in servers:
                t.start()
            # Trainer: SGD on the hidden->output layer (W2, b2); W1/b1 stay as built.
            w = {k: v.astype(np.float64) for k, v in w0.items()}
            update_times = []
            for push in range(1, PUSHES + 1):
                for _ in range(STEPS_PER_PUSH):
                    x = rng.standard_normal((64, N_FEATURES))
                    y = (x @ true_w).argmax(1)
                    h = np.maximum(x @ w["W1"] + w["b1"], 0)
                    p = reference(x, w)
                    p[np.arange(len(y)), y] -= 1
                    w["W2"] -= LR * h.T @ p / len(y)
                    w["b2"] -= LR * p.mean(0)
                snapshot = {"W2": w["W2"].astype(np.float32), "b2": w["b2"].astype(np.float32)}
                t0 = time.perf_counter()
                # Record before pushing so a server seeing the new version finds it.
                with hist_lock:
                    history[m.version + 1] = {**history[m.version],
                                              **{k: v.astype(np.float64) for k, v in snapshot.items()}}
                version = m.update(snapshot)
                update_times.append(time.perf_counter() - t0)
                if version != push:
                    failures.append(f"push {push} returned version {version}")
                time.sleep(0.002)
            stop.set()
            for t in servers:
                t.join()

            x = rng.standard_normal((BATCH, N_FEATURES)).astype(np.float32)
            _, probs = m.infer(x)
            final_err = float(np.abs(probs - reference(x, history[m.version])).max())
            xs = rng.standard_normal((2000, N_FEATURES))
            acc0 = float(np.mean(reference(xs, history[0]).argmax(1) == (xs @ true_w).argmax(1)))
            acc1 = float(np.mean(reference(xs, history[m.version]).argmax(1) == (xs @ true_w).argmax(1)))
            st = m.stats

    print(f"{PUSHES} updates of W2,b2 while 2 threads served {checked[0]} infer calls")
    print(f"update: median {1e3 * statistics.median(update_times):.3f} ms "
          f"(stage {1e3 * st['stage_seconds'] / st['updates']:.3f} ms "
          f"+ commit {1e3 * st['commit_seconds'] / st['updates']:.3f} ms)")
    print(f"infer (batch {BATCH}): median {1e3 * statistics.median(infer_times):.3f} ms")
    print(f"accuracy of the served weights on the trainer's task (numpy reference): {acc0:.3f} -> {acc1:.3f}")
    print(f"final outputs vs numpy reference: max |diff| {final_err:.1e}")
    if final_err > 1e-4:
        failures.append(f"final outputs differ from the reference by {final_err:.3g}")
    if not checked[0]:
        failures.append("no infer call was checked")
    if not acc1 > acc0:
        failures.append(f"training did not improve accuracy ({acc0:.3f} -> {acc1:.3f})")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures[:10]), file=sys.stderr)
        return 1
    print("OK: every served result matched the weights of its version")
    return 0


if __name__ == "__main__":
    sys.exit(main())
