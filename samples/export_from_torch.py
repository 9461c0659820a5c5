"""From a trained PyTorch model to a simulator bundle whose updatable variables you choose.

Network: Linear(10, 16) -> BatchNorm1d(16) -> ReLU -> Dropout(0.5) -> Linear(16, 3).

* With PyTorch installed, the model is exported with ``torch.onnx.export`` in eval
  mode.  Without it (the default here: torch is not a dependency) the same graph is
  written with ``onnx.helper``: ``Gemm(transB=1)`` for Linear (PyTorch's [out, in]
  weight layout, same initializer names as the state_dict), ``BatchNormalization``
  in inference mode and ``Dropout`` without ``training_mode``.
* **Which weights become variables**: the trainable *parameters* (``fc*.weight``,
  ``fc*.bias``, ``bn1.weight``/``bn1.bias``, BatchNorm's affine gamma/beta).  The
  BatchNorm *running statistics* (``running_mean``/``running_var``, buffers, not
  parameters) stay frozen constants of the infer graph: in eval mode BatchNorm is
  the fixed affine map ``(h - mean) / sqrt(var + eps) * gamma + beta``, so pushing
  new gamma/beta changes the output while the statistics you deployed with stay put.
  To refresh statistics too, pass them in ``variables=`` as well.
* **Dropout** is the identity at inference (eval mode / no ``training_mode``), so it
  has no variables and the served output is deterministic.
* A fine-tuned checkpoint saved from ``DataParallel`` (names ``module.fc1.weight``,
  plus buffers and ``num_batches_tracked``) is loaded with
  :func:`acl_bundle.checkpoint.load_checkpoint` using ``strip_prefix="module."`` and a
  ``rename`` callable that drops the buffers on purpose.

Every output is checked against an independent numpy forward pass of the eval-mode
network.  Run:  python samples/export_from_torch.py   (exit code 1 if a check fails)
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")

BATCH, N_IN, HIDDEN, N_OUT, EPS = 4, 10, 16, 3, 1e-5


def reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """Eval-mode forward pass in numpy (float64): BN with running stats, Dropout = identity."""
    f = {k: np.asarray(v, np.float64) for k, v in w.items()}
    h = x.astype(np.float64) @ f["fc1.weight"].T + f["fc1.bias"]
    h = (h - f["bn1.running_mean"]) / np.sqrt(f["bn1.running_var"] + EPS) * f["bn1.weight"] + f["bn1.bias"]
    h = np.maximum(h, 0)
    return h @ f["fc2.weight"].T + f["fc2.bias"]


def random_state(seed: int) -> dict[str, np.ndarray]:
    """A 'trained' state_dict: parameters plus non-trivial BatchNorm statistics."""
    r = np.random.default_rng(seed)
    f32 = np.float32
    return {
        "fc1.weight": (r.standard_normal((HIDDEN, N_IN)) * 0.3).astype(f32),
        "fc1.bias": r.uniform(-0.2, 0.2, HIDDEN).astype(f32),
        "bn1.weight": r.uniform(0.5, 1.5, HIDDEN).astype(f32),
        "bn1.bias": r.uniform(-0.3, 0.3, HIDDEN).astype(f32),
        "bn1.running_mean": r.uniform(-0.5, 0.5, HIDDEN).astype(f32),
        "bn1.running_var": r.uniform(0.5, 2.0, HIDDEN).astype(f32),
        "fc2.weight": (r.standard_normal((N_OUT, HIDDEN)) * 0.3).astype(f32),
        "fc2.bias": r.uniform(-0.2, 0.2, N_OUT).astype(f32),
    }


PARAMETERS = ["fc1.weight", "fc1.bias", "bn1.weight", "bn1.bias", "fc2.weight", "fc2.bias"]


def export_with_torch(state: dict[str, np.ndarray], path: Path) -> list[str]:
    """Export with torch.onnx.export; return the parameter names (the variables to choose)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(N_IN, HIDDEN)
            self.bn1 = nn.BatchNorm1d(HIDDEN, eps=EPS)
            self.drop = nn.Dropout(0.5)
            self.fc2 = nn.Linear(HIDDEN, N_OUT)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.drop(torch.relu(self.bn1(self.fc1(x)))))

    net = Net()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    net.eval()  # BatchNorm uses running stats, Dropout is the identity
    kwargs = {"input_names": ["x"], "output_names": ["y"], "opset_version": 17, "do_constant_folding": False,
              "training": torch.onnx.TrainingMode.EVAL}
    try:
        torch.onnx.export(net, (torch.zeros(BATCH, N_IN),), str(path), dynamo=False, **kwargs)
    except TypeError:  # older torch: no dynamo= argument
        torch.onnx.export(net, (torch.zeros(BATCH, N_IN),), str(path), **kwargs)
    return [n for n, _ in net.named_parameters()]


