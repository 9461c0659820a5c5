"""Backend choice, and proof (with a mocked acl module) that the wrapper only uses pyACL's public call forms."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from acl_bundle import BackendNotFoundError, BundleModel, _backend, sim
from helpers import reference

# Every pyACL name the public pyACL documentation lists, by submodule.
PYACL = {
    "": {"init", "finalize", "get_version", "get_recent_err_msg", "create_data_buffer", "destroy_data_buffer",
         "get_data_buffer_addr", "get_data_buffer_size", "get_data_buffer_size_v2", "update_data_buffer",
         "create_tensor_desc", "destroy_tensor_desc", "get_tensor_desc_num_dims", "get_tensor_desc_dim_v2",
         "get_tensor_desc_size", "get_tensor_desc_element_count", "get_tensor_desc_type",
         "get_tensor_desc_format", "data_type_size"},
    "rt": {"set_device", "reset_device", "create_context", "destroy_context", "set_context", "get_context",
           "create_stream", "destroy_stream", "synchronize_stream", "get_run_mode", "get_device_count", "malloc",
           "free", "malloc_host", "free_host", "memcpy", "memcpy_async", "memset", "get_mem_info"},
    "mdl": {"load_from_file", "load_from_mem", "unload", "create_desc", "get_desc", "destroy_desc",
            "get_num_inputs", "get_num_outputs", "get_input_size_by_index", "get_output_size_by_index",
            "get_input_dims", "get_input_dims_v2", "get_output_dims", "get_cur_output_dims",
            "get_input_data_type", "get_output_data_type", "get_input_format", "get_output_format",
            "get_input_name_by_index", "get_output_name_by_index", "get_input_index_by_name",
            "get_output_index_by_name", "execute", "execute_async", "get_dynamic_batch", "set_dynamic_batch_size",
            "set_dynamic_hw_size", "create_dataset", "destroy_dataset", "add_dataset_buffer",
            "get_dataset_num_buffers", "get_dataset_buffer", "set_dataset_tensor_desc", "get_dataset_tensor_desc",
            "bundle_load_from_file", "bundle_load_from_mem", "bundle_get_model_num", "bundle_get_model_id",
            "bundle_unload"},
    "util": {"bytes_to_ptr", "ptr_to_bytes", "numpy_to_ptr", "numpy_contiguous_to_ptr", "ptr_to_numpy"},
}


def _mock_acl(mocker):
    """A module exposing only documented pyACL names, each a MagicMock wrapping the simulator."""
    root = types.SimpleNamespace()
    mocks = {}
    for sub, names in PYACL.items():
        real = getattr(sim.acl, sub) if sub else sim.acl
        target = types.SimpleNamespace() if sub else root
        for name in names:
            full = f"acl.{sub}.{name}" if sub else f"acl.{name}"
            mocks[full] = mocker.MagicMock(name=full, wraps=getattr(real, name))
            setattr(target, name, mocks[full])
        if sub:
            setattr(root, sub, target)
    return root, mocks


def test_wrapper_uses_only_public_pyacl_call_forms(make_bundle, mocker):
    om, w0 = make_bundle(batch_sizes=[1, 2])
    acl, mocks = _mock_acl(mocker)
    x = np.ones((2, 8), np.float32)
    with BundleModel(om, acl=acl) as m:
        np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
        m.update({"fc0.bias": w0["fc0.bias"] + 1})
    used = {k: v for k, v in mocks.items() if v.call_count}
    assert {"acl.init", "acl.finalize", "acl.rt.set_device", "acl.rt.reset_device", "acl.mdl.bundle_load_from_file",
            "acl.mdl.bundle_unload", "acl.mdl.execute", "acl.rt.memcpy", "acl.mdl.set_dataset_tensor_desc",
            "acl.mdl.set_dynamic_batch_size"} <= set(used)
    for call in mocks["acl.create_tensor_desc"].call_args_list:
        dtype, dims, fmt = call.args  # positional, dims a list (pyACL rejects tuples)
        assert isinstance(dims, list) and isinstance(dtype, int) and isinstance(fmt, int)
    for call in mocks["acl.rt.memcpy"].call_args_list:
        assert len(call.args) == 5 and not call.kwargs
        dst, dst_max, src, count, kind = call.args
        assert count <= dst_max and kind in (1, 2)
    for call in mocks["acl.rt.malloc"].call_args_list:
        assert len(call.args) == 2 and call.args[0] > 0
    for call in mocks["acl.mdl.set_dataset_tensor_desc"].call_args_list:
        assert len(call.args) == 3
    # Balanced lifecycle: every create has its destroy.
    for create, destroy in [("acl.mdl.create_dataset", "acl.mdl.destroy_dataset"),
                            ("acl.create_data_buffer", "acl.destroy_data_buffer"),
                            ("acl.create_tensor_desc", "acl.destroy_tensor_desc"),
                            ("acl.mdl.create_desc", "acl.mdl.destroy_desc"),
                            ("acl.rt.malloc", "acl.rt.free"),
                            ("acl.rt.create_context", "acl.rt.destroy_context")]:
        assert mocks[create].call_count == mocks[destroy].call_count > 0, create


def test_explicit_module_wins(make_bundle):
    om, _ = make_bundle()
    with BundleModel(om, acl=sim.acl) as m:
        assert m._acl is sim.acl


def test_env_selects_simulator_when_pyacl_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "acl", None)  # import acl -> ImportError
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "sim")
    assert _backend.resolve_acl() is sim.acl


def test_missing_pyacl_error_says_how_to_use_the_simulator(monkeypatch):
    monkeypatch.setitem(sys.modules, "acl", None)
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    with pytest.raises(BackendNotFoundError, match=r"pyACL .* was not found.*ACL_BUNDLE_BACKEND=sim"):
        _backend.resolve_acl()


def test_installed_simulator_is_found_as_acl(make_bundle, monkeypatch):
    om, w0 = make_bundle()
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    sim.install()
    try:
        with BundleModel(om) as m:
            assert m._acl is sim.acl
    finally:
        sim.uninstall()


def test_core_import_needs_only_numpy():
    """`import acl_bundle` must not pull in onnx/onnxruntime (numpy is the only core dependency)."""
    import subprocess

    code = (
        "import sys, acl_bundle; bad = [m for m in ('onnx', 'onnxruntime', 'safetensors', 'watchdog', 'matplotlib') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- ACL_BUNDLE_BACKEND
def _fake_pyacl(monkeypatch):
    fake = types.ModuleType("acl")
    monkeypatch.setitem(sys.modules, "acl", fake)
    return fake


def test_env_sim_wins_even_where_acl_imports(monkeypatch):
    _fake_pyacl(monkeypatch)
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "sim")
    assert _backend.resolve_acl() is sim.acl
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "pyacl")
    assert _backend.resolve_acl() is sys.modules["acl"]
    monkeypatch.delenv("ACL_BUNDLE_BACKEND")
    assert _backend.resolve_acl() is sys.modules["acl"]


def test_env_pyacl_forbids_the_fallback_and_carries_the_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "acl", None)
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "pyacl")
    with pytest.raises(
        BackendNotFoundError, match=r"ACL_BUNDLE_BACKEND=pyacl but 'import acl' failed \(ModuleNotFoundError"
    ) as ei:
        _backend.resolve_acl()
    assert isinstance(ei.value.__cause__, ImportError)


def test_a_broken_pyacl_install_is_explained(monkeypatch):
    """`import acl` finds the module but its library is missing: the classic forgotten set_env.sh."""
    import importlib

    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "acl":
            raise ImportError("libascendcl.so: cannot open shared object file: No such file or directory")
        return real(name, *a, **k)

    monkeypatch.setattr(_backend.importlib, "import_module", fake_import)
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    with pytest.raises(BackendNotFoundError) as ei:
        _backend.resolve_acl()
    msg = str(ei.value)
    assert "libascendcl.so: cannot open shared object file" in msg and "set_env.sh" in msg
    assert "pip install -e '.[sim]'" in msg and "pip install acl-bundle" not in msg
    assert isinstance(ei.value.__cause__, ImportError)


def test_unknown_backend_name_is_refused(monkeypatch):
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "npu")
    with pytest.raises(BackendNotFoundError, match="ACL_BUNDLE_BACKEND='npu' is not a backend; use 'pyacl', 'sim'"):
        _backend.resolve_acl()


# --------------------------------------------------------------------------- the one backend rule (issue 23)
# Every test here runs with ACL_BUNDLE_BACKEND unset (the root conftest sets it to sim for the rest of the suite).
def _device_file(tmp_path):
    p = tmp_path / "device.om"
    p.write_bytes(b"IMOD" + bytes(252))  # anything not in the simulator's format is a device bundle
    return p


def test_a_built_bundle_runs_on_the_simulator_with_no_flag_and_no_variable(make_bundle, monkeypatch):
    om, w0 = make_bundle()
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "acl", None)  # this host has no pyACL
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    with BundleModel(om) as m:
        assert m._acl is sim.acl
        np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
    with BundleModel.from_bytes(om.read_bytes()) as m:  # the same rule for bytes
        assert m._acl is sim.acl
        np.testing.assert_allclose(m.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)


def test_a_simulator_bundle_runs_on_the_simulator_even_where_pyacl_imports(make_bundle, monkeypatch):
    om, _ = make_bundle()
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    fake = _fake_pyacl(monkeypatch)
    assert _backend.resolve_acl(source=om) is sim.acl  # it can only run there
    assert _backend.resolve_acl(source=om.read_bytes()) is sim.acl
    assert _backend.resolve_acl(source=_device_file(om.parent)) is fake  # a device bundle: pyACL


def test_explicit_choices_override_the_file(make_bundle, monkeypatch, tmp_path):
    om, _ = make_bundle()
    dev = _device_file(tmp_path)
    fake = _fake_pyacl(monkeypatch)
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "pyacl")
    assert _backend.resolve_acl(source=om) is fake
    monkeypatch.setenv("ACL_BUNDLE_BACKEND", "sim")
    assert _backend.resolve_acl(source=dev) is sim.acl
    monkeypatch.delenv("ACL_BUNDLE_BACKEND")
    assert _backend.resolve_acl(source=dev, force_sim=True) is sim.acl  # --sim
    assert _backend.resolve_acl(sim.acl, source=dev) is sim.acl  # acl=


def test_a_device_bundle_without_pyacl_is_one_sentence_naming_both_ways_out(tmp_path, monkeypatch):
    dev = _device_file(tmp_path)
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "acl", None)
    with pytest.raises(BackendNotFoundError) as ei:
        BundleModel(dev)
    msg = str(ei.value)
    assert "\n" not in msg and msg.count(". ") == 0 and msg.endswith(".")
    assert msg.startswith(f"{dev} is not a simulator bundle, so it needs pyACL")
    assert "install CANN" in msg and "pip install -e '.[sim]'" in msg and "acl-bundle build" in msg
    assert "pass acl=acl_bundle.sim.acl" in msg and "--sim" not in msg  # phrased for Python
    with pytest.raises(BackendNotFoundError, match="pass --sim"):
        _backend.resolve_acl(source=dev, interface="cli")


def test_the_rule_reads_the_magic_without_importing_the_simulator(tmp_path):
    import subprocess

    dev = _device_file(tmp_path)
    code = ("import sys; sys.modules['acl'] = None\n"
            "from acl_bundle import _backend\n"
            f"assert not _backend.is_sim_file({str(dev)!r})\n"
            "try:\n"
            f"    _backend.resolve_acl(source={str(dev)!r})\n"
            "except ImportError:\n"
            "    pass\n"
            "print('acl_bundle.sim' in sys.modules, 'onnxruntime' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "ACL_BUNDLE_BACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_the_magic_is_the_formats(make_bundle):
    from acl_bundle.sim import format as fmt

    om, _ = make_bundle()
    assert om.read_bytes().startswith(fmt.MAGIC) and _backend.is_sim_file(om)


def test_acl_errors_carry_no_unrelated_get_context_trailer(tmp_path, monkeypatch):
    from acl_bundle import AclError

    bad = tmp_path / "bad.om"
    bad.write_bytes(b"ACLBSIM\x00" + bytes(4))  # the simulator's magic, truncated: the load fails
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    with pytest.raises(AclError) as ei:
        BundleModel(bad)
    assert ei.value.func == "acl.mdl.bundle_load_from_file"
    assert "get_context" not in str(ei.value) and "107002" not in str(ei.value), str(ei.value)


def test_describe_bundle_reads_without_running_anything(make_bundle, monkeypatch):
    from acl_bundle.model import describe_bundle

    om, w0 = make_bundle(batch_sizes=[1, 4])
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    before = sim.stats()
    d = describe_bundle(om)
    after = sim.stats()
    assert after["mallocs"] == before["mallocs"] and after.get("executes", 0) == before.get("executes", 0)
    assert d.has_init and d.batch_sizes == (1, 4) and [v.name for v in d.variables] == list(w0)
    assert [tuple(v.shape) for v in d.variables] == [a.shape for a in w0.values()]
    assert d.manifest is not None and d.manifest.endswith(".manifest.json")


def test_help_bundlemodel_states_the_rule_history_bytes_and_return_types():
    doc = BundleModel.__doc__
    assert "the file decides: a bundle in the simulator's format" in " ".join(doc.split())
    assert "history_bytes: the most host memory" in doc and "WeightVersion" in doc
