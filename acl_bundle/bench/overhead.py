"""Scenarios 1, 6 and 9: the wrapper's cost per infer call, its device allocations, the command's start-up."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .config import BenchConfig
from .harness import (
    BenchContext,
    fresh_copies,
    median,
    ratio_of,
    sim_delta,
    table_row,
)
from .raw import RawInfer


def s1_wrapper_overhead(c: BenchContext) -> dict:
    cfg = c.cfg
    rows: list[dict] = []
    notes: list[str] = []
    _s1_models(c, cfg, rows)
    notes.append("raw = numpy_to_ptr + memcpy H2D + execute + np.empty + numpy_to_ptr + memcpy D2H on a second "
                 "load of the same bundle file, datasets pre-built; both sides return a new array")
    notes.append("overhead_us = wrapper - raw = the wrapper's own cost per call: its Python (validation, slot pool, "
                 "locks) plus one acl.rt.get_context; the simulator's execute of a small MLP is far cheaper than a "
                 "real NPU launch, so the same microseconds weigh more here")
    notes.append(
        "timing: call by call, wrapper and raw alternating (w r r w ...) in one thread, s1_calls pairs "
        "per round, each side's median per round, ratio = the median of the rounds' ratios; the raw datasets are "
        "loaded into the wrapper's context, "
        "so neither side switches contexts (the wrapper still reads the thread's context once per call); a "
        "thread that keeps another context current pays two acl.rt.set_context more per wrapper call "
        "(the caller's context is given back every time)"
    )
    return {"rows": rows, "notes": notes}


def _alternate(
    fw: Callable[[Any], Any], fr: Callable[[Any], Any], xw: Sequence[Any], xr: Sequence[Any]
) -> tuple[float, float]:
    """Median seconds per call of ``fw`` and ``fr``, timed call by call, alternating (w r r w w r ...).

    Alternating single calls puts both sides under the same machine state (frequency,
    neighbours, caches) to within one call; the median drops the calls a preemption hit.
    """
    pc = time.perf_counter_ns
    tw: list[int] = []
    tr: list[int] = []
    for i, (a, b) in enumerate(zip(xw, xr)):
        if i & 1:
            t0 = pc(); fr(b); t1 = pc(); fw(a); t2 = pc()  # noqa: E702
            tr.append(t1 - t0)
            tw.append(t2 - t1)
        else:
            t0 = pc(); fw(a); t1 = pc(); fr(b); t2 = pc()  # noqa: E702
            tw.append(t1 - t0)
            tr.append(t2 - t1)
    return 1e-9 * median(tw), 1e-9 * median(tr)


def _s1_models(c: BenchContext, cfg: BenchConfig, rows: list) -> None:
    from ..sim import models

    for name, sizes in cfg.s1_models.items():
        proto, _ = models.mlp(sizes, seed=cfg.seed)
        path = c.build(proto, batch_sizes=sorted(set(cfg.s1_batches)))
        m = c.open(path, max_concurrency=1)
        raws: dict[int, RawInfer] = {}
        try:
            for b in cfg.s1_batches:  # the raw datasets live in the wrapper's context: see the note
                raws[b] = RawInfer(c.acl, path, b, context=m.context)
            for b in cfg.s1_batches:
                c.progress(f"1 wrapper overhead: {name} MLP {sizes}, batch {b}")
                x = c.rng.standard_normal((b, sizes[0])).astype(np.float32)
                raw = raws[b]
                np.testing.assert_allclose(m.infer(x), raw(x), rtol=1e-5, atol=1e-5)  # same work, same answer
                warm = time.perf_counter() + cfg.s1_warmup_s  # a new process's first calls run slower (heap growth)
                while time.perf_counter() < warm:
                    _alternate(m.infer, raw, fresh_copies(x, 10), fresh_copies(x, 10))
                tw, tr = [], []
                for _r in range(cfg.rounds):
                    w, r = _alternate(m.infer, raw, fresh_copies(x, cfg.s1_calls), fresh_copies(x, cfg.s1_calls))
                    tw.append(w)
                    tr.append(r)
                q = ratio_of(tw, tr)
                # each round's two medians come from the same calls' neighbourhood: the median of the
                # per-round ratios, not the ratio of medians taken across rounds the machine ran at different speeds
                ratio = median([w / r for w, r in zip(tw, tr)])
                # issue 16: the specialised path's goal is <= 1.05x on the tiny model and the small one at batch 1
                goal = 1.05 if name == "tiny" or (name == "small" and b == 1) else 1.10
                rows.append(table_row(1, f"infer {name} b={b}", ratio, "<=", goal,
                                      suspect="negative overhead (wrapper faster than raw)" if ratio < 1 else None,
                                      wrapper_us=1e6 * median(tw), raw_us=1e6 * median(tr),
                                      overhead_us=1e6 * (median(tw) - median(tr)),
                                      paired_min=q["paired_min"], paired_max=q["paired_max"]))
        finally:
            for raw in raws.values():
                raw.close()
            m.close()


def s6_allocations(c: BenchContext) -> dict:
    from ..sim import models

    cfg = c.cfg
    sizes = cfg.s4_model
    proto, w0 = models.mlp(sizes, seed=cfg.seed)
    batches = [1, 4]
    path = c.build(proto, batch_sizes=batches)
    names = list(w0)
    m = c.open(path)
    try:
        xs = {b: c.rng.standard_normal((b, sizes[0])).astype(np.float32) for b in batches}
        # warm up: every batch size's slot exists, every variable was updated once
        for b in batches:
            m.infer(xs[b])
        m.update(w0)
        c.progress(f"6 allocation discipline: {cfg.s6_calls} steady-state calls")
        before = c.sim.stats()
        half = cfg.s6_calls // 2
        for i in range(half):
            m.infer(xs[batches[i % 2]])
            k = names[i % len(names)]
            m.update({k: w0[k]} if i % 3 else w0)
        d = sim_delta(before, c.sim.stats())
    finally:
        m.close()
    n_calls = 2 * half
    per_k = lambda v: 1000.0 * v / n_calls  # noqa: E731
    creates = sum(v for k, v in d["calls"].items() if ".create_" in k)
    return {"rows": [
        table_row(6, "device mallocs per 1000 infer/update calls", per_k(d["mallocs"]), "==", 0.0, unit="",
                  calls=n_calls),
        table_row(6, "ACL create_* calls per 1000 calls", per_k(creates), None, None, unit="",
                  acl_calls_per_call=sum(d["calls"].values()) / n_calls),
    ], "facts": {"mallocs": d["mallocs"], "creates": creates, "calls": n_calls}, "notes": []}


def s9_startup(c: BenchContext) -> dict:
    """Whole-process start-up: ``acl-bundle --help`` and ``acl-bundle serve --help`` vs ``python -c pass``.

    The commands run as the console script does (``acl_bundle.cli.main``) in a new
    interpreter each time, interleaved with the bare interpreter in rotating order.
    """
    import subprocess

    from .._files import package_root

    cfg = c.cfg
    run = [sys.executable, "-c", "import sys; from acl_bundle.cli import main; sys.exit(main(sys.argv[1:]))"]
    cmds = {
        "bare": [sys.executable, "-c", "pass"],
        "--help": run + ["--help"],
        "serve --help": run + ["serve", "--help"],
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(cfg.s9_rounds):
        c.progress(f"9 start-up: round {r + 1}/{cfg.s9_rounds}")
        names = list(cmds)
        names = names[r % len(names):] + names[:r % len(names)]  # rotate: no command always goes first
        for name in names:
            t0 = time.perf_counter()
            subprocess.run(cmds[name], check=True, stdout=subprocess.DEVNULL, env=env, cwd=package_root())
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name in ("--help", "serve --help"):
        pairs = sorted(a / b for a, b in zip(times[name], times["bare"]))
        q1, q3 = (float(np.percentile(pairs, p)) for p in (25, 75))
        rows.append(table_row(9, f"acl-bundle {name} vs python -c pass", median(pairs), "<=", 2.5,
                              ms=1e3 * median(times[name]), bare_ms=1e3 * median(times["bare"]),
                              paired_min=q1, paired_max=q3))
    return {"rows": rows, "notes": ["whole process, wall clock: a new interpreter per run, the command as the "
                                         "console script runs it; python -c pass is the floor; ratio = median of the "
                                         "per-round ratios, 'rounds' = their interquartile range (one process start "
                                         "is a single sample, so the extremes of many rounds are the machine's)"]}
