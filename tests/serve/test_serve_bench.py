"""``acl-bundle serve-bench --quick``: the benchmark runs its servers and reports every row it promises."""
from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc")


def test_serve_bench_quick_reports_all_rows():
    from acl_bundle.bench import serve as bench

    res = bench.run(bench.ServeBenchConfig(quick=True))
    rows = {r["measurement"]: r for r in res["rows"]}
    base = rows["in-process infer, small model b=1"]["p50_ms"]
    for key in ("HTTP round trip (tritonclient, binary)", "HTTP round trip (http.client, binary)",
                "gRPC round trip (tritonclient)"):
        r = rows[key]
        # a round trip includes the infer itself, so it cannot be faster than it
        assert r["p50_ms"] > base and r["added_p50_ms"] == pytest.approx(r["p50_ms"] - base)
        assert r["result"] in ("PASS", "FAIL")
    on_off = next(r for k, r in rows.items() if k == "throughput on / off")
    assert on_off["ratio"] > 0 and on_off["result"] in ("PASS", "FAIL")
    table = bench.format_table(res)
    assert "throughput on / off" in table and "gRPC round trip" in table
