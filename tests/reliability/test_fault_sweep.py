"""Fault sweep: fail every ACL call the wrapper makes, one at a time, and check the contract.

Call sites are *discovered*, not listed: each scenario runs once under
``sim.record()``; then it is rerun once per entry of that trace with exactly that
occurrence failing (``sim.fault(name, CODE, on_call=k)``, ``k`` = the occurrence
index of the call among same-named calls of the trace).  New ACL calls in the
wrapper are therefore swept automatically.

What each injected failure must produce, by kind of call (the pyACL documentation):

* a call that returns a status code: an ``AclError`` whose ``func`` is that call
  and whose ``code`` is the injected code;
* a bare ``create_*`` call (a NULL handle is its only failure): ``AclError`` naming
  it (the wrapper reports code 200000, ACL_ERROR_BAD_ALLOC);
* a release call (``destroy_*``, ``free``, ``*unload``, ``reset_device``,
  ``finalize``): no exception, one ``AclCleanupWarning`` naming the call, and exactly
  that one resource left behind (a failed release cannot release; the wrapper
  prefers a leak to a dangling handle).  ``destroy_tensor_desc`` returns None in
  pyACL, so its failure cannot be seen: exactly one tensor desc is left, silently;
* a bare getter (``get_num_inputs``, ``*_by_index``, ``numpy_to_ptr``...) or the
  dynamic-batch probe ``get_input_index_by_name``: pyACL has no error path, the
  runtime just hands back 0/""/-1; the wrapper must still end in a clear error
  (AclError/ValueError) or a working model, and never leak.

Then: after a failed load nothing is alive and a new load works; after a failed
infer/update the model serves the last fully applied weights (device variables
bit-identical when an update failed), and a later update + infer works; after
close nothing is alive.
"""
from __future__ import annotations

import gc
import re
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from acl_bundle import AclCleanupWarning, AclError, BundleModel, sim
from acl_bundle.checks import golden
from helpers.reliability import Bundle, live_count, matches, snapshot, weight_sets

CODE = 500000  # ACL_ERROR_INTERNAL_ERROR: not a code any call returns on its own here
NULL_HANDLE = 200000

BARE_HANDLE = re.compile(r"\.create_(dataset|desc|data_buffer|tensor_desc)$")
RELEASE = re.compile(r"\.(destroy_\w+|free|free_host|unload|bundle_unload|reset_device|finalize(_reference)?)$")
SILENT_RELEASE = {"acl.destroy_tensor_desc"}  # returns None in pyACL: failure is invisible
BARE_VALUE = re.compile(
    r"\.(get_num_(in|out)puts|get_(input|output)_(size_by_index|data_type|format|name_by_index)"
    r"|get_dataset_(buffer|num_buffers)|get_data_buffer_\w+|get_tensor_desc_(?!dim_v2)\w+|data_type_size"
    r"|(bytes|numpy)_to_ptr)$"
)
# ret != 0 means "no dynamic-batch input" / "no current context" (the wrapper then sets its own);
# get_recent_err_msg is diagnostics only: read after get_context's expected miss to clear it
PROBES = {"acl.mdl.get_input_index_by_name", "acl.rt.get_context", "acl.get_recent_err_msg"}


def kind_of(name: str) -> str:
    if name in SILENT_RELEASE:
        return "silent-release"
    if RELEASE.search(name):
        return "release"
    if BARE_HANDLE.search(name):
        return "handle"
    if name in PROBES or BARE_VALUE.search(name):
        return "bare"
    return "status"


# ------------------------------------------------------------------ scenarios
@dataclass
class State:
    """What an operation scenario starts from: an open model and what it should compute."""

    model: BundleModel
    bundle: Bundle
    current: dict  # the last fully applied weights
    batches: tuple  # batch sizes to probe when checking that the model serves
    new: dict = field(default_factory=dict)  # the weights the scenario's update applies


@dataclass
class Scenario:
    name: str
    bundle: str
    kind: str  # "load", "op", "close"
    action: Callable[..., Any]
    setup: Callable[[Bundle], State] | None = None
    updates: bool = False  # action applies State.new


