"""Benchmarks on the simulator: wrapper vs raw pyACL, update cost, serving under updates.

Run from the command line (``acl-bundle bench [--quick] [--json F] [--plot F] [--only 1,3]``)
or from Python::

    from acl_bundle.bench import BenchConfig, run_bench, format_table
    results = run_bench(BenchConfig(quick=True))
    print(format_table(results))

Every figure is a ratio of two things measured in the same run, interleaved A/B/A/B
over several rounds, each side summarised by its median (shared, noisy machines).
The scenarios and their goals:

1. wrapper overhead: ``BundleModel.infer`` vs the minimal raw pyACL sequence
   (pre-built datasets, memcpy in, execute, memcpy out) on a second loaded copy of
   the same bundle file; goal <= 1.05x for the tiny model and the small one at batch 1
   (the specialised infer path), <= 1.10x for the others.
2. update proportional to change: 1, 10, 100 of 100 equal variables vs all 100;
   goal 1-of-100 <= 0.05x.
3. update bandwidth: one large update vs ``numpy.copyto`` of the same bytes (the
   host's memory bandwidth, the simulator's physical limit).  The goal (>= 0.8x)
   applies to the *stage* (host->device copy; PCIe on real hardware).  The *commit*
   (the update graph's device-side copy, HBM speed on real hardware) is a second host
   memcpy in the simulator, so the full-update ratio is shown beside it, for
   information.  Bytes copied per update (simulator counters) must equal the
   changed bytes.
4. full update vs ``numpy.copyto`` of the same bytes (an update copies them twice:
   host->device, then the update graph's device copy); goal >= 0.45x.
5. infer throughput of several threads while updates stream at 10 Hz (goal >= 0.9x)
   and at the maximum rate (for information) vs without updates.
6. device mallocs per 1,000 steady-state infer/update calls; goal 0.
8. pause: the longest infer stall a full update causes, with 1 infer thread and as
   many as cores, on a 7 MiB MLP and a 256 MiB embedding bundle, as a ratio to the
   commit's own duration (goal <= 1.2x) and to the no-update p99 (for information);
   and the p99 under updates vs without (goal <= 1.2x).
7. staging memory: ``device_bytes`` beyond the variables, as a fraction of their bytes,
   for 100 x 1 MiB variables updated one at a time through a one-variable staging pool
   (goal <= 0.10); the default pool (every update fits) beside it, for information.
9. start-up: ``acl-bundle --help`` and ``acl-bundle serve --help`` as whole processes vs
   ``python -c pass``; goal <= 2.5x.

Every timed row carries a reliability verdict: a wrapper faster than the raw sequence
it wraps (negative overhead), or per-round ratios spreading more than
``SPREAD_LIMIT``-fold, prints UNRELIABLE instead of PASS/FAIL (rerun on a quieter
machine).

The simulator's ``numpy_to_ptr`` registers a new host region on every call, even for
an array it has seen, and the registrations of a live array pile up (each call then
scans them all).  Real pyACL does nothing of the kind, so every timed call here gets
a fresh input array (built before the timed block), for the raw sequence and the
wrapper alike.
"""
from __future__ import annotations

import bisect
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import _backend
from .._constants import (
    ACL_DYNAMIC_TENSOR_NAME,
    ACL_MEM_MALLOC_HUGE_FIRST,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_TO_NUMPY,
)

__all__ = ["BenchConfig", "SCENARIOS", "run_bench", "format_table", "write_json", "write_plot", "machine_info"]

FORMAT = "acl-bundle-bench"
VERSION = 1
MiB = 1 << 20

#: scenario number -> short name
SCENARIOS: dict[int, str] = {
    1: "wrapper overhead",
    2: "update proportional to change",
    3: "update bandwidth",
    4: "update vs physical bound",
    7: "staging memory",
    5: "serving under updates",
    6: "allocation discipline",
    8: "pause caused by an update",
    9: "start-up",
}

Progress = Callable[[str], None]


