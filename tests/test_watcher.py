"""CheckpointWatcher: newest complete checkpoint as one update, never backwards, survives bad files."""
from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest

from acl_bundle import BundleModel, sim
from acl_bundle.checkpoint import write_checkpoint
from acl_bundle.sim.models import mlp_reference
from acl_bundle.watcher import CheckpointWatcher

try:
    import watchdog  # noqa: F401

    HAVE_WATCHDOG = True
except ImportError:
    HAVE_WATCHDOG = False


def _shifted(w: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    """Weights that identify their step: initial + step."""
    return {k: (v + step).astype(v.dtype) for k, v in w.items()}


def _assert_device_holds(m: BundleModel, expected: dict[str, np.ndarray]) -> None:
    dev = sim.variables(m.bundle_id)
    assert sorted(dev) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(dev[k], v, err_msg=k)


@pytest.fixture
def served(make_bundle, tmp_path):
    om, w = make_bundle()
    d = tmp_path / "ckpt"
    d.mkdir()
    with BundleModel(om) as m:
        yield m, w, d


def test_applies_only_the_newest_as_one_update(served):
    m, w, d = served
    for s in (1, 2, 3):
        write_checkpoint(d, _shifted(w, s), s)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    applied = wt.poll()
    assert applied is not None and applied.step == 3 and applied.version == 1
    assert m.version == 1 and m.stats["updates"] == 1  # one update, steps 1 and 2 not replayed
    assert wt.applied_step == 3 and wt.applied_version == 1 and wt.applied == 1
    _assert_device_holds(m, _shifted(w, 3))
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(m.infer(x), mlp_reference(x, _shifted(w, 3)), rtol=1e-5, atol=1e-5)
    assert wt.poll() is None and m.version == 1  # nothing new: no second update


def test_half_written_file_is_ignored(served):
    m, w, d = served
    # data file without a marker, and the writer's hidden temp file: both invisible
    np.savez(d / "step-00000005.npz", **_shifted(w, 5))
    (d / ".step-00000006.npz.abc.tmp").write_bytes(b"PK\x03\x04partial")
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll() is None
    assert m.version == 0 and wt.skipped == 0
    _assert_device_holds(m, w)
    write_checkpoint(d, _shifted(w, 6), 6)  # the commit arrives
    assert wt.poll().step == 6
    _assert_device_holds(m, _shifted(w, 6))


def test_corrupt_file_is_logged_skipped_once_and_weights_kept(served, caplog):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 1)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    wt.poll()
    info = write_checkpoint(d, _shifted(w, 2), 2)
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll() is None
        assert wt.poll() is None  # not retried, not re-logged
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "step-00000002.ckpt.json" in warnings[0].getMessage() and "SHA-256" in warnings[0].getMessage()
    assert "the model keeps the weights of step 1 (version 1)" in warnings[0].getMessage()
    assert wt.skipped == 1 and wt.applied_step == 1 and m.version == 1
    _assert_device_holds(m, _shifted(w, 1))
    write_checkpoint(d, _shifted(w, 3), 3)  # a good newer one still goes through
    assert wt.poll().step == 3
    _assert_device_holds(m, _shifted(w, 3))


def test_truncated_data_behind_marker_is_retried_when_it_changes(served):
    m, w, d = served
    info = write_checkpoint(d, _shifted(w, 4), 4)
    good = info.path.read_bytes()
    info.path.write_bytes(good[: len(good) // 2])  # e.g. a copy tool still writing
    wt = CheckpointWatcher(m, d, use_watchdog=False, poll_interval=60)
    assert wt.poll() is None and wt.skipped == 0 and wt.waiting == 1  # not readable yet: retried, not marked bad
    assert wt.poll() is None  # the back-off (60 s here) has not passed and nothing changed
    _assert_device_holds(m, w)
    info.path.write_bytes(good)  # the file changed: tried again at once
    os.utime(info.path, ns=(1, 1))
    assert wt.poll().step == 4 and wt.waiting == 0
    _assert_device_holds(m, _shifted(w, 4))


def test_corrupt_newest_falls_back_to_next_newest_good(served):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 1)
    bad = write_checkpoint(d, _shifted(w, 2), 2)
    bad.path.write_bytes(b"PK\x03\x04" + b"\0" * (bad.nbytes - 4))  # the marker's size, other bytes
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll().step == 1
    assert wt.skipped == 1
    _assert_device_holds(m, _shifted(w, 1))


def test_mismatched_checkpoint_is_skipped_with_reason(served, caplog):
    m, w, d = served
    wrong = dict(_shifted(w, 1))
    wrong["fc0.weight"] = np.zeros((16, 8), np.float32)  # transposed
    write_checkpoint(d, wrong, 1)
    write_checkpoint(d, {"other": np.zeros(3, np.float32)}, 2)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll() is None
    assert wt.skipped == 2 and m.version == 0
    assert "fc0.weight: shape (16, 8), expected (8, 16)" in caplog.text
    assert "match no variable: ['other']" in caplog.text
    _assert_device_holds(m, w)


def test_partial_checkpoint_only_when_allowed(served):
    m, w, d = served
    write_checkpoint(d, {"fc1.bias": w["fc1.bias"] + 7}, 1)
    strict = CheckpointWatcher(m, d, use_watchdog=False)
    assert strict.poll() is None and strict.skipped == 1
    lenient = CheckpointWatcher(m, d, use_watchdog=False, allow_partial=True)
    assert lenient.poll().step == 1
    _assert_device_holds(m, {**w, "fc1.bias": w["fc1.bias"] + 7})


def test_out_of_order_steps_never_roll_back(served):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 5), 5)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll().step == 5
    old = write_checkpoint(d, _shifted(w, 3), 3)  # an older step, written later (newer mtime)
    os.utime(old.marker, ns=(2**62, 2**62))
    os.utime(old.path, ns=(2**62, 2**62))
    assert wt.poll() is None
    assert wt.applied_step == 5 and m.version == 1 and wt.skipped == 0
    _assert_device_holds(m, _shifted(w, 5))


