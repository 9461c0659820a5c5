"""``scripts/peer_compare.py``'s own logic (no peer servers needed): best-peer ratios, answer checks, peer lookup."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "peer_compare.py"
_spec = importlib.util.spec_from_file_location("acl_bundle_peer_compare_script", _SCRIPT)
pc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pc  # its dataclass looks its module up there
_spec.loader.exec_module(pc)  # type: ignore[union-attr]


def test_ratio_rows_pick_the_best_peer_per_protocol_and_concurrency():
    results = {  # two rounds each: (req/s, p50 ms, server CPU, client CPU)
        ("acl-bundle", "grpc", 8): [(1300.0, 6.0, 500.0, 300.0), (1200.0, 6.0, 500.0, 300.0)],
        ("kserve", "grpc", 8): [(1000.0, 8.0, 1000.0, 300.0), (1000.0, 8.0, 1000.0, 300.0)],
        ("mlserver", "grpc", 8): [(650.0, 12.0, 2000.0, 300.0), (650.0, 12.0, 2000.0, 300.0)],
        ("acl-bundle", "http", 1): [(1000.0, 1.0, 600.0, 300.0), (1000.0, 1.0, 600.0, 300.0)],
        ("kserve", "http", 1): [(400.0, 2.0, 1500.0, 300.0), (400.0, 2.0, 1500.0, 300.0)],
        ("mlserver", "http", 1): [(500.0, 2.5, 2500.0, 300.0), (400.0, 2.5, 2500.0, 300.0)],
        ("mlserver", "http", 8): [(700.0, 9.0, 2000.0, 300.0)] * 2,  # no acl-bundle figure: no row
    }
    med = pc.medians(results)
    rows = pc.ratio_rows(med, ["mlserver", "kserve"], ["http", "grpc"], [1, 8], results)
    assert [(r.protocol, r.concurrency, r.best_peer) for r in rows] == [("http", 1, "mlserver"), ("grpc", 8, "kserve")]
    assert rows[0].throughput == pytest.approx(1000 / 450) and rows[0].p50 == pytest.approx(0.4)
    assert rows[0].round_range == pytest.approx((2.0, 2.5))
    assert rows[1].throughput == pytest.approx(1.25) and rows[1].cpu_per_request == pytest.approx(0.5)
    assert rows[1].round_range == pytest.approx((1.2, 1.3))
    report = pc.format_report(results, ["mlserver", "kserve"], ["http", "grpc"], [1, 8], 2, 3.0)
    assert "throughput  1.25x (rounds 1.20-1.30, kserve)" in report


def test_medians_are_per_figure():
    got = pc.medians({("kserve", "grpc", 1): [(1.0, 9.0, 5.0, 1.0), (3.0, 1.0, 4.0, 2.0), (2.0, 5.0, 6.0, 3.0)]})
    assert got == {("kserve", "grpc", 1): (2.0, 5.0, 5.0, 2.0)}


def test_check_answer_refuses_a_wrong_or_misshaped_answer():
    ref = np.linspace(-1, 1, 10, dtype=np.float64).reshape(1, 10)
    y = ref.astype(np.float32)
    assert pc.check_answer(y, {"numpy": ref})["numpy"] < 1e-6
    bad = y.copy()
    bad[0, 3] += 0.01
    with pytest.raises(AssertionError, match="numpy by up to 0.01"):
        pc.check_answer(bad, {"numpy": ref})
    with pytest.raises(AssertionError, match="shape"):
        pc.check_answer(y.reshape(10, 1), {"numpy": ref})


def test_a_peer_without_an_interpreter_is_skipped_and_a_wrong_one_refused():
    name = "mlserver"
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is importable here")
    peers, notes = pc.resolve_peers([name], {name: None})
    assert peers == [] and "skipped" in notes[0]
    with pytest.raises(SystemExit, match=f"cannot import {name}"):
        pc.resolve_peers([name], {name: sys.executable})


def test_mlserver_runs_once_per_parallel_workers_setting():
    peers = [pc.Peer("mlserver", "/m/python", "v"), pc.Peer("kserve", "/k/python", "v")]
    got = [(s.label, s.kind, s.python, s.mlserver_workers, s.extra)
           for s in pc.servers_to_run(peers, [None, 0], {"nb": ["--no-dynamic-batching"]})]
    assert got == [("acl-bundle", "acl-bundle", sys.executable, None, ()),
                   ("acl-bundle:nb", "acl-bundle", sys.executable, None, ("--no-dynamic-batching",)),
                   ("mlserver", "mlserver", "/m/python", None, ()), ("mlserver-pw0", "mlserver", "/m/python", 0, ()),
                   ("kserve", "kserve", "/k/python", None, ())]


def test_streaming_is_set_against_the_peers_unary_grpc_when_they_have_no_stream():
    results = {("acl-bundle", "grpc", 8): [(1000.0, 6.0, 700.0, 300.0)],
               ("acl-bundle", "grpc-stream", 8): [(1500.0, 4.0, 400.0, 300.0)],
               ("kserve", "grpc", 8): [(1200.0, 5.0, 560.0, 300.0)]}
    report = pc.format_report(results, ["kserve"], ["grpc", "grpc-stream"], [8], 1, 3.0)
    own, cross = report.split("grpc-stream / best peer's unary grpc")
    assert "throughput  0.83x" in own  # unary against unary
    assert "throughput  1.25x (rounds 1.25-1.25, kserve)" in cross  # stream against kserve's unary