@dataclass
class BenchConfig:
    """Sizes and repetitions; the defaults run in well under 2 minutes on 2 cores.

    ``quick=True`` replaces every size by a small one (CI smoke test, a few seconds).
    ``only`` restricts the run to some scenario numbers (1..9).
    """

    quick: bool = False
    only: Sequence[int] | None = None
    rounds: int = 7  # interleaved A/B rounds per measurement
    seed: int = 0
    # 1. wrapper overhead: MLP layer sizes per model, batch sizes, infer calls per timed block
    s1_models: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {"tiny": (8, 16, 4), "small": (64, 128, 10), "medium": (512, 1024, 1024, 256)}
    )
    s1_batches: tuple[int, ...] = (1, 64)
    s1_calls: int = 200
    s1_warmup_s: float = 0.3  # untimed alternation before each configuration's rounds
    # 2. update proportional to change: variables x float32 elements each, updates per block
    s2_variables: int = 100
    s2_size: int = 256 * 1024  # 1 MiB per variable
    s2_counts: tuple[int, ...] = (1, 10, 100)
    s2_calls: int = 5
    # 3. update bandwidth: total variable bytes, split into this many variables
    s3_bytes: int = 256 * MiB
    s3_variables: int = 16
    s3_rounds: int = 7
    # 4. update vs reload: MLP sizes
    s4_model: tuple[int, ...] = (512, 1024, 1024, 256)
    s4_rounds: int = 5
    # 5. serving under updates: MLP sizes, infer threads, seconds per window, update rates
    s5_model: tuple[int, ...] = (512, 1024, 1024, 256)
    s5_threads: int = 3
    s5_seconds: float = 1.5
    s5_rounds: int = 3
    # 6. allocation discipline: steady-state calls counted
    s6_calls: int = 1000
    # 8. pause: bundles (label -> kind, sizes, update rate Hz), infer thread counts (() = 1 and the cores),
    # seconds per window, interleaved rounds
    s8_bundles: dict[str, tuple[str, tuple[int, ...], float]] = field(default_factory=lambda: {
        "7 MiB MLP": ("mlp", (512, 1024, 1024, 256), 10.0),
        "256 MiB embedding": ("embedding", (16, 65536, 64), 4.0),
    })
    s8_threads: tuple[int, ...] = ()
    s8_seconds: float = 1.0
    s8_rounds: int = 5
    # 9. start-up: interleaved whole-process runs of each command and of ``python -c pass``
    s9_rounds: int = 20

    def __post_init__(self) -> None:
        if self.quick:
            self.rounds = 3
            self.s1_models = {"tiny": (4, 8, 2), "small": (16, 32, 8), "medium": (128, 256, 64)}
            self.s1_batches = (1, 8)
            self.s1_calls = 30
            self.s1_warmup_s = 0.02
            self.s2_size = 4096
            self.s2_calls = 3
            self.s3_bytes = 16 * MiB
            self.s3_variables = 4
            self.s3_rounds = 3
            self.s4_model = (64, 128, 10)
            self.s4_rounds = 3
            self.s5_model = (64, 128, 10)
            self.s5_threads = 2
            self.s5_seconds = 0.25
            self.s5_rounds = 2
            self.s6_calls = 200
            self.s8_bundles = {"0.4 MiB MLP": ("mlp", (64, 512, 128, 64), 10.0),
                               "4 MiB embedding": ("embedding", (4, 4096, 64), 10.0)}
            self.s8_seconds = 0.3
            self.s8_rounds = 2
            self.s9_rounds = 3
        if self.only is not None:
            bad = [s for s in self.only if s not in SCENARIOS]
            if bad or not self.only:
                raise ValueError(f"only must name scenarios among {sorted(SCENARIOS)}, got {list(self.only)}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")

    def selected(self) -> list[int]:
        return sorted(set(self.only)) if self.only is not None else sorted(SCENARIOS)


# ---------------------------------------------------------------------------- helpers
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


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """median(a) / median(b), plus the range of the per-round paired ratios (noise)."""
    pairs = [x / y for x, y in zip(a, b) if y > 0]
    return {
        "ratio": _median(a) / _median(b),
        "paired_min": min(pairs) if pairs else None,
        "paired_max": max(pairs) if pairs else None,
    }


#: per-round paired ratios spreading more than this (max / min) make a row UNRELIABLE
SPREAD_LIMIT = 1.5


