"""``acl-bundle fleet-bench``: publish to a fleet vs one replica's own update, commit skew, and where a publish's
time goes.

Per size, rounds interleave A (``fleet.publish`` of a full update to N replicas, once per publish mode) and B
(``update`` of the same weights inside one standalone replica process, timed there); the order alternates
from round to round.  Ratios are p50/p50 and p99/p99.  Commit skew: first to last replica's commit end, read
from the replicas' clocks (one host: one clock).  The breakdown is the p50 over rounds of each phase of
:attr:`PublishResult.phases` and of each replica's :attr:`PublishResult.timings`."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("acl_bundle")

MiB = 1 << 20
GOALS = {"skew_p99_ms_4mib": 5.0, "publish_ratio": 3.0}
# publish modes: what is set on the fleet before each of its publishes; "barrier:MS" = a commit_lead of MS ms
MODES: dict[str, dict[str, Any]] = {
    "calls": {"commit_lead": 0.0},
    "barrier": {"commit_lead": 0.004},
}


def mode_settings(mode: str) -> dict[str, Any]:
    """What publish mode ``mode`` sets on the fleet; ValueError for an unknown one."""
    if mode in MODES:
        return MODES[mode]
    kind, _, ms = mode.partition(":")
    try:
        lead = float(ms) / 1e3
    except ValueError:
        lead = -1.0
    if kind != "barrier" or not 0 < lead <= 1:
        raise ValueError(f"unknown publish mode {mode!r}: expected one of {sorted(MODES)} or barrier:MS "
                         f"(a commit lead of 0 < MS <= 1000 ms)")
    return {"commit_lead": lead}
PHASES = ("send", "stage", "commit")
REPLICA_TIMINGS = ("stage_call", "receive", "stage", "commit_call", "commit_wait", "commit")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run_fleet_bench(*, replicas: int = 4, sizes_mib: tuple[int, ...] = (4, 64), rounds: int = 20,
                    num_cpus: int = 2, modes: tuple[str, ...] = ("calls",)) -> list[dict[str, Any]]:
    """Return one row per (size, mode): publish p50/p99 and ratios to a single update, commit skew p50/p99,
    and the breakdown (``phases``: p50 seconds per phase; ``replicas``: p50 seconds per replica timing)."""
    import ray

    from ..fleet import Fleet, ObjectStoreTransport
    from ..fleet.replica import ReplicaActor
    from ..sim import builder, models

    if not modes:
        raise ValueError("no publish mode")
    settings = {m: mode_settings(m) for m in modes}
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
                    # an actor handle: its methods' .remote() are made at run time, beyond ray's types
                    solo: Any = ray.remote(ReplicaActor).options(num_cpus=0, max_concurrency=2).remote(
                        "solo", str(om), replicas, "sim", {}, ObjectStoreTransport(), None)
                    try:
                        pub: dict[str, list[Any]] = {m: [] for m in modes}
                        one: list[float] = []
                        step = 0
                        kinds = ["B", *modes]
                        for r in range(rounds + 1):  # round 0 warms up
                            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                                w = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in w0.items()}
                                step += 1
                                if kind == "B":
                                    ref = ray.put(w)
                                    dt = ray.get(solo.update_locally.remote([ref], step), timeout=120)
                                    if r:
                                        one.append(dt)
                                    continue
                                for attr, value in settings[kind].items():
                                    setattr(fleet, attr, value)
                                t0 = time.perf_counter()
                                res = fleet.publish(w, step)
                                dt = time.perf_counter() - t0
                                if r:
                                    pub[kind].append((dt, res))
                    finally:
                        ray.get(solo.close.remote(), timeout=60)
                        ray.kill(solo)
                nbytes = sum(v.nbytes for v in w0.values())
                for mode in modes:
                    rows.append(_row(nbytes, replicas, rounds, mode, pub[mode], one))
    finally:
        if started:
            ray.shutdown()
    return rows


def _row(nbytes: int, replicas: int, rounds: int, mode: str, pub: list[Any], one: list[float]) -> dict[str, Any]:
    secs = [dt for dt, _ in pub]
    skew = [res.commit_skew for _, res in pub]
    names = sorted(pub[0][1].timings)
    return {
        "size_mib": nbytes / MiB, "replicas": replicas, "rounds": rounds, "mode": mode,
        "publish_ms_p50": 1e3 * _pct(secs, 50), "publish_ms_p99": 1e3 * _pct(secs, 99),
        "update_ms_p50": 1e3 * _pct(one, 50), "update_ms_p99": 1e3 * _pct(one, 99),
        "ratio_p50": _pct(secs, 50) / _pct(one, 50), "ratio_p99": _pct(secs, 99) / _pct(one, 99),
        "skew_ms_p50": 1e3 * _pct(skew, 50), "skew_ms_p99": 1e3 * _pct(skew, 99),
        "phases": {p: _pct([res.phases[p] for _, res in pub], 50) for p in PHASES},
        "replicas_p50": {n: {k: _pct([res.timings[n][k] for _, res in pub if n in res.timings], 50)
                             for k in REPLICA_TIMINGS} for n in names},
    }


def format_fleet_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'size':>8}  {'mode':>10}  {'publish p50/p99 ms':>19}  {'1 update p50/p99 ms':>20}  "
            f"{'ratio p50/p99':>14}  {'commit skew p50/p99 ms':>23}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['size_mib']:6.1f}Mi  {r['mode']:>10}  {r['publish_ms_p50']:8.1f} /{r['publish_ms_p99']:8.1f}  "
            f"{r['update_ms_p50']:9.2f} /{r['update_ms_p99']:8.2f}  {r['ratio_p50']:6.2f}x/{r['ratio_p99']:6.2f}x  "
            f"{r['skew_ms_p50']:11.2f} /{r['skew_ms_p99']:8.2f}")
    lines.append(f"goals: commit skew p99 <= {GOALS['skew_p99_ms_4mib']} ms at 4 MiB; "
                 f"publish p50 <= {GOALS['publish_ratio']}x one update")
    lines.append("")
    lines.append("where a publish goes, p50 ms: phases (send = payload into the transport; stage, commit = calls out "
                 "to the last answer), then per replica (call = sent to started there)")
    head2 = (f"{'size':>8}  {'mode':>10}  {'replica':>10}  {'send':>6}  {'stage':>6}  {'commit':>6}  {'st.call':>7}  "
             f"{'receive':>7}  {'stage':>6}  {'co.call':>7}  {'co.wait':>7}  {'commit':>6}")
    lines += [head2, "-" * len(head2)]
    for r in rows:
        p = r["phases"]
        lines.append(f"{r['size_mib']:6.1f}Mi  {r['mode']:>10}  {'(phases)':>10}  {1e3 * p['send']:6.2f}  "
                     f"{1e3 * p['stage']:6.2f}  {1e3 * p['commit']:6.2f}")
        for name, t in r["replicas_p50"].items():
            lines.append(f"{'':8}  {'':10}  {name:>10}  {'':6}  {'':6}  {'':6}  {1e3 * t['stage_call']:7.2f}  "
                         f"{1e3 * t['receive']:7.2f}  {1e3 * t['stage']:6.2f}  {1e3 * t['commit_call']:7.2f}  "
                         f"{1e3 * t['commit_wait']:7.2f}  {1e3 * t['commit']:6.2f}")
    return "\n".join(lines)
