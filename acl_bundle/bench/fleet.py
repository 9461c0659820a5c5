"""``acl-bundle fleet-bench``: publish to a fleet vs one replica's own update, and commit skew.

Per size, rounds interleave A (``fleet.publish`` of a full update to N replicas) and B
(``update`` of the same weights inside one standalone replica process, timed there), in
A/B/B/A order.  Ratios are p50/p50 and p99/p99.  Commit skew: first to last replica's
commit end, read from the replicas' clocks (one host: one clock)."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("acl_bundle")

MiB = 1 << 20
GOALS = {"skew_p99_ms_4mib": 5.0, "publish_ratio": 2.0}


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run_fleet_bench(*, replicas: int = 4, sizes_mib: tuple[int, ...] = (4, 64), rounds: int = 20,
                    num_cpus: int = 2) -> list[dict[str, Any]]:
    """Return one row per size: publish p50/p99 and ratios to a single update, commit skew p50/p99."""
    import ray

    from ..fleet import Fleet, ObjectStoreTransport
    from ..fleet.replica import ReplicaActor
    from ..sim import builder, models

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="acl_bundle_fleet_bench_") as d:
            for mib in sizes_mib:
                n = int(np.sqrt(mib * MiB / 4))  # one n x n float32 weight (plus an n-float bias)
                model, w0 = models.mlp((n, n), seed=0)
                om, _ = builder.save(builder.build_bundle(model, init=True), Path(d) / f"b{mib}.om")
                rng = np.random.default_rng(0)
                with Fleet(str(om), replicas=replicas, backend="sim", timeout=120) as fleet:
                    solo = ray.remote(ReplicaActor).options(num_cpus=0, max_concurrency=2).remote(
                        "solo", str(om), replicas, "sim", {}, ObjectStoreTransport(), None)
                    try:
                        pub, one, skew = [], [], []
                        step = 0
                        for r in range(rounds + 1):  # round 0 warms up
                            for kind in ("AB" if r % 2 == 0 else "BA"):
                                w = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in w0.items()}
                                step += 1
                                if kind == "A":
                                    t0 = time.perf_counter()
                                    res = fleet.publish(w, step)
                                    dt = time.perf_counter() - t0
                                    if r:
                                        pub.append(dt)
                                        skew.append(res.commit_skew)
                                else:
                                    ref = ray.put(w)
                                    dt = ray.get(solo.update_locally.remote([ref], step), timeout=120)
                                    if r:
                                        one.append(dt)
                    finally:
                        ray.get(solo.close.remote(), timeout=60)
                        ray.kill(solo)
                nbytes = sum(v.nbytes for v in w0.values())
                rows.append({
                    "size_mib": nbytes / MiB, "replicas": replicas, "rounds": rounds,
                    "publish_ms_p50": 1e3 * _pct(pub, 50), "publish_ms_p99": 1e3 * _pct(pub, 99),
                    "update_ms_p50": 1e3 * _pct(one, 50), "update_ms_p99": 1e3 * _pct(one, 99),
                    "ratio_p50": _pct(pub, 50) / _pct(one, 50), "ratio_p99": _pct(pub, 99) / _pct(one, 99),
                    "skew_ms_p50": 1e3 * _pct(skew, 50), "skew_ms_p99": 1e3 * _pct(skew, 99),
                })
    finally:
        if started:
            ray.shutdown()
    return rows


def format_fleet_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'size':>8}  {'publish p50/p99 ms':>19}  {'1 update p50/p99 ms':>20}  {'ratio p50/p99':>14}  "
            f"{'commit skew p50/p99 ms':>23}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['size_mib']:6.1f}Mi  {r['publish_ms_p50']:8.1f} /{r['publish_ms_p99']:8.1f}  "
            f"{r['update_ms_p50']:9.2f} /{r['update_ms_p99']:8.2f}  {r['ratio_p50']:6.2f}x/{r['ratio_p99']:6.2f}x  "
            f"{r['skew_ms_p50']:11.2f} /{r['skew_ms_p99']:8.2f}")
    lines.append(f"goals: commit skew p99 <= {GOALS['skew_p99_ms_4mib']} ms at 4 MiB; "
                 f"publish <= {GOALS['publish_ratio']}x one update")
    return "\n".join(lines)