def _row(scenario: int, label: str, ratio: float | None, op: str | None, goal: float | None, *,
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


def _sim_delta(before: dict, after: dict) -> dict[str, Any]:
    calls = {k: after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in after["calls"]}
    return {
        "mallocs": after["mallocs"] - before["mallocs"],
        "h2d": after["bytes_copied"]["HOST_TO_DEVICE"] - before["bytes_copied"]["HOST_TO_DEVICE"],
        "d2h": after["bytes_copied"]["DEVICE_TO_HOST"] - before["bytes_copied"]["DEVICE_TO_HOST"],
        "applied": after["update_bytes_applied"] - before["update_bytes_applied"],
        "calls": {k: v for k, v in calls.items() if v},
    }


def _timed(fn: Callable[[Any], Any], args: Sequence[Any]) -> float:
    """Seconds per call of ``fn`` over ``args`` (one call per item)."""
    t0 = time.perf_counter()
    for a in args:
        fn(a)
    return (time.perf_counter() - t0) / max(len(args), 1)


def _size(nbytes: int) -> str:
    return f"{nbytes / MiB:g} MiB" if nbytes >= MiB else f"{nbytes / 1024:g} KiB"


def _fresh(x: np.ndarray, n: int) -> list[np.ndarray]:
    """n distinct copies of x (see the module docstring: simulator numpy_to_ptr artefact)."""
    return [x.copy() for _ in range(n)]


class _Ctx:
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


class RawInfer:
    """The minimal hand-written pyACL inference sequence for one bundle file (pyACL documentation).

    Loads its own copy of the bundle, runs the init graph, pre-builds the infer
    graph's datasets for one batch size; ``__call__`` is then memcpy in, execute,
    memcpy out.  Uses ``acl.*`` calls only (no wrapper code).  Open it while a
    :class:`BundleModel` holds the runtime, close it first.
    """

    def __init__(self, acl: Any, path: str, batch: int, device_id: int = 0, context: int = 0) -> None:
        self.acl = acl
        self.ctx = 0  # the context it loads into and runs in (set by _open)
        self._undo: list[Callable[[], Any]] = []
        self._owns_init = False
        try:
            self._open(path, batch, device_id, context)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ok(ret: int, what: str) -> None:
        if ret != 0:
            raise RuntimeError(f"raw pyACL: {what} returned {ret}")

    def _open(self, path: str, batch: int, dev: int, context: int) -> None:
        acl, ok, undo = self.acl, self._ok, self._undo
        ret = acl.init()
        if ret not in (0, _backend.REPEAT_INITIALIZE):
            ok(ret, "acl.init")
        finalize_reference = getattr(acl, "finalize_reference", None)
        if finalize_reference is not None:  # every acl.init, 100002 included, holds a reference
            undo.append(finalize_reference)
        elif ret == 0:
            self._owns_init = True
            undo.append(acl.finalize)
        ok(acl.rt.set_device(dev), "acl.rt.set_device")
        undo.append(lambda: acl.rt.reset_device(dev))
        if context:  # load into (and run in) a context the caller owns, e.g. the wrapper's own
            ok(acl.rt.set_context(context), "acl.rt.set_context")
        ctx, ret = acl.rt.get_context()
        ok(ret, "acl.rt.get_context")
        self.ctx = ctx
        bundle_id, ret = acl.mdl.bundle_load_from_file(path)
        ok(ret, "acl.mdl.bundle_load_from_file")
        undo.append(lambda: acl.mdl.bundle_unload(bundle_id))
        n, ret = acl.mdl.bundle_get_model_num(bundle_id)
        ok(ret, "acl.mdl.bundle_get_model_num")
        ids = []
        for i in range(n):
            mid, ret = acl.mdl.bundle_get_model_id(bundle_id, i)
            ok(ret, "acl.mdl.bundle_get_model_id")
            ids.append(mid)
        if n == 3:  # [infer, init, update]: run init once, with empty datasets
            ins, outs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
            try:
                ok(acl.mdl.execute(ids[1], ins, outs), "acl.mdl.execute(init)")
            finally:
                acl.mdl.destroy_dataset(ins)
                acl.mdl.destroy_dataset(outs)
        self.infer_id = ids[0]
        desc = acl.mdl.create_desc()
        undo.append(lambda: acl.mdl.destroy_desc(desc))
        ok(acl.mdl.get_desc(desc, self.infer_id), "acl.mdl.get_desc")
        mb_index, ret = acl.mdl.get_input_index_by_name(desc, ACL_DYNAMIC_TENSOR_NAME)
        dynamic = ret == 0

        def buffer(size: int) -> tuple[int, int]:
            ptr, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
            ok(ret, "acl.rt.malloc")
            undo.append(lambda: acl.rt.free(ptr))
            db = acl.create_data_buffer(ptr, size)
            undo.append(lambda: acl.destroy_data_buffer(db))
            return ptr, db

        def dataset() -> int:
            ds = acl.mdl.create_dataset()
            undo.append(lambda: acl.mdl.destroy_dataset(ds))
            return ds

        self.in_ds, self.out_ds = dataset(), dataset()
        n_in = acl.mdl.get_num_inputs(desc)
        data_inputs = [i for i in range(n_in) if not (dynamic and i == mb_index)]
        if len(data_inputs) != 1 or acl.mdl.get_num_outputs(desc) != 1:
            raise ValueError("RawInfer handles one data input and one output")
        for i in range(n_in):
            ptr, db = buffer(acl.mdl.get_input_size_by_index(desc, i))
            _, ret = acl.mdl.add_dataset_buffer(self.in_ds, db)
            ok(ret, "acl.mdl.add_dataset_buffer")
            if i == data_inputs[0]:
                self.in_ptr, self.in_size = ptr, acl.mdl.get_input_size_by_index(desc, i)
        if dynamic:
            ok(
                acl.mdl.set_dynamic_batch_size(self.infer_id, self.in_ds, mb_index, batch),
                "acl.mdl.set_dynamic_batch_size",
            )
        # After set_dynamic_batch_size, get_cur_output_dims gives this batch's dims
        # (get_output_dims would give the largest batch's).
        dims, ret = acl.mdl.get_cur_output_dims(desc, 0)
        ok(ret, "acl.mdl.get_cur_output_dims")
        self.out_shape = tuple(dims["dims"][: dims["dimCount"]])
        self.out_dtype = ACL_TO_NUMPY[acl.mdl.get_output_data_type(desc, 0)]
        size = acl.mdl.get_output_size_by_index(desc, 0)
        self.out_ptr, db = buffer(size)
        _, ret = acl.mdl.add_dataset_buffer(self.out_ds, db)
        ok(ret, "acl.mdl.add_dataset_buffer")
        self.out_nbytes = int(np.prod(self.out_shape)) * self.out_dtype.itemsize

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acl = self.acl
        ret = acl.rt.memcpy(self.in_ptr, self.in_size, acl.util.numpy_to_ptr(x), x.nbytes, ACL_MEMCPY_HOST_TO_DEVICE)
        if ret:
            self._ok(ret, "acl.rt.memcpy")
        ret = acl.mdl.execute(self.infer_id, self.in_ds, self.out_ds)
        if ret:
            self._ok(ret, "acl.mdl.execute")
        out = np.empty(self.out_shape, self.out_dtype)
        ret = acl.rt.memcpy(acl.util.numpy_to_ptr(out), self.out_nbytes, self.out_ptr, self.out_nbytes,
                            ACL_MEMCPY_DEVICE_TO_HOST)
        if ret:
            self._ok(ret, "acl.rt.memcpy")
        return out

    def close(self) -> None:
        """Release in reverse order (idempotent)."""
        if self._undo and self.ctx:
            self.acl.rt.set_context(self.ctx)
        while self._undo:
            self._undo.pop()()


# ---------------------------------------------------------------------------- scenarios
def _s1_wrapper_overhead(c: _Ctx) -> dict:
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
    return 1e-9 * _median(tw), 1e-9 * _median(tr)


def _s1_models(c: _Ctx, cfg: BenchConfig, rows: list) -> None:
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
                    _alternate(m.infer, raw, _fresh(x, 10), _fresh(x, 10))
                tw, tr = [], []
                for _r in range(cfg.rounds):
                    w, r = _alternate(m.infer, raw, _fresh(x, cfg.s1_calls), _fresh(x, cfg.s1_calls))
                    tw.append(w)
                    tr.append(r)
                q = _ratio(tw, tr)
                # each round's two medians come from the same calls' neighbourhood: the median of the
                # per-round ratios, not the ratio of medians taken across rounds the machine ran at different speeds
                ratio = _median([w / r for w, r in zip(tw, tr)])
                # issue 16: the specialised path's goal is <= 1.05x on the tiny model and the small one at batch 1
                goal = 1.05 if name == "tiny" or (name == "small" and b == 1) else 1.10
                rows.append(_row(1, f"infer {name} b={b}", ratio, "<=", goal,
                                 suspect="negative overhead (wrapper faster than raw)" if ratio < 1 else None,
                                 wrapper_us=1e6 * _median(tw), raw_us=1e6 * _median(tr),
                                 overhead_us=1e6 * (_median(tw) - _median(tr)),
                                 paired_min=q["paired_min"], paired_max=q["paired_max"]))
        finally:
            for raw in raws.values():
                raw.close()
            m.close()


def _s2_update_proportional(c: _Ctx) -> dict:
    from ..sim import models

    cfg = c.cfg
    n, size = cfg.s2_variables, cfg.s2_size
    c.progress(f"2 update proportional: building {n} x {size * 4 // 1024} KiB variables")
    proto, w0 = models.many_variables(n, size, seed=cfg.seed)
    path = c.build(proto, init=False)
    del proto
    m = c.open(path)
    rows: list[dict] = []
    facts: dict[str, Any] = {}
    try:
        vals = [c.rng.standard_normal(size).astype(np.float32) for _ in range(n)]
        m.update(dict(enumerate(vals)))  # warm: every staging buffer touched once
        counts = [k for k in cfg.s2_counts if 0 < k <= n]
        if n not in counts:
            counts.append(n)
        times: dict[int, list[float]] = {k: [] for k in counts}
        cursor = dict.fromkeys(counts, 0)
        bytes_ok: dict[int, bool] = {}
        for r in range(cfg.rounds):
            c.progress(f"2 update proportional: round {r + 1}/{cfg.rounds}")
            order = counts if r % 2 == 0 else counts[::-1]
            for k in order:
                batches = []
                for _ in range(cfg.s2_calls):  # a different set of k variables on each call
                    idx = [(cursor[k] + j) % n for j in range(k)]
                    cursor[k] = (cursor[k] + k) % n
                    batches.append({i: vals[i] for i in idx})
                before = c.sim.stats()
                per = []
                for upd in batches:
                    t0 = time.perf_counter()
                    m.update(upd)
                    per.append(time.perf_counter() - t0)
                d = _sim_delta(before, c.sim.stats())
                want = cfg.s2_calls * k * size * 4
                bytes_ok[k] = bytes_ok.get(k, True) and d["h2d"] == want and d["applied"] == want
                times[k].append(_median(per))
        full = times[n]
        for k in counts:
            q = _ratio(times[k], full)
            op, goal = ("<=", 0.05) if k == 1 else (None, None)
            rows.append(_row(2, f"update {k} of {n} vs all {n}", q["ratio"], op, goal,
                             ms=1e3 * _median(times[k]), ideal=k / n,
                             paired_min=q["paired_min"], paired_max=q["paired_max"]))
        facts["bytes_per_update_equal_changed"] = all(bytes_ok.values())
        facts["variable_bytes"] = size * 4
        rows.append(
            _row(2, "H2D and applied bytes == changed bytes", float(all(bytes_ok.values())), "==", 1.0, unit="")
        )
    finally:
        m.close()
    return {"rows": rows, "facts": facts,
            "notes": [f"each timed update names a different set of variables (rotating), median of {cfg.s2_calls} "
                      "updates per round"]}


def _s3_update_bandwidth(c: _Ctx) -> dict:
    from ..sim import models

    cfg = c.cfg
    nv = cfg.s3_variables
    size = cfg.s3_bytes // nv // 4
    total = nv * size * 4
    c.progress(f"3 update bandwidth: building {total / MiB:.0f} MiB of variables")
    proto, _ = models.many_variables(nv, size, seed=cfg.seed)
    path = c.build(proto, init=False)
    del proto
    m = c.open(path)
    rows: list[dict] = []
    facts: dict[str, Any] = {}
    try:
        upd = {i: c.rng.standard_normal(size).astype(np.float32) for i in range(nv)}
        # The limit for copying these variables: numpy.copyto of each into its own buffer of the same
        # size (one contiguous copy of the same total is faster on many hosts; shown for information).
        dsts = [np.empty_like(a) for a in upd.values()]
        for dd in dsts:
            dd.fill(0)  # fault the pages in now
        src = np.concatenate(list(upd.values()))
        dst = np.empty_like(src)
        dst.fill(0)
        m.update(upd)  # warm: staging pages faulted in
        t_copy, t_one, t_stage, t_full = [], [], [], []
        before = c.sim.stats()
        for r in range(cfg.s3_rounds):
            c.progress(f"3 update bandwidth: round {r + 1}/{cfg.s3_rounds}")
            for side in (("u", "c") if r % 2 == 0 else ("c", "u")):
                if side == "c":
                    t0 = time.perf_counter()
                    for dd, a in zip(dsts, upd.values()):
                        np.copyto(dd, a)
                    t_copy.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    np.copyto(dst, src)
                    t_one.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    m.update(upd)
                    t_full.append(time.perf_counter() - t0)
                    t_stage.append(m.stats["last_update"]["stage_seconds"])
        d = _sim_delta(before, c.sim.stats())
        per_h2d = d["h2d"] / cfg.s3_rounds
        per_applied = d["applied"] / cfg.s3_rounds
        facts.update(update_bytes=total, h2d_bytes_per_update=per_h2d, applied_bytes_per_update=per_applied,
                     d2h_bytes=d["d2h"])
        q_stage = _ratio(t_copy, t_stage)
        q_full = _ratio(t_copy, t_full)
        gbs = lambda t: total / _median(t) / 1e9  # noqa: E731
        rows.append(
            _row(
                3,
                f"stage (H2D) {total / MiB:.0f} MiB in {nv} vars vs numpy.copyto",
                q_stage["ratio"],
                ">=",
                0.8,
                stage_gbs=gbs(t_stage),
                copyto_gbs=gbs(t_copy),
                one_copyto_gbs=gbs(t_one),
                paired_min=q_stage["paired_min"],
                paired_max=q_stage["paired_max"],
            )
        )
        rows.append(_row(3, "full update (stage+commit) vs copyto", q_full["ratio"], None, None,
                         update_gbs=gbs(t_full), copyto_gbs=gbs(t_copy),
                         paired_min=q_full["paired_min"], paired_max=q_full["paired_max"]))
        ok = per_h2d == total and per_applied == total and d["d2h"] == 0
        rows.append(_row(3, "H2D bytes per update == changed bytes", float(ok), "==", 1.0, unit="",
                         h2d=per_h2d, applied=per_applied, changed=total))
    finally:
        m.close()
    return {"rows": rows, "facts": facts, "notes": [
        "the commit is the update graph's device-side copy (HBM speed on real hardware); the simulator does it "
        "as a second host memcpy, so the full-update ratio (about half the stage ratio) is a simulator artefact"]}


def _s4_update_vs_copy(c: _Ctx) -> dict:
    """A full update against the physical bound it stands for: two copies of its bytes.

    An update copies its bytes twice (host->device, then the update graph's device copy
    into the variables), so it cannot beat half of one ``numpy.copyto`` of the same bytes
    on the same host; goal >= 0.45x (throughput, copyto time / update time).
    """
    from ..sim import models

    cfg = c.cfg
    proto, w0 = models.mlp(cfg.s4_model, seed=cfg.seed)
    path = c.build(proto)
    new = {k: (v + 1).astype(v.dtype) for k, v in w0.items()}
    nbytes = sum(v.nbytes for v in new.values())
    srcs = list(new.values())
    dsts = [np.zeros_like(a) for a in srcs]
    m = c.open(path)
    t_up, t_cp = [], []
    try:
        m.update(new)
        for r in range(cfg.s4_rounds):
            c.progress(f"4 update vs numpy.copyto: round {r + 1}/{cfg.s4_rounds}")
            for side in (("u", "c") if r % 2 == 0 else ("c", "u")):
                t0 = time.perf_counter()
                if side == "u":
                    m.update(new)
                    t_up.append(time.perf_counter() - t0)
                else:
                    for d, a in zip(dsts, srcs):
                        np.copyto(d, a)
                    t_cp.append(time.perf_counter() - t0)
    finally:
        m.close()
    q = _ratio(t_cp, t_up)
    return {"rows": [
        _row(4, f"full update ({nbytes / MiB:.2f} MiB) vs numpy.copyto", q["ratio"], ">=", 0.45,
             update_ms=1e3 * _median(t_up), copyto_ms=1e3 * _median(t_cp),
             paired_min=q["paired_min"], paired_max=q["paired_max"]),
    ], "notes": [
        "ratio = copyto time / update time (>= 0.45x: within 10 % of the two copies an update makes, host->device "
        "and the update graph's device copy; this replaces the old goal against a simulated reopen, which costs far "
        "less than a real load)"]}


def _serve(m: Any, x: np.ndarray, threads: int, seconds: float, rate: float | None, upd: dict) -> tuple[float, int]:
    """Infers/second of ``threads`` infer threads over ``seconds``, with updates at ``rate`` Hz (inf = max)."""
    stop = threading.Event()
    start = threading.Barrier(threads + 2)
    counts = [0] * threads
    n_upd = [0]
    errors: list[BaseException] = []

    def infer(i: int) -> None:
        try:
            xs = _fresh(x, 64)
            start.wait()
            k = 0
            while not stop.is_set():
                m.infer(xs[k % 64])  # 64 live arrays: bounded simulator registrations
                k += 1
            counts[i] = k
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            stop.set()

    def update() -> None:
        try:
            start.wait()
            t_next = time.perf_counter()
            while not stop.is_set():
                if rate is None:
                    return
                if rate != float("inf"):
                    t_next += 1.0 / rate
                    delay = t_next - time.perf_counter()
                    if delay > 0 and stop.wait(delay):
                        return
                m.update(upd)
                n_upd[0] += 1
        except BaseException as e:  # pragma: no cover
            errors.append(e)
            stop.set()

    ts = [threading.Thread(target=infer, args=(i,), daemon=True) for i in range(threads)]
    ts.append(threading.Thread(target=update, daemon=True))
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed, n_upd[0]


def _s5_serving(c: _Ctx) -> dict:
    from ..sim import models

    cfg = c.cfg
    proto, w0 = models.mlp(cfg.s5_model, seed=cfg.seed)
    path = c.build(proto)
    upd = {k: (v * 0.5).astype(v.dtype) for k, v in w0.items()}
    nbytes = sum(v.nbytes for v in upd.values())
    m = c.open(path, max_concurrency=cfg.s5_threads)
    x = c.rng.standard_normal((1, cfg.s5_model[0])).astype(np.float32)
    conds = {"none": None, "10 Hz": 10.0, "max rate": float("inf")}
    thr: dict[str, list[float]] = {k: [] for k in conds}
    ups: dict[str, list[int]] = {k: [] for k in conds}
    try:
        m.update(upd)
        _serve(m, x, cfg.s5_threads, min(0.2, cfg.s5_seconds), None, upd)  # warm: every slot built
        names = list(conds)
        for r in range(cfg.s5_rounds):
            for k in (names if r % 2 == 0 else names[::-1]):
                c.progress(f"5 serving under updates: round {r + 1}/{cfg.s5_rounds}, updates {k}")
                t, u = _serve(m, x, cfg.s5_threads, cfg.s5_seconds, conds[k], upd)
                thr[k].append(t)
                ups[k].append(u)
    finally:
        m.close()
    rows = []
    for k, goal in (("10 Hz", 0.9), ("max rate", None)):
        q = _ratio(thr[k], thr["none"])
        rows.append(_row(5, f"infer/s, {cfg.s5_threads} threads, updates {k} vs none", q["ratio"],
                         ">=" if goal else None, goal,
                         infers_per_s=_median(thr[k]), baseline_infers_per_s=_median(thr["none"]),
                         updates_per_s=_median(ups[k]) / cfg.s5_seconds, update_mib=nbytes / MiB,
                         paired_min=q["paired_min"], paired_max=q["paired_max"]))
    return {"rows": rows, "notes": [
        "each update replaces every variable; at the maximum rate the update thread takes its share of the "
        "2 cores and commits hold the exclusive lock back to back, so that ratio is shown for information"]}


def _s6_allocations(c: _Ctx) -> dict:
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
        d = _sim_delta(before, c.sim.stats())
    finally:
        m.close()
    n_calls = 2 * half
    per_k = lambda v: 1000.0 * v / n_calls  # noqa: E731
    creates = sum(v for k, v in d["calls"].items() if ".create_" in k)
    return {"rows": [
        _row(6, "device mallocs per 1000 infer/update calls", per_k(d["mallocs"]), "==", 0.0, unit="", calls=n_calls),
        _row(6, "ACL create_* calls per 1000 calls", per_k(creates), None, None, unit="",
             acl_calls_per_call=sum(d["calls"].values()) / n_calls),
    ], "facts": {"mallocs": d["mallocs"], "creates": creates, "calls": n_calls}, "notes": []}


def _s7_staging_memory(c: _Ctx) -> dict:
    from ..sim import models

    cfg = c.cfg
    n, size = cfg.s2_variables, cfg.s2_size
    c.progress(f"7 staging memory: {n} x {size * 4 // 1024} KiB variables, one updated at a time")
    proto, _ = models.many_variables(n, size, seed=cfg.seed)
    path = c.build(proto, init=False)
    del proto
    var_bytes = n * size * 4
    x = np.ones((1, size), np.float32)  # many_variables' input: one row per variable length
    rows, facts = [], {}
    for label, staging in (("one-variable pool", size * 4), ("default pool", None)):
        m = c.open(path, staging_bytes=staging)
        try:
            for i in range(n):
                m.update({i: np.full(size, i, np.float32)})
            y = m.infer(x)  # the infer buffers count too; and every single-variable update landed
            np.testing.assert_allclose(y, x + n * (n - 1) / 2, rtol=1e-6)
            beyond = m.device_bytes / var_bytes
            facts[label] = {
                "device_bytes": m.device_bytes,
                "staging_bytes": m.staging_bytes,
                "variable_bytes": var_bytes,
            }
        finally:
            m.close()
        goal = (("<=", 0.10) if staging is not None else (None, None))
        rows.append(_row(7, f"device memory beyond the variables, {n} x {_size(size * 4)}, {label}", beyond,
                         *goal, device_bytes=facts[label]["device_bytes"], variable_bytes=var_bytes))
    return {"rows": rows, "facts": facts, "notes": [
        "ratio = BundleModel.device_bytes (staging pool + the shared 64-byte buffer of unchanged update inputs + "
        "update outputs + infer buffers) / the variables' bytes; staging_bytes = one variable's bytes keeps each "
        "single-variable update atomic (the stress test's torn-output check runs on that configuration)"]}


def _timeline(m: Any, xs: list[np.ndarray], threads: int, seconds: float, rate: float | None,
              upd: dict) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]]]:
    """Run ``threads`` infer threads for ``seconds`` with full updates at ``rate`` Hz (None: none).

    Returns every infer call as ``(start, end)`` and every update as ``(start, end,
    commit seconds)`` (the commit: the update graph's run, the only phase that excludes
    inference), all on ``time.perf_counter``.
    """
    stop = threading.Event()
    start = threading.Barrier(threads + 2)
    calls: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    updates: list[tuple[float, float, float]] = []
    errors: list[BaseException] = []
    clock = time.perf_counter

    def infer(i: int) -> None:
        try:
            mine, k, n = calls[i], 0, len(xs)
            start.wait()
            while not stop.is_set():
                t0 = clock()
                m.infer(xs[k % n])
                mine.append((t0, clock()))
                k += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            stop.set()

    def update() -> None:
        try:
            start.wait()
            if rate is None:
                return
            t_next = clock()
            while not stop.is_set():
                t_next += 1.0 / rate
                delay = t_next - clock()
                if delay > 0 and stop.wait(delay):
                    return
                u0 = clock()
                m.update(upd)
                updates.append((u0, clock(), m.stats["last_update"]["commit_seconds"]))
        except BaseException as e:  # pragma: no cover
            errors.append(e)
            stop.set()

    ts = [threading.Thread(target=infer, args=(i,), daemon=True) for i in range(threads)]
    ts.append(threading.Thread(target=update, daemon=True))
    for t in ts:
        t.start()
    start.wait()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return [c for part in calls for c in part], updates


