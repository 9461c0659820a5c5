"""The online-learning demo: live model beats the frozen one after the drift, reproducibly."""
from __future__ import annotations

import numpy as np
import pytest

from acl_bundle.demo import DemoConfig, DriftingStream, format_row, run_demo

SMALL = DemoConfig(ticks=24, drift_start=4, drift_end=16, checkpoint_every=2, eval_batch=256,
                   pretrain_steps=100, pace=0.0, poll_interval=0.01, seed=3)


@pytest.fixture(scope="module")
def result_pair():
    # module scope: the leak fixture is function-scoped, so run twice here and check leaks via the result
    return run_demo(SMALL, out=None), run_demo(SMALL, out=None)


def test_live_beats_frozen_after_the_drift(result_pair):
    r, _ = result_pair
    live0, frozen0 = r.before_drift
    assert live0 > 0.8 and frozen0 > 0.8  # both start from the same good model
    assert r.live_after_drift > 0.8
    assert r.frozen_after_drift < 0.5
    assert r.live_after_drift > r.frozen_after_drift + 0.3


def test_every_checkpoint_applied_in_order_and_outputs_match_reference(result_pair):
    r, _ = result_pair
    assert r.checkpoints_written == SMALL.ticks // SMALL.checkpoint_every
    assert r.checkpoints_applied == r.checkpoints_written and r.checkpoints_skipped == 0
    assert r.max_abs_error < 1e-5
    versions = [row.version for row in r.rows]
    assert versions == sorted(versions) and versions[-1] == r.checkpoints_applied
    steps = [row.step for row in r.rows if row.step is not None]
    assert steps == sorted(steps) and steps[-1] == SMALL.ticks


def test_same_seed_same_accuracies(result_pair):
    a, b = result_pair
    assert [(x.live_accuracy, x.frozen_accuracy, x.version) for x in a.rows] == \
           [(x.live_accuracy, x.frozen_accuracy, x.version) for x in b.rows]


def test_stream_actually_drifts():
    s = DriftingStream(SMALL)
    assert s.angle(0) == 0 and s.angle(SMALL.drift_end) == SMALL.drift_degrees
    c0, c1 = s.centres(0), s.centres(SMALL.drift_end)
    # after a quarter turn each class centre sits where its neighbour was
    np.testing.assert_allclose(c1, np.roll(c0, -1, axis=0), atol=1e-9)


def test_output_lines_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    lines: list[str] = []
    cfg = DemoConfig(ticks=20, drift_start=3, drift_end=12, eval_batch=128, pretrain_steps=50, pace=0.0,
                     poll_interval=0.01, print_every=4)
    r = run_demo(cfg, plot=tmp_path / "demo.png", out=lines.append, workdir=tmp_path / "work")
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.plot == tmp_path / "demo.png"
    table = [ln for ln in lines if ln[:4].strip().isdigit()]
    assert len(table) == 6  # ticks 0,4,8,12,16 and the last one
    assert table[-1] == format_row(r.rows[-1])
    assert any("after the drift" in ln and f"live {r.live_after_drift:.3f}" in ln for ln in lines)
    assert (
        sorted(p.name for p in (tmp_path / "work" / "checkpoints").glob("*.ckpt.json"))[-1] == "step-00000020.ckpt.json"
    )


def test_bad_config_lists_every_problem():
    with pytest.raises(
        ValueError, match=r"^bad demo config: ticks must be >= 1, got 0; .*need 0 <= drift_start < drift_end < ticks"
    ):
        run_demo(DemoConfig(ticks=0), out=None)


def test_force_fp16_drift_is_visible_and_the_live_model_still_tracks(tmp_path):
    from dataclasses import replace

    lines: list[str] = []
    r = run_demo(replace(SMALL, precision_mode="force_fp16"), out=lines.append)
    assert 1e-5 < r.max_abs_error < 2e-2  # fp16 logits: visibly off float32, still the same predictions
    assert r.live_after_drift > r.frozen_after_drift + 0.3
    assert any("computed as precision_mode force_fp16" in line for line in lines)


def test_unknown_precision_mode_is_a_config_problem():
    with pytest.raises(ValueError, match="precision_mode must be one of force_fp16"):
        run_demo(DemoConfig(precision_mode="fp8"), out=None)
