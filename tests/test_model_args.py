"""Constructor and update arguments of the wrong type or size: a clear, bounded error before any device work."""
from __future__ import annotations

import numpy as np
import pytest

from acl_bundle import BundleModel, UnknownVariableError, sim
from helpers import reference


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"run_init": "no"}, TypeError, r"run_init must be True or False, got 'no'"),
        ({"max_concurrency": True}, ValueError, r"max_concurrency must be an int >= 1, got True"),
        (
            {"acl": "sim"},
            TypeError,
            r"acl must be the pyACL module .* got 'sim'; for the simulator pass acl=acl_bundle.sim.acl",
        ),
        ({"roles": [0, 1, 2]}, TypeError, r"roles must be a mapping of 'infer'/'init'/'update' to graph indexes"),
        ({"roles": {"infer": "0", "update": 2}}, TypeError, r"roles must be a mapping"),
        ({"init_inputs": np.zeros(3)}, TypeError, r"init_inputs must be a sequence of arrays"),
        ({"history": -1}, ValueError, r"history must be a non-negative int, got -1"),
    ],
)
def test_constructor_arguments_are_type_checked(make_bundle, kwargs, error, pattern):
    om, _ = make_bundle()
    with pytest.raises(error, match=pattern):
        BundleModel(om, **kwargs)
    assert sim.leaks() == {}


def test_numpy_ints_and_bytes_like_inputs_are_accepted(make_bundle):
    om, w = make_bundle()
    x = np.ones((1, 8), np.float32)
    with BundleModel(om, device_id=np.int64(1), max_concurrency=np.int32(2)) as m:
        np.testing.assert_allclose(m.infer(x), reference(x, w), rtol=1e-5, atol=1e-5)
    data = om.read_bytes()
    for buf in (bytearray(data), memoryview(data)):
        with BundleModel.from_bytes(buf, manifest=om.with_suffix(".manifest.json")) as m:
            np.testing.assert_allclose(m.infer(x), reference(x, w), rtol=1e-5, atol=1e-5)


def test_update_errors_are_bounded_and_suggest_the_prefix(make_bundle):
    """A module.-prefixed state dict: one short message, not one line per key naming every variable."""
    om, w = make_bundle()
    with BundleModel(om) as m:
        prefixed = {f"module.{k}": v for k, v in w.items()}
        prefixed.update({f"module.extra{i}": np.zeros(1, np.float32) for i in range(300)})
        with pytest.raises(UnknownVariableError) as ei:
            m.update(prefixed)
        msg = str(ei.value)
        assert msg.startswith("304 unknown variables ['module.fc0.weight', 'module.fc0.bias'")
        assert "and 294 more" in msg
        assert msg.count("expected an index") == 1
        assert len(msg) < 1000
        assert m.version == 0
        with pytest.raises(UnknownVariableError, match=r"4 of them match once the prefix 'module\.' is removed"):
            m.update({f"module.{k}": v for k, v in w.items()})


def test_both_loaders_show_and_take_the_same_keyword_options(make_bundle):
    import inspect

    expect = [("device_id", 0), ("acl", None), ("run_init", True), ("init_inputs", None), ("manifest", None),
              ("roles", None), ("max_concurrency", 2), ("pad_batch", True), ("staging_bytes", None), ("history", 0),
              ("history_bytes", 512 << 20)]
    for loader, first in ((BundleModel, "path"), (BundleModel.from_bytes, "data")):
        params = list(inspect.signature(loader).parameters.values())
        assert params[0].name == first and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert [(p.name, p.default) for p in params[1:]] == expect
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    om, w = make_bundle()
    with pytest.raises(TypeError, match=r"^BundleModel\(\) got an unexpected keyword argument 'max_concurency'$"):
        BundleModel(om, acl=sim.acl, max_concurency=1)
    with pytest.raises(TypeError, match=r"^from_bytes\(\) got an unexpected keyword argument 'histroy'$"):
        BundleModel.from_bytes(om.read_bytes(), acl=sim.acl, histroy=1)
    with BundleModel.from_bytes(om.read_bytes(), acl=sim.acl, max_concurrency=1, history=1) as m:
        assert m.keeps_history and m.variables  # the options reach the load