def _x(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(100 + b + seed).standard_normal((b, 8)).astype(np.float32)


class _PyaclWithoutFinalizeReference:
    """An older pyACL (no ``acl.finalize_reference``): the wrapper's last close then calls ``acl.finalize``."""

    def __getattr__(self, name: str) -> Any:
        if name == "finalize_reference":
            raise AttributeError(name)
        return getattr(sim.acl, name)


OLD_PYACL = _PyaclWithoutFinalizeReference()


def _open(bundle: Bundle, warm: tuple = (), full_update: bool = False, acl: Any = None,
          staging_bytes: int | None = None) -> State:
    m = BundleModel(bundle.path, acl=acl, staging_bytes=staging_bytes)
    st = State(m, bundle, bundle.initial(), bundle.batch_sizes or (1,))
    if not bundle.init or full_update:
        st.current = weight_sets(bundle.weights, 1, seed=7)[0]
        m.update(st.current)
    for b in warm:
        m.infer(_x(b))
    return st


def _one_variable_pool(bundle: Bundle) -> State:
    """A pool holding only the largest variable; the last update staged a different variable there."""
    largest = max(v.nbytes for v in bundle.weights.values())
    st = _open(bundle, warm=(1,), staging_bytes=largest)
    st.model.update({"fc0.bias": st.current["fc0.bias"]})  # the pool now holds fc0.bias
    return _with_new(st, keys={"fc1.weight"})


def _with_new(st: State, keys=None, seed: int = 8) -> State:
    new = weight_sets(st.bundle.weights, 1, seed=seed)[0]
    st.new = {k: v for k, v in new.items() if keys is None or k in keys}
    return st


def _open_guarded(bundle: Bundle) -> State:
    """A model with history, every variable set once (so a golden check can undo), buffers warm."""
    m = BundleModel(bundle.path, history=2)
    st = State(m, bundle, weight_sets(bundle.weights, 1, seed=7)[0], bundle.batch_sizes or (1,))
    m.update(st.current)
    m.infer(_x(1))
    return _with_new(st)


SCENARIOS = [
    Scenario("load: 3 graphs, init run", "init", "load", lambda b: BundleModel(b.path)),
    Scenario("load: 2 graphs, no init", "noinit", "load", lambda b: BundleModel(b.path)),
    Scenario("load: dynamic batch", "dynamic", "load", lambda b: BundleModel(b.path)),
    Scenario("load: from bytes", "init", "load",
             lambda b: BundleModel.from_bytes(b.path.read_bytes(), manifest=b.path.with_suffix(".manifest.json"))),
    Scenario("load: no manifest", "nomanifest", "load", lambda b: BundleModel(b.path)),
    Scenario("load: dynamic image size", "hw", "load", lambda b: BundleModel(b.path)),
    Scenario("load: dynamic dims", "dims", "load", lambda b: BundleModel(b.path)),
    Scenario("first infer: image-size gear", "hw", "op",
             lambda st: st.model.infer(np.zeros((1, 3, 8, 8), np.float32)), lambda b: _open(b)),
    Scenario("first infer: dims gear", "dims", "op",
             lambda st: st.model.infer(np.zeros((2, 8, 4), np.float32), np.zeros((2, 8), np.float32)),
             lambda b: _open(b)),
    Scenario("first infer: static", "init", "op", lambda st: st.model.infer(_x(1)), lambda b: _open(b)),
    *[
        Scenario(f"first infer: batch {bs}", "dynamic", "op", lambda st, bs=bs: st.model.infer(_x(bs)),
                 lambda b, bs=bs: _open(b, warm=(1,) if bs != 1 else ()))
        for bs in (1, 2, 4)
    ],
    Scenario("padded infer: 3 rows on batch 4", "dynamic", "op", lambda st: st.model.infer(_x(3)),
             lambda b: _open(b, warm=(1, 4))),
    Scenario("steady infer", "init", "op", lambda st: st.model.infer(_x(1)), lambda b: _open(b, warm=(1,))),
    Scenario("update by index: all variables", "init", "op",
             lambda st: st.model.update({i: st.new[v.name] for i, v in enumerate(st.model.variables)}),
             lambda b: _with_new(_open(b, warm=(1,))), updates=True),
    Scenario("update by name: subset after a full update", "init", "op",
             lambda st: st.model.update(dict(st.new)),
             lambda b: _with_new(_open(b, warm=(1,), full_update=True), keys={"fc0.bias", "fc1.weight"}),
             updates=True),
    Scenario("update: no manifest (per-call tensor descs)", "nomanifest", "op",
             lambda st: st.model.update(dict(st.new)),
             lambda b: _with_new(_open(b, warm=(1,)), keys={"fc0.weight", "fc1.bias"}), updates=True),
    Scenario("update: one variable through a one-variable staging pool", "init", "op",
             lambda st: st.model.update(dict(st.new)), _one_variable_pool, updates=True),
    Scenario("update: 2-graph bundle", "noinit", "op",
             lambda st: st.model.update(dict(st.new)), lambda b: _with_new(_open(b, warm=(1,))), updates=True),
    # a fault inside the golden check's inference is a refusal: undone inside the commit, old weights served
    Scenario("update with a golden check", "init", "op",
             lambda st: st.model.update(dict(st.new), check=golden(_x(1, seed=3), lambda y: True)),
             _open_guarded, updates=True),
    Scenario("close: after infer + update", "init", "close", lambda st: st.model.close(),
             lambda b: _open(b, warm=(1,), full_update=True)),
    Scenario("close: dynamic batch, 3 batch slots", "dynamic", "close", lambda st: st.model.close(),
             lambda b: _open(b, warm=(1, 2, 4), full_update=True)),
    Scenario("close: a pyACL without finalize_reference", "init", "close", lambda st: st.model.close(),
             lambda b: _open(b, warm=(1,), acl=OLD_PYACL)),
]


# ------------------------------------------------------------------ checks
def _site(exc: BaseException) -> str:
    """Innermost wrapper frame (not the simulator, not the check helpers) that raised ``exc``."""
    site = "?"
    for fr in traceback.extract_tb(exc.__traceback__):
        f = fr.filename.replace("\\", "/")
        if "/acl_bundle/" in f and "/acl_bundle/sim/" not in f and not f.endswith("_errors.py"):
            site = f"{f.rsplit('/acl_bundle/', 1)[1]}:{fr.lineno}"
    return site


def _serves(m: BundleModel, current: dict, batches: tuple, bundle: Bundle | None = None) -> None:
    if bundle is not None and bundle.serves is not None:
        bundle.serves(m)
        return
    for b in batches:
        x = _x(b, seed=1)
        y = m.infer(x)
        assert matches(y, x, current), f"batch {b}: output is not the reference of the last applied weights"


def _check_later_update(m: BundleModel, st: State) -> None:
    later = weight_sets(st.bundle.weights, 1, seed=9)[0]
    v = m.version
    if m.staging_bytes >= sum(-(-a.nbytes // 64) * 64 for a in later.values()):
        assert m.update(later) == v + 1
    else:  # a small staging pool: one variable per update
        for n, (name, a) in enumerate(later.items(), 1):
            assert m.update({name: a}) == v + n
    _serves(m, later, st.batches)


def _check_error(name: str, kind: str, exc: BaseException | None) -> None:
    if kind == "status":
        assert isinstance(exc, AclError), f"fault in {name}: expected AclError, got {exc!r}"
        assert (exc.func, exc.code) == (name, CODE), f"fault in {name}: error names {exc.func} {exc.code}"
    elif kind == "handle":
        assert isinstance(exc, AclError), f"fault in {name}: expected AclError, got {exc!r}"
        assert exc.func == name and exc.code == NULL_HANDLE, f"fault in {name}: error names {exc.func} {exc.code}"
    elif kind in ("release", "silent-release"):
        assert exc is None, f"a failed release ({name}) must not raise, got {exc!r}"
    else:  # bare: no error path in pyACL; anything but a clear error or success is a bug
        assert exc is None or isinstance(exc, (AclError, ValueError)), f"fault in {name}: unclear {exc!r}"


def _check_warnings(name: str, kind: str, caught: list) -> None:
    msgs = [str(w.message) for w in caught if issubclass(w.category, AclCleanupWarning)]
    if kind == "release":
        assert len(msgs) == 1 and name in msgs[0], f"fault in {name}: cleanup warnings {msgs}"
    else:
        assert not msgs, f"fault in {name}: unexpected cleanup warnings {msgs}"


def _collect_if_alive(expected: int = 0) -> None:
    """Collect garbage only when more than ``expected`` simulator resources are alive, then re-check.

    A model kept alive by a reference cycle (a traceback frame, say) is released by its
    finalizer at collection; collecting at every one of the thousands of points was most
    of the sweep's time.
    """
    if live_count() != expected:
        gc.collect()


def _check_leaks_after(name: str, kind: str) -> None:
    """After everything is closed: nothing alive, except the one resource a failed release kept."""
    own = 0
    if kind in ("release", "silent-release"):
        own = 0 if name == "acl.rt.set_context" else 1  # set_context holds nothing
    _collect_if_alive(own)
    if kind in ("release", "silent-release"):
        assert live_count() == own, f"failed {name}: expected {own} resource left, got {sim.leaks()}"
        sim.reset()  # the one unreleasable resource: drop it so the next run starts clean
    assert sim.leaks() == {}, f"fault in {name}: leaked {sim.leaks()}"


# ------------------------------------------------------------------ the sweep
SUMMARY: dict[str, Any] = {"scenarios": 0, "points": 0, "functions": set(), "sites": set(), "outcomes": Counter()}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    s = SUMMARY
    if s["scenarios"]:
        print(
            f"\nFAULT SWEEP: {s['scenarios']} scenarios, {s['points']} injected faults, "
            f"{len(s['functions'])} distinct ACL functions, {len(s['sites'])} distinct wrapper call sites "
            f"(function x source line that surfaced the error); outcomes {dict(s['outcomes'])}; "
            f"bare getters whose lie gave a loaded-but-unusable model: {sorted(s.get('degraded', ()))}"
        )


def _trace(sc: Scenario, bundle: Bundle) -> list[str]:
    st = sc.setup(bundle) if sc.setup else None
    with sim.record() as calls:
        out = sc.action(bundle if st is None else st)
    for m in (out, st.model if st else None):
        if isinstance(m, BundleModel):
            m.close()
    assert sim.leaks() == {}
    return list(calls)


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fault_sweep(sc: Scenario, bundles):
    bundle = bundles[sc.bundle]
    trace = _trace(sc, bundle)
    assert trace, "the scenario made no ACL call"
    seen: Counter = Counter()
    points = []
    for name in trace:
        seen[name] += 1
        points.append((name, seen[name]))
    for name, k in points:
        kind = kind_of(name)
        if sc.kind == "close" and kind == "status":
            kind = "release"  # close never raises: every failure is a warning (e.g. set_context)
        sim.reset()
        st = sc.setup(bundle) if sc.setup else None
        before = snapshot(st.model.bundle_id) if st is not None and sc.kind == "op" else None
        version = st.model.version if st is not None and sc.kind == "op" else None
        exc: BaseException | None = None
        out = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with sim.fault(name, CODE, on_call=k) as f:
                try:
                    out = sc.action(bundle if st is None else st)
                except Exception as e:  # the contract under test
                    exc = e
            assert f.fired == 1, f"{name} #{k}: the fault did not fire (scenario not deterministic?)"
            where = f"{sc.name}: fault in {name} (occurrence {k})"
            try:
                _check_error(name, kind, exc)
                _check_warnings(name, kind, caught)
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from exc
        SUMMARY["points"] += 1
        SUMMARY["functions"].add(name)
        if exc is not None:
            SUMMARY["sites"].add((name, _site(exc)))
        elif kind == "release":
            SUMMARY["sites"].add((name, "release"))
        SUMMARY["outcomes"]["raised" if exc is not None else ("warned" if kind == "release" else "no error")] += 1

        if sc.kind == "load":
            if exc is not None:
                _collect_if_alive()
                assert sim.leaks() == {}, f"{where}: a failed load leaked {sim.leaks()}"
                out = sc.action(bundle)  # the process state (init/device refcounts) is still sane
            m = out
            try:
                _serves(m, bundle.initial(), bundle.batch_sizes or (1,), bundle)
            except Exception as e:
                # Only a runtime that lied in a bare getter (no error path in pyACL) may give a
                # model that loads but does not serve: e.g. get_num_inputs answering 0.
                if kind != "bare":
                    raise AssertionError(f"{where}: the loaded model does not serve correctly: {e!r}") from e
                SUMMARY["outcomes"]["degraded (bare getter lied)"] += 1
                SUMMARY.setdefault("degraded", set()).add(f"{name}#{k} in {sc.name!r}: {e!r}"[:200])
            finally:
                m.close()
        elif sc.kind == "op":
            m = st.model
            if exc is not None:
                assert m.version == version, f"{where}: version moved on a failed call"
                if sc.updates:
                    assert snapshot(m.bundle_id) == before, f"{where}: a failed update changed device weights"
            elif sc.updates:
                st.current = {**st.current, **st.new}
            try:
                _serves(m, st.current, st.batches, st.bundle)
                if st.bundle.serves is None:  # the MLP bundles: a later update still applies and serves
                    _check_later_update(m, st)
            except Exception as e:
                raise AssertionError(f"{where}: the model no longer serves: {e!r}") from e
            m.close()
        _check_leaks_after(name, kind)
    SUMMARY["scenarios"] += 1
    print(f"\n  {sc.name}: {len(points)} faults over {len(set(trace))} functions")


def test_every_acl_call_in_the_wrapper_is_swept(bundles):
    """Guard: each acl function the wrapper's source names appears in some scenario trace.

    The sweep finds call sites from traces; this catches a call that only a path no
    scenario takes would reach, so a new path gets a scenario.
    """
    import importlib
    import inspect
    import pkgutil

    # The wrapper, read off the layout: the public model module, the package that implements it
    # (acl_bundle/_model/) and the foundation module that talks to pyACL (_backend). A module added
    # to _model/ is scanned without anyone listing it here.
    from acl_bundle import _model
    from acl_bundle.sim import _state

    modules = ["model", "_backend"] + [f"_model.{m.name}" for m in pkgutil.iter_modules(_model.__path__)]
    assert {"_model.context", "_model.buffers", "_model.updater", "_model.gate", "_model.description"} <= set(modules)
    src = "".join(inspect.getsource(importlib.import_module(f"acl_bundle.{m}")) for m in modules)
    named = {f"acl.{a}.{b}" for a, b in re.findall(r"\b(rt|mdl|util)\.(\w+)\b", src)}
    named |= {f"acl.{m}" for m in re.findall(r"\bacl\.(\w+)\b", src)}
    named |= set(re.findall(r'"(acl\.[\w.]+)"', src))
    named &= set(_state.REGISTRY)  # drop constants, module names and words in comments
    reached: set[str] = set()
    for sc in SCENARIOS:
        sim.reset()
        reached |= set(_trace(sc, bundles[sc.bundle]))
    only_on_error_paths = {"acl.get_recent_err_msg"}
    missing = sorted(named - reached - only_on_error_paths)
    print(f"\nwrapper names {len(named)} ACL functions; the sweep scenarios reach {len(reached)}")
    assert not missing, f"ACL calls in the wrapper that no sweep scenario reaches: {missing}"


def test_steady_infer_scenario_sweeps_the_fast_path(bundles):
    """The 'steady infer' scenario runs the specialised path, so the sweep covers it: every status
    fault of its trace surfaces from _model/fastinfer.py (not from the general path in model.py)."""
    sc = next(s for s in SCENARIOS if s.name == "steady infer")
    bundle = bundles[sc.bundle]
    seen: Counter = Counter()
    sites = set()
    for name in _trace(sc, bundle):
        seen[name] += 1
        if kind_of(name) != "status":
            continue
        sim.reset()
        st = sc.setup(bundle)
        with sim.fault(name, CODE, on_call=seen[name]), pytest.raises(AclError) as ei:
            sc.action(st)
        sites.add(_site(ei.value).split(":")[0])
        st.model.close()
    assert sites == {"_model/fastinfer.py"}, sites
