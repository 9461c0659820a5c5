#!/usr/bin/env python
"""Soak the wrapper on the simulator: many update + infer cycles, watching resources and RSS.

Each cycle pushes one complete weight set (alternating between two) and runs one
inference per batch size, checking every output against the numpy reference.
After a warm-up, the number of live simulator resources must not change at all and
the process RSS should stay flat.

    .venv/bin/python scripts/soak.py --cycles 100000          # the long run
    .venv/bin/python scripts/soak.py --cycles 2000 --every 500

Prints one line per ``--every`` cycles and a summary; exits 1 if outputs were
wrong, resources changed after warm-up, or RSS grew by ``--max-rss-growth`` bytes
or more.  The short variant runs in CI as tests/reliability/test_soak.py.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from acl_bundle import (
    BundleModel,  # noqa: E402
    sim,  # noqa: E402
)
from acl_bundle.sim import builder, models  # noqa: E402


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_counts() -> dict[str, int]:
    """Live simulator resources per kind (``initialized`` as 0/1)."""
    return {k: int(v) if isinstance(v, bool) else len(v) for k, v in sim.live_resources().items()}


def build(dir_: Path, sizes=(8, 64, 64, 4), batch_sizes=(1, 4)) -> tuple[Path, dict]:
    model, weights = models.mlp(sizes, seed=0)
    om, _ = builder.save(builder.build_bundle(model, batch_sizes=list(batch_sizes)), dir_ / "soak.om")
    return Path(om), weights


def soak(
    om: Path,
    weights: dict,
    cycles: int,
    *,
    warmup: int = 200,
    every: int = 10000,
    out: Callable[[str], None] = print,
) -> dict:
    """Run ``cycles`` update + infer cycles on a fresh simulator; return the figures."""
    sim.reset()
    rng = np.random.default_rng(1)
    sets = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in weights.items()} for _ in range(2)]
    wrong = 0
    t0 = time.perf_counter()
    with BundleModel(om) as m:
        xs = {b: rng.standard_normal((b, 8)).astype(np.float32) for b in (m.batch_sizes or (1,))}
        refs = [{b: models.mlp_reference(x, s) for b, x in xs.items()} for s in sets]
        live_warm = rss_warm = None
        for i in range(1, cycles + 1):
            k = i % 2
            m.update(sets[k])
            for b, x in xs.items():
                if not np.allclose(m.infer(x), refs[k][b], rtol=1e-4, atol=1e-5):
                    wrong += 1
            if i == min(warmup, cycles):
                gc.collect()
                live_warm, rss_warm = live_counts(), rss_bytes()
                out(f"warm-up done at cycle {i}: live resources {sum(live_warm.values())} {live_warm}, "
                    f"RSS {rss_warm / 2**20:.1f} MiB")
            if live_warm is not None and (i % every == 0 or i == cycles):
                gc.collect()
                live, rss = live_counts(), rss_bytes()
                out(f"cycle {i:>7}: live resources {sum(live.values())}, RSS {rss / 2**20:.1f} MiB "
                    f"({(rss - rss_warm) / 2**10:+.0f} KiB since warm-up), wrong outputs {wrong}, "
                    f"{i / (time.perf_counter() - t0):,.0f} cycles/s")
        gc.collect()
        live_end, rss_end = live_counts(), rss_bytes()
        version = m.version
    leaks = sim.leaks()
    return {
        "cycles": cycles,
        "infers": cycles * len(xs),
        "version": version,
        "wrong": wrong,
        "live_warm": live_warm,
        "live_end": live_end,
        "rss_warm": rss_warm,
        "rss_end": rss_end,
        "rss_growth": rss_end - rss_warm,
        "leaks_after_close": leaks,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--max-rss-growth", type=int, default=1 << 20, help="bytes (default 1 MiB)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        om, weights = build(Path(d))
        r = soak(om, weights, args.cycles, warmup=args.warmup, every=args.every)
    ok = (r["wrong"] == 0 and r["live_end"] == r["live_warm"] and not r["leaks_after_close"]
          and r["rss_growth"] < args.max_rss_growth)
    print(
        f"SOAK {'PASS' if ok else 'FAIL'}: {r['cycles']} cycles ({r['infers']} infers, {r['version']} updates) in "
        f"{r['seconds']:.1f} s; wrong outputs {r['wrong']}; live resources {sum(r['live_warm'].values())} after "
        f"warm-up -> {sum(r['live_end'].values())} at end; RSS growth after warm-up "
        f"{r['rss_growth'] / 2**10:+.0f} KiB (limit {args.max_rss_growth / 2**10:.0f} KiB); "
        f"leaks after close {r['leaks_after_close'] or 'none'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