def export_with_onnx_helper(state: dict[str, np.ndarray], path: Path) -> list[str]:
    """Write the same eval-mode graph with onnx.helper; return the parameter names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], transB=1, name="fc1"),
        helper.make_node("BatchNormalization", ["h1", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
                         ["h2"], epsilon=EPS, name="bn1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("Dropout", ["h3"], ["h4"], name="drop"),  # no training_mode input: identity
        helper.make_node("Gemm", ["h4", "fc2.weight", "fc2.bias"], ["y"], transB=1, name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "torch_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, N_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, N_OUT])],
        initializer=[numpy_helper.from_array(v, k) for k, v in state.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="export_from_torch.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return list(PARAMETERS)


def main() -> int:
    from acl_bundle import BundleModel
    from acl_bundle.checkpoint import CheckpointMismatchError, load_checkpoint
    from acl_bundle.sim import builder

    failures: list[str] = []
    state = random_state(0)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp, "net.onnx")
        try:
            import torch  # noqa: F401

            params = export_with_torch(state, onnx_path)
            how = "torch.onnx.export"
        except ImportError:
            params = export_with_onnx_helper(state, onnx_path)
            how = "onnx.helper (torch not installed)"
        print(f"exported with {how}: {onnx_path.name}")
        print(f"variables (trainable parameters): {params}")
        print("constants (BatchNorm running statistics): ['bn1.running_mean', 'bn1.running_var']")
        om, _ = builder.save(builder.build_bundle(onnx_path, variables=params), Path(tmp, "net.om"))

        with BundleModel(om) as m:
            names = [v.name for v in m.variables]
            if names != params:
                failures.append(f"bundle variables {names}, expected {params}")
            x = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
            err0 = float(np.abs(m.infer(x) - reference(x, state)).max())
            print(f"as exported: max |bundle - numpy eval-mode reference| = {err0:.1e}")

            # A fine-tuned checkpoint from a DataParallel trainer: 'module.' names, buffers included.
            tuned = random_state(2)
            ckpt = Path(tmp, "finetuned.npz")
            np.savez(ckpt, **{f"module.{k}": v for k, v in tuned.items()},
                     **{"module.bn1.num_batches_tracked": np.array(7)})
            try:
                load_checkpoint(ckpt, m, strip_prefix="module.")
                failures.append("a checkpoint with buffers loaded strictly; expected a CheckpointMismatchError")
            except CheckpointMismatchError as e:
                print(f"strict load refuses the extras, as it should:\n  {e}")
            buffers = ("running_mean", "running_var", "num_batches_tracked")
            weights = load_checkpoint(ckpt, m, strip_prefix="module.",
                                      rename=lambda n: None if n.endswith(buffers) else n)  # drop buffers on purpose
            version = m.update(weights)
            served = m.infer(x)
            # Expected: new parameters, the *deployed* running statistics (frozen constants).
            expected = reference(x, {**tuned, "bn1.running_mean": state["bn1.running_mean"],
                                     "bn1.running_var": state["bn1.running_var"]})
            err1 = float(np.abs(served - expected).max())
            wrong = float(np.abs(served - reference(x, tuned)).max())  # as if the stats had been updated
            print(f"after update (version {version}, {len(weights)} variables): max |bundle - reference| = {err1:.1e} "
                  f"(vs {wrong:.2f} if the running stats had changed)")
    if err0 > 1e-4:
        failures.append(f"exported bundle differs from the reference by {err0:.3g}")
    if err1 > 1e-4:
        failures.append(f"updated bundle differs from the reference by {err1:.3g}")
    if not wrong > 1e-3:
        failures.append("the running-statistics check cannot tell frozen from updated statistics")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("OK: parameters are live variables, BatchNorm statistics frozen, Dropout is the identity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
