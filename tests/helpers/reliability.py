"""Shared material for the reliability suite: bundle files, weight sets, references (``helpers.reliability``).

The root ``conftest.py`` resets the simulator before each test and fails any test
that leaves an ACL resource alive, so every test here opens and closes its models
inside the test function.  Bundle *files* hold no ACL resources and are built once
per session.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acl_bundle import sim
from acl_bundle.sim import builder, models

SIZES = (8, 16, 4)
TOL = {"rtol": 1e-4, "atol": 1e-5}


@dataclass(frozen=True)
class Bundle:
    """A bundle file on disk with what a test needs to check its outputs."""

    path: Path
    weights: dict  # the initial weights (what the init graph sets)
    init: bool
    batch_sizes: tuple
    manifest: bool
    serves: Callable[[Any], None] | None = None  # check a loaded model's outputs (default: the MLP reference)

    def initial(self) -> dict:
        """Weights the device holds right after load (zeros when there is no init graph)."""
        if self.init:
            return dict(self.weights)
        return {k: np.zeros_like(v) for k, v in self.weights.items()}


def build(dir_: Path, name: str, *, sizes=SIZES, init=True, batch_sizes=None, manifest=True, seed=0) -> Bundle:
    model, weights = models.mlp(sizes, seed=seed)
    mf = builder.build_bundle(model, init=init, batch_sizes=batch_sizes)
    om, man = builder.save(mf, dir_ / f"{name}.om")
    if not manifest and man is not None:
        Path(man).unlink()
    return Bundle(Path(om), weights, init, tuple(batch_sizes or ()), manifest)


def build_hw(dir_: Path) -> Bundle:
    """An image model with dynamic image sizes (4, 6) and (8, 8)."""
    model, weights = models.image_model(seed=3)
    om, _ = builder.save(builder.build_bundle(model, dynamic_image_size=[(4, 6), (8, 8)]), dir_ / "hw.om")

    def serves(m: Any) -> None:
        for h, w in ((4, 6), (8, 8)):
            x = np.random.default_rng(h).standard_normal((1, 3, h, w)).astype(np.float32)
            ref = models.image_model_reference(x, weights)
            scaled, pooled = m.infer(x)
            assert np.allclose(scaled, ref["scaled"], **TOL) and np.allclose(pooled, ref["pooled"], **TOL)

    return Bundle(Path(om), weights, True, (), True, serves)


def build_dims(dir_: Path) -> Bundle:
    """A sequence model with dynamic dims gears (B, T) = (1, 5) and (2, 8)."""
    model, weights = models.sequence_model(seed=5)
    om, _ = builder.save(builder.build_bundle(model, dynamic_dims=[(1, 5, 1, 5), (2, 8, 2, 8)]), dir_ / "dims.om")

    def serves(m: Any) -> None:
        for b, t in ((1, 5), (2, 8)):
            rng = np.random.default_rng(b)
            seq = rng.standard_normal((b, t, 4)).astype(np.float32)
            mask = (rng.uniform(size=(b, t)) > 0.3).astype(np.float32)
            ref = models.sequence_model_reference(seq, mask, weights)
            proj, summed = m.infer(seq, mask)
            assert np.allclose(proj, ref["proj"], **TOL) and np.allclose(summed, ref["summed"], rtol=1e-4, atol=1e-4)

    return Bundle(Path(om), weights, True, (), True, serves)


def weight_sets(base: dict, n: int, seed: int = 1) -> list[dict]:
    """``n`` distinct complete weight sets shaped like ``base`` (well separated in output)."""
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in base.items()} for _ in range(n)]


def reference(x: np.ndarray, weights: dict) -> np.ndarray:
    """Numpy forward pass of models.mlp (independent of onnxruntime)."""
    return models.mlp_reference(x, weights)


def matches(y: np.ndarray, x: np.ndarray, weights: dict) -> bool:
    return bool(np.allclose(y, reference(x, weights), **TOL))


def snapshot(bundle_id: int) -> dict[str, bytes]:
    """The bundle's device variables as raw bytes (bit-exact comparison, NaN-safe)."""
    return {k: v.tobytes() for k, v in sim.variables(bundle_id).items()}


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc/self/statm)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_count() -> int:
    """Number of live simulator resources (each block, handle, model, device; 'initialized' counts 1)."""
    return sum(int(v) if isinstance(v, bool) else len(v) for v in sim.live_resources().values())
