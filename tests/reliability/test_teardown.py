"""Teardown paths: interpreter exit with open models, exceptions in ``with``, close from another thread.

Documented behaviour (acl_bundle/model.py module docstring): ``close`` refuses new
calls at once, waits for in-flight calls to finish, then releases everything;
calls after it raise ``ModelClosedError``.  Models never closed are released by
their ``weakref.finalize`` (at garbage collection or interpreter exit).
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from acl_bundle import BundleModel, ModelClosedError, sim
from helpers.reliability import matches

ROOT = Path(__file__).resolve().parents[2]

# The check is registered with atexit *before* any model exists, so it runs after
# weakref.finalize's own atexit hook (atexit is LIFO; finalize registers on first use).
EXIT_SCRIPT = """
import atexit, os, sys, threading
os.environ["ACL_BUNDLE_BACKEND"] = "sim"
import numpy as np
from acl_bundle import sim, BundleModel

def check():
    print("LEAKS_AT_EXIT", sim.leaks(), flush=True)
atexit.register(check)

om = sys.argv[1]
x = np.ones((1, 8), np.float32)
a = BundleModel(om)                                # referenced by a global at exit
a.infer(x)
b = BundleModel.from_bytes(open(om, "rb").read())  # from memory
b.update({0: np.zeros((8, 16), np.float32)})
c = BundleModel(om); c.self_ref = c                # in a reference cycle
c.infer(x)
MODE = sys.argv[2]
if MODE == "thread":
    def spin():
        while True:
            try:
                a.infer(x)
            except Exception:
                return
    threading.Thread(target=spin, daemon=True).start()
if MODE == "busy":  # models loading, updating, inferring and closing in daemon threads as the interpreter exits
    def loop(step):
        while True:
            try:
                step()
            except Exception:  # ModelClosedError (InterpreterShutdownError for a load) once exit has begun
                return
    w = {0: np.zeros((8, 16), np.float32)}
    steps = [lambda: BundleModel(om), lambda: b.update(w), lambda: a.infer(x), lambda: BundleModel(om).close(),
             lambda: c.infer(np.ones((3, 8), np.float32))]
    for step in steps:
        threading.Thread(target=loop, args=(step,), daemon=True).start()
    import time; time.sleep(0.2)
print("EXITING", flush=True)
if MODE == "sysexit":
    sys.exit(0)
"""


def _run_exit_script(tmp_path, bundles, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "exit_open.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACL_BUNDLE_BACKEND": "sim"}
    return subprocess.run([sys.executable, str(script), str(bundles["init"].path), mode],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("mode", ["fall-off-the-end", "sysexit"])
def test_interpreter_exit_with_open_models(tmp_path, bundles, mode):
    p = _run_exit_script(tmp_path, bundles, mode)
    assert p.returncode == 0, p.stderr
    assert "EXITING" in p.stdout
    assert "LEAKS_AT_EXIT {}" in p.stdout, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr


def test_interpreter_exit_while_a_daemon_thread_infers(tmp_path, bundles):
    codes = [_run_exit_script(tmp_path, bundles, "thread").returncode for _ in range(6)]
    assert codes == [0] * 6, f"exit codes {codes}"


def _busy_exits(tmp_path, bundles, runs: int) -> None:
    results = [_run_exit_script(tmp_path, bundles, "busy") for _ in range(runs)]
    bad = [(p.returncode, p.stdout[-300:], p.stderr[-500:]) for p in results
           if p.returncode != 0 or "LEAKS_AT_EXIT {}" not in p.stdout or "Traceback" in p.stderr]
    assert not bad, f"{len(bad)} of {runs} busy exits left ACL resources or failed: {bad[:2]}"


def test_busy_interpreter_exits_release_everything(tmp_path, bundles):
    """Models loading, updating, inferring and closing in other threads when the interpreter exits."""
    _busy_exits(tmp_path, bundles, 4)


@pytest.mark.slow
def test_busy_interpreter_exits_release_everything_24_of_24(tmp_path, bundles):
    _busy_exits(tmp_path, bundles, 24)


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom("inside with"), KeyboardInterrupt(), SystemExit(3)])
def test_exception_inside_with_closes_and_propagates(bundles, exc):
    b = bundles["init"]
    with pytest.raises(type(exc)) as info, BundleModel(b.path) as m:
        m.infer(np.ones((1, 8), np.float32))
        raise exc
    assert info.value is exc  # __exit__ does not swallow or replace it
    assert m.closed and sim.leaks() == {}
    with pytest.raises(ModelClosedError):
        m.infer(np.ones((1, 8), np.float32))


def test_wrapper_error_inside_with(bundles):
    with pytest.raises(ValueError), BundleModel(bundles["init"].path) as m:
        m.infer(np.ones((2, 8), np.float32))  # wrong shape
    assert m.closed and sim.leaks() == {}


def test_dropped_model_is_released_by_gc(bundles):
    m = BundleModel(bundles["init"].path)
    m.infer(np.ones((1, 8), np.float32))
    m.cycle = m
    del m
    gc.collect()
    assert sim.leaks() == {}


def _blocking_execute(monkeypatch, infer_id_holder: list):
    """Make the infer graph's execute block until released; report when a call is inside it."""
    entered, release = threading.Event(), threading.Event()
    real = sim.acl.mdl.execute

    def execute(model_id, in_ds, out_ds):
        if infer_id_holder and model_id == infer_id_holder[0] and not release.is_set():
            entered.set()
            release.wait(30)
        return real(model_id, in_ds, out_ds)

    monkeypatch.setattr(sim.acl.mdl, "execute", execute)
    return entered, release


@pytest.mark.parametrize("op", ["infer", "update"])
def test_close_from_another_thread_waits_for_in_flight_call(bundles, monkeypatch, op):
    b = bundles["init"]
    x = np.ones((1, 8), np.float32)
    holder: list[int] = []
    entered, release = _blocking_execute(monkeypatch, holder)
    m = BundleModel(b.path)
    holder.append(m.model_ids[op])
    result: dict = {}

    def in_flight():
        try:
            result["value"] = m.infer(x) if op == "infer" else m.update(b.weights)
        except BaseException as e:
            result["error"] = e

    t_call = threading.Thread(target=in_flight)
    t_call.start()
    assert entered.wait(30), "the call never reached execute"
    t_close = threading.Thread(target=m.close)
    t_close.start()
    t_close.join(0.2)
    assert t_close.is_alive(), "close() returned while a call was still executing"
    assert sim.live_resources()["bundles"], "resources released under an executing call"
    with pytest.raises(ModelClosedError):  # new calls are refused while close waits
        m.infer(x)
    with pytest.raises(ModelClosedError):
        m.update(b.weights)
    release.set()
    t_call.join(30)
    t_close.join(30)
    assert not t_call.is_alive() and not t_close.is_alive()
    assert "error" not in result, result.get("error")
    if op == "infer":
        assert matches(result["value"], x, b.weights)
    else:
        assert result["value"] == 1
    assert sim.leaks() == {}
    m.close()  # idempotent
    with pytest.raises(ModelClosedError):
        m.infer(x)


def test_close_twice_from_many_threads(bundles):
    m = BundleModel(bundles["init"].path)
    m.infer(np.ones((1, 8), np.float32))
    errors: list[BaseException] = []

    def close():
        try:
            m.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=close) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sim.leaks() == {}
