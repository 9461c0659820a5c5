#!/usr/bin/env python
"""Experiment behind the one-input copy of the fast path (acl_bundle/_model/fastinfer.py, issue 16).

Builds, on one loaded tiny MLP bundle (8-16-4, batch 1), the fast path as shipped (the
one-input variant) and the same module's loop version (``fast`` for any input count),
and times both call by call, alternating with the raw pyACL sequence (bench's
``RawInfer`` in the model's context), in one thread.  Prints each one's median ratio to
raw over the rounds.

    PYTHONPATH=. .venv/bin/python scripts/fast_one_input.py --rounds 10

Simulator only.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from acl_bundle import BundleModel, sim
from acl_bundle._model import fastinfer as _fastinfer
from acl_bundle.bench import RawInfer
from acl_bundle.sim import builder, models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=600, help="alternations per round")
    args = ap.parse_args()
    proto, _ = models.mlp((8, 16, 4), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        om, _ = builder.save(builder.build_bundle(proto, batch_sizes=[1, 64]), Path(tmp) / "m.om")
        with BundleModel(str(om), acl=sim.acl, max_concurrency=1) as m:
            x = np.ones((1, 8), np.float32)
            m.infer(x)  # builds the slot
            d = m._desc
            args_ = (m._ctx, d.accept, d.default_batch, m._gate.fast_reader(), m._infer_id, m._updater)
            one = _fastinfer.build(*args_)
            loops = _fastinfer.build(*args_, one_input_copy=False)
            raw = RawInfer(sim.acl, str(om), 1, context=m._ctx.handle)
            try:
                fns = {"raw": raw, "one-input": lambda a: one((a,)), "loops": lambda a: loops((a,))}
                for _ in range(2000):  # warm-up
                    for f in fns.values():
                        f(x)
                pc = time.perf_counter_ns
                ratios: dict[str, list[float]] = {k: [] for k in fns}
                names = list(fns)
                for _r in range(args.rounds):
                    t: dict[str, list[int]] = {k: [] for k in fns}
                    for k in range(args.calls):
                        for n in (names if k & 1 else names[::-1]):
                            f = fns[n]
                            t0 = pc()
                            f(x)
                            t[n].append(pc() - t0)
                    base = statistics.median(t["raw"])
                    for n in names:
                        ratios[n].append(statistics.median(t[n]) / base)
                for n in ("one-input", "loops"):
                    print(f"{n:9s}: {statistics.median(ratios[n]):.3f}x raw (rounds "
                          f"{min(ratios[n]):.3f}..{max(ratios[n]):.3f})")
            finally:
                raw.close()


if __name__ == "__main__":
    main()
