"""What every scenario uses: the machine, medians and paired ratios, table rows, simulator counters, and the
temporary bundles and models of a run (BenchContext)."""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import BenchConfig, MiB, Progress


def machine_info() -> dict[str, Any]:
    """CPU count, platform and the versions every figure depends on."""
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def ratio_of(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """median(a) / median(b), plus the range of the per-round paired ratios (noise)."""
    pairs = [x / y for x, y in zip(a, b) if y > 0]
    return {
        "ratio": median(a) / median(b),
        "paired_min": min(pairs) if pairs else None,
        "paired_max": max(pairs) if pairs else None,
    }


#: per-round paired ratios spreading more than this (max / min) make a row UNRELIABLE
SPREAD_LIMIT = 1.5


def table_row(scenario: int, label: str, ratio: float | None, op: str | None, goal: float | None, *,
              unit: str = "x", suspect: str | None = None, **detail: Any) -> dict:
    """One table line; ``unit`` is "x" for a ratio, "" for a count or a yes/no (1/0).

    ``reliable`` is False when ``suspect`` names a reason (e.g. negative overhead) or the
    per-round ratios (``paired_min``/``paired_max``) spread more than SPREAD_LIMIT-fold.
    """
    ok = None
    if op is not None and ratio is not None:
        ok = {"<=": ratio <= goal, ">=": ratio >= goal, "==": ratio == goal}[op]  # type: ignore[operator]
    lo, hi = detail.get("paired_min"), detail.get("paired_max")
    if suspect is None and lo is not None and hi is not None and (lo <= 0 or hi / lo > SPREAD_LIMIT):
        suspect = f"rounds spread {hi / lo if lo > 0 else float('inf'):.2f}-fold (> {SPREAD_LIMIT})"
    return {"scenario": scenario, "label": label, "ratio": ratio, "unit": unit, "op": op, "goal": goal, "pass": ok,
            "reliable": suspect is None, "unreliable_because": suspect, "detail": detail}


def sim_delta(before: dict, after: dict) -> dict[str, Any]:
    calls = {k: after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in after["calls"]}
    return {
        "mallocs": after["mallocs"] - before["mallocs"],
        "h2d": after["bytes_copied"]["HOST_TO_DEVICE"] - before["bytes_copied"]["HOST_TO_DEVICE"],
        "d2h": after["bytes_copied"]["DEVICE_TO_HOST"] - before["bytes_copied"]["DEVICE_TO_HOST"],
        "applied": after["update_bytes_applied"] - before["update_bytes_applied"],
        "calls": {k: v for k, v in calls.items() if v},
    }


def size_text(nbytes: int) -> str:
    return f"{nbytes / MiB:g} MiB" if nbytes >= MiB else f"{nbytes / 1024:g} KiB"


def fresh_copies(x: np.ndarray, n: int) -> list[np.ndarray]:
    """n distinct copies of x (see the module docstring: simulator numpy_to_ptr artefact)."""
    return [x.copy() for _ in range(n)]


class BenchContext:
    """Temporary directory, bundle builder and the set of open models, closed on exit."""

    def __init__(self, cfg: BenchConfig, progress: Progress) -> None:
        from .. import sim

        self.cfg = cfg
        self.progress = progress
        self.sim = sim
        self.acl = sim.acl
        self.tmp = tempfile.TemporaryDirectory(prefix="acl-bundle-bench-")
        self.rng = np.random.default_rng(cfg.seed)
        self._n = 0

    def build(self, proto: Any, *, batch_sizes: Sequence[int] | None = None, init: bool = True) -> str:
        from ..sim import builder

        self._n += 1
        mf = builder.build_bundle(proto, init=init, batch_sizes=list(batch_sizes) if batch_sizes else None)
        om, _ = builder.save(mf, Path(self.tmp.name) / f"b{self._n}.om")
        return str(om)

    def open(self, path: str, **kw: Any) -> Any:
        from ..model import BundleModel

        return BundleModel(path, acl=self.acl, **kw)

    def close(self) -> None:
        self.tmp.cleanup()
