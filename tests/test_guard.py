"""Checks before weights go live, the golden-input check inside the commit, history and rollback."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from acl_bundle import BundleModel, ModelClosedError, sim
from acl_bundle.checkpoint import write_checkpoint
from acl_bundle.checks import WeightsRefused, finite, golden
from acl_bundle.model import UnknownPreviousError
from acl_bundle.watcher import CheckpointWatcher
from helpers import reference

X = np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)


def _set(w, seed):
    r = np.random.default_rng(seed)
    return {k: r.standard_normal(v.shape).astype(v.dtype) for k, v in w.items()}


def _bytes(m):
    return {k: v.tobytes() for k, v in sim.variables(m.bundle_id).items()}


@pytest.fixture
def model(make_bundle):
    om, w = make_bundle()
    with BundleModel(om, history=4) as m:
        yield m, w


# --------------------------------------------------------------------------- weight checks
def test_a_weight_check_sees_names_and_arrays_and_can_refuse(model):
    m, w = model
    seen = {}

    def look(weights):
        seen.update(weights)
        raise WeightsRefused("no thanks")

    new = _set(w, 1)
    before = _bytes(m)
    with pytest.raises(WeightsRefused, match="no thanks"):
        m.update({"fc0.bias": new["fc0.bias"], 2: new["fc1.weight"]}, check=look)
    assert sorted(seen) == ["fc0.bias", "fc1.weight"]
    np.testing.assert_array_equal(seen["fc1.weight"], new["fc1.weight"])
    assert _bytes(m) == before and m.version == 0
    assert m.stats["refused_updates"] == 1 and m.stats["updates"] == 0 and m.stats["failed_updates"] == 0
    assert m.history == []


def test_finite_check_on_update(model):
    m, w = model
    bad = dict(w)
    bad["fc1.bias"] = np.array([0, np.nan, 0, 0], np.float32)
    with pytest.raises(WeightsRefused, match=r"fc1.bias \(1 of 4\)"):
        m.update(bad, check=finite)
    assert m.version == 0
    assert m.update(_set(w, 2), check=[finite, lambda ws: True]) == 1


def test_check_argument_types(model):
    m, w = model
    with pytest.raises(TypeError, match="check must be a callable"):
        m.update(w, check=3)
    with pytest.raises(TypeError, match="source must be a str"):
        m.update(w, source=1)


# --------------------------------------------------------------------------- golden inputs
def test_golden_refusal_is_never_seen_by_a_concurrent_reader(model):
    """Readers hammer infer while a drifting update is judged (slowly) inside the commit: none sees it."""
    m, w = model
    good, drift = _set(w, 10), _set(w, 11)
    m.update(good)  # seeds the host copy of every variable
    ref = m.infer(X)
    np.testing.assert_allclose(ref, reference(X, good), rtol=1e-5, atol=1e-5)
    judged = threading.Event()

    def near(y):
        judged.set()
        time.sleep(0.2)  # a slow judge: readers that slipped in now would get the drifted outputs
        return float(np.abs(y - ref).max()) < 1e-3

    outs: list[tuple[np.ndarray, int]] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            outs.append(m.infer(X, return_version=True))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.05)
        with pytest.raises(WeightsRefused, match="golden check"):
            m.update(drift, check=golden(X, near))
        assert judged.is_set()
        time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(outs) > 10
    drifted = reference(X, drift)
    for y, version in outs:
        assert version == 1
        assert not np.allclose(y, drifted, atol=1e-3)
        assert y.tobytes() == ref.tobytes()  # bit-identical to the trusted weights' output
    assert m.version == 1 and m.stats["refused_updates"] == 1
    for k, v in sim.variables(m.bundle_id).items():
        np.testing.assert_array_equal(v, good[k])
    # an update within tolerance passes the same check
    small = {k: (v + np.float32(1e-6)).astype(v.dtype) for k, v in good.items()}
    assert m.update(small, check=golden(X, lambda y: float(np.abs(y - ref).max()) < 1e-3)) == 2


def test_golden_needs_a_known_previous_value(make_bundle):
    om, w = make_bundle()
    with BundleModel(om, history=2) as m:
        before = _bytes(m)
        with pytest.raises(UnknownPreviousError,
                           match=r"current value of 4 variable\(s\) .*not known on the host") as ei:
            m.update(_set(w, 1), check=golden(X, lambda y: True))
        assert ei.value.variables == ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"]
        assert _bytes(m) == before and m.version == 0
        m.update({"fc0.bias": w["fc0.bias"]})  # seed one variable: a golden update of it alone is possible
        assert m.update({"fc0.bias": w["fc0.bias"] + 1}, check=golden(X, lambda y: True)) == 2
    with BundleModel(om) as m, pytest.raises(ValueError, match=r"needs the model's history .*history=N"):
        m.update(_set(w, 1), check=golden(X, lambda y: True))


def test_golden_inputs_are_validated_before_anything_changes(model):
    m, w = model
    m.update(w)
    with pytest.raises(ValueError, match="shape"):
        m.update(_set(w, 1), check=golden(np.zeros((1, 9), np.float32), lambda y: True))
    assert m.version == 1


def test_a_failed_undo_closes_the_model_instead_of_serving_refused_weights(model):
    m, w = model
    m.update(w)
    calls = []
    with sim.record() as rec:
        # execute calls: 1 update graph, 2 golden infer, 3 the undo
        with sim.fault("acl.mdl.execute", 507011, on_call=3), pytest.raises(WeightsRefused) as ei:
            m.update(_set(w, 5), check=golden(X, lambda y: False))
        calls = [c for c in rec if c == "acl.mdl.execute"]
    assert len(calls) == 3
    assert any("the model was closed" in n for n in getattr(ei.value, "__notes__", []))
    with pytest.raises(ModelClosedError):
        m.infer(X)


# --------------------------------------------------------------------------- history and rollback
def test_rollback_restores_outputs_bit_identically(model):
    m, w = model
    a, b, bad = _set(w, 1), _set(w, 2), _set(w, 3)
    m.update(a)
    y1 = m.infer(X)
    m.update({"fc1.weight": b["fc1.weight"], "fc1.bias": b["fc1.bias"]}, source="ckpt-2", step=2)
    y2, v2 = m.infer(X, return_version=True)
    state2 = _bytes(m)
    m.update({"fc0.weight": bad["fc0.weight"], "fc1.bias": bad["fc1.bias"]}, source="ckpt-3", step=3)
    assert m.infer(X).tobytes() != y2.tobytes()
    v = m.rollback()
    assert v == 4 and m.stats["rollbacks"] == 1
    y, version = m.infer(X, return_version=True)
    assert y.tobytes() == y2.tobytes() and version == 4
    assert _bytes(m) == state2
    entries = m.history
    assert [(e.version, e.source, e.step) for e in entries] == [
        (1, None, None), (2, "ckpt-2", 2), (3, "ckpt-3", 3), (4, "rollback to version 2", 2)]
    assert m.step == 2 and version.step == 2  # the restored weights carry the step they had
    assert entries[-1].variables == ("fc0.weight", "fc1.bias")
    # further back, across the rollback itself: version 1 had a's values everywhere
    m.rollback(to=1)
    assert {k: v.tobytes() for k, v in a.items()} == _bytes(m)
    assert m.infer(X).tobytes() == y1.tobytes()


def test_rollback_refuses_what_it_cannot_know(model):
    m, w = model
    with pytest.raises(ValueError, match="no update is in the history"):
        m.rollback()
    m.update({"fc0.bias": w["fc0.bias"] + 1})
    with pytest.raises(
        ValueError, match=r"cannot roll back to version 0: the value of 1 variable\(s\) .*\['fc0.bias'\]"
    ):
        m.rollback()
    with pytest.raises(ValueError, match="the history covers versions 0 to 0"):
        m.rollback(to=5)
    with pytest.raises(TypeError, match="version number"):
        m.rollback(to="1")
    assert m.version == 1


def test_history_is_bounded_by_count_and_bytes(make_bundle):
    om, w = make_bundle()
    with BundleModel(om, history=3) as m:
        for s in range(6):
            m.update(_set(w, s))
        assert [e.version for e in m.history] == [4, 5, 6]
        with pytest.raises(ValueError, match="covers versions 3 to 5"):
            m.rollback(to=2)
        m.rollback(to=3)
    total = sum(v.nbytes for v in w.values())
    with BundleModel(om, history=100, history_bytes=3 * total) as m:
        for s in range(6):
            m.update(_set(w, s))
        assert m._updater.history.nbytes <= 3 * total
        assert len(m.history) == 2  # current + 2 replaced sets fit


def test_rollback_without_history(make_bundle):
    om, w = make_bundle()
    with BundleModel(om) as m:
        m.update(w)
        with pytest.raises(ValueError, match="rollback needs the model's history"):
            m.rollback()
        assert m.history == []


def test_history_copies_do_not_follow_the_callers_arrays(model):
    m, w = model
    a = _set(w, 1)
    m.update(a)
    m.update(_set(w, 2))
    a["fc0.weight"][:] = 0  # the caller reuses its buffer
    m.rollback()
    np.testing.assert_array_equal(sim.variables(m.bundle_id)["fc0.weight"], _set(w, 1)["fc0.weight"])


# --------------------------------------------------------------------------- the watcher
def test_watcher_health_check_rolls_back_automatically(make_bundle, tmp_path, caplog):
    om, w = make_bundle()
    good, bad, later = _set(w, 1), _set(w, 2), _set(w, 3)
    with BundleModel(om, history=2) as m:
        trusted = {}

        def healthy(model):
            y = model.infer(X)
            return float(np.abs(y).max()) < 1e3  # "bad" is scaled up below

        write_checkpoint(tmp_path, good, 1)
        wt = CheckpointWatcher(m, tmp_path, use_watchdog=False, health_check=healthy)
        assert wt.poll().step == 1
        trusted["y"] = m.infer(X)
        write_checkpoint(tmp_path, {k: v * 1e6 for k, v in bad.items()}, 2)
        with caplog.at_level(logging.WARNING, logger="acl_bundle"):
            assert wt.poll() is None
        assert wt.rolled_back == 1 and wt.applied_step == 1
        assert m.infer(X).tobytes() == trusted["y"].tobytes()
        assert "health check failed after the update (returned False); rolled back to version 1" in caplog.text
        assert wt.poll() is None  # the bad checkpoint is not retried
        write_checkpoint(tmp_path, later, 3)
        assert wt.poll().step == 3
        np.testing.assert_allclose(m.infer(X), reference(X, later), rtol=1e-5, atol=1e-5)


def test_watcher_golden_check(make_bundle, tmp_path, caplog):
    om, w = make_bundle()
    base = _set(w, 1)
    with BundleModel(om, history=2) as m:
        ref = {}
        check = golden(X, lambda y: "y" not in ref or float(np.abs(y - ref["y"]).max()) < 0.5)
        write_checkpoint(tmp_path, base, 1)
        wt = CheckpointWatcher(m, tmp_path, use_watchdog=False, golden=check)
        with caplog.at_level(logging.WARNING, logger="acl_bundle"):
            assert wt.poll().step == 1  # the first after load cannot be guarded: applied with a warning
        assert "applied without the golden check" in caplog.text
        ref["y"] = m.infer(X)
        write_checkpoint(tmp_path, _set(w, 9), 2)  # far away
        assert wt.poll() is None and wt.refused == 1
        assert m.infer(X).tobytes() == ref["y"].tobytes()
        write_checkpoint(tmp_path, {k: v + np.float32(1e-4) for k, v in base.items()}, 3)  # close by
        assert wt.poll().step == 3
    with BundleModel(om) as m, pytest.raises(ValueError, match="need\\(s\\) the model's history"):
        CheckpointWatcher(m, tmp_path, golden=check)


def test_stage_takes_checks_too(model):
    m, w = model
    m.update(w)
    ref = m.infer(X)
    staged = m.stage(_set(w, 4), check=golden(X, lambda y: False), source="by hand", step=7)
    with pytest.raises(WeightsRefused):
        staged.commit()
    assert m.version == 1 and m.infer(X).tobytes() == ref.tobytes()
    with pytest.raises(WeightsRefused, match="returned False"):
        m.stage(_set(w, 4), check=lambda ws: False)
    staged = m.stage(_set(w, 5), step=8, source="by hand")  # the lock was given back both times
    assert staged.commit() == 2
    assert [(e.version, e.source, e.step) for e in m.history][-1] == (2, "by hand", 8)


def test_numpy_false_refuses_too(model):
    """`abs(x).max() < 100` is a numpy bool: its False must refuse like Python's."""
    m, w = model
    m.update(w)
    big = {k: v * 1e6 for k, v in w.items()}
    with pytest.raises(WeightsRefused, match="returned False"):
        m.update(big, check=lambda ws: abs(ws["fc1.bias"]).max() < 100)
    ref = m.infer(X)
    with pytest.raises(WeightsRefused, match="returned False"):
        m.update(big, check=golden(X, lambda y: abs(y - ref).max() < 0.5))
    assert m.version == 1 and m.infer(X).tobytes() == ref.tobytes()
