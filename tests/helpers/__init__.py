"""Numpy references and read-back helpers shared by the tests (importable as ``helpers``: tests/ is on pytest's path).

Suite helpers live beside it: ``helpers.serve`` (server processes), ``helpers.reliability`` (bundle files, weight
sets). Import these, never a ``conftest`` (which one ``from conftest import`` finds depends on what ran first).
"""
from __future__ import annotations

import numpy as np

from acl_bundle import sim


def reference(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """Independent numpy forward of models.mlp (float32 math, cast back)."""
    h = x.astype(np.float32)
    n = len(weights) // 2
    for i in range(n):
        h = h @ weights[f"fc{i}.weight"].astype(np.float32) + weights[f"fc{i}.bias"].astype(np.float32)
        if i < n - 1:
            h = np.maximum(h, 0)
    return h.astype(x.dtype)


def device_weights(m) -> dict[str, np.ndarray]:
    """The bundle's variables as the simulated device holds them."""
    return sim.variables(m.bundle_id)