def _latencies(m: Any, xs: list[np.ndarray], threads: int, seconds: float, rate: float | None,
               upd: dict) -> tuple[list[float], list[float]]:
    """:func:`_timeline` as every infer's latency (s) and every update's commit duration (s)."""
    calls, updates = _timeline(m, xs, threads, seconds, rate, upd)
    return [b - a for a, b in calls], [c for _, _, c in updates]


def _stalls(calls: list[tuple[float, float]], updates: list[tuple[float, float, float]],
            typical: float) -> tuple[list[float], float]:
    """Per update, the longest extra wait of an infer call that overlapped it, over that update's own commit.

    Extra wait = latency - ``typical`` (the median latency without updates).  Returns the
    per-update ratios and the longest extra wait among the calls that overlapped no
    update (what the machine alone does to a call in the same window).
    """
    updates = sorted(updates)
    starts = [u0 for u0, _, _ in updates]
    worst = [0.0] * len(updates)
    alone = 0.0
    for a, b in calls:
        extra = (b - a) - typical
        hit = False
        j = bisect.bisect_left(starts, b)  # updates starting before the call ended
        for k in range(j - 1, -1, -1):
            u0, u1, _ = updates[k]
            if u1 <= a:
                if u1 < a - 1.0:  # updates are far shorter than a second: none further back overlaps
                    break
                continue
            hit = True
            worst[k] = max(worst[k], extra)
        if not hit:
            alone = max(alone, extra)
    return [w / c for w, (_, _, c) in zip(worst, updates) if c > 0], alone