def test_start_after_skips_older_steps(served):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 2), 2)
    wt = CheckpointWatcher(m, d, use_watchdog=False, start_after=2)
    assert wt.poll() is None and m.version == 0


@pytest.mark.parametrize("use_watchdog", [
    False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_WATCHDOG, reason="watchdog not installed"))])
def test_background_thread_follows_the_trainer(served, use_watchdog):
    m, w, d = served
    seen = []
    with CheckpointWatcher(m, d, poll_interval=0.01, use_watchdog=use_watchdog, on_apply=seen.append) as wt:
        assert wt.running and wt.uses_watchdog is use_watchdog
        for s in range(1, 6):
            write_checkpoint(d, _shifted(w, s), s)
            assert wt.wait_for_step(s, timeout=30)
    assert not wt.running
    steps = [a.step for a in seen]
    assert steps == sorted(set(steps)) and steps[-1] == 5
    assert [a.version for a in seen] == list(range(1, len(seen) + 1))
    _assert_device_holds(m, _shifted(w, 5))


def test_stop_returns_promptly_despite_a_long_poll_interval(served):
    m, w, d = served
    wt = CheckpointWatcher(m, d, poll_interval=3600, use_watchdog=False).start()
    t = wt._thread
    stopper = threading.Thread(target=wt.stop)
    stopper.start()
    stopper.join(timeout=30)  # a broken stop() would sleep for an hour
    assert not stopper.is_alive() and not t.is_alive() and not wt.running
    wt.stop()  # idempotent


def test_watcher_stops_when_the_model_is_closed(make_bundle, tmp_path):
    om, w = make_bundle()
    m = BundleModel(om)
    wt = CheckpointWatcher(m, tmp_path, poll_interval=0.01, use_watchdog=False).start()
    m.close()
    write_checkpoint(tmp_path, _shifted(w, 1), 1)
    wt._thread.join(timeout=30)
    assert not wt.running and wt.applied == 0
    wt.stop()


def test_bad_arguments(served, tmp_path):
    m, w, d = served
    with pytest.raises(FileNotFoundError, match="does not exist or is not a directory"):
        CheckpointWatcher(m, tmp_path / "nope")
    with pytest.raises(ValueError, match="poll_interval must be a positive number of seconds, got 0"):
        CheckpointWatcher(m, d, poll_interval=0)
    with pytest.raises(TypeError, match=r"model must have \.update\(\) and \.variables"):
        CheckpointWatcher(object(), d)
    wt = CheckpointWatcher(m, d, use_watchdog=False).start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            wt.start()
    finally:
        wt.stop()


def test_checkpoint_the_device_refuses_is_skipped_once_and_weights_kept(served, caplog):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 1)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"), sim.fault("acl.mdl.execute", 507011, on_call=1):
        assert wt.poll() is None
    assert wt.skipped == 1 and wt.applied_step is None and m.version == 0
    assert "model.update failed: AclError" in caplog.text
    _assert_device_holds(m, w)
    assert wt.poll() is None and m.version == 0  # the same files are not retried
    write_checkpoint(d, _shifted(w, 2), 2)
    assert wt.poll().step == 2 and m.version == 1
    _assert_device_holds(m, _shifted(w, 2))
