"""acl-bundle bench in quick mode: structure and the facts that do not depend on timing.

No timing thresholds here: the bench prints PASS/FAIL per goal itself; these tests
check that every scenario runs, reports what it should, and leaves nothing behind.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from acl_bundle import BundleModel, cli, sim
from acl_bundle.bench import SCENARIOS, BenchConfig, RawInfer, format_table, run_bench
from acl_bundle.sim import builder, models


@pytest.fixture(scope="module")
def quick() -> dict:
    """One quick run shared by the structure tests (the leak fixture runs around each test)."""
    return run_bench(BenchConfig(quick=True))


def _rows(results: dict, scenario: int) -> list[dict]:
    return [r for r in results["rows"] if r["scenario"] == scenario]


def _row(results: dict, scenario: int, start: str) -> dict:
    (row,) = [r for r in _rows(results, scenario) if r["label"].startswith(start)]
    return row


def test_all_scenarios_present_with_goals(quick):
    assert quick["format"] == "acl-bundle-bench" and quick["version"] == 1
    assert sorted(quick["scenarios"]) == [str(s) for s in sorted(SCENARIOS)]
    for s, name in SCENARIOS.items():
        sc = quick["scenarios"][str(s)]
        assert sc["name"] == name
        goals = [r for r in _rows(quick, s) if r["op"] is not None]
        assert goals, f"scenario {s} has no goal row"
        for r in goals:
            assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]) and r["ratio"] >= 0
            assert isinstance(r["pass"], bool)
    assert quick["all_pass"] == all(r["pass"] and r["reliable"] for r in quick["rows"] if r["pass"] is not None)


def test_machine_info_in_results_and_table_header(quick):
    mi = quick["machine"]
    assert mi["cpu_count"] >= 1
    assert mi["numpy"] == np.__version__
    for key in ("python", "onnxruntime", "platform"):
        assert mi[key]
    header = format_table(quick).splitlines()[0]
    for value in (str(mi["cpu_count"]), mi["python"], mi["numpy"], mi["onnxruntime"]):
        assert value in header


def test_scenario1_covers_three_models_and_two_batches(quick):
    rows = _rows(quick, 1)
    assert [r["label"] for r in rows] == ["infer tiny b=1", "infer tiny b=8", "infer small b=1", "infer small b=8",
                                          "infer medium b=1", "infer medium b=8"]
    for r in rows:
        tight = r["label"].startswith("infer tiny") or r["label"] == "infer small b=1"
        assert (r["op"], r["goal"]) == ("<=", 1.05 if tight else 1.10)
        assert r["detail"]["wrapper_us"] > 0 and r["detail"]["raw_us"] > 0


def test_update_bytes_equal_changed_bytes(quick):
    assert _row(quick, 2, "H2D and applied bytes").get("pass") is True
    assert quick["scenarios"]["2"]["facts"]["bytes_per_update_equal_changed"] is True
    facts = quick["scenarios"]["3"]["facts"]
    assert facts["h2d_bytes_per_update"] == facts["update_bytes"] == 16 * 2**20
    assert facts["applied_bytes_per_update"] == facts["update_bytes"]
    assert facts["d2h_bytes"] == 0
    assert _row(quick, 3, "H2D bytes per update").get("pass") is True


def test_scenario2_reports_1_10_100_of_100(quick):
    labels = [r["label"] for r in _rows(quick, 2)]
    assert labels[:3] == ["update 1 of 100 vs all 100", "update 10 of 100 vs all 100", "update 100 of 100 vs all 100"]
    assert _rows(quick, 2)[2]["ratio"] == pytest.approx(1.0)
    assert (_rows(quick, 2)[0]["op"], _rows(quick, 2)[0]["goal"]) == ("<=", 0.05)


def test_stage_goal_and_full_update_beside_it(quick):
    stage = _row(quick, 3, "stage (H2D)")
    full = _row(quick, 3, "full update")
    assert (stage["op"], stage["goal"]) == (">=", 0.8)
    assert full["op"] is None and full["pass"] is None
    assert any("artefact" in n for n in quick["scenarios"]["3"]["notes"])


def test_serving_and_physical_bound_rows(quick):
    full = _row(quick, 4, "full update")
    assert (full["op"], full["goal"]) == (">=", 0.45) and "numpy.copyto" in full["label"]
    assert full["detail"]["update_ms"] > 0 and full["detail"]["copyto_ms"] > 0
    ten = _row(quick, 5, "infer/s, 2 threads, updates 10 Hz")
    top = _row(quick, 5, "infer/s, 2 threads, updates max rate")
    assert (ten["op"], ten["goal"]) == (">=", 0.9)
    assert top["op"] is None
    assert ten["detail"]["infers_per_s"] > 0 and top["detail"]["updates_per_s"] > 0


def test_pause_rows(quick):
    """Scenario 8: per bundle and infer-thread count (1 and the cores), stall/commit and p99 rows with goals,
    the noise floor and the stall/p99 rows for information."""
    import os

    rows = _rows(quick, 8)
    threads = sorted({1, os.cpu_count() or 1})
    for label in ("0.4 MiB MLP", "4 MiB embedding"):
        for t in threads:
            what = f"{label}, {t} infer thread{'s' if t > 1 else ''}"
            stall = _row(quick, 8, f"longest stall / its commit, {what}")
            p99 = _row(quick, 8, f"p99 under 10 Hz updates / no-update p99, {what}")
            info = _row(quick, 8, f"longest stall / no-update p99, {what}")
            floor = _row(quick, 8, f"longest wait without an update / commit, {what}")
            assert (stall["op"], stall["goal"], p99["op"], p99["goal"], info["op"], floor["op"]) == \
                ("<=", 1.2, "<=", 1.2, None, None)
            d = stall["detail"]
            assert d["commit_ms"] > 0 and d["p99_none_ms"] > 0 and d["alone_ms"] >= 0
            assert d["paired_min"] <= stall["ratio"] <= d["paired_max"]
    assert len(rows) == 4 * 2 * len(threads)


def test_stalls_pair_each_update_with_the_calls_that_overlapped_it():
    """bench.latency.stalls: a call counts against every update it overlapped, divided by that update's own commit;
    calls that overlapped none give the noise floor."""
    from acl_bundle.bench.latency import stalls as _stalls

    typical = 1.0
    updates = [(10.0, 12.0, 2.0), (20.0, 21.0, 0.5), (30.0, 31.0, 1.0)]  # (start, end, commit)
    calls = [
        (0.0, 1.0),    # before any update: extra 0
        (9.0, 13.0),   # overlaps update 0: extra 3 -> 3 / 2.0
        (11.0, 12.5),  # overlaps update 0 too, less: extra 0.5
        (14.0, 18.0),  # between updates: extra 3 -> the noise floor
        (20.5, 22.0),  # overlaps update 1: extra 0.5 -> 0.5 / 0.5
        (31.0, 32.0),  # starts as update 2 ends: no overlap, extra 0
        (29.0, 30.5),  # overlaps update 2: extra 0.5 -> 0.5 / 1.0
    ]
    ratios, alone = _stalls(calls, updates, typical)
    assert ratios == [1.5, 1.0, 0.5]
    assert alone == 3.0
    # unordered input gives the same answer (updates are sorted, calls may come from several threads)
    assert _stalls(calls[::-1], updates[::-1], typical) == ([1.5, 1.0, 0.5], 3.0)


def test_startup_rows_time_whole_processes(quick):
    """Scenario 9: each command against the bare interpreter, goal 2.5x, the median per-round ratio within
    its quartiles."""
    for name in ("--help", "serve --help"):
        row = _row(quick, 9, f"acl-bundle {name} vs python -c pass")
        assert (row["op"], row["goal"]) == ("<=", 2.5)
        d = row["detail"]
        assert d["ms"] > 0 and d["bare_ms"] > 0
        assert d["paired_min"] <= row["ratio"] <= d["paired_max"]


def test_no_mallocs_in_steady_state(quick):
    row = _row(quick, 6, "device mallocs per 1000")
    assert row["ratio"] == 0.0 and row["pass"] is True
    assert quick["scenarios"]["6"]["facts"]["mallocs"] == 0
    assert quick["scenarios"]["6"]["facts"]["creates"] == 0


def test_everything_released(quick):
    assert quick["leaks"] == {}
    assert sim.leaks() == {}


def test_table_has_every_goal_with_pass_or_fail(quick):
    text = format_table(quick)
    for r in quick["rows"]:
        assert r["label"] in text
    assert text.count("PASS") + text.count("FAIL") + text.count("UNRELIABLE") >= sum(
        1 for r in quick["rows"] if r["pass"] is not None)


def test_staging_memory_rows(quick):
    small = _row(quick, 7, "device memory beyond the variables, 100 x 16 KiB, one-variable pool")
    default = _row(quick, 7, "device memory beyond the variables, 100 x 16 KiB, default pool")
    var_bytes = 100 * 16 * 1024
    assert small["detail"]["variable_bytes"] == var_bytes
    assert small["ratio"] == small["detail"]["device_bytes"] / var_bytes and (small["op"], small["goal"]) == ("<=", 0.1)
    # default: a pool of every variable (16 KiB is 64-aligned) beside the same infer buffers as the small pool
    assert default["detail"]["device_bytes"] - small["detail"]["device_bytes"] == var_bytes - 16 * 1024
    assert default["op"] is None


def test_unreliable_rows_never_print_pass():
    from acl_bundle.bench.harness import table_row as _row

    wide = _row(1, "wide", 1.0, "<=", 1.1, paired_min=0.5, paired_max=1.2)
    negative = _row(1, "negative", 0.9, "<=", 1.1, suspect="negative overhead", paired_min=0.88, paired_max=0.92)
    steady = _row(1, "steady", 1.0, "<=", 1.1, paired_min=0.95, paired_max=1.05)
    assert (wide["pass"], wide["reliable"], negative["reliable"], steady["reliable"]) == (True, False, False, True)
    results = {"machine": {"cpu_count": 1, "cpu": "x", "python": "3", "numpy": "2", "onnxruntime": "1"},
               "config": {"quick": True}, "seconds": 1.0, "rows": [wide, negative, steady], "scenarios": {}}
    lines = format_table(results, details=False).splitlines()
    verdicts = {ln.split()[1]: ln.split()[-1] for ln in lines[4:]}
    assert verdicts == {"wide": "UNRELIABLE", "negative": "UNRELIABLE", "steady": "PASS"}


def test_raw_sequence_matches_wrapper(tmp_path):
    proto, w = models.mlp((8, 16, 4))
    om, _ = builder.save(builder.build_bundle(proto, batch_sizes=[1, 4]), tmp_path / "m.om")
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with BundleModel(om, acl=sim.acl) as m:
        raw = RawInfer(sim.acl, str(om), 4)
        try:
            np.testing.assert_array_equal(raw(x), m.infer(x))
        finally:
            raw.close()


def test_config_validation():
    with pytest.raises(ValueError, match=r"^only must name scenarios among \[1, 2, 3, 4, 5, 6, 7, 8, 9\], got \[0\]$"):
        BenchConfig(only=[0])
    assert BenchConfig(only=[3, 1, 3]).selected() == [1, 3]


def test_cli_json_only_and_progress(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--only", "6,4", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "device mallocs per 1000" in captured.out and "PASS" in captured.out
    assert "6 allocation discipline" in captured.err  # progress goes to stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(data["scenarios"]) == ["4", "6"]
    assert data["machine"]["cpu_count"] >= 1
    assert data["leaks"] == {}


def test_cli_rejects_unknown_scenario(capsys):
    assert cli.main(["bench", "--only", "1,10"]) == 2
    assert "--only takes scenario numbers" in capsys.readouterr().err


def test_cli_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    assert cli.main(["bench", "--quick", "--only", "4,6", "--no-progress", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
