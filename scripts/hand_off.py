#!/usr/bin/env python
"""Experiment behind ``Gate.hand_off`` (acl_bundle/_model/gate.py, issue 16).

After a commit, the readers it held back are woken but need the GIL, which the
committing thread keeps for its own bookkeeping until it next blocks.  ``hand_off``
makes the committing thread block until those readers have started (at most
``HAND_OFF_S``).  This script measures the pause an update causes with and without it,
interleaved in one process on one loaded 7 MiB MLP bundle, as bench scenario 8 does:
per update, the longest extra wait of an infer call that overlapped it over that
update's own commit (the worst update of a 1 s window), and the p99 under 10 Hz full
updates over the p99 without.

    PYTHONPATH=. .venv/bin/python scripts/hand_off.py --threads 1 2 --rounds 6

Simulator only; prints one line per variant and thread count with the per-round values.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from acl_bundle import BundleModel, sim
from acl_bundle._model.gate import Gate
from acl_bundle.bench.harness import fresh_copies
from acl_bundle.bench.latency import stalls, timeline
from acl_bundle.sim import builder, models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()

    real_hand_off = Gate.hand_off
    variants = {"hand-off": real_hand_off, "none": lambda self, timeout=0.0: None}
    proto, w0 = models.mlp((512, 1024, 1024, 256), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        om, _ = builder.save(builder.build_bundle(proto, init=False), Path(tmp) / "m.om")
        upd = {k: (v * 0.5).astype(v.dtype) for k, v in w0.items()}
        xs = fresh_copies(np.ones((1, 512), np.float32), 64)
        for threads in args.threads:
            with BundleModel(str(om), acl=sim.acl, max_concurrency=threads) as m:
                m.update(upd)
                timeline(m, xs, threads, 0.2, None, upd)  # warm: every slot built
                stall: dict[str, list[float]] = {k: [] for k in variants}
                p99: dict[str, list[float]] = {k: [] for k in variants}
                try:
                    for r in range(args.rounds):
                        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                            Gate.hand_off = variants[name]  # type: ignore[method-assign]
                            base = [b - a for a, b in timeline(m, xs, threads, args.seconds, None, upd)[0]]
                            calls, updates = timeline(m, xs, threads, args.seconds, 10.0, upd)
                            ratios, _alone = stalls(calls, updates, statistics.median(base))
                            stall[name].append(max(ratios))
                            lat = [b - a for a, b in calls]
                            p99[name].append(float(np.percentile(lat, 99) / np.percentile(base, 99)))
                finally:
                    Gate.hand_off = real_hand_off  # type: ignore[method-assign]
                for name in variants:
                    print(f"{threads} infer thread(s), {name:8s}: longest stall / its commit, median "
                          f"{statistics.median(stall[name]):.3f} "
                          f"(rounds {', '.join(f'{x:.2f}' for x in stall[name])}); "
                          f"p99 under 10 Hz / p99 without, median {statistics.median(p99[name]):.3f}")


if __name__ == "__main__":
    main()