def _p99(xs: Sequence[float]) -> float:
    return float(np.percentile(xs, 99)) if xs else float("nan")


def _s8_pause(c: _Ctx) -> dict:
    """The longest infer stall an update causes, against the commit's own duration and the no-update p99.

    Per round, interleaved: a window without updates, a window with full updates at the
    bundle's rate.  Per update, its stall = the longest extra wait (latency minus the
    median latency without updates) of a call that overlapped it, as a ratio to that
    update's own commit (goal <= 1.2x: a call waits about one commit, no more); the worst
    update of the window counts.  Calls that overlapped no update give the noise floor;
    then p99 under updates / p99 without (goal <= 1.2x).
    """
    from ..sim import models

    cfg = c.cfg
    cores = os.cpu_count() or 1
    thread_counts = list(cfg.s8_threads) or sorted({1, cores})
    rows: list[dict] = []
    for label, (kind, sizes, rate) in cfg.s8_bundles.items():
        c.progress(f"8 pause: building {label}")
        if kind == "mlp":
            proto, w0 = models.mlp(sizes, seed=cfg.seed)
            x = c.rng.standard_normal((1, sizes[0])).astype(np.float32)
        else:
            proto, w0 = models.embedding(*sizes, seed=cfg.seed)
            x = np.array([sizes[1] // 2], np.int64)
        path = c.build(proto, init=False)
        del proto
        upd = {k: (v * 0.5).astype(v.dtype) for k, v in w0.items()}
        del w0
        nbytes = sum(v.nbytes for v in upd.values())
        for threads in thread_counts:
            m = c.open(path, max_concurrency=threads)
            xs = _fresh(x, 64)
            per: dict[str, list[float]] = {"stall/commit": [], "stall/p99": [], "p99": [], "alone/commit": [],
                                           "stall_ms": [], "commit_ms": [], "p99_none_ms": [], "alone_ms": []}
            try:
                m.update(upd)
                _timeline(m, xs, threads, min(0.2, cfg.s8_seconds), None, upd)  # warm: every slot built
                for r in range(cfg.s8_rounds):
                    got: dict[str, tuple[list, list]] = {}
                    for side in (("none", "upd") if r % 2 == 0 else ("upd", "none")):
                        c.progress(
                            f"8 pause: {label}, {threads} infer thread(s), round {r + 1}/{cfg.s8_rounds}, {side}"
                        )
                        got[side] = _timeline(m, xs, threads, cfg.s8_seconds, None if side == "none" else rate, upd)
                    base = [b - a for a, b in got["none"][0]]
                    calls, updates = got["upd"]
                    if not base or not calls or not updates:
                        continue
                    typical, p99_none = _median(base), _p99(base)
                    ratios, alone = _stalls(calls, updates, typical)
                    if not ratios:
                        continue
                    k = max(range(len(ratios)), key=ratios.__getitem__)  # the worst update of the window
                    stall = ratios[k] * updates[k][2]
                    commit = _median([u[2] for u in updates])
                    per["stall/commit"].append(ratios[k])
                    per["stall/p99"].append(stall / p99_none)
                    per["p99"].append(_p99([b - a for a, b in calls]) / p99_none)
                    per["alone/commit"].append(max(max(base) - typical, alone) / commit)
                    per["stall_ms"].append(1e3 * stall)
                    per["commit_ms"].append(1e3 * commit)
                    per["p99_none_ms"].append(1e3 * p99_none)
                    per["alone_ms"].append(1e3 * max(max(base) - typical, alone))
            finally:
                m.close()
            if not per["stall/commit"]:
                continue
            what = f"{label}, {threads} infer thread{'s' if threads > 1 else ''}"
            detail: dict[str, Any] = {"stall_ms": _median(per["stall_ms"]), "commit_ms": _median(per["commit_ms"]),
                      "p99_none_ms": _median(per["p99_none_ms"]), "alone_ms": _median(per["alone_ms"]),
                      "update_mib": nbytes / MiB, "updates_hz": rate, "gil_switch_ms": 1e3 * sys.getswitchinterval()}
            for key, name, op, goal in (("stall/commit", "longest stall / its commit", "<=", 1.2),
                                        ("alone/commit", "longest wait without an update / commit", None, None),
                                        ("stall/p99", "longest stall / no-update p99", None, None),
                                        ("p99", f"p99 under {rate:g} Hz updates / no-update p99", "<=", 1.2)):
                xs_r = per[key]
                rows.append(_row(8, f"{name}, {what}", _median(xs_r), op, goal, **detail,
                                 paired_min=min(xs_r), paired_max=max(xs_r)))
    return {"rows": rows, "notes": [
        "stall: per update, the longest extra wait (latency - median latency without updates) of an infer call "
        "that overlapped the update (stage and commit), over that update's own commit (the update graph's run "
        "under the gate's writer side); the row is the worst update of each window, median over rounds, "
        "'rounds' = their range; each round interleaves a no-update window. A call that arrives while another "
        "reader is in flight waits for that reader's remaining work and then the commit, so stall/commit > 1 "
        "grows with the infer's own duration (the dense MLP reads all its weights per call; the embedding a few "
        "rows). 'without an update' = the longest extra wait of a call that overlapped no update (both windows): "
        "what the machine (scheduler, GIL hand-offs, gil_switch_ms) does to a call by itself, the noise floor of "
        "the stall rows"]}


def _s9_startup(c: _Ctx) -> dict:
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
        rows.append(_row(9, f"acl-bundle {name} vs python -c pass", _median(pairs), "<=", 2.5,
                         ms=1e3 * _median(times[name]), bare_ms=1e3 * _median(times["bare"]),
                         paired_min=q1, paired_max=q3))
    return {"rows": rows, "notes": ["whole process, wall clock: a new interpreter per run, the command as the "
                                    "console script runs it; python -c pass is the floor; ratio = median of the "
                                    "per-round ratios, 'rounds' = their interquartile range (one process start "
                                    "is a single sample, so the extremes of many rounds are the machine's)"]}


_RUNNERS: dict[int, Callable[[_Ctx], dict]] = {
    1: _s1_wrapper_overhead,
    2: _s2_update_proportional,
    3: _s3_update_bandwidth,
    4: _s4_update_vs_copy,
    5: _s5_serving,
    6: _s6_allocations,
    7: _s7_staging_memory,
    8: _s8_pause,
    9: _s9_startup,
}


def run_bench(config: BenchConfig | None = None, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the selected scenarios on the simulator; return the results (JSON-ready dict).

    ``progress`` receives one short line per step.  Models are all closed before this
    returns; ``results["leaks"]`` is the simulator's leak report afterwards (``{}``).
    """
    cfg = config or BenchConfig()
    say: Progress = progress or (lambda _msg: None)
    from .. import sim

    leaks_before = sim.leaks()
    c = _Ctx(cfg, say)
    t0 = time.perf_counter()
    scenarios: dict[str, Any] = {}
    try:
        for s in cfg.selected():
            ts = time.perf_counter()
            out = _RUNNERS[s](c)
            out["name"] = SCENARIOS[s]
            out["seconds"] = time.perf_counter() - ts
            scenarios[str(s)] = out
            gc.collect()
    finally:
        c.close()
    gc.collect()
    rows = [r for s in scenarios.values() for r in s["rows"]]
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "config": dict(asdict(cfg)),
        "seconds": time.perf_counter() - t0,
        "scenarios": scenarios,
        "rows": rows,
        "all_pass": all(r["pass"] and r["reliable"] for r in rows if r["pass"] is not None),
        "leaks": {k: v for k, v in sim.leaks().items() if k not in leaks_before} if leaks_before else sim.leaks(),
    }


# ---------------------------------------------------------------------------- output
def _fmt_ratio(r: dict) -> str:
    v = r["ratio"]
    if v is None:
        return "-"
    if r["unit"] != "x":
        return f"{v:g}"
    return f"{v:.3f}x"


def _fmt_goal(r: dict) -> str:
    if r["op"] is None:
        return "info"
    if r["op"] == "==":
        return f"== {r['goal']:g}"
    return f"{'≤' if r['op'] == '<=' else '≥'} {r['goal']:g}x"


def _fmt_detail(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if k in ("paired_min", "paired_max"):
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if d.get("paired_min") is not None:
        parts.append(f"rounds {d['paired_min']:.3f}..{d['paired_max']:.3f}")
    return ", ".join(parts)


def format_table(results: dict[str, Any], *, details: bool = True) -> str:
    """The results as a plain-text table: each goal, its measured ratio and PASS/FAIL."""
    mi = results["machine"]
    head = (f"acl-bundle bench ({'quick' if results['config']['quick'] else 'default'}), simulator, "
            f"{mi['cpu_count']} CPUs ({mi['cpu']}), Python {mi['python']}, numpy {mi['numpy']}, "
            f"onnxruntime {mi['onnxruntime']}, {results['seconds']:.0f} s")
    table = [("#", "measurement", "ratio", "goal", "result")]
    for r in results["rows"]:
        res = "info" if r["pass"] is None else (
            "UNRELIABLE" if not r.get("reliable", True) else "PASS" if r["pass"] else "FAIL")
        table.append((str(r["scenario"]), r["label"], _fmt_ratio(r), _fmt_goal(r), res))
    w = [max(len(row[i]) for row in table) for i in range(5)]
    lines = [head, ""]
    for j, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w[i]) if i < 2 else cell.rjust(w[i]) if i == 2 else cell.ljust(w[i])
                               for i, cell in enumerate(row)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * x for x in w))
    if details:
        lines.append("")
        for r in results["rows"]:
            if r["detail"]:
                why = f" [UNRELIABLE: {r['unreliable_because']}]" if r.get("unreliable_because") else ""
                lines.append(f"{r['scenario']} {r['label']}: {_fmt_detail(r['detail'])}{why}")
        for s, sc in results["scenarios"].items():
            for n in sc.get("notes", []):
                lines.append(f"note {s}: {n}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the results as JSON (UTF-8, indented)."""
    Path(path).write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")


def write_plot(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Bar chart of each ratio against its goal (needs the ``plot`` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .._errors import extra_hint

        raise ValueError(f"--plot needs matplotlib: {extra_hint('plot')}") from None
    rows = [r for r in results["rows"] if r["op"] in ("<=", ">=") and r["ratio"] > 0]
    if not rows:
        raise ValueError("nothing to plot: no scenario run has a ratio goal (scenario 6 only counts calls)")
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ys = range(len(rows))
    colors = ["tab:green" if r["pass"] else "tab:red" for r in rows]
    ax.barh(list(ys), [r["ratio"] for r in rows], color=colors)
    for y, r in zip(ys, rows):
        ax.plot([r["goal"], r["goal"]], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{r['scenario']}. {r['label']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio (black tick = goal; green = met)")
    mi = results["machine"]
    ax.set_title(f"acl-bundle bench: {mi['cpu_count']} CPUs, Python {mi['python']}, onnxruntime {mi['onnxruntime']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    print(
        format_table(run_bench(BenchConfig(quick="--quick" in sys.argv), progress=lambda s: print(s, file=sys.stderr)))
    )
